"""`cgnet data import`: annotation-tool exports as a cgnet dataset tree.

Formats live in one table, `IMPORTERS` (an `Importer` per entry: name, help, the options it
takes, whether the source may be a file, and its `read` function), each read by one reader
module as the tool writes it:

- `cvat` (cvat.py): CVAT's "Segmentation mask 1.1" (`labelmap.txt`, colour masks) or "CVAT for
  images 1.1" (`annotations.xml`: polygons, boxes and RLE masks by z_order) export.
- `coco` (coco.py): a COCO instances JSON; polygons and RLE decoded by pycocotools.
- `labelme` (labelme.py): a folder of LabelMe JSON files and its subfolders, drawn exactly as
  labelme's own `shapes_to_label` draws every shape type labelme 7 writes.
- `labelstudio` (labelstudio.py): Label Studio's JSON (or JSON-MIN) export: polygons,
  rectangles with rotation, brush masks.
- `yolo` (yolo.py): an Ultralytics / Roboflow YOLO segmentation dataset (`data.yaml`,
  `labels/*.txt` polygons), drawn as Ultralytics draws them for its semantic task.
- `voc` (masks.py): Pascal VOC / labelme2voc palette PNGs; index 255 is unlabelled.
- `ids` (masks.py): images and single-channel id masks with a classes file.
- `colors` (masks.py): a folder of images and RGB colour-coded masks (matched by file stem, with
  an optional suffix such as CamVid's `_L`) and a classes file with colours.

A reader returns a `Found` (import_core.py): the class names and colours it found and its items,
drawn once the class ids are fixed. The driver here does the rest once for every format: the
`--classes` order and `--ignore-class`/`--background` (`import_core.resolve_classes`), the
image-size check from each image's header, the note naming images not found, the staged output
folder and the summary. The source may be a `.zip` of the export (`import_core.unpacked`, with a
size limit checked before extracting).

The result, in the `--root` folder:

    images/<name>.<ext>   the images (copied; embedded LabelMe images re-encoded as PNG)
    labels/<name>.png     single-channel 8-bit class ids; unlabelled pixels = the ignore id (255)
    classes.txt           one class per line, `name r,g,b`, in id order (first line = id 0)
    train.txt, val.txt    `images/<name>.<ext> labels/<name>.png` lines (a seeded shuffle, or the
                          export's own split where it has one: yolo)

It is written into a temporary folder beside the target and renamed when complete: an error
leaves nothing behind.
"""
from __future__ import annotations

import math
import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from ..common import CGNetError, InputError, MissingFileError
from ..fileio import staged_folder
from ..images import displayed_size, write_image
from . import coco, cvat, labelme, labelstudio, masks, yolo
from .catalog import format_class
from .import_core import (Classes, Found, ImportOptions, ImportSummary, Item, check_same_size, missing_note,
                          resolve_classes, unpacked)


@dataclass(frozen=True)
class Importer:
    """One annotation-tool export `cgnet data import --from NAME` reads (an entry of `IMPORTERS`)."""
    name: str
    help: str                                   # what it reads, for --from's help
    read: Callable[[Path, ImportOptions], Found]   # read(the export's folder or file, options)
    options: tuple[str, ...] = ()               # its own options, ImportOptions fields (see OPTION_FLAGS)
    takes_file: bool = False                    # the source may be a file besides a folder (or a .zip)


# the options that only some formats take: ImportOptions field -> its flag
OPTION_FLAGS = {"masks": "--masks", "mask_suffix": "--mask-suffix", "images": "--images",
                "background": "--background"}

IMPORTERS = {entry.name: entry for entry in (
    Importer("cvat", "CVAT's Segmentation mask 1.1 or CVAT for images 1.1", cvat.read, ("images", "background"),
             takes_file=True),
    Importer("coco", "a COCO instances JSON", coco.read, ("images", "background"), takes_file=True),
    Importer("labelme", "LabelMe JSON files (subfolders too), drawn as labelme draws them", labelme.read),
    Importer("labelstudio", "Label Studio's JSON or JSON-MIN export: polygons, rectangles, brush masks",
             labelstudio.read, ("images", "background"), takes_file=True),
    Importer("yolo", "an Ultralytics or Roboflow YOLO segmentation dataset (data.yaml), drawn as Ultralytics "
             "draws it", yolo.read, ("background",), takes_file=True),
    Importer("voc", "Pascal VOC palette PNGs", masks.voc_read),
    Importer("ids", "single-channel id masks", masks.ids_read, ("masks", "mask_suffix")),
    Importer("colors", "RGB colour masks", masks.colors_read, ("masks", "mask_suffix")),
)}


# ---- writing the dataset ------------------------------------------------------------------------

