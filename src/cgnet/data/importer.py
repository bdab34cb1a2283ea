"""`cgnet data import`: annotation-tool exports as a cgnet dataset tree.

Formats (each read as the tool writes it):

- `cvat`: CVAT's "Segmentation mask 1.1" export: `labelmap.txt` (`name:r,g,b:parts:actions`
  lines after a `# label:color_rgb:parts:actions` header), `SegmentationClass/<name>.png` colour
  masks, `JPEGImages/<name>.<ext>` images, `ImageSets/Segmentation/*.txt` image names.
- `labelme`: a folder of LabelMe JSON files and its subfolders, drawn exactly as labelme's own
  `shapes_to_label` draws every shape type labelme 7 writes (the reader is `labelme.py`).
- `colors`: a folder of images and RGB colour-coded masks (matched by file stem, with an
  optional suffix such as CamVid's `_L`) and a classes file with colours.

The result, in the `--root` folder:

    images/<name>.<ext>   the images (copied; embedded LabelMe images re-encoded as PNG); a
                          photo's EXIF orientation is kept, and its labels are in the frame
                          it shows (cgnet's readers apply the orientation)
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
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from tqdm import tqdm

from ..common import IMAGE_EXTS, CGNetError, InputError, MissingFileError
from ..fileio import staged_folder
from .catalog import format_class, read_classes_file
from .import_core import (ImportSummary, Item, Source, check_same_size, class_ids, colors_to_ids, find_image,
                          output_name, read_color_mask, read_pixels)
from .labelme import labelme_source

FORMATS = ("cvat", "labelme", "colors")
# ---- the formats --------------------------------------------------------------------------------

def read_cvat_labelmap(path: Path) -> tuple[list[str], list[tuple[int, int, int]]]:
    """CVAT's labelmap.txt: `name:r,g,b:parts:actions` per line after a `#` header."""
    names, colors, where_of = [], [], {}
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{no}"
        fields = line.rstrip("\n").split(":")
        if len(fields) < 4:
            raise InputError(f"{where}: expected 'name:r,g,b:parts:actions', got {line.strip()!r}")
        name, color = ":".join(fields[:-3]).strip(), fields[-3].strip()
        found = re.fullmatch(r"(\d+),(\d+),(\d+)", color)
        if not name or not found or max(int(v) for v in found.groups()) > 255:
            raise InputError(f"{where}: expected 'name:r,g,b:parts:actions' with r,g,b in 0..255, got {line.strip()!r}")
        rgb = tuple(int(v) for v in found.groups())
        for key, kind in ((name, "label"), (rgb, "colour")):
            if key in where_of:
                raise InputError(f"{where}: {kind} {color if kind == 'colour' else name!r} repeats ({where_of[key]})")
            where_of[key] = where
        names.append(name)
        colors.append(rgb)
    if not names:
        raise InputError(f"{path}: no labels")
    return names, colors


def cvat_source(src: Path, ignore_classes: list[str], ignore_index: int) -> Source:
    labelmap = src / "labelmap.txt"
    if not labelmap.is_file():
        raise MissingFileError(f"{src} is not a CVAT 'Segmentation mask 1.1' export: no labelmap.txt in it")
    names, colors = read_cvat_labelmap(labelmap)
    ids = class_ids(names, ignore_classes, ignore_index, str(labelmap))
    lists = sorted((src / "ImageSets" / "Segmentation").glob("*.txt"))
    if not lists:
        raise MissingFileError(f"{src}: no ImageSets/Segmentation/*.txt (the export's image names)")
    image_names = []
    for list_file in lists:
        for line in list_file.read_text().splitlines():
            if line.strip() and line.strip() not in image_names:
                image_names.append(line.strip())
    source = Source([n for n, i in zip(names, ids) if i != ignore_index],
                    [c for c, i in zip(colors, ids) if i != ignore_index], iter(()), len(image_names))

    def items() -> Iterator[Item]:
        for name in image_names:
            where = f"{lists[0].parent}: {name!r}"
            image = find_image(src / "JPEGImages", name)
            if image is None:
                raise MissingFileError(f"{where}: no image JPEGImages/{name}.<ext> for it")
            mask_path = src / "SegmentationClass" / f"{name}.png"
            if not mask_path.is_file():
                source.skipped["without a mask"] += 1
                continue
            label = colors_to_ids(read_color_mask(mask_path), colors, ids, str(mask_path), str(labelmap))
            check_same_size(read_pixels(image, "image").shape[:2], str(image), label, str(mask_path))
            yield Item(output_name(name, where), image, label)
    source.items = items()
    return source


