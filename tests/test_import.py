"""`cgnet data import`: CVAT and colour-mask exports, built here as each tool writes them,
imported and checked pixel by pixel; errors, atomicity, the split, and the palette a training on
the result carries into its checkpoint. LabelMe: test_labelme.py."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cgnet.checkpoint import load_model
from cgnet.cli import main
from cgnet.data.catalog import CAMVID, dataset_from_meta, read_class_names, resolve_dataset
from cgnet.data.importer import split_names
from cgnet.data.listset import read_label, read_list
from cgnet.engine.config import TrainConfig

IGNORE = 255


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2BGR))
    return path


def read_ids(path: Path) -> np.ndarray:
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert label.ndim == 2 and label.dtype == np.uint8
    return label


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["data", "import", *map(str, argv), "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- CVAT "Segmentation mask 1.1" -------------------------------------------------------------

CVAT_LABELS = {"background": (0, 0, 0), "car": (250, 50, 83), "person": (61, 245, 61)}


def make_cvat(root: Path, masks: dict[str, np.ndarray]) -> Path:
    """The export's tree: labelmap.txt, SegmentationClass/, SegmentationObject/, JPEGImages/,
    ImageSets/Segmentation/default.txt; masks are label-name arrays turned into colours."""
    root.mkdir(parents=True)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
        f"{name}:{r},{g},{b}::\n" for name, (r, g, b) in CVAT_LABELS.items()))
    rng = np.random.default_rng(0)
    for name, mask in masks.items():
        h, w = mask.shape[:2]
        write_rgb(root / "JPEGImages" / f"{name}.jpg", rng.integers(0, 256, (h, w, 3)))
        write_rgb(root / "SegmentationClass" / f"{name}.png", mask)
        write_rgb(root / "SegmentationObject" / f"{name}.png", mask)   # instance masks: not read
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("".join(f"{n}\n" for n in masks))
    return root


def colour_mask(names: list[str]) -> np.ndarray:
    """A 'label name per pixel' grid as CVAT colours."""
    return np.array([[CVAT_LABELS[n] for n in row.split()] for row in names], dtype=np.uint8)


FRAME_A = ["background car car background", "person car car background", "person person background background"]
FRAME_B = ["car car car car", "background background person person", "car background background car"]
IDS = {"background": 0, "car": 1, "person": 2}


def ids_of(rows: list[str], table: dict[str, int]) -> np.ndarray:
    return np.array([[table[n] for n in row.split()] for row in rows], dtype=np.uint8)


def test_cvat_labels_images_classes_and_lists(tmp_path, capsys):
    src = make_cvat(tmp_path / "export", {"frame_a": colour_mask(FRAME_A), "frame_b": colour_mask(FRAME_B)})
    dst = tmp_path / "mine"
    code, out, err = run(capsys, "--from", "cvat", src, "--root", dst, "--val-fraction", "0.5")
    assert code == 0, err
    assert listing(dst) == ["classes.txt", "images", "labels", "train.txt", "val.txt"]
    for name, rows in (("frame_a", FRAME_A), ("frame_b", FRAME_B)):
        np.testing.assert_array_equal(read_ids(dst / "labels" / f"{name}.png"), ids_of(rows, IDS))
        # images are copied byte for byte
        assert (dst / "images" / f"{name}.jpg").read_bytes() == (src / "JPEGImages" / f"{name}.jpg").read_bytes()
    lines = [line for line in (dst / "classes.txt").read_text().splitlines() if not line.startswith("#")]
    assert lines == ["background 0,0,0", "car 250,50,83", "person 61,245,61"]
    assert "255 in labels/*.png (train with --ignore-index 255)" in (dst / "classes.txt").read_text()
    listed = (dst / "train.txt").read_text().splitlines() + (dst / "val.txt").read_text().splitlines()
    assert sorted(listed) == ["images/frame_a.jpg labels/frame_a.png", "images/frame_b.jpg labels/frame_b.png"]
    assert len((dst / "val.txt").read_text().splitlines()) == 1
    # the list reader and the label reader of training accept the result
    samples = read_list(dst / "train.txt", dst, progress=False)
    read_label(samples[0].label, 3, IGNORE)
    assert "imported 2 images, 3 classes into" in out and "1 in train.txt, 1 in val.txt" in out
    assert "skipped images: none" in out
    assert f"--classes {dst / 'classes.txt'} --ignore-index 255 --data-root {dst}" in out


def test_cvat_background_as_ignore_and_a_missing_mask_is_skipped(tmp_path, capsys):
    src = make_cvat(tmp_path / "export", {"frame_a": colour_mask(FRAME_A), "frame_b": colour_mask(FRAME_B)})
    (src / "SegmentationClass" / "frame_b.png").unlink()
    dst = tmp_path / "mine"
    code, out, err = run(capsys, "--from", "cvat", src, "--root", dst, "--ignore-class", "background")
    assert code == 0, err
    np.testing.assert_array_equal(read_ids(dst / "labels" / "frame_a.png"),
                                  ids_of(FRAME_A, {"background": IGNORE, "car": 0, "person": 1}))
    assert not (dst / "labels" / "frame_b.png").exists()
    assert [line for line in (dst / "classes.txt").read_text().splitlines() if not line.startswith("#")] == [
        "car 250,50,83", "person 61,245,61"]
    assert "skipped images: 1 without a mask" in out
    assert "0 in val.txt (none: train with --val-split none)" in out   # one image: it stays in train
    assert not (dst / "val.txt").exists()


def test_cvat_colour_not_in_labelmap_is_one_line_and_leaves_nothing(tmp_path, capsys):
    bad = colour_mask(FRAME_B)
    bad[1, 3] = (10, 20, 30)
    bad[2, 0] = (10, 20, 30)
    src = make_cvat(tmp_path / "export", {"frame_a": colour_mask(FRAME_A), "frame_b": bad})
    dst = tmp_path / "out" / "mine"
    before = listing(tmp_path)
    code, out, err = run(capsys, "--from", "cvat", src, "--root", dst)
    assert code == 2
    mask = src / "SegmentationClass" / "frame_b.png"
    assert err == (f"cgnet data: error: {mask}: pixel (x=3, y=1) has colour 10,20,30, which is not in "
                   f"{src / 'labelmap.txt'} (pixels with colours not in it: 2) (1 imported before it; "
                   f"nothing written to {dst})\n")
    assert listing(tmp_path) == before   # no DST, no temporary folder, not even DST's parent


def test_cvat_mask_and_image_sizes_must_match(tmp_path, capsys):
    src = make_cvat(tmp_path / "export", {"frame_a": colour_mask(FRAME_A)})
    cv2.imwrite(str(src / "JPEGImages" / "frame_a.jpg"), np.zeros((5, 4, 3), np.uint8))
    dst = tmp_path / "mine"
    code, _, err = run(capsys, "--from", "cvat", src, "--root", dst)
    assert code == 2 and not dst.exists()
    assert err == (f"cgnet data: error: {src / 'SegmentationClass' / 'frame_a.png'} is 4x3 but its image "
                   f"{src / 'JPEGImages' / 'frame_a.jpg'} is 4x5 (width x height) (0 imported before it; "
                   f"nothing written to {dst})\n")


def test_cvat_bad_labelmap_line(tmp_path, capsys):
    src = make_cvat(tmp_path / "export", {"frame_a": colour_mask(FRAME_A)})
    (src / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:250,50::\n")
    code, _, err = run(capsys, "--from", "cvat", src, "--root", tmp_path / "mine")
    assert code == 2
    assert err == (f"cgnet data: error: {src / 'labelmap.txt'}:3: expected 'name:r,g,b:parts:actions' with "
                   "r,g,b in 0..255, got 'car:250,50::'\n")


def test_refuses_a_non_empty_root_and_accepts_an_empty_one(tmp_path, capsys):
    src = make_cvat(tmp_path / "export", {"frame_a": colour_mask(FRAME_A)})
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "--from", "cvat", src, "--root", dst)
    assert code == 2 and err == f"cgnet data: error: --root {dst}: the folder is not empty; give a new or empty one\n"
    assert listing(dst) == ["keep.txt"]
    (dst / "keep.txt").unlink()
    assert run(capsys, "--from", "cvat", src, "--root", dst)[0] == 0
    assert (dst / "labels" / "frame_a.png").is_file()


# ---- colour masks (CamVid's original 32-class labels, for one) --------------------------------

CAMVID32 = [("Animal", (64, 128, 64)), ("Archway", (192, 0, 128)), ("Car", (64, 0, 128)), ("Void", (0, 0, 0))]


def make_colors(root: Path, count: int, size=(6, 8)) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """CamVid's layout: frames in one folder, `<stem>_L.png` colour labels in another."""
    rng = np.random.default_rng(2)
    ids = {}
    for i in range(count):
        stem = f"0001TP_{i:06d}"
        write_rgb(root / "701_StillsRaw_full" / f"{stem}.png", rng.integers(0, 256, (*size, 3)))
        ids[stem] = rng.integers(0, len(CAMVID32), size)
        write_rgb(root / "LabeledApproved_full" / f"{stem}_L.png", np.array([c for _, c in CAMVID32])[ids[stem]])
    # CamVid's own label_colors.txt: 'r g b<TAB>name'
    (root / "label_colors.txt").write_text("".join(f"{r} {g} {b}\t{n}\n" for n, (r, g, b) in CAMVID32))
    return root / "701_StillsRaw_full", root / "LabeledApproved_full", ids


