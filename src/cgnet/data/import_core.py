"""The shared pieces of `cgnet data import`'s readers (one module per annotation tool's export,
and the driver in `importer.py`): what a reader yields (`Item`, `Source`), class ids and colours,
mask decoding, names. Images and masks are read with `cgnet.images.read_pixels`, in the frame
the tools display (EXIF orientation applied)."""
from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..common import IMAGE_EXTS, InputError, MissingFileError
from ..images import read_pixels  # the one image reader (EXIF orientation applied); the readers import it from here
from .catalog import read_classes_file
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
    notes: list[str] = field(default_factory=list)   # lines for the summary (e.g. frames without an image)


@dataclass
class ImportSummary:
    root: Path
    imported: int
    train: int
    val: int
    classes: list[str]
    skipped: Counter
    shapes_skipped: Counter
    notes: list[str] = field(default_factory=list)


@dataclass
class Classes:
    """The classes of an import: the kept ones in label id order, and the label id of every
    class name the data may use (the ignore id for --ignore-class ones)."""
    names: list[str]
    palette: list[tuple[int, int, int]]
    id_of: dict[str, int]


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


def resolve_classes(found: list[str], colors: dict[str, tuple[int, int, int]], classes: Path | None,
                    ignore_classes: list[str], ignore_index: int, source: str,
                    where_of: dict[str, str] | None = None) -> Classes:
    """The id order of an import: the classes file's order when one is given (every class the
    data uses must be in it, unless --ignore-class drops it), else the data's own order.

    Args:
        found: the data's class names, in the data's order (its label map, categories...).
        colors: the tool's colour of a class, where the export has one.
        classes: --classes FILE (names, optional colours) or None.
        ignore_classes: --ignore-class names; ignore_index: the label id of unlabelled pixels.
        source: what lists the data's classes (for messages).
        where_of: where a class is first used (for the message naming a class not in the file).
    """
    names = list(found)
    palette = None
    if classes is not None:
        names, palette = read_classes_file(classes)
        for name in found:
            if name not in names and name not in ignore_classes:
                where = (where_of or {}).get(name, source)
                raise InputError(f"{where}: class {name!r} is not in the classes file {classes} "
                                 f"(it lists: {', '.join(names)})")
        names = names + [n for n in found if n not in names]   # only --ignore-class ones
        source = str(classes)
    generated = dict(zip(names, generated_palette(names)))
    if palette is None:
        palette = [colors.get(n, generated[n]) for n in names]
    else:
        palette = palette + [colors.get(n, generated[n]) for n in names[len(palette):]]
    ids = class_ids(names, ignore_classes, ignore_index, source)
    kept = [i for i, label in enumerate(ids) if label != ignore_index]
    return Classes([names[i] for i in kept], [tuple(palette[i]) for i in kept], dict(zip(names, ids)))


def hex_color(text: str | None) -> tuple[int, int, int] | None:
    """'#rrggbb' (CVAT's label colours) as (r, g, b); None for anything else."""
    found = re.fullmatch(r"#([0-9a-fA-F]{2})([0-9a-fA-F]{2})([0-9a-fA-F]{2})", (text or "").strip())
    return tuple(int(v, 16) for v in found.groups()) if found else None


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


def missing_note(what: str, names: list[str], shown: int = 5) -> str:
    """A summary line naming the first few of `names` (e.g. frames without an image)."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{what} ({len(names)}): {', '.join(names[:shown])}{more}"


@contextmanager
def unpacked(src: Path) -> Iterator[Path]:
    """The export's folder: `src` itself, or a `.zip` (a downloaded export) extracted into a
    temporary folder that is removed afterwards."""
    if src.is_dir():
        yield src
        return
    if not src.is_file():
        raise MissingFileError(f"{src}: no such file or folder")
    if src.suffix.lower() != ".zip":
        yield src
        return
    tmp = Path(tempfile.mkdtemp(prefix="cgnet-import-"))
    try:
        try:
            with zipfile.ZipFile(src) as archive:
                archive.extractall(tmp)   # member names are made safe (no absolute paths or '..')
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(f"{src}: not a readable zip archive ({e})") from None
        entries = list(tmp.iterdir())
        # a zip of the export's folder rather than of its contents
        yield entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_image(folder: Path, stem: str) -> Path | None:
    """folder/stem.<an image extension>, any case; None when there is none."""
    base = folder / stem
    if not base.parent.is_dir():
        return None
    found = sorted(p for p in base.parent.iterdir()
                   if p.is_file() and p.stem == base.name and p.suffix.lower() in IMAGE_EXTS)
    return found[0] if found else None
