import os
import shutil

import cv2
import numpy as np
import pytest

import cgnet.data.relabel as relabel
from cgnet.data.cityscapes import (LABEL_TO_TRAIN_ID, convert_train_ids, label_ids_to_train_ids,
                              train_ids_to_label_ids, write_lists)
from helpers.cityscapes_tree import make_cityscapes_tree

# written out by hand from the official labels.py, not derived from the code under test
EXPECTED = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
            25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
KNOWN_LINE = ("leftImg8bit/train/aachen/aachen_000000_000000_leftImg8bit.png "
              "gtFine/train/aachen/aachen_000000_000000_gtFine_labelTrainIds.png")


@pytest.fixture
def tree(tmp_path):
    return make_cityscapes_tree(tmp_path / "cityscapes")


def read(path):
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def label_files(root):
    return sorted(root.glob("gtFine/*/*/*_labelIds.png")) + sorted(root.glob("gtCoarse/*/*/*_labelIds.png"))


def trainids_of(path):
    return path.with_name(path.name.replace("_labelIds.png", "_labelTrainIds.png"))


# --- tables -------------------------------------------------------------------------------------

def test_lut_matches_hand_written_table():
    assert LABEL_TO_TRAIN_ID.dtype == np.uint8 and LABEL_TO_TRAIN_ID.shape == (256,)
    for label_id in range(256):
        assert LABEL_TO_TRAIN_ID[label_id] == EXPECTED.get(label_id, 255), label_id


def test_label_ids_to_train_ids():
    labels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = label_ids_to_train_ids(labels)
    assert out.dtype == np.uint8 and out.shape == labels.shape
    np.testing.assert_array_equal(out.ravel(), [EXPECTED.get(i, 255) for i in range(256)])
    # wider dtypes: -1 (license plate) and out-of-range ids are void
    np.testing.assert_array_equal(label_ids_to_train_ids(np.array([-1, 7, 33, 300], np.int32)),
                                  [255, 0, 18, 255])
    with pytest.raises(ValueError, match="integer"):
        label_ids_to_train_ids(np.array([7.0]))


def test_train_ids_round_trip():
    train_ids = np.arange(19, dtype=np.uint8)
    label_ids = train_ids_to_label_ids(train_ids)
    assert label_ids.dtype == np.uint8
    assert [int(v) for v in label_ids] == [k for k, _ in sorted(EXPECTED.items(), key=lambda kv: kv[1])]
    np.testing.assert_array_equal(label_ids_to_train_ids(label_ids), train_ids)
    assert train_ids_to_label_ids(np.array([255, 0], np.uint8)).tolist() == [0, 7]


@pytest.mark.parametrize("bad", [19, 254, -3])
def test_inverse_rejects_non_train_ids(bad):
    with pytest.raises(ValueError, match=rf"got .*{bad}"):
        train_ids_to_label_ids(np.array([0, bad, 255], np.int32))


def test_table_matches_cityscapesscripts():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels").labels
    official = {label.id: (label.trainId if label.trainId not in (255, -1) else 255)
                for label in labels if 0 <= label.id <= 33}
    assert sorted(official) == list(range(34))
    for label_id, train_id in official.items():
        assert LABEL_TO_TRAIN_ID[label_id] == train_id, label_id


# --- convert_train_ids --------------------------------------------------------------------------

def test_convert_train_ids(tree, monkeypatch):
    pools = []
    real_pool = relabel.Pool

    def spy_pool(*args, **kwargs):
        pools.append(args)
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(relabel, "Pool", spy_pool)
    sources = label_files(tree)
    assert len(sources) == 12  # 7 gtFine (train, val, test) + 5 gtCoarse (train, val)
    assert convert_train_ids(tree, workers=2, progress=False) == (12, 0)
    assert pools, "workers=2 on 12 files should use a process pool"
    assert any("gtCoarse" in str(p) for p in sources)
    for source in sources:
        out = read(trainids_of(source))
        assert out.dtype == np.uint8 and out.ndim == 2
        np.testing.assert_array_equal(out, LABEL_TO_TRAIN_ID[read(source)])
    # the all-zero test labels become all-void
    assert (read(tree / "gtFine/test/berlin/berlin_000000_000000_gtFine_labelTrainIds.png") == 255).all()

    assert convert_train_ids(tree, workers=2, progress=False) == (0, 12)
    # a source edited after its output is converted again
    stale = sources[0]
    cv2.imwrite(str(stale), np.full((16, 32), 26, np.uint8))
    out = trainids_of(stale)
    os.utime(out, (out.stat().st_atime, stale.stat().st_mtime - 10))
    assert convert_train_ids(tree, workers=1, progress=False) == (1, 11)
    assert (read(out) == 13).all()

    assert convert_train_ids(tree, workers=1, force=True, progress=False) == (12, 0)
    assert not list(tree.rglob("*.tmp")), "temp files left behind"


