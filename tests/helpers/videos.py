"""A small mp4v video for the tests of `cgnet predict` on videos."""
import cv2
import pytest


def write_video(path, frames, fps: float = 10.0):
    """`frames` (H x W x 3 uint8, BGR as OpenCV writes them) as an mp4v video at `path`; skips the
    test where this OpenCV build cannot write mp4v."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, frames[0].shape[1::-1])
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write mp4v")
    for frame in frames:
        writer.write(frame)
    writer.release()
