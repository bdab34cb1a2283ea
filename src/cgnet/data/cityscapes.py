"""Cityscapes preparation: label id <-> train id conversion and the list files.

The official release ships `*_labelIds.png` (ids 0..33); training and evaluation here use the
19 train ids (0..18, 255 = ignore), so the `*_labelTrainIds.png` files are made once with
`convert_train_ids`, then `write_lists` writes the `<image> <label>` list files.
"""
from __future__ import annotations

import os
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .catalog import CITYSCAPES, CITYSCAPES_TRAIN_TO_LABEL_ID
from ..fileio import write_atomic
from ..common import InputError, MissingFileError

IGNORE = 255
# (annotation folder, suffix of its label id files)
_LABEL_TREES = (("gtFine", "_gtFine_labelIds.png"), ("gtCoarse", "_gtCoarse_labelIds.png"))
_IMAGE_SUFFIX = "_leftImg8bit.png"
# below this many files a process pool costs more to start than it saves
_MIN_PARALLEL = 8


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


def _is_up_to_date(source: Path, target: Path) -> bool:
    try:
        return target.stat().st_mtime >= source.stat().st_mtime
    except FileNotFoundError:
        return False


def _convert_one(label_path: Path) -> None:
    labels = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise InputError(f"{label_path}: cannot read the label image (missing or corrupt)")
    if labels.ndim != 2 or labels.dtype != np.uint8:
        channels = 1 if labels.ndim == 2 else labels.shape[2]
        raise InputError(f"{label_path}: expected a single-channel 8-bit label image, got "
                         f"{channels} channel(s) of {labels.dtype}")
    ok, png = cv2.imencode(".png", LABEL_TO_TRAIN_ID[labels])
    if not ok:
        raise InputError(f"{label_path}: could not encode the train id image")
    write_atomic(_train_ids_path(label_path), png.tobytes())


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
    todo = [p for p in sources if force or not _is_up_to_date(p, _train_ids_path(p))]
    skipped = len(sources) - len(todo)
    bar = tqdm(total=len(todo), desc="labelTrainIds", unit="file", disable=not progress)
    with bar:
        if workers > 1 and len(todo) > _MIN_PARALLEL:
            with Pool(min(workers, len(todo))) as pool:
                for _ in pool.imap_unordered(_convert_one, todo, chunksize=4):
                    bar.update()
        else:
            for path in todo:
                _convert_one(path)
                bar.update()
    return len(todo), skipped


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