def test_colors_camvid_style_with_suffix_and_void_ignored(tmp_path, capsys):
    images, masks, ids = make_colors(tmp_path / "camvid32", 3)
    write_rgb(images / "0001TP_999999.png", np.zeros((6, 8, 3)))   # an image without a mask
    dst = tmp_path / "mine"
    code, out, err = run(capsys, "--from", "colors", images, "--masks", masks, "--mask-suffix", "_L",
                         "--classes", tmp_path / "camvid32" / "label_colors.txt", "--ignore-class", "Void",
                         "--root", dst, "--val-fraction", "0")
    assert code == 0, err
    to_id = np.array([0, 1, 2, IGNORE], np.uint8)   # Void (index 3) -> ignore
    for stem, want in ids.items():
        np.testing.assert_array_equal(read_ids(dst / "labels" / f"{stem}.png"), to_id[want])
        assert (dst / "images" / f"{stem}.png").read_bytes() == (images / f"{stem}.png").read_bytes()
    assert [line for line in (dst / "classes.txt").read_text().splitlines() if not line.startswith("#")] == [
        "Animal 64,128,64", "Archway 192,0,128", "Car 64,0,128"]
    assert "imported 3 images, 3 classes" in out and "skipped images: 1 without a mask" in out


def test_colors_needs_a_suffix_when_masks_share_the_folder_and_a_classes_file(tmp_path, capsys):
    images, masks, _ = make_colors(tmp_path / "c", 1)
    classes = tmp_path / "c" / "label_colors.txt"
    code, _, err = run(capsys, "--from", "colors", images, "--masks", images, "--classes", classes,
                       "--root", tmp_path / "mine")
    assert code == 2 and err == (f"cgnet data: error: images and masks share {images}: give --mask-suffix "
                                 "(e.g. _L) or --masks DIR\n")
    code, _, err = run(capsys, "--from", "colors", images, "--masks", masks, "--root", tmp_path / "mine")
    assert code == 2 and err == ("cgnet data: error: --from colors needs --classes FILE (one 'name r,g,b' line "
                                 "per class)\n")
    assert not (tmp_path / "mine").exists()


