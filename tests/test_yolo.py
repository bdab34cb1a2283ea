"""`cgnet data import --from yolo`: an Ultralytics segmentation dataset (data.yaml, labels/*.txt
polygons) keeps its split, draws as Ultralytics draws (coordinates cut toward zero, OpenCV's
fillPoly, larger objects first), and each bad input is one line, exit 2, nothing in --root."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from test_import_formats import read_ids, refused, run, write_image


def yolo_dataset(root: Path, roboflow: bool = False) -> Path:
    """Two train images and one val image, 40x30; Roboflow's layout (train/images, valid/images,
    `../train/images` in data.yaml) or Ultralytics' (images/train, labels/train, `path`)."""
    def folders(split):
        name = {"val": "valid"}.get(split, split) if roboflow else split
        return (root / name / "images", root / name / "labels") if roboflow else \
            (root / "images" / split, root / "labels" / split)
    labels = {
        ("train", "a"): ["0 0.1 0.1 0.9 0.1 0.9 0.9 0.1 0.9", "1 0.3 0.3 0.6 0.3 0.45 0.7"],
        ("train", "b"): ["1 0.0 0.0 1.0 0.0 1.0 1.0"],
        ("val", "c"): ["0 0.5 0.5 0.95 0.5 0.95 0.95"],
    }
    for (split, stem), lines in labels.items():
        images, texts = folders(split)
        write_image(images / f"{stem}.jpg", 30, 40)
        texts.mkdir(parents=True, exist_ok=True)
        (texts / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    if roboflow:
        text = "train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['road', 'car']\n"
    else:
        text = "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: road\n  1: car\n"
    (root / "data.yaml").write_text(text)
    return root


def fill(points, value, label):
    """One polygon as the module docstring says Ultralytics fills it."""
    mask = np.zeros(label.shape, np.uint8)
    scaled = np.asarray(points, np.float32).reshape(-1, 2) * np.array([40, 30], np.float32)
    cv2.fillPoly(mask, [scaled.astype(np.int32)], 1)
    label[mask.astype(bool)] = value


@pytest.mark.parametrize("roboflow", [False, True], ids=["ultralytics", "roboflow"])
def test_split_kept_and_smaller_objects_over_larger(tmp_path, capsys, roboflow):
    src = yolo_dataset(tmp_path / "ds", roboflow)
    code, out, err = run(capsys, "--from", "yolo", src, "--root", tmp_path / "mine")
    assert code == 0, err
    assert "2 in train.txt, 1 in val.txt (the export's own split)" in out
    mine = tmp_path / "mine"
    assert (mine / "train.txt").read_text() == ("images/train/a.jpg labels/train/a.png\n"
                                                "images/train/b.jpg labels/train/b.png\n")
    assert (mine / "val.txt").read_text() == "images/val/c.jpg labels/val/c.png\n"
    assert [line.split()[0] for line in (mine / "classes.txt").read_text().splitlines()
            if not line.startswith("#")] == ["road", "car", "background"]   # Ultralytics' background class, last
    want = np.full((30, 40), 2, np.uint8)
    fill([0.1, 0.1, 0.9, 0.1, 0.9, 0.9, 0.1, 0.9], 0, want)   # the road, larger: first
    fill([0.3, 0.3, 0.6, 0.3, 0.45, 0.7], 1, want)            # the car over it
    assert (want == 1).sum() > 20 and (want == 0).sum() > 300
    np.testing.assert_array_equal(read_ids(mine / "labels" / "train" / "a.png"), want)


def test_bad_inputs_are_one_line(tmp_path, capsys):
    src = yolo_dataset(tmp_path / "ds")
    (src / "data.yaml").rename(src / "other.txt")
    err = refused(capsys, tmp_path / "a", "--from", "yolo", src)
    assert err == f"cgnet data: error: {src}: no data.yaml (an Ultralytics dataset's names and splits) in it\n"
    (src / "other.txt").rename(src / "data.yaml")
    label = src / "labels" / "train" / "a.txt"
    for text, message in [
        ("2 0.1 0.1 0.5 0.1 0.5 0.5", "class 2 is past names (classes 0..1)"),
        ("0 0.1 0.1 0.5 0.1 0.5", "an odd number of coordinates (5); a polygon is x y pairs"),
        ("0 0.1 0.1 1.5 0.1 0.5 0.5", "coordinate 1.5 is outside 0..1 (normalised to the image's size)"),
        ("0 0.1 0.1 -0.2 0.1 0.5 0.5", "coordinate -0.2 is outside 0..1 (normalised to the image's size)"),
    ]:
        label.write_text("1 0.0 0.0 1.0 0.0 1.0 1.0\n" + text + "\n")
        err = refused(capsys, tmp_path / "b", "--from", "yolo", src)
        assert err == f"cgnet data: error: {label}:2: {message} (0 imported before it; nothing written to " \
                      f"{tmp_path / 'b'})\n"


def test_equals_ultralytics_semantic_masks_on_every_pixel(tmp_path, capsys):
    """tests/data/ultralytics_yolo/expected/: the masks ultralytics 8.4.190's own
    PolygonSemanticDataset.load_mask drew from the dataset beside them
    (tests/helpers/ultralytics_masks.py); background is its class 3, after the names."""
    fixture = Path(__file__).parent / "data" / "ultralytics_yolo"
    code, out, err = run(capsys, "--from", "yolo", fixture, "--root", tmp_path / "mine")
    assert code == 0, err
    expected = sorted((fixture / "expected").rglob("*.png"))
    assert len(expected) == 5
    for path in expected:
        want = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        got = read_ids(tmp_path / "mine" / "labels" / path.parent.name / path.name)
        np.testing.assert_array_equal(got, want)
