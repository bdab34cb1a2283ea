"""The pieces of `cgnet predict --engine ray` that need no cluster: video ranges, the class-id
parts, the pixel limit read from the header, input names, and the one line without the extra.
The engine itself, on a real two-node cluster and an S3 endpoint, is tests/test_ray.py."""
import importlib.util

import cv2
import numpy as np
import pytest

from cgnet.cli import main
from cgnet.common import InputError
from cgnet.deploy.ray_predict import check_pixels, decode_masks, encode, encode_masks, frame_ranges
from cgnet.deploy.ray_store import gather_inputs


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
    data = encode(".png", np.zeros((48, 64, 3), np.uint8))
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