def split_names(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded shuffle: round(len * val_fraction) names (at most all but one) go to val.

    Returns (train, val), each in name order."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_val = min(int(math.floor(len(order) * val_fraction + 0.5)), max(0, len(order) - 1))
    return sorted(order[n_val:]), sorted(order[:n_val])


def classes_text(names: list[str], palette: list, ignore_index: int, fmt: str, src: Path) -> str:
    header = ("# cgnet classes: one class per line, 'name r,g,b' (its colour), in label id order: the\n"
              "# first line is id 0. Pixels no class covers are "
              f"{ignore_index} in labels/*.png (train with --ignore-index {ignore_index}).\n"
              f"# imported by cgnet data import --from {fmt} from {src}\n")
    return header + "".join(format_class(n, c) + "\n" for n, c in zip(names, palette))


def check_target(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise InputError(f"--root {root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        raise InputError(f"--root {root}: the folder is not empty; give a new or empty one")


def check_options(entry: Importer, opts: ImportOptions) -> None:
    """Options that do not apply to the format are refused before anything is read."""
    if not 0 <= opts.ignore_index <= 255:
        raise InputError(f"--ignore-index {opts.ignore_index}: labels are 8-bit images, so it must be 0..255")
    for key, flag in OPTION_FLAGS.items():
        if getattr(opts, key) not in (None, "") and key not in entry.options:
            takers = [e.name for e in IMPORTERS.values() if key in e.options]
            raise InputError(f"{flag} is not an option of --from {entry.name} (it is for --from {', '.join(takers)})")
    if opts.images is not None and not opts.images.is_dir():
        raise MissingFileError(f"--images {opts.images}: no such folder")
    if opts.unpack_limit is not None and opts.unpack_limit < 0:
        raise InputError(f"--unpack-limit {opts.unpack_limit}: must be at least 0")


def resolve(found: Found, opts: ImportOptions) -> Classes:
    """The class ids of an import: `--background` first where the data lacks it, then the
    classes file's order (or the data's), `--ignore-class` to the ignore id."""
    names, colors = list(found.names), dict(found.colors)
    if opts.background is not None and opts.background not in names:
        names, colors = [opts.background] + names, {opts.background: (0, 0, 0), **colors}
    classes = resolve_classes(names, colors, opts.classes, opts.ignore_classes, opts.ignore_index, found.listed_in,
                              found.where_of, found.reserved)
    if opts.background is not None:
        classes.fill = classes.id_of[opts.background]
    return classes


def import_dataset(fmt: str, src: str | os.PathLike, root: str | os.PathLike, *, val_fraction: float = 0.2,
                   seed: int = 0, classes: str | os.PathLike | None = None, ignore_index: int = 255,
                   ignore_classes: list[str] | None = None, masks: str | os.PathLike | None = None,
                   mask_suffix: str = "", images: str | os.PathLike | None = None, background: str | None = None,
                   unpack_limit: int | None = None, progress: bool = True) -> ImportSummary:
    """Import an annotation export as a cgnet dataset tree (see the module docstring).

    Args:
        fmt: a name of IMPORTERS.
        src: the export's folder, a .zip of it, or (formats that take a file) its annotation file.
        root: the dataset folder to write; it must not exist or be empty.
        val_fraction: the share of images listed in val.txt (rounded; train keeps at least one).
        seed: the seed of the shuffle that splits train and val.
        classes: a classes file: fixes the class ids (and colours) by name; colors and ids: required.
        ignore_index: the label id of unlabelled pixels (0..255, above every class id).
        ignore_classes: classes whose pixels become the ignore id (e.g. CVAT's background).
        masks: colors, ids: the folder of the masks (default: src); mask_suffix: their stem suffix.
        images: cvat (XML), coco, labelstudio: the folder of the images when the export has none.
        background: formats of shapes: the class of pixels no shape covers (default: the ignore id).
        unpack_limit: the most bytes a .zip source may unpack to (default: the free disk space).
        progress: a progress bar.
    Returns:
        what was imported and skipped.
    """
    src, root = Path(src), Path(root)
    opts = ImportOptions(Path(classes) if classes is not None else None, ignore_index, list(ignore_classes or []),
                         Path(masks) if masks is not None else None, mask_suffix,
                         Path(images) if images is not None else None, background, unpack_limit)
    if fmt not in IMPORTERS:
        raise InputError(f"--from {fmt}: expected one of {', '.join(IMPORTERS)}")
    entry = IMPORTERS[fmt]
    check_options(entry, opts)
    if not (math.isfinite(val_fraction) and 0 <= val_fraction < 1):
        raise InputError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    if not src.exists():
        raise MissingFileError(f"{src}: no such file or folder")
    check_target(root)
    with unpacked(src, opts.unpack_limit) as folder:
        try:
            if folder.is_file() and not entry.takes_file:
                raise InputError(f"{src}: --from {fmt} reads a folder (or a .zip of one), not a file")
            found = entry.read(folder, opts)
            return write_dataset(found, resolve(found, opts), fmt, src, root, val_fraction, seed, progress)
        except CGNetError as e:
            if folder == src:
                raise
            raise type(e)(str(e).replace(str(folder), str(src))) from None


def write_item(item: Item, tmp: Path) -> tuple[str, str]:
    """An item's image and label into the staging folder, after the size check (the image's
    displayed size read from its header). Returns their paths relative to it."""
    if isinstance(item.image, Path):
        check_same_size(displayed_size(item.image), str(item.image), item.label, item.where)
        image = f"images/{item.name}{item.image.suffix}"
        (tmp / image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.image, tmp / image)
    else:
        check_same_size(item.image.shape[:2], item.where, item.label, item.where)
        image = f"images/{item.name}.png"
        (tmp / image).parent.mkdir(parents=True, exist_ok=True)
        write_image(tmp / image, item.image)
    label = f"labels/{item.name}.png"
    (tmp / label).parent.mkdir(parents=True, exist_ok=True)
    write_image(tmp / label, item.label)
    return image, label


def write_lists(tmp: Path, written: list[tuple[str, str, str | None]], val_fraction: float,
                seed: int) -> tuple[int, int]:
    """train.txt and val.txt (and the export's other splits): the export's own split where every
    item has one, else a seeded shuffle. Returns the numbers of train and val lines."""
    line_of = {image: f"{image} {label}\n" for image, label, _ in written}
    if all(split is not None for _, _, split in written):
        lists: dict[str, list[str]] = {}
        for image, _, split in written:
            lists.setdefault(split, []).append(image)
    else:
        train, val = split_names(list(line_of), val_fraction, seed)
        lists = {"train": train, "val": val}
    for split, images in lists.items():
        if images:
            (tmp / f"{split}.txt").write_text("".join(line_of[n] for n in images))
    return len(lists.get("train", [])), len(lists.get("val", []))


def write_dataset(found: Found, classes: Classes, fmt: str, src: Path, root: Path, val_fraction: float, seed: int,
                  progress: bool) -> ImportSummary:
    """Write the items of `found` into `root` (through a temporary folder renamed when complete)."""
    written: list[tuple[str, str, str | None]] = []
    missing: list[str] = []
    try:
        with staged_folder(root) as tmp:
            seen = set()
            for item in tqdm(found.items(classes), total=found.total, desc=f"import {fmt}", unit="image",
                             disable=not progress):
                if item.image is None:
                    missing.append(item.where or item.name)
                    found.skipped["without an image"] += 1
                    continue
                if item.name in seen:
                    raise InputError(f"{src}: two images are named {item.name} after spaces became '_'")
                seen.add(item.name)
                written.append((*write_item(item, tmp), item.split))
            if missing:
                found.notes.append(missing_note(f"images not found in {found.looked_in}", missing))
            if not written:
                raise InputError(f"{src}: nothing to import ({skipped_text(found.skipped) or 'no images'}"
                                 + "".join(f"; {note}" for note in found.notes) + ")")
            train, val = write_lists(tmp, written, val_fraction, seed)
            (tmp / "classes.txt").write_text(classes_text(classes.names, classes.palette, classes.ignore_index, fmt,
                                                          src))
            check_target(root)
    except CGNetError as e:
        counts = f"{len(written)} imported"
        skipped = sum(found.skipped.values())
        if skipped:
            counts += f", {skipped} skipped"
        raise type(e)(f"{e} ({counts} before it; nothing written to {root})") from None
    return ImportSummary(root, len(written), train, val, classes.names, found.skipped, found.shapes_skipped,
                         found.notes, all(split is not None for _, _, split in written))


def skipped_text(skipped: Counter) -> str:
    return ", ".join(f"{n} {why}" for why, n in skipped.items() if n)


def summary_text(summary: ImportSummary, ignore_index: int) -> str:
    """What `cgnet data import` prints: the counts and the command that trains on the result."""
    root = summary.root
    lines = [f"imported {summary.imported} images, {len(summary.classes)} classes into {root}: "
             f"{summary.train} in train.txt, {summary.val} in val.txt"
             + (" (the export's own split)" if summary.own_split else "")
             + ("" if summary.val else " (none: train with --val-split none)")]
    lines.append(f"skipped images: {skipped_text(summary.skipped) or 'none'}")
    lines.extend(summary.notes)
    if summary.shapes_skipped:
        lines.append("skipped shapes (they cover no area): "
                     + ", ".join(f"{n} {kind}{'s' * (n != 1)}" for kind, n in sorted(summary.shapes_skipped.items())))
    val = f"{root / 'val.txt'}" if summary.val else "none"
    lines.append(f"train with: cgnet train --dataset {root.name} --classes {root / 'classes.txt'} "
                 f"--ignore-index {ignore_index} --data-root {root} --train-split {root / 'train.txt'} "
                 f"--val-split {val}")
    lines.append("start from the shipped CamVid weights (classifier rows matched by class name): add --init camvid")
    return "\n".join(lines)