def colors_source(src: Path, classes: Path | None, masks: Path | None, suffix: str, ignore_classes: list[str],
                  ignore_index: int) -> Source:
    if classes is None:
        raise InputError("--from colors needs --classes FILE (one 'name r,g,b' line per class)")
    names, palette = read_classes_file(classes)
    if palette is None:
        raise InputError(f"{classes}: no colours; --from colors needs 'name r,g,b' lines")
    ids = class_ids(names, ignore_classes, ignore_index, str(classes))
    masks = masks if masks is not None else src
    if not masks.is_dir():
        raise MissingFileError(f"--masks {masks}: no such folder")
    same = masks.resolve() == src.resolve()
    if same and not suffix:
        raise InputError(f"images and masks share {src}: give --mask-suffix (e.g. _L) or --masks DIR")

    def images_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)

    images = [p for p in images_in(src) if not (same and p.stem.endswith(suffix))]
    mask_files = [p for p in images_in(masks) if p.stem.endswith(suffix)]
    mask_of: dict[str, Path] = {}
    for p in mask_files:   # a .png mask is preferred over other extensions
        stem = p.stem[:len(p.stem) - len(suffix)] if suffix else p.stem
        if stem not in mask_of or p.suffix.lower() == ".png":
            mask_of[stem] = p
    if not images:
        raise MissingFileError(f"{src}: no images in it")
    source = Source([n for n, i in zip(names, ids) if i != ignore_index],
                    [c for c, i in zip(palette, ids) if i != ignore_index], iter(()), len(images))
    stems = {p.stem for p in images}
    source.skipped["masks without an image"] = sum(1 for s in mask_of if s not in stems)

    def items() -> Iterator[Item]:
        for image in images:
            mask_path = mask_of.get(image.stem)
            if mask_path is None:
                source.skipped["without a mask"] += 1
                continue
            label = colors_to_ids(read_color_mask(mask_path), palette, ids, str(mask_path), str(classes))
            check_same_size(read_pixels(image, "image").shape[:2], str(image), label, str(mask_path))
            yield Item(output_name(image.stem, str(image)), image, label)
    source.items = items()
    return source


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


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def encode_png(pixels: np.ndarray, what: str) -> bytes:
    ok, data = cv2.imencode(".png", pixels)
    if not ok:
        raise CGNetError(f"cannot encode {what} as PNG")
    return data.tobytes()


def check_target(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise InputError(f"--root {root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        raise InputError(f"--root {root}: the folder is not empty; give a new or empty one")


def import_dataset(fmt: str, src: str | os.PathLike, root: str | os.PathLike, *, val_fraction: float = 0.2,
                   seed: int = 0, classes: str | os.PathLike | None = None, ignore_index: int = 255,
                   ignore_classes: list[str] | None = None, masks: str | os.PathLike | None = None,
                   mask_suffix: str = "", progress: bool = True) -> ImportSummary:
    """Import an annotation export as a cgnet dataset tree (see the module docstring).

    Args:
        fmt: 'cvat', 'labelme' or 'colors'.
        src: the export's folder.
        root: the dataset folder to write; it must not exist or be empty.
        val_fraction: the share of images listed in val.txt (rounded; train keeps at least one).
        seed: the seed of the shuffle that splits train and val.
        classes: a classes file (labelme: optional, fixes ids and colours; colors: required).
        ignore_index: the label id of unlabelled pixels (0..255, above every class id).
        ignore_classes: classes whose pixels become the ignore id (e.g. CVAT's background).
        masks: colors: the folder of the masks (default: src); mask_suffix: their stem suffix.
        progress: a progress bar.
    Returns:
        what was imported and skipped.
    """
    src, root = Path(src), Path(root)
    ignore_classes = list(ignore_classes or [])
    if fmt not in FORMATS:
        raise InputError(f"--from {fmt}: expected one of {', '.join(FORMATS)}")
    if not 0 <= ignore_index <= 255:
        raise InputError(f"--ignore-index {ignore_index}: labels are 8-bit images, so it must be 0..255")
    if not (math.isfinite(val_fraction) and 0 <= val_fraction < 1):
        raise InputError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    if not src.is_dir():
        raise MissingFileError(f"{src}: no such folder")
    if classes is not None and fmt == "cvat":
        raise InputError("--classes is for --from labelme and colors; cvat's classes come from its labelmap.txt")
    if (masks is not None or mask_suffix) and fmt != "colors":
        raise InputError("--masks and --mask-suffix are for --from colors")
    check_target(root)
    classes = Path(classes) if classes is not None else None
    if fmt == "cvat":
        source = cvat_source(src, ignore_classes, ignore_index)
    elif fmt == "labelme":
        source = labelme_source(src, classes, ignore_classes, ignore_index)
    else:
        source = colors_source(src, classes, Path(masks) if masks is not None else None, mask_suffix,
                               ignore_classes, ignore_index)

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
                    write_bytes(tmp / image, encode_png(item.image, f"the image of {item.name}"))
                label = f"labels/{item.name}.png"
                write_bytes(tmp / label, encode_png(item.label, f"the label of {item.name}"))
                written.append((image, label))
            if not written:
                raise InputError(f"{src}: nothing to import ({skipped_text(source.skipped) or 'no images'})")
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
                         source.shapes_skipped)


def skipped_text(skipped: Counter) -> str:
    return ", ".join(f"{n} {why}" for why, n in skipped.items() if n)


def summary_text(summary: ImportSummary, ignore_index: int) -> str:
    """What `cgnet data import` prints: the counts and the command that trains on the result."""
    root = summary.root
    lines = [f"imported {summary.imported} images, {len(summary.classes)} classes into {root}: "
             f"{summary.train} in train.txt, {summary.val} in val.txt"
             + ("" if summary.val else " (none: train with --val-split none)")]
    lines.append(f"skipped images: {skipped_text(summary.skipped) or 'none'}")
    if summary.shapes_skipped:
        lines.append("skipped shapes (they cover no area): "
                     + ", ".join(f"{n} {kind}{'s' * (n != 1 and not kind.endswith('s'))}"
                               for kind, n in sorted(summary.shapes_skipped.items())))
    val = f"{root / 'val.txt'}" if summary.val else "none"
    lines.append(f"train with: cgnet train --dataset {root.name} --classes {root / 'classes.txt'} "
                 f"--ignore-index {ignore_index} --data-root {root} --train-split {root / 'train.txt'} "
                 f"--val-split {val}")
    return "\n".join(lines)
