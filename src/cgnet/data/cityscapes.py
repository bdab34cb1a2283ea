"""Cityscapes preparation: label id <-> train id conversion and the list files.

The official release ships `*_labelIds.png` (ids 0..33); training and evaluation here use the
19 train ids (0..18, 255 = ignore), so the `*_labelTrainIds.png` files are made once with
`convert_train_ids`, then `write_lists` writes the `<image> <label>` list files.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..common import InputError, MissingFileError
from ..fileio import write_atomic
from .info import SPLITS, DatasetInfo
from .relabel import relabel_files

CITYSCAPES = DatasetInfo(
    name="cityscapes",
    classes=("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
             "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
             "bus", "train", "motorcycle", "bicycle"),
    palette=((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
             (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
             (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
             (0, 80, 100), (0, 0, 230), (119, 11, 32)),
    ignore_index=255,
    lists={s: f"cityscapes_{s}_list.txt" for s in SPLITS},
)
LAYOUT = """cityscapes/
  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
      (+ ..._gtFine_labelTrainIds.png beside each, written by cityscapes-trainids)
  gtCoarse/{train,val}/<city>/<city>_<seq>_<frame>_gtCoarse_labelIds.png   (optional)"""

# Cityscapes label id of each train id 0..18 (the official labels.py table)
CITYSCAPES_TRAIN_TO_LABEL_ID = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

IGNORE = 255
# (annotation folder, suffix of its label id files)
_LABEL_TREES = (("gtFine", "_gtFine_labelIds.png"), ("gtCoarse", "_gtCoarse_labelIds.png"))
_IMAGE_SUFFIX = "_leftImg8bit.png"


def _label_to_train_lut() -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for train_id, label_id in enumerate(CITYSCAPES_TRAIN_TO_LABEL_ID):
        lut[label_id] = train_id
    return lut


def _train_to_label_lut() -> np.ndarray:
    # -1 marks values that are neither a train id nor the ignore id
    lut = np.full(256, -1, dtype=np.int16)
    lut[IGNORE] = 0
    for train_id, label_id in enumerate(CITYSCAPES_TRAIN_TO_LABEL_ID):
        lut[train_id] = label_id
    return lut


LABEL_TO_TRAIN_ID: np.ndarray = _label_to_train_lut()
LABEL_TO_TRAIN_ID.flags.writeable = False
_TRAIN_TO_LABEL_ID = _train_to_label_lut()


def _check_integer(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise InputError(f"{what} must be an integer array, got dtype {array.dtype}")
    return array


def label_ids_to_train_ids(labels: np.ndarray) -> np.ndarray:
    """Map Cityscapes label ids to train ids (uint8, 255 = ignore)."""
    labels = _check_integer(labels, "label ids")
    if labels.dtype == np.uint8:
        return LABEL_TO_TRAIN_ID[labels]
    # wider dtypes may hold -1 (license plate) or ids > 255: all are void
    out = np.full(labels.shape, IGNORE, dtype=np.uint8)
    inside = (labels >= 0) & (labels <= 255)
    out[inside] = LABEL_TO_TRAIN_ID[labels[inside].astype(np.intp)]
    return out


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map train ids (0..18, 255) back to label ids for the test server; 255 becomes 0."""
    train_ids = _check_integer(train_ids, "train ids")
    inside = (train_ids >= 0) & (train_ids <= 255)
    mapped = np.full(train_ids.shape, -1, dtype=np.int16)
    mapped[inside] = _TRAIN_TO_LABEL_ID[train_ids[inside].astype(np.intp)]
    bad = mapped < 0
    if bad.any():
        values = np.unique(train_ids[bad])
        shown = ", ".join(str(int(v)) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise InputError(f"train ids must be 0..{CITYSCAPES.num_classes - 1} or {IGNORE}; "
                         f"got {shown}")
    return mapped.astype(np.uint8)


def _train_ids_path(label_path: Path) -> Path:
    return label_path.with_name(label_path.name[: -len("_labelIds.png")] + "_labelTrainIds.png")


def _find_label_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for folder, suffix in _LABEL_TREES:
        found.extend(sorted((root / folder).glob(f"*/*/*{suffix}")))
    return found


def convert_train_ids(root: str | os.PathLike, *, workers: int = 2, force: bool = False,
                      progress: bool = True) -> tuple[int, int]:
    """Write `*_labelTrainIds.png` beside every gtFine/gtCoarse `*_labelIds.png` under root.

    Outputs newer than their source are kept unless `force`. Returns (converted, skipped).
    """
    root = Path(root)
    sources = _find_label_files(root)
    if not sources:
        raise MissingFileError(
            f"no Cityscapes label files under {root}: expected "
            f"{root / 'gtFine'}/<split>/<city>/*_gtFine_labelIds.png or "
            f"{root / 'gtCoarse'}/<split>/<city>/*_gtCoarse_labelIds.png")
    return relabel_files([(p, _train_ids_path(p)) for p in sources], LABEL_TO_TRAIN_ID, workers=workers,
                         force=force, progress=progress, desc="labelTrainIds")


def _split_images(root: Path, split: str) -> list[Path] | None:
    folder = root / "leftImg8bit" / split
    if not folder.is_dir():
        if split == "test":
            return None
        raise MissingFileError(f"{folder} is missing: the Cityscapes {split} images "
                                f"(leftImg8bit/{split}/<city>/*{_IMAGE_SUFFIX}) are needed")
    images = sorted(folder.glob(f"*/*{_IMAGE_SUFFIX}"))
    if not images and split != "test":
        raise MissingFileError(f"{folder} has no <city>/*{_IMAGE_SUFFIX} images")
    return images or None


def _label_line(root: Path, split: str, image: Path) -> str:
    base = image.name[: -len(_IMAGE_SUFFIX)]
    gt = root / "gtFine" / split / image.parent.name
    train_ids = gt / f"{base}_gtFine_labelTrainIds.png"
    if not train_ids.is_file():
        if (gt / f"{base}_gtFine_labelIds.png").is_file():
            raise InputError(f"{train_ids} does not exist yet (only the labelIds file does): run "
                             f"`cgnet data cityscapes-trainids --root {root}` first")
        raise InputError(f"{image}: no gtFine label for it (looked for {train_ids} and "
                         f"{gt / (base + '_gtFine_labelIds.png')})")
    return f"{image.relative_to(root).as_posix()} {train_ids.relative_to(root).as_posix()}"


def write_lists(root: str | os.PathLike) -> dict[str, Path]:
    """Write the cityscapes_{train,val,trainval,test}_list.txt files in root.

    Returns split -> list file written; the test list is left out when leftImg8bit/test is absent.
    """
    root = Path(root)
    # build every list before writing any, so an error leaves no mixed old/new set behind
    lines: dict[str, list[str]] = {}
    for split in ("train", "val"):
        lines[split] = [_label_line(root, split, image) for image in _split_images(root, split)]
    lines["trainval"] = lines["train"] + lines["val"]
    test_images = _split_images(root, "test")
    if test_images is not None:
        lines["test"] = [image.relative_to(root).as_posix() for image in test_images]

    written: dict[str, Path] = {}
    for split, split_lines in lines.items():
        path = root / CITYSCAPES.list_file(split)
        write_atomic(path, ("\n".join(split_lines) + "\n").encode())
        written[split] = path
    return written
