"""The shared pieces of `cgnet data import`'s readers (one module per annotation tool's export,
and the driver in `importer.py`): what a reader yields (`Item`, `Source`), class ids and colours,
mask decoding, names. Images and masks are read with `cgnet.images.read_pixels`, in the frame
the tools display (EXIF orientation applied)."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..common import IMAGE_EXTS, InputError
from ..images import read_pixels  # the one image reader (EXIF orientation applied); the readers import it from here
from ..visualize import default_palette

# a LabelMe label that names the pixels no shape covers (labelme2voc's convention)
BACKGROUND = "_background_"


@dataclass
class Item:
    """One image to import."""
    name: str                          # output name without extension ('/' separated, no spaces)
    image: Path | np.ndarray           # a file to copy, or decoded pixels to write as PNG
    label: np.ndarray                  # H x W uint8 class ids


@dataclass
class Source:
    """What a format reader found: the classes and the items (read lazily, in order)."""
    names: list[str]
    palette: list[tuple[int, int, int]]
    items: Iterator[Item]
    total: int
    skipped: Counter = field(default_factory=Counter)   # reason -> count (images)
    shapes_skipped: Counter = field(default_factory=Counter)   # LabelMe shape type -> count


@dataclass
class ImportSummary:
    root: Path
    imported: int
    train: int
    val: int
    classes: list[str]
    skipped: Counter
    shapes_skipped: Counter


# ---- classes and colours -------------------------------------------------------------------------

def class_ids(names: list[str], ignore_classes: list[str], ignore_index: int, source: str) -> list[int]:
    """The label id of each source class: its index among the kept classes, or the ignore id."""
    for name in ignore_classes:
        if name not in names:
            raise InputError(f"--ignore-class {name}: no such class in {source} (classes: {', '.join(names)})")
    kept = [n for n in names if n not in ignore_classes]
    if not kept:
        raise InputError(f"--ignore-class leaves no class of {source}")
    if ignore_index < len(kept):
        raise InputError(f"--ignore-index {ignore_index} is a class id ({len(kept)} classes: ids 0..{len(kept) - 1})")
    return [ignore_index if n in ignore_classes else kept.index(n) for n in names]


def color_codes(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 RGB -> H x W uint32 codes r << 16 | g << 8 | b."""
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colors_to_ids(rgb: np.ndarray, colors: list[tuple[int, int, int]], ids: list[int], where: str,
                  source: str) -> np.ndarray:
    """A colour mask as class ids; a colour not in `colors` is an error naming the first such
    pixel (in row order) and how many there are.

    Args:
        rgb: H x W x 3 uint8 RGB mask.
        colors: the known colours; ids: the label id of each.
        where: the mask file; source: the file that lists the colours (for the message).
    Returns:
        H x W uint8 ids.
    """
    codes = color_codes(rgb)
    known = np.array([(r << 16) | (g << 8) | b for r, g, b in colors], dtype=np.uint32)
    order = np.argsort(known)
    known, values = known[order], np.asarray(ids, dtype=np.uint8)[order]
    pos = np.minimum(np.searchsorted(known, codes), len(known) - 1)
    bad = known[pos] != codes
    if bad.any():
        y, x = (int(v) for v in np.argwhere(bad)[0])
        r, g, b = (int(v) for v in rgb[y, x])
        raise InputError(f"{where}: pixel (x={x}, y={y}) has colour {r},{g},{b}, which is not in {source} "
                         f"(pixels with colours not in it: {int(bad.sum())})")
    return values[pos]


def generated_palette(names: list[str]) -> list[tuple[int, int, int]]:
    """Distinct colours for classes that come without any (`default_palette`); `_background_` is black."""
    return [(0, 0, 0) if n == BACKGROUND else tuple(c) for n, c in zip(names, default_palette(len(names)))]


# ---- images and masks ---------------------------------------------------------------------------

def read_color_mask(path: Path) -> np.ndarray:
    """An RGB colour mask in the displayed frame (EXIF orientation applied, as the annotation tool
    showed it); grayscale masks are taken as r = g = b; alpha is dropped."""
    data = read_pixels(path, "mask")
    if data.ndim == 2:
        return np.repeat(data[..., None], 3, axis=2)
    return cv2.cvtColor(data[..., :3], cv2.COLOR_BGR2RGB)


def check_same_size(image_size: tuple[int, int], image_where: str, label: np.ndarray, label_where: str) -> None:
    """Image and mask must be the same size (height, width)."""
    if tuple(label.shape[:2]) != tuple(image_size):
        raise InputError(f"{label_where} is {label.shape[1]}x{label.shape[0]} but its image {image_where} is "
                         f"{image_size[1]}x{image_size[0]} (width x height)")


def output_name(name: str, where: str) -> str:
    """A source name as an output name: '/' separated, whitespace replaced by '_' (list files
    separate their fields by whitespace)."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise InputError(f"{where}: image name {name!r} cannot be used as a file name")
    return "/".join(re.sub(r"\s+", "_", p) for p in parts)


def find_image(folder: Path, stem: str) -> Path | None:
    """folder/stem.<an image extension>, any case; None when there is none."""
    base = folder / stem
    if not base.parent.is_dir():
        return None
    found = sorted(p for p in base.parent.iterdir()
                   if p.is_file() and p.stem == base.name and p.suffix.lower() in IMAGE_EXTS)
    return found[0] if found else None
