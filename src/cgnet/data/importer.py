"""`cgnet data import`: annotation-tool exports as a cgnet dataset tree.

Formats (each read as the tool writes it):

- `cvat` (cvat.py): CVAT's "Segmentation mask 1.1" (`labelmap.txt`, colour masks) or "CVAT for
  images 1.1" (`annotations.xml`: polygons, boxes and RLE masks by z_order) export.
- `coco` (coco.py): a COCO instances JSON; polygons and RLE decoded by pycocotools.
- `labelme` (labelme.py): a folder of LabelMe JSON files and its subfolders, drawn exactly as
  labelme's own `shapes_to_label` draws every shape type labelme 7 writes.
- `voc` (masks.py): Pascal VOC / labelme2voc palette PNGs; index 255 is unlabelled.
- `ids` (masks.py): images and single-channel id masks with a classes file.
- `colors` (masks.py): a folder of images and RGB colour-coded masks (matched by file stem, with
  an optional suffix such as CamVid's `_L`) and a classes file with colours.

`--classes FILE` fixes the class ids by name for every format (`import_core.resolve_classes`).
The source may be a `.zip` of the export (`import_core.unpacked`).

The result, in the `--root` folder:

    images/<name>.<ext>   the images (copied; embedded LabelMe images re-encoded as PNG)
    labels/<name>.png     single-channel 8-bit class ids; unlabelled pixels = the ignore id (255)
    classes.txt           one class per line, `name r,g,b`, in id order (first line = id 0)
    train.txt, val.txt    `images/<name>.<ext> labels/<name>.png` lines (a seeded shuffle)

It is written into a temporary folder beside the target and renamed when complete: an error
leaves nothing behind.
"""
from __future__ import annotations

import math
import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..common import CGNetError, InputError, MissingFileError
from ..fileio import staged_folder
from ..images import write_image
from .catalog import format_class
from .coco import coco_source
from .cvat import cvat_source
from .import_core import ImportSummary, Source, unpacked
from .labelme import labelme_source
from .masks import colors_source, ids_source, voc_source

FORMATS = ("cvat", "coco", "labelme", "voc", "ids", "colors")


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


def check_options(fmt: str, opts: ImportOptions) -> None:
    """Options that do not apply to the format are refused before anything is read."""
    if fmt not in FORMATS:
        raise InputError(f"--from {fmt}: expected one of {', '.join(FORMATS)}")
    if not 0 <= opts.ignore_index <= 255:
        raise InputError(f"--ignore-index {opts.ignore_index}: labels are 8-bit images, so it must be 0..255")
    if (opts.masks is not None or opts.mask_suffix) and fmt not in ("colors", "ids"):
        raise InputError("--masks and --mask-suffix are for --from colors and ids")
    if (opts.images is not None or opts.background is not None) and fmt not in ("cvat", "coco"):
        raise InputError("--images and --background are for --from cvat (CVAT for images 1.1) and coco")
    if opts.images is not None and not opts.images.is_dir():
        raise MissingFileError(f"--images {opts.images}: no such folder")


def open_source(fmt: str, src: Path, opts: ImportOptions) -> Source:
    """The reader of `fmt` on the export's folder (or file)."""
    if src.is_file() and fmt not in ("cvat", "coco"):
        raise InputError(f"{src}: --from {fmt} reads a folder (or a .zip of one), not a file")
    if fmt == "cvat":
        return cvat_source(src, opts.images, opts.classes, opts.ignore_classes, opts.ignore_index, opts.background)
    if fmt == "coco":
        return coco_source(src, opts.images, opts.classes, opts.ignore_classes, opts.ignore_index, opts.background)
    if fmt == "labelme":
        return labelme_source(src, opts.classes, opts.ignore_classes, opts.ignore_index)
    if fmt == "voc":
        return voc_source(src, opts.classes, opts.ignore_classes, opts.ignore_index)
    if fmt == "ids":
        return ids_source(src, opts.classes, opts.masks, opts.mask_suffix, opts.ignore_classes, opts.ignore_index)
    return colors_source(src, opts.classes, opts.masks, opts.mask_suffix, opts.ignore_classes, opts.ignore_index)


