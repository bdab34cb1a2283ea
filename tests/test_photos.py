"""Phone photos (a JPEG's EXIF orientation, 1-8) are read in the frame every viewer shows by the
training loader and by `cgnet predict`, and a photo annotated in LabelMe imports, trains and
predicts in that frame. The LabelMe import of each orientation: test_labelme.py."""
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from cgnet.cli import main
from cgnet.data.catalog import custom_dataset
from cgnet.data.listset import SegDataset
from cgnet.preprocess import make_spec
from cgnet.visualize import denormalize
from helpers.photos import SHOWN_BY, phone_jpeg, shown_frame, shows_blocks, stored_size

ORIENTATIONS = range(1, 9)


def shown_size(orientation: int) -> tuple[int, int]:
    """(height, width) shown for a photo stored 200 wide x 100 tall."""
    return (200, 100) if orientation >= 5 else (100, 200)


def turned_by_pillow(data: bytes, orientation: int) -> np.ndarray:
    """The stored pixels as OpenCV decodes them (tag ignored), turned to the shown frame by
    Pillow's transpose: the reference frame, BGR."""
    stored = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if orientation == 1:
        return stored
    return np.asarray(Image.fromarray(stored).transpose(SHOWN_BY[orientation]))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_training_loader_reads_the_displayed_frame(tmp_path, orientation):
    height, width = shown_size(orientation)
    data = phone_jpeg(shown_frame(height, width), orientation)
    stored = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert stored.shape[:2] == stored_size(height, width, orientation) == (100, 200)
    (tmp_path / "photo.jpg").write_bytes(data)
    label = np.zeros((height, width), np.uint8)
    label[:, width // 2:] = 1   # drawn in the shown frame: the left half 0, the right half 1
    cv2.imwrite(str(tmp_path / "photo.png"), label)
    (tmp_path / "list.txt").write_text("photo.jpg photo.png\n")
    spec = make_spec("standard")
    ds = SegDataset(tmp_path, "list.txt", custom_dataset(["a", "b"], 255, {}), spec)
    image, lab, _ = ds[0]
    assert tuple(image.shape) == (3, height, width)
    assert shows_blocks(denormalize(image, spec))
    assert np.array_equal(lab.numpy(), label)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_predict_writes_masks_and_overlays_in_the_displayed_frame(tmp_path, capsys, randomized_ckpt, orientation):
    height, width = shown_size(orientation)
    data = phone_jpeg(shown_frame(height, width), orientation)
    (tmp_path / "photo.jpg").write_bytes(data)
    cv2.imwrite(str(tmp_path / "upright.png"), turned_by_pillow(data, orientation))
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "photo.jpg"), str(tmp_path / "upright.png"), "--checkpoint",
                 str(randomized_ckpt), "--out", str(out), "--backend", "torch", "--device", "cpu",
                 "--no-progress"]) == 0
    for sub, ext in (("masks", "png"), ("color", "png"), ("overlay", "jpg")):
        photo = cv2.imread(str(out / sub / f"photo.{ext}"), cv2.IMREAD_UNCHANGED)
        upright = cv2.imread(str(out / sub / f"upright.{ext}"), cv2.IMREAD_UNCHANGED)
        assert photo.shape[:2] == (height, width)
        np.testing.assert_array_equal(photo, upright)   # the same pixels segmented, the same way up
    overlay = cv2.cvtColor(cv2.imread(str(out / "overlay" / "photo.jpg")), cv2.COLOR_BGR2RGB)
    assert overlay.shape[:2] == (height, width)


@pytest.mark.slow
def test_phone_photos_import_from_labelme_train_and_predict_upright(tmp_path, capsys):
    """Four photos stored 200 x 100 with orientations 5-8 (shown 100 wide x 200 tall), annotated
    in LabelMe in the shown frame -> cgnet data import -> one training iteration -> cgnet predict:
    the masks are 100 x 200 and equal those of the same pixels stored upright."""
    src = tmp_path / "labelme"
    src.mkdir()
    for orientation in (5, 6, 7, 8):
        data = phone_jpeg(shown_frame(200, 100), orientation)
        (src / f"photo{orientation}.jpg").write_bytes(data)
        shapes = [{"label": "sky", "points": [[0.0, 0.0], [99.0, 99.4]], "shape_type": "rectangle"},
                  {"label": "road", "points": [[0.0, 100.3], [99.0, 120.0], [99.0, 199.0], [0.0, 199.0]],
                   "shape_type": "polygon"}]
        (src / f"photo{orientation}.json").write_text(json.dumps(
            {"version": "7.1.0", "flags": {}, "shapes": shapes, "imagePath": f"photo{orientation}.jpg",
             "imageData": None, "imageHeight": 200, "imageWidth": 100}))
    root = tmp_path / "mine"
    assert main(["data", "import", "--from", "labelme", str(src), "--root", str(root), "--val-fraction", "0",
                 "--no-progress"]) == 0
    label = cv2.imread(str(root / "labels" / "photo6.png"), cv2.IMREAD_UNCHANGED)
    assert label.shape == (200, 100) and (label[:100] == 1).all() and (label[121:] == 0).all()   # road 0, sky 1
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mine", "--classes", str(root / "classes.txt"), "--ignore-index", "255",
                 "--data-root", str(root), "--train-split", str(root / "train.txt"), "--val-split", "none",
                 "--blocks", "2", "2", "--crop", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                 "--no-progress", "--no-compile", "--epochs", "1", "--max-iters", "1", "--out", str(run)]) == 0
    data = (src / "photo6.jpg").read_bytes()
    cv2.imwrite(str(tmp_path / "upright.png"), turned_by_pillow(data, 6))
    out = tmp_path / "pred"
    assert main(["predict", str(src / "photo6.jpg"), str(tmp_path / "upright.png"), "--checkpoint",
                 str(run / "last.pt"), "--out", str(out), "--backend", "torch", "--device", "cpu",
                 "--no-progress"]) == 0
    photo = cv2.imread(str(out / "masks" / "photo6.png"), cv2.IMREAD_UNCHANGED)
    assert photo.shape == (200, 100)
    np.testing.assert_array_equal(photo, cv2.imread(str(out / "masks" / "upright.png"), cv2.IMREAD_UNCHANGED))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_colour_masks_drawn_on_the_displayed_photo_import(tmp_path, capsys, orientation):
    height, width = shown_size(orientation)
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "photo.jpg").write_bytes(phone_jpeg(shown_frame(height, width), orientation))
    ids = np.zeros((height, width), np.uint8)
    ids[: height // 3] = 1   # the top third of the shown frame is sky
    mask = np.array([(0, 0, 0), (0, 0, 255)], np.uint8)[ids]   # BGR: sky is red
    cv2.imwrite(str(tmp_path / "frames" / "photo_L.png"), mask)
    (tmp_path / "classes.txt").write_text("road 0,0,0\nsky 255,0,0\n")
    root = tmp_path / "mine"
    assert main(["data", "import", "--from", "colors", str(tmp_path / "frames"), "--mask-suffix", "_L",
                 "--classes", str(tmp_path / "classes.txt"), "--root", str(root), "--no-progress"]) == 0
    np.testing.assert_array_equal(cv2.imread(str(root / "labels" / "photo.png"), cv2.IMREAD_UNCHANGED), ids)
