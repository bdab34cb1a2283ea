"""The video queue of `cgnet serve`: an uploaded video is checked (a video, not a still image;
frame size and length within the limits), then run by `predict_video` in one worker thread, one
job after the other, its files in a temporary folder that is deleted when the server stops."""
from __future__ import annotations

import math
import shutil
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from ...common import CGNetError
from ...images import VideoStreams, video_fps
from ..predict import predict_video
from .guard import UploadError, shorten
from .images import Segmenter, image_format, too_many_pixels

MAX_JOBS_KEPT = 16  # finished video jobs whose files are kept; older ones are deleted
RETRY_AFTER_S = 10  # what a 429 (video queue full) tells the client to wait
NOT_A_VIDEO = ("not a video this server can decode (corrupt, or an unsupported format): "
               "send an mp4, avi, mov, mkv or webm file")


class JobCancelled(CGNetError):
    pass


class Job:
    def __init__(self, folder: Path, name: str, source: Path, total: int):
        self.id, self.folder, self.name, self.source, self.total = folder.name, folder, name, source, total
        self.state, self.frames, self.error, self.latency = "queued", 0, None, 0.0
        self.mp4 = folder / f"{name}_overlay.mp4"
        self.preview: Path | None = None
        self.cancelled = False

    def status(self) -> dict:
        progress = 1.0 if self.state == "done" else (min(0.99, self.frames / self.total) if self.total else 0.0)
        status = {"id": self.id, "state": self.state, "frames": self.frames, "total": self.total,
                  "progress": progress, "error": self.error, "name": self.name}
        if self.frames:
            status["latency_ms"] = round(self.latency / self.frames * 1000, 2)
        if self.state == "done":
            status["video_url"] = f"/api/jobs/{self.id}/video?download=1"
            status["preview_url"] = f"/api/jobs/{self.id}/preview"
        return status


class JobPredictor:
    """The shared model as `predict_video` sees it: counts the frames for the progress bar and
    stops the job when it is cancelled or longer than allowed."""

    def __init__(self, segmenter: Segmenter, job: Job, max_frames: int):
        self.segmenter, self.job, self.max_frames = segmenter, job, max_frames
        self.meta = segmenter.meta

    def predict(self, image_rgb: np.ndarray) -> np.ndarray:
        if self.job.cancelled:
            raise JobCancelled("the server is stopping")
        if self.job.frames >= self.max_frames:
            raise UploadError(413, f"video too long: more than {self.max_frames} frames (--max-video-frames)")
        mask, seconds = self.segmenter.timed_predict(image_rgb)
        self.job.frames += 1
        self.job.latency += seconds
        return mask

    def predict_stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """One frame at a time through the shared model (its lock serves the server's requests too)."""
        return map(self.predict, frames)


def webm_copy(mp4: Path, webm: Path) -> bool:
    """Re-encode the overlay video as WebM (VP8), which browsers play (they do not play mp4v);
    False when this OpenCV build cannot write VP8."""
    with VideoStreams(mp4) as streams:
        ok, frame = streams.cap.read()
        if not ok:
            return False
        writer = streams.open_writer(webm, "VP80", video_fps(streams.cap), (frame.shape[1], frame.shape[0]))
        if not writer.isOpened():
            return False
        while ok:
            writer.write(frame)
            ok, frame = streams.cap.read()
        return True


def count_frames(cap: cv2.VideoCapture, max_frames: int) -> tuple[int, bool]:
    """The number of frames of an opened video whose first frame was read, and whether the
    container told it; without a count they are counted, up to `max_frames` + 1."""
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    if math.isfinite(count) and count > 0:
        return int(count), True
    total = 1  # no count in the container (a still image read as a stream, a live recording)
    while total <= max_frames and cap.grab():
        total += 1
    if total < 2:
        raise UploadError(400, "not a video: one frame and no frame count (a still image?): "
                               "send an mp4, avi, mov, mkv or webm file")
    return total, False