def test_convert_serial_matches_parallel(tmp_path):
    a = make_cityscapes_tree(tmp_path / "a", seed=3)
    b = make_cityscapes_tree(tmp_path / "b", seed=3)
    convert_train_ids(a, workers=1, progress=False)
    convert_train_ids(b, workers=2, progress=False)
    for source in label_files(a):
        other = b / source.relative_to(a)
        np.testing.assert_array_equal(read(trainids_of(source)), read(trainids_of(other)))


def test_convert_only_coarse_or_only_fine(tmp_path):
    root = make_cityscapes_tree(tmp_path / "fine", coarse=False)
    assert convert_train_ids(root, workers=1, progress=False) == (7, 0)
    root = make_cityscapes_tree(tmp_path / "coarse", splits={"train": {"aachen": 1}})
    shutil.rmtree(root / "gtFine")
    assert convert_train_ids(root, workers=1, progress=False) == (1, 0)


def test_convert_no_labels(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        convert_train_ids(tmp_path, progress=False)


def test_convert_rgb_label_names_file(tree):
    bad = tree / "gtFine/val/frankfurt/frankfurt_000000_000001_gtFine_labelIds.png"
    cv2.imwrite(str(bad), np.zeros((16, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"frankfurt_000000_000001_gtFine_labelIds\.png.*single-channel"):
        convert_train_ids(tree, workers=2, progress=False)  # error comes back from a worker


def test_convert_corrupt_label_names_file(tree):
    bad = tree / "gtCoarse/train/bochum/bochum_000000_000000_gtCoarse_labelIds.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"bochum_000000_000000_gtCoarse_labelIds\.png.*cannot read"):
        convert_train_ids(tree, workers=1, progress=False)
    assert not trainids_of(bad).exists()


def test_convert_16bit_label_rejected(tmp_path):
    root = make_cityscapes_tree(tmp_path, splits={"val": {"lindau": 1}}, coarse=False)
    bad = root / "gtFine/val/lindau/lindau_000000_000000_gtFine_labelIds.png"
    cv2.imwrite(str(bad), np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError, match=r"lindau_000000_000000_gtFine_labelIds\.png.*uint16"):
        convert_train_ids(root, workers=1, progress=False)


# --- write_lists --------------------------------------------------------------------------------

def test_write_lists(tree):
    convert_train_ids(tree, workers=1, progress=False)
    paths = write_lists(tree)
    assert set(paths) == {"train", "val", "trainval", "test"}
    lists = {}
    for split, path in paths.items():
        assert path == tree / f"cityscapes_{split}_list.txt"
        text = path.read_text()
        assert text.endswith("\n")
        lists[split] = text.splitlines()
    assert KNOWN_LINE in lists["train"]
    assert {s: len(v) for s, v in lists.items()} == {"train": 3, "val": 2, "trainval": 5, "test": 2}
    assert lists["trainval"] == lists["train"] + lists["val"]
    for split in ("train", "val", "trainval", "test"):
        assert lists[split] == sorted(lists[split])
    for split in ("train", "val"):
        for line in lists[split]:
            image, label = line.split(" ")
            assert (tree / image).is_file() and (tree / label).is_file()
            assert f"leftImg8bit/{split}/" in image and f"gtFine/{split}/" in label
    for line in lists["test"]:
        assert " " not in line and line.startswith("leftImg8bit/test/berlin/")
        assert (tree / line).is_file()
    assert not list(tree.glob("*.tmp")) and not list(tree.glob(".*.tmp"))


def test_write_lists_without_test_split(tree):
    convert_train_ids(tree, workers=1, progress=False)
    shutil.rmtree(tree / "leftImg8bit" / "test")
    assert set(write_lists(tree)) == {"train", "val", "trainval"}
    assert not (tree / "cityscapes_test_list.txt").exists()


def test_write_lists_needs_trainids_first(tree):
    with pytest.raises(ValueError, match=r"cgnet data cityscapes-trainids --root"):
        write_lists(tree)
    assert not list(tree.glob("*_list.txt")), "no list may be written when one split fails"


def test_write_lists_missing_label(tree):
    convert_train_ids(tree, workers=1, progress=False)
    for p in (tree / "gtFine/val/frankfurt").glob("frankfurt_000000_000001_gtFine_label*"):
        p.unlink()
    with pytest.raises(ValueError, match=r"frankfurt_000000_000001_leftImg8bit\.png: no gtFine label"):
        write_lists(tree)


def test_write_lists_missing_split(tree):
    convert_train_ids(tree, workers=1, progress=False)
    shutil.rmtree(tree / "leftImg8bit" / "val")
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit[/\\]val is missing"):
        write_lists(tree)
