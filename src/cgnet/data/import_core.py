"""The shared pieces of `cgnet data import`'s readers (one module per annotation tool's export,
the `IMPORTERS` table and the driver in `importer.py`): what a reader returns (`Found`, `Item`),
what it is told (`ImportOptions`, `Classes`), class ids and colours, the one mask reader
(`read_mask`), names, zips.

Orientation: every file is taken in the frame viewers show, its own EXIF orientation applied
(`cgnet.images`), images and masks alike. Masks carry no orientation tag in practice (annotation
tools write PNGs without one), so a mask is used as stored, and it must be in the displayed frame
of its image, where the tool drew it."""
from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from ..common import IMAGE_EXTS, InputError, MissingFileError
from ..fileio import ArchiveError, ArchiveTooLarge, extract_archive
from ..images import exif_orientation, orient
from .catalog import read_classes_file
from ..visualize import default_palette

# a LabelMe label that names the pixels no shape covers (labelme2voc's convention)
BACKGROUND = "_background_"


@dataclass
class ImportOptions:
    """What `cgnet data import` was told besides the format and the folders (see `import_dataset`)."""
    classes: Path | None = None
    ignore_index: int = 255
    ignore_classes: list[str] = field(default_factory=list)
    masks: Path | None = None
    mask_suffix: str = ""
    images: Path | None = None
    background: str | None = None
    unpack_limit: int | None = None


@dataclass
class Item:
    """One image to import."""
    name: str                          # output name without extension ('/' separated, no spaces)
    image: Path | np.ndarray | None    # a file to copy, decoded pixels to write as PNG, or None: not found
    label: np.ndarray | None           # H x W uint8 class ids (None when the image is missing)
    where: str = ""                    # the label's file or place, for messages
    split: str | None = None           # the export's own split ('train', 'val'), where it has one


@dataclass
class Classes:
    """The classes of an import: the kept ones in label id order, and the label id of every
    class name the data may use (the ignore id for --ignore-class ones); `fill` is the id of
    pixels no shape covers (the --background class, else the ignore id)."""
    names: list[str]
    palette: list[tuple[int, int, int]]
    id_of: dict[str, int]
    ignore_index: int = 255
    fill: int = 255


@dataclass
class Found:
    """What a reader found: the data's class names in its own order (its label map, categories,
    `names`...), the tool's colours where it has them, and its items, drawn once the driver has
    fixed the class ids (`items(classes)`, read lazily, in order)."""
    names: list[str]
    items: Callable[[Classes], Iterator[Item]]
    total: int
    listed_in: str                     # what lists the classes, for messages
    colors: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    where_of: dict[str, str] = field(default_factory=dict)   # where a class is first used
    reserved: tuple[str, ...] = ()     # labels that mean 'ignored', dropped from a classes file (labelme's __ignore__)
    looked_in: str = ""                # where images were looked for (the missing-image note)
    skipped: Counter = field(default_factory=Counter)   # reason -> count (images)
    shapes_skipped: Counter = field(default_factory=Counter)   # shape type -> count
    notes: list[str] = field(default_factory=list)   # lines for the summary


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
    own_split: bool = False            # the lists keep the export's own train/val split


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
                    where_of: dict[str, str] | None = None, reserved: tuple[str, ...] = ()) -> Classes:
    """The id order of an import: the classes file's order when one is given (every class the
    data uses must be in it, unless --ignore-class drops it), else the data's own order.

    Args:
        found: the data's class names, in the data's order (its label map, categories...).
        colors: the tool's colour of a class, where the export has one.
        classes: --classes FILE (names, optional colours) or None.
        ignore_classes: --ignore-class names; ignore_index: the label id of unlabelled pixels.
        source: what lists the data's classes (for messages).
        where_of: where a class is first used (for the message naming a class not in the file).
        reserved: names that are no class (labelme's `__ignore__`): left out of the classes file.
    """
    names = list(found)
    palette = None
    if classes is not None:
        names, palette = read_classes_file(classes)
        palette = None if palette is None else [c for n, c in zip(names, palette) if n not in reserved]
        names = [n for n in names if n not in reserved]
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
    return Classes([names[i] for i in kept], [tuple(palette[i]) for i in kept], dict(zip(names, ids)), ignore_index,
                   ignore_index)


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