def check_video(path: Path, max_pixels: int, max_frames: int) -> int:
    """The frame count of an uploaded video; UploadError 400 for an image or anything OpenCV does
    not read as a video, 413 for frames over `max_pixels` or more than `max_frames` frames."""
    fmt = image_format(path)
    if fmt is not None:
        raise UploadError(400, f"this is a {fmt} image, not a video: send images to /api/segment")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened() or cap.getBackendName() == "CV_IMAGES":  # OpenCV's reader of still images
            raise UploadError(400, NOT_A_VIDEO)
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width * height > max_pixels:  # before a frame is decoded
            raise too_many_pixels(width, height, max_pixels)
        ok, frame = cap.read()
        if not ok or frame is None:
            raise UploadError(400, NOT_A_VIDEO)
        height, width = frame.shape[:2]
        if width * height > max_pixels:
            raise too_many_pixels(width, height, max_pixels)
        total, told = count_frames(cap, max_frames)
    finally:
        cap.release()
    if total > max_frames:
        raise UploadError(413, f"video too long: {total if told else f'more than {max_frames}'} frames, "
                               f"the limit is {max_frames} (--max-video-frames)")
    return total


class Jobs:
    """Video jobs, run one after the other in a worker thread, with their files in a temporary
    folder that is deleted when the server stops."""

    def __init__(self, segmenter: Segmenter, max_frames: int, max_pixels: int, max_pending: int = 4):
        self.segmenter, self.max_frames, self.max_pixels = segmenter, max_frames, max_pixels
        self.max_pending = max_pending
        self.pending = 0  # uploads being received, checked, queued or run: at most max_pending
        self.folder = Path(tempfile.mkdtemp(prefix="cgnet-serve-"))
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgnet-video")

    def get(self, job_id: str) -> Job:
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise UploadError(404, f"no video job {shorten(job_id)!r} "
                                   f"(finished jobs are kept until {MAX_JOBS_KEPT} newer ones)")
        return job

    def finished(self, job_id: str) -> Job:
        """The job, when it is done; 404 when it is unknown or not done."""
        job = self.get(job_id)
        if job.state != "done":
            raise UploadError(404, f"video job {shorten(job_id)} is {job.state}, not done")
        return job

    def reserve(self) -> None:
        """Take one of the `max_pending` places for a video (its upload, check, wait and run);
        429 with Retry-After when none is free. `release` gives it back (a finished job does)."""
        with self.lock:
            if self.pending >= self.max_pending:
                raise UploadError(429, f"the video queue is full ({self.max_pending} videos waiting or running, "
                                       f"--max-queued-videos): try again later",
                                  headers={"retry-after": str(RETRY_AFTER_S)})
            self.pending += 1

    def release(self) -> None:
        with self.lock:
            self.pending -= 1

    def create(self, upload_path: Path, filename: str) -> Job:
        """Check the uploaded video (in `upload_path`, inside a fresh job folder) and queue it;
        the caller holds a place (`reserve`), which the job gives back when it ends."""
        total = check_video(upload_path, self.max_pixels, self.max_frames)
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(filename or "video").stem)[:80] or "video"
        job = Job(upload_path.parent, stem, upload_path, total)
        with self.lock:
            self.jobs[job.id] = job
            self._forget_old()
        self.executor.submit(self._run, job)
        return job

    def new_folder(self) -> Path:
        folder = self.folder / uuid.uuid4().hex
        folder.mkdir()
        return folder

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs.values() if j.state in ("done", "error")]
        for job in finished[:max(0, len(finished) - MAX_JOBS_KEPT)]:
            del self.jobs[job.id]
            shutil.rmtree(job.folder, ignore_errors=True)

    def _run(self, job: Job) -> None:
        state, message = "error", None
        try:
            if job.cancelled:
                raise JobCancelled("the server is stopping")
            job.state = "running"
            frames = predict_video(JobPredictor(self.segmenter, job, self.max_frames), job.source, job.mp4,
                                   alpha=self.segmenter.alpha, progress=False)
            job.total = frames
            job.state = "encoding"
            preview = job.folder / f"{job.name}_overlay.webm"
            job.preview = preview if webm_copy(job.mp4, preview) else job.mp4
            state = "done"
        except (CGNetError, ValueError, RuntimeError, OSError) as error:
            message = str(error)
        except Exception as error:  # noqa: BLE001 - a job must end in a state the page can show
            message = f"internal error: {type(error).__name__}: {error}"
        finally:
            job.source.unlink(missing_ok=True)
            self.release()  # before the job shows as finished: its client may send the next video at once
            job.error, job.state = message, state

    def close(self) -> None:
        with self.lock:
            for job in self.jobs.values():
                job.cancelled = True
        self.executor.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.folder, ignore_errors=True)