# ---- the split --------------------------------------------------------------------------------

def test_split_sizes_and_seed_determinism(tmp_path, capsys):
    names = [f"n{i:02d}" for i in range(10)]
    train, val = split_names(names, 0.2, seed=0)
    assert len(val) == 2 and len(train) == 8 and sorted(train + val) == names
    assert split_names(names, 0.2, seed=0) == (train, val)
    assert len({tuple(split_names(names, 0.2, seed=s)[1]) for s in range(6)}) > 1   # the seed matters
    assert [len(split_names(names[:k], 0.25, 0)[1]) for k in (1, 2, 3, 4, 5, 6)] == [0, 1, 1, 1, 1, 2]
    # through the command: the same seed gives the same files
    images, masks, _ = make_colors(tmp_path / "c", 10)
    args = ["--from", "colors", images, "--masks", masks, "--mask-suffix", "_L",
            "--classes", tmp_path / "c" / "label_colors.txt"]
    for out, seed in (("a", 0), ("b", 0), ("other", 7)):
        assert run(capsys, *args, "--root", tmp_path / out, "--seed", seed)[0] == 0
    a, b = (tmp_path / "a" / "val.txt").read_text(), (tmp_path / "b" / "val.txt").read_text()
    assert a == b and len(a.splitlines()) == 2 and len((tmp_path / "a" / "train.txt").read_text().splitlines()) == 8
    stems = sorted(line.split()[0] for name in ("train.txt", "val.txt")
                   for line in (tmp_path / "other" / name).read_text().splitlines())
    assert stems == sorted(f"images/0001TP_{i:06d}.png" for i in range(10))


# ---- classes files with colours in training ---------------------------------------------------