MASK_KINDS = ("colour", "palette", "index")


def read_mask(path: Path, kind: str) -> tuple[np.ndarray, list[int] | None]:
    """A mask file, the one reader of every label image an import reads.

    Orientation: the mask's own EXIF orientation applied, as for every image; masks carry no tag
    in practice, so a mask is taken as stored, in the displayed frame of its image.

    Args:
        path: the mask.
        kind: 'colour' (RGB colour masks: grey read as r = g = b, a palette expanded, alpha
            dropped), 'palette' (a palette PNG's indices: VOC) or 'index' (a palette PNG's
            indices or a single-channel 8-bit mask's values).
    Returns:
        H x W x 3 uint8 RGB ('colour') or H x W uint8 values, and the palette (3 values per
        index; None unless the file is a palette image).
    """
    allowed = {"colour": ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1"), "palette": ("P",),
               "index": ("P", "L")}[kind]
    values, mode = None, ""
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in allowed:
                palette = image.getpalette() if mode == "P" else None
                values = np.asarray(image.convert("RGB") if kind == "colour" else image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: cannot read the mask ({e})") from None
    if values is None:
        raise InputError(f"{path}: not {MASK_WANTED[kind]}: its mode is {mode}{mask_hint(kind, mode)}")
    return orient(values, exif_orientation(path)), palette


MASK_WANTED = {"colour": "an 8-bit colour mask", "palette": "a palette PNG (mode P)",
               "index": "a single-channel 8-bit mask (mode L or P)"}


def mask_hint(kind: str, mode: str) -> str:
    """What to use instead, for a mask of the wrong mode."""
    if kind != "colour" and mode in ("RGB", "RGBA"):
        return "; use --from colors for RGB masks"
    if kind == "palette" and mode == "L":
        return "; use --from ids for single-channel id masks"
    return ""


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
def unpacked(src: Path, limit: int | None = None) -> Iterator[Path]:
    """The export's folder: `src` itself, or a `.zip` (a downloaded export) extracted into a
    temporary folder that is removed afterwards. A zip whose files add up to more than `limit`
    bytes unpacked (default: the free space of the temporary folder's disk) is refused before
    anything is extracted (`fileio.extract_archive`)."""
    if src.is_dir():
        yield src
        return
    if not src.is_file():
        raise MissingFileError(f"{src}: no such file or folder")
    if src.suffix.lower() != ".zip":
        yield src
        return
    try:
        zipfile.ZipFile(src).close()
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{src}: not a readable zip archive ({e})") from None
    tmp = Path(tempfile.mkdtemp(prefix="cgnet-import-"))
    try:
        try:
            extract_archive(src, tmp, limit=limit)
        except ArchiveTooLarge as e:
            raise InputError(f"{e}; give a larger --unpack-limit") from None
        except ArchiveError as e:
            raise InputError(str(e)) from None
        entries = [p for p in tmp.iterdir() if p.name not in NOT_DATA]
        # a zip of the export's folder rather than of its contents
        yield entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# what tools and zips put beside the data: never part of an export
NOT_DATA = ("__MACOSX",)


def files_under(folder: Path, exts: tuple[str, ...], skip: Path | None = None) -> list[tuple[str, Path]]:
    """The files of `folder` and its subfolders with one of `exts` (any case), each with its name
    relative to `folder` without the extension ('/' separated), in that name's order. Hidden
    files and folders, macOS zips' `__MACOSX/` and the folder `skip` (masks kept inside the images'
    folder) are left out."""
    skip = skip.resolve() if skip is not None else None
    found = []
    for path in folder.rglob("*"):
        parts = path.relative_to(folder).parts
        if any(p.startswith(".") or p in NOT_DATA for p in parts) or path.suffix.lower() not in exts:
            continue
        if path.is_file() and not (skip is not None and path.resolve().is_relative_to(skip)):
            found.append((path.relative_to(folder).with_suffix("").as_posix(), path))
    return sorted(found)


def find_image(folder: Path, stem: str) -> Path | None:
    """folder/stem.<an image extension>, any case; None when there is none."""
    base = folder / stem
    if not base.parent.is_dir():
        return None
    found = sorted(p for p in base.parent.iterdir()
                   if p.is_file() and p.stem == base.name and p.suffix.lower() in IMAGE_EXTS)
    return found[0] if found else None
