"""Mask folders: RGB colour masks with a classes file (`colors`), Pascal VOC palette PNGs
(`voc`: VOC2012 and labelme2voc's output) and single-channel id masks (`ids`). Subfolders are
read too: an image and its mask pair by their path relative to their folders, which the output
keeps (`city/x.png` and `masks/city/x.png` become `images/city/x.png`, `labels/city/x.png`)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..common import IMAGE_EXTS, InputError, MissingFileError
from .catalog import read_classes_file
from .import_core import (Classes, Found, ImportOptions, Item, colors_to_ids, files_under, find_image, output_name,
                          read_mask)

# the value of unlabelled pixels in VOC palette PNGs (drawn in 224,224,192: VOC's object borders)
# and in id masks
MASK_IGNORE = 255


def pair_masks(src: Path, masks: Path | None, suffix: str) -> tuple[list[tuple[str, Path]], dict[str, Path], int]:
    """The images of `src` and its subfolders and the mask of each (`masks` folder, default src;
    a mask's path relative to it is the image's with `suffix` added to the stem; a .png mask is
    preferred). Returns ((name, image) pairs, the name relative to src without extension; mask of
    name; the number of masks without an image)."""
    masks = masks if masks is not None else src
    if not masks.is_dir():
        raise MissingFileError(f"--masks {masks}: no such folder")
    same = masks.resolve() == src.resolve()
    if same and not suffix:
        raise InputError(f"images and masks share {src}: give --mask-suffix (e.g. _L) or --masks DIR")
    images = [(name, p) for name, p in files_under(src, IMAGE_EXTS, None if same else masks)
              if not (same and name.endswith(suffix))]
    mask_of: dict[str, Path] = {}
    for name, p in files_under(masks, IMAGE_EXTS):
        if name.endswith(suffix):
            name = name[:len(name) - len(suffix)] if suffix else name
            if name not in mask_of or p.suffix.lower() == ".png":
                mask_of[name] = p
    if not images:
        raise MissingFileError(f"{src}: no images in it")
    names = {name for name, _ in images}
    return images, mask_of, sum(1 for name in mask_of if name not in names)


def paired_items(images: list[tuple[str, Path]], mask_of: dict[str, Path], found: Found, decode) -> Iterator[Item]:
    """An item per image that has a mask (`decode(mask path)` -> ids); the others are counted."""
    for name, image in images:
        mask_path = mask_of.get(name)
        if mask_path is None:
            found.skipped["without a mask"] += 1
            continue
        yield Item(output_name(name, str(image)), image, decode(mask_path), str(mask_path))


def classes_with_colours(opts: ImportOptions, fmt: str, need: str) -> tuple[Path, list[str], list | None]:
    """The classes file --from colors and ids require: (path, names, colours or None)."""
    if opts.classes is None:
        raise InputError(f"--from {fmt} needs --classes FILE ({need})")
    names, palette = read_classes_file(opts.classes)
    return opts.classes, names, palette


def colors_read(src: Path, opts: ImportOptions) -> Found:
    """Images and RGB colour masks; the classes file gives each class's colour."""
    classes, names, palette = classes_with_colours(opts, "colors", "one 'name r,g,b' line per class")
    if palette is None:
        raise InputError(f"{classes}: no colours; --from colors needs 'name r,g,b' lines")
    images, mask_of, orphans = pair_masks(src, opts.masks, opts.mask_suffix)

    def items(resolved: Classes) -> Iterator[Item]:
        ids = [resolved.id_of[n] for n in names]
        yield from paired_items(images, mask_of, found, lambda path: colors_to_ids(
            read_mask(path, "colour")[0], palette, ids, str(path), str(classes)))
    found = Found(names, items, len(images), str(classes), dict(zip(names, palette)))
    found.skipped["masks without an image"] = orphans
    return found


# ---- index masks ---------------------------------------------------------------------------------

