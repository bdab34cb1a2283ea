"""ADE20K (SceneParsing, ADEChallengeData2016) on generated trees with the release's folder and file
names: the id shift, the list files, `cgnet data lists/stats`, and a training run's first iteration."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch

from cgnet.cli import main
from cgnet.common import MissingFileError
from cgnet.data import ade20k
from cgnet.data.ade20k import ADE20K, LABEL_TO_TRAIN_ID, convert_train_ids, write_lists
from cgnet.data.catalog import default_data_root
from helpers.ade20k_tree import make_ade20k_tree

# from objectInfo150.txt of github.com/CSAILVision/sceneparsing: (index in the file, first name)
SPOT_NAMES = {1: "wall", 2: "building", 8: "bed", 13: "person", 21: "car", 90: "television",
              128: "bicycle", 139: "ashcan", 150: "flag"}
FIRST_TRAIN_LINE = ("images/training/ADE_train_00000001.jpg "
                    "annotations_trainids/training/ADE_train_00000001.png")


@pytest.fixture
def tree(tmp_path):
    return make_ade20k_tree(tmp_path / "ADEChallengeData2016")


def read(path):
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def shifted(released: np.ndarray) -> np.ndarray:
    """The training ids, written out independently of the lookup table: 0 -> 255, k -> k - 1."""
    out = released.astype(np.int32) - 1
    out[released == 0] = 255
    return out.astype(np.uint8)


def test_description_and_lookup_table():
    assert ADE20K.num_classes == 150 and ADE20K.ignore_index == 255 and len(set(ADE20K.classes)) == 150
    for index, name in SPOT_NAMES.items():
        assert ADE20K.classes[index - 1] == name
    assert len(ADE20K.palette) == 150 and len(set(ADE20K.palette)) == 150
    assert sorted(ADE20K.lists) == ["train", "trainval", "val"]  # the test release has no annotations
    assert LABEL_TO_TRAIN_ID.dtype == np.uint8 and not LABEL_TO_TRAIN_ID.flags.writeable
    assert LABEL_TO_TRAIN_ID[0] == 255 and LABEL_TO_TRAIN_ID[1] == 0 and LABEL_TO_TRAIN_ID[150] == 149
    assert (LABEL_TO_TRAIN_ID[151:] == 255).all()
    np.testing.assert_array_equal(LABEL_TO_TRAIN_ID[1:151], np.arange(150))


def test_convert_writes_shifted_ids_and_skips_up_to_date_files(tree):
    sources = sorted(tree.glob("annotations/*/*.png"))
    assert len(sources) == 5
    assert convert_train_ids(tree, workers=1, progress=False) == (5, 0)
    for source in sources:
        out = read(tree / "annotations_trainids" / source.parent.name / source.name)
        assert out.dtype == np.uint8 and out.ndim == 2
        np.testing.assert_array_equal(out, shifted(read(source)))
        assert set(np.unique(out)) == set(range(150)) | {255}
    assert convert_train_ids(tree, workers=1, progress=False) == (0, 5)
    stale = sources[0]
    cv2.imwrite(str(stale), np.full((16, 24), 7, np.uint8))
    out = tree / "annotations_trainids" / stale.parent.name / stale.name
    os.utime(out, (out.stat().st_atime, stale.stat().st_mtime - 10))
    assert convert_train_ids(tree, workers=1, progress=False) == (1, 4)
    assert (read(out) == 6).all()


def test_convert_serial_matches_parallel(tmp_path):
    a = make_ade20k_tree(tmp_path / "a", counts={"training": 6, "validation": 4}, seed=2)
    b = make_ade20k_tree(tmp_path / "b", counts={"training": 6, "validation": 4}, seed=2)
    assert convert_train_ids(a, workers=1, progress=False) == (10, 0)
    assert convert_train_ids(b, workers=2, progress=False) == (10, 0)  # 10 files: a process pool
    for path in sorted(a.glob("annotations_trainids/*/*.png")):
        np.testing.assert_array_equal(read(path), read(b / path.relative_to(a)))


def test_convert_refuses_a_tree_without_annotations_and_a_colour_annotation(tmp_path, tree):
    with pytest.raises(MissingFileError) as raised:
        convert_train_ids(tmp_path / "empty", progress=False)
    assert str(raised.value) == (f"no ADE20K annotations under {tmp_path / 'empty'}: expected "
                                 f"{tmp_path / 'empty' / 'annotations'}/{{training,validation}}/ADE_*.png")
    bad = tree / "annotations/validation/ADE_val_00000002.png"
    cv2.imwrite(str(bad), np.zeros((16, 24, 3), np.uint8))
    with pytest.raises(ValueError, match=r"^.*ADE_val_00000002\.png: expected a single-channel 8-bit label image, "
                                         r"got 3 channel\(s\) of uint8$"):
        convert_train_ids(tree, workers=1, progress=False)


def test_write_lists(tree):
    convert_train_ids(tree, workers=1, progress=False)
    paths = write_lists(tree)
    assert {split: path.name for split, path in paths.items()} == {
        "train": "ade20k_train_list.txt", "val": "ade20k_val_list.txt", "trainval": "ade20k_trainval_list.txt"}
    lines = {split: path.read_text().splitlines() for split, path in paths.items()}
    assert lines["train"][0] == FIRST_TRAIN_LINE
    assert lines["val"] == [f"images/validation/ADE_val_{i:08d}.jpg annotations_trainids/validation/"
                            f"ADE_val_{i:08d}.png" for i in (1, 2)]
    assert len(lines["train"]) == 3 and lines["trainval"] == lines["train"] + lines["val"]
    for line in lines["trainval"]:
        for path in line.split():
            assert (tree / path).is_file(), path


def test_write_lists_needs_the_conversion_first_and_every_annotation(tree):
    with pytest.raises(ValueError) as raised:
        write_lists(tree)
    label = tree / "annotations_trainids/training/ADE_train_00000001.png"
    released = tree / "annotations/training/ADE_train_00000001.png"
    assert str(raised.value) == (f"{label} does not exist yet (only {released} does): run "
                                 f"`cgnet data ade20k-trainids --root {tree}` first")
    convert_train_ids(tree, workers=1, progress=False)
    (tree / "annotations_trainids/validation/ADE_val_00000002.png").unlink()
    (tree / "annotations/validation/ADE_val_00000002.png").unlink()
    with pytest.raises(ValueError, match=r"ADE_val_00000002\.jpg: no annotation for it \(looked for .*"
                                         r"annotations/validation/ADE_val_00000002\.png\)$"):
        write_lists(tree)
    assert not list(tree.glob("*_list.txt"))  # no list is written when one split fails


def test_cli_trainids_lists_and_stats(tree, capsys):
    assert main(["data", "lists", "--dataset", "ade20k", "--root", str(tree)]) == 2
    assert "cgnet data ade20k-trainids --root" in capsys.readouterr().err
    assert main(["data", "ade20k-trainids", "--root", str(tree), "--workers", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "converted 5 label files, 0 already up to date"
    assert main(["data", "lists", "--dataset", "ade20k", "--root", str(tree)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out] == [["train", "3"], ["val", "2"], ["trainval", "5"]]

    assert main(["data", "stats", "--dataset", "ade20k", "--root", str(tree), "--split", "train",
                 "--workers", "0"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("ade20k: 3 images from ")
    # pixels per class, counted here from the released annotations (id k is class k - 1)
    counts = sum(np.bincount(read(p).ravel(), minlength=151) for p in sorted(tree.glob("annotations/training/*.png")))
    rows = {int(line.split()[0]): line for line in table[4:]}
    assert len(rows) == 150
    for class_id in (0, 1, 89, 149):
        name = ADE20K.classes[class_id]
        pixels = int(rows[class_id][len(f"{class_id:>3}  {name:<14}"):].split()[0].replace(",", ""))
        assert pixels == counts[class_id + 1], name


def test_train_reaches_its_first_iteration(tree, tmp_path):
    convert_train_ids(tree, workers=1, progress=False)
    write_lists(tree)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "ade20k", "--data-root", str(tree), "--out", str(out), "--train-split", "train",
                 "--val-split", "val", "--blocks", "2", "2", "--crop", "32", "--batch-size", "2", "--workers", "0",
                 "--device", "cpu", "--no-progress", "--no-compile", "--epochs", "1", "--max-iters", "1"]) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["train_state"]["iteration"] == 1
    assert state["meta"]["dataset"] == "ade20k" and state["meta"]["classes"] == list(ADE20K.classes)
    assert state["model"]["classifier.weight"].shape[:2] == (150, 256)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log and np.isfinite(log[-1]["loss"])


def test_missing_data_names_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CGNET_DATA", raising=False)
    with pytest.raises(MissingFileError) as raised:
        default_data_root("ade20k")
    message = str(raised.value)
    assert message.startswith("no ade20k data in data/ADEChallengeData2016, "
                              "../shared/datasets/ADEChallengeData2016; give --data-root or set CGNET_DATA")
    assert message.endswith(f"(to get it: download ADEChallengeData2016.zip from {ade20k.DOWNLOAD_PAGE} "
                            f"({ade20k.ARCHIVE_URL}), unzip it, then cgnet data ade20k-trainids and cgnet data lists)")
