"""The pieces of `cgnet predict --engine ray` that need no cluster: video ranges, the class-id
parts, the pixel limit read from the header, input names, the options of each engine, the one
line without the extra, and what one actor writes (its callable class run in this process, against
local predict's files). The engine itself, on a real two-node cluster and an S3 endpoint, is
tests/test_ray.py."""
import importlib.util

import cv2
import numpy as np
import pytest

from cgnet.cli import main
from cgnet.common import InputError
from cgnet.deploy.predict import predict_images, predict_video
from cgnet.deploy.predictor import make_predictor
from cgnet.deploy.ray_predict import (Job, Segmenter, assemble_video, check_pixels, decode_masks, encode_masks,
                                      frame_ranges)
from cgnet.deploy.ray_store import gather_inputs
from cgnet.images import encode_image
from cgnet.visualize import palette_of
from helpers.videos import write_video


def test_frame_ranges_cover_the_video_and_the_last_runs_to_its_end():
    assert frame_ranges(12, 5) == [(0, 5), (5, 10), (10, -1)]
    assert frame_ranges(10, 5) == [(0, 5), (5, -1)]
    assert frame_ranges(0, 64) == [(0, -1)]  # no frame count in the header: one range, read to the end


def test_a_ranges_class_ids_round_trip_exactly():
    rng = np.random.default_rng(1)
    masks = [rng.integers(0, 19, (37, 53), dtype=np.uint8) for _ in range(4)]
    back = decode_masks(encode_masks(masks))
    assert len(back) == 4 and all(np.array_equal(a, b) for a, b in zip(masks, back))


def test_an_image_over_the_pixel_limit_is_refused_from_its_header():
    data = encode_image("a.png", np.zeros((48, 64, 3), np.uint8))
    check_pixels(data, 48 * 64, "s3://b/a.png")  # at the limit: accepted
    with pytest.raises(InputError) as error:
        check_pixels(data, 48 * 64 - 1, "s3://b/a.png")
    assert str(error.value) == "s3://b/a.png: 64x48 is 0.0 megapixels, more than --max-megapixels 0.003071"