def index_lut(names: list[str], id_of: dict[str, int], ignore_index: int) -> np.ndarray:
    """Mask value -> label id: value i is class names[i], 255 the ignore id, anything else -1."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[MASK_IGNORE] = ignore_index
    for value, name in enumerate(names):
        lut[value] = id_of[name]
    return lut


def map_values(values: np.ndarray, lut: np.ndarray, path: Path, names_from: str) -> np.ndarray:
    """A mask's values through `lut`; a value with no class is one error naming its first pixel."""
    label = lut[values]
    bad = label < 0
    if bad.any():
        y, x = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(f"{path}: pixel (x={x}, y={y}) has value {int(values[y, x])}, which is no class of "
                         f"{names_from} (values 0..{int((lut[:MASK_IGNORE] >= 0).sum()) - 1}, and "
                         f"{MASK_IGNORE} for unlabelled)")
    return label.astype(np.uint8)


def names_file(path: Path) -> list[str]:
    """labelme2voc's class_names.txt: one name per line, line i = index i."""
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise InputError(f"{path}: no class names")
    repeated = [n for n in names if names.count(n) > 1]
    if repeated:
        raise InputError(f"{path}: class {repeated[0]!r} repeats")
    return names


def voc_read(src: Path, opts: ImportOptions) -> Found:
    """Pascal VOC's layout: SegmentationClass/ (or labelme2voc's SegmentationClassPNG/) palette
    PNGs, JPEGImages/ (in the same subfolders), and class_names.txt (labelme2voc) naming index i
    on line i; without it, --classes names the indices. Index 255 (VOC's border) becomes the
    ignore id."""
    masks: list[tuple[str, Path]] = []
    for folder in ("SegmentationClassPNG", "SegmentationClass"):
        masks = masks or (files_under(src / folder, (".png",)) if (src / folder).is_dir() else [])
    if not masks:
        raise MissingFileError(f"{src}: no SegmentationClass/*.png (or SegmentationClassPNG/*.png) palette masks")
    if (src / "class_names.txt").is_file():
        names_from = src / "class_names.txt"
        names = names_file(names_from)
    elif opts.classes is not None:
        names_from, names = opts.classes, read_classes_file(opts.classes)[0]
    else:
        raise InputError(f"{src}: no class_names.txt (labelme2voc writes one); give --classes FILE, one name per "
                         "line, line i naming palette index i (VOC2012: background, aeroplane, bicycle, ...)")
    _, palette = read_mask(masks[0][1], "palette")
    colors = {n: tuple(palette[3 * i:3 * i + 3]) for i, n in enumerate(names) if len(palette) >= 3 * i + 3}

    def items(resolved: Classes) -> Iterator[Item]:
        lut = index_lut(names, resolved.id_of, resolved.ignore_index)
        for name, path in masks:
            image = find_image(src / "JPEGImages", name)
            label = None if image is None else map_values(read_mask(path, "palette")[0], lut, path, str(names_from))
            yield Item(output_name(name, str(path)), image, label, str(path))
    return Found(names, items, len(masks), str(names_from), colors, looked_in=str(src / "JPEGImages"))


def ids_read(src: Path, opts: ImportOptions) -> Found:
    """Images and single-channel id masks: value i is line i of the classes file, 255 unlabelled."""
    classes, names, palette = classes_with_colours(opts, "ids", "one class per line: line i names mask value i")
    if len(names) > MASK_IGNORE:
        raise InputError(f"{classes}: {len(names)} classes; id masks hold values 0..254 (255 is unlabelled)")
    images, mask_of, orphans = pair_masks(src, opts.masks, opts.mask_suffix)

    def items(resolved: Classes) -> Iterator[Item]:
        lut = index_lut(names, resolved.id_of, resolved.ignore_index)
        yield from paired_items(images, mask_of, found, lambda path: map_values(
            read_mask(path, "index")[0], lut, path, str(classes)))
    found = Found(names, items, len(images), str(classes), dict(zip(names, palette or [])))
    found.skipped["masks without an image"] = orphans
    return found