def import_dataset(fmt: str, src: str | os.PathLike, root: str | os.PathLike, *, val_fraction: float = 0.2,
                   seed: int = 0, classes: str | os.PathLike | None = None, ignore_index: int = 255,
                   ignore_classes: list[str] | None = None, masks: str | os.PathLike | None = None,
                   mask_suffix: str = "", images: str | os.PathLike | None = None, background: str | None = None,
                   progress: bool = True) -> ImportSummary:
    """Import an annotation export as a cgnet dataset tree (see the module docstring).

    Args:
        fmt: one of FORMATS.
        src: the export's folder, a .zip of it, or (cvat, coco) its annotation file.
        root: the dataset folder to write; it must not exist or be empty.
        val_fraction: the share of images listed in val.txt (rounded; train keeps at least one).
        seed: the seed of the shuffle that splits train and val.
        classes: a classes file: fixes the class ids (and colours) by name; colors and ids: required.
        ignore_index: the label id of unlabelled pixels (0..255, above every class id).
        ignore_classes: classes whose pixels become the ignore id (e.g. CVAT's background).
        masks: colors, ids: the folder of the masks (default: src); mask_suffix: their stem suffix.
        images: cvat (XML), coco: the folder of the images when the export has none.
        background: cvat (XML), coco: the class of pixels no shape covers (default: the ignore id).
        progress: a progress bar.
    Returns:
        what was imported and skipped.
    """
    src, root = Path(src), Path(root)
    opts = ImportOptions(Path(classes) if classes is not None else None, ignore_index, list(ignore_classes or []),
                         Path(masks) if masks is not None else None, mask_suffix,
                         Path(images) if images is not None else None, background)
    check_options(fmt, opts)
    if not (math.isfinite(val_fraction) and 0 <= val_fraction < 1):
        raise InputError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    if not src.exists():
        raise MissingFileError(f"{src}: no such file or folder")
    check_target(root)
    with unpacked(src) as folder:
        try:
            source = open_source(fmt, folder, opts)
            return write_dataset(source, fmt, src, root, val_fraction, seed, ignore_index, progress)
        except CGNetError as e:
            if folder == src:
                raise
            raise type(e)(str(e).replace(str(folder), str(src))) from None


def write_dataset(source: Source, fmt: str, src: Path, root: Path, val_fraction: float, seed: int,
                  ignore_index: int, progress: bool) -> ImportSummary:
    """Write the items of `source` into `root` (through a temporary folder renamed when complete)."""
    written: list[tuple[str, str]] = []
    try:
        with staged_folder(root) as tmp:
            seen = set()
            for item in tqdm(source.items, total=source.total, desc=f"import {fmt}", unit="image",
                             disable=not progress):
                if item.name in seen:
                    raise InputError(f"{src}: two images are named {item.name} after spaces became '_'")
                seen.add(item.name)
                if isinstance(item.image, Path):
                    image = f"images/{item.name}{item.image.suffix}"
                    (tmp / image).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(item.image, tmp / image)
                else:
                    image = f"images/{item.name}.png"
                    (tmp / image).parent.mkdir(parents=True, exist_ok=True)
                    write_image(tmp / image, item.image)
                label = f"labels/{item.name}.png"
                (tmp / label).parent.mkdir(parents=True, exist_ok=True)
                write_image(tmp / label, item.label)
                written.append((image, label))
            if not written:
                raise InputError(f"{src}: nothing to import ({skipped_text(source.skipped) or 'no images'}"
                                 + "".join(f"; {note}" for note in source.notes) + ")")
            line_of = {image: f"{image} {label}\n" for image, label in written}
            train, val = split_names(list(line_of), val_fraction, seed)
            (tmp / "classes.txt").write_text(classes_text(source.names, source.palette, ignore_index, fmt, src))
            (tmp / "train.txt").write_text("".join(line_of[n] for n in train))
            if val:
                (tmp / "val.txt").write_text("".join(line_of[n] for n in val))
            check_target(root)
    except CGNetError as e:
        counts = f"{len(written)} imported"
        skipped = sum(source.skipped.values())
        if skipped:
            counts += f", {skipped} skipped"
        raise type(e)(f"{e} ({counts} before it; nothing written to {root})") from None
    return ImportSummary(root, len(written), len(train), len(val), source.names, source.skipped,
                         source.shapes_skipped, source.notes)


def skipped_text(skipped: Counter) -> str:
    return ", ".join(f"{n} {why}" for why, n in skipped.items() if n)


def summary_text(summary: ImportSummary, ignore_index: int) -> str:
    """What `cgnet data import` prints: the counts and the command that trains on the result."""
    root = summary.root
    lines = [f"imported {summary.imported} images, {len(summary.classes)} classes into {root}: "
             f"{summary.train} in train.txt, {summary.val} in val.txt"
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