def test_classes_file_colours_become_the_palette(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("road\nsky\n")
    assert read_class_names(str(plain)) == ["road", "sky"]
    assert read_class_names("road, sky") == ["road", "sky"]
    info = resolve_dataset("mine", read_class_names(str(plain)), 255)
    assert info.classes == ("road", "sky") and len(set(info.palette)) == 2   # generated colours
    coloured = tmp_path / "classes.txt"
    coloured.write_text("# a comment\ntraffic light 250,170,30\n\nsky 70,130,180\n")
    entries = read_class_names(str(coloured))
    info = resolve_dataset("mine", entries, 255)
    assert info.classes == ("traffic light", "sky") and info.palette == ((250, 170, 30), (70, 130, 180))
    # the entries survive the training config's JSON (a resumed run keeps its palette)
    config = TrainConfig.from_dict(json.loads(json.dumps(TrainConfig(classes=tuple(entries)).to_dict())))
    assert resolve_dataset("mine", list(config.classes), 255).palette == info.palette


@pytest.mark.parametrize("text, message", [
    ("road 1,2,3\nsky\n", "{path}:2: class 'sky' has no colour (r,g,b) but other lines do: give every class one, or none"),
    ("road 1,2,3\nsky 1,2,3\n", "{path}:2: colour 1,2,3 of 'sky' is also 'road''s ({path}:1)"),
    ("road 1,2,300\n", "{path}:1: colour 1,2,300 of 'road': each value must be 0..255"),
    ("road\nroad\n", "{path}:2: class 'road' repeats ({path}:1)"),
])
def test_bad_classes_file_is_one_line_for_train(tmp_path, capsys, text, message):
    path = tmp_path / "classes.txt"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--classes", str(path), "--ignore-index", "255"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        f"cgnet train: error: argument --classes: {message.format(path=path)}"


def test_a_custom_run_named_like_a_known_dataset_keeps_its_own_classes():
    meta = {"dataset": "camvid", "classes": ["a", "b"], "palette": [[1, 2, 3], [4, 5, 6]], "ignore_index": 255,
            "config": {"dataset": "camvid", "classes": ["a 1,2,3", "b 4,5,6"]}}
    info = dataset_from_meta(meta)
    assert info.classes == ("a", "b") and info.palette == ((1, 2, 3), (4, 5, 6))
    # not trained with --classes (placeholder names of make_meta): the known dataset
    for meta in ({"dataset": "camvid"}, {"dataset": "camvid", "classes": [f"class{i}" for i in range(11)]}):
        assert dataset_from_meta(meta).palette == CAMVID.palette


@pytest.mark.slow
def test_import_then_train_carries_the_colours_into_the_checkpoint(tmp_path, capsys):
    """import -> cgnet train (2 iterations of a tiny model) -> the checkpoint's palette and the
    colours predict draws are the classes file's."""
    images, masks, _ = make_colors(tmp_path / "c", 10, size=(40, 48))
    dst = tmp_path / "mine"
    code, out, err = run(capsys, "--from", "colors", images, "--masks", masks, "--mask-suffix", "_L",
                         "--classes", tmp_path / "c" / "label_colors.txt", "--ignore-class", "Void", "--root", dst)
    assert code == 0, err
    run_dir = tmp_path / "run"
    assert main(["train", "--dataset", "mine", "--classes", str(dst / "classes.txt"), "--ignore-index", "255",
                 "--data-root", str(dst), "--train-split", str(dst / "train.txt"), "--val-split", str(dst / "val.txt"),
                 "--blocks", "2", "2", "--crop", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                 "--no-progress", "--no-compile", "--epochs", "1", "--max-iters", "2", "--out", str(run_dir)]) == 0
    meta = load_model(run_dir / "last.pt").meta
    colours = {n: c for n, c in CAMVID32}
    assert meta["classes"] == ["Animal", "Archway", "Car"] and meta["ignore_index"] == 255
    assert meta["palette"] == [list(colours[n]) for n in meta["classes"]]
    assert dataset_from_meta(meta).palette == tuple(colours[n] for n in meta["classes"])
    pred = tmp_path / "pred"
    assert main(["predict", str(images / "0001TP_000000.png"), "--checkpoint", str(run_dir / "last.pt"),
                 "--out", str(pred), "--backend", "torch", "--device", "cpu", "--no-progress"]) == 0
    drawn = cv2.cvtColor(cv2.imread(str(next((pred / "color").iterdir()))), cv2.COLOR_BGR2RGB).reshape(-1, 3)
    assert {tuple(int(v) for v in c) for c in np.unique(drawn, axis=0)} <= {colours[n] for n in meta["classes"]}