def test_inputs_get_the_names_local_predict_gives(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "x.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "a" / "y.png"), np.zeros((8, 8, 3), np.uint8))
    images, videos = gather_inputs([str(tmp_path / "a"), str(tmp_path / "b" / "x.png"), str(tmp_path / "a" / "y.png")])
    assert [s.name for s in images] == ["a_x", "y", "b_x"] and videos == []
    assert images[0].uri == str((tmp_path / "a" / "x.png").resolve())


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="the ray extra is installed")
def test_without_the_extra_the_engine_is_one_line(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((8, 8, 3), np.uint8))
    assert main(["predict", str(tmp_path / "x.png"), "--engine", "ray", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == 'cgnet predict: error: cgnet predict --engine ray needs Ray Data: pip install ' \
                                      '"cgnet[ray]"\n'


@pytest.mark.parametrize("option, value", [("--address", "auto"), ("--actors", "2"), ("--chunk-frames", "8")])
def test_a_ray_option_without_engine_ray_is_one_line(tmp_path, capsys, option, value):
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((8, 8, 3), np.uint8))
    assert main(["predict", str(tmp_path / "x.png"), option, value, "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"cgnet predict: error: {option} is for --engine ray (this run is --engine local)\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the ray extra is not installed")
@pytest.mark.parametrize("option, message", [
    ("--compile", "--compile runs in one process: leave it out with --engine ray"),
    ("--no-overlap", "--no-overlap is for --engine local (each Ray actor decodes ahead of its model)")])
def test_a_local_only_option_with_engine_ray_is_one_line_before_ray_starts(tmp_path, capsys, option, message):
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((8, 8, 3), np.uint8))
    assert main(["predict", str(tmp_path / "x.png"), "--engine", "ray", option, "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"cgnet predict: error: {message}\n"
    assert not (tmp_path / "o").exists()


def _job(ckpt, out, overlay=True) -> Job:
    return Job(str(ckpt), "torch", "fp32", "cpu", str(out), 0.5, overlay, 10 ** 8)


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_actor_writes_the_files_local_predict_writes(tmp_path, randomized_ckpt):
    """One actor's callable class, run here: the same bytes as local predict for each image, and a
    file that is not an image is an error row, not an exception."""
    pytest.importorskip("pyarrow")
    rng = np.random.default_rng(3)
    images = []
    for name, size in (("a", (24, 32)), ("b", (40, 28))):
        images.append(tmp_path / f"{name}.png")
        cv2.imwrite(str(images[-1]), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    predictor = make_predictor(str(randomized_ckpt), backend="torch", precision="fp32", device="cpu")
    predict_images(predictor, images, tmp_path / "local", progress=False)
    uris = [str(p) for p in images] + [str(tmp_path / "bad.png")]
    result = Segmenter(_job(randomized_ckpt, tmp_path / "ray"))(
        {"uri": uris, "name": ["a", "b", "bad"], "start": [0, 0, 0], "stop": [0, 0, 0]})
    assert result["frames"] == [1, 1, 0] and result["error"][:2] == ["", ""]
    assert result["error"][2].startswith(str(tmp_path / "bad.png"))
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def test_video_ranges_assemble_into_local_predicts_overlay(tmp_path, randomized_ckpt):
    """A video segmented as two ranges by an actor, then assembled: the parts hold the class ids
    local predict computes frame by frame, and the overlay video decodes to local predict's."""
    pytest.importorskip("pyarrow")
    clip = tmp_path / "clip.mp4"
    rng = np.random.default_rng(4)
    write_video(clip, [rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in range(7)])
    predictor = make_predictor(str(randomized_ckpt), backend="torch", precision="fp32", device="cpu")
    assert predict_video(predictor, clip, tmp_path / "local" / "clip_overlay.mp4", progress=False) == 7
    out = tmp_path / "ray"
    result = Segmenter(_job(randomized_ckpt, out))(
        {"uri": [str(clip)] * 2, "name": ["clip"] * 2, "start": [0, 4], "stop": [4, -1]})
    assert result["frames"] == [4, 3] and result["error"] == ["", ""]
    assert assemble_video(str(clip), str(out), "clip", [0, 4], 0.5, palette_of(predictor.meta)) == 7
    assert not (out / ".parts" / "clip").exists()
    decoded = []
    for path in (tmp_path / "local" / "clip_overlay.mp4", out / "clip_overlay.mp4"):
        cap = cv2.VideoCapture(str(path))
        frames = []
        while (read := cap.read())[0]:
            frames.append(read[1])
        cap.release()
        decoded.append(frames)
    assert len(decoded[0]) == 7 and all(np.array_equal(a, b) for a, b in zip(*decoded))


def test_a_job_that_ray_stops_is_one_line_naming_the_cause(tmp_path, monkeypatch, randomized_ckpt):
    """Actors that cannot start (cgnet missing on a node: Ray's error ends with the worker's
    ModuleNotFoundError) end the command with one line naming that cause, not Ray's traceback."""
    ray = pytest.importorskip("ray")
    import argparse

    import ray.data

    from cgnet.common import CGNetError
    from cgnet.deploy.ray_predict import run_rows

    class Stopped:
        def map_batches(self, *args, **kwargs):
            return self

        def iter_rows(self):
            raise ray.exceptions.RayError("The actor died because of an error raised in its creation task\n"
                                          "ModuleNotFoundError: No module named 'cgnet.deploy.ray_predict'\n")

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray.data, "from_items", lambda rows, **kwargs: Stopped())
    args = argparse.Namespace(cpus_per_actor=1.0, actors=None, batch_size=8)
    with pytest.raises(CGNetError) as error:
        run_rows(ray, [{"uri": "a.png", "name": "a", "start": 0, "stop": 0}], _job(randomized_ckpt, tmp_path), args)
    assert str(error.value) == ("the Ray job stopped: ModuleNotFoundError: No module named 'cgnet.deploy.ray_predict' "
                                "(every node needs cgnet installed, the version this command runs; files already "
                                "written are kept, and a re-run skips them)")
