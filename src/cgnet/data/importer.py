"""`cgnet data import`: annotation-tool exports as a cgnet dataset tree.

Formats (each read as the tool writes it):

- `cvat` (cvat.py): CVAT's "Segmentation mask 1.1" (`labelmap.txt`, colour masks) or "CVAT for
  images 1.1" (`annotations.xml`: polygons, boxes and RLE masks by z_order) export.
- `coco` (coco.py): a COCO instances JSON; polygons and RLE decoded by pycocotools.
- `labelme`: a folder of LabelMe JSON files; polygons, rectangles and circles are drawn in
  order (later shapes over earlier ones); lines, points and line strips are skipped and counted.
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

import base64
import binascii
import json
import math
import os
import random
import secrets
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from tqdm import tqdm

from ..common import CGNetError, InputError, MissingFileError
from .catalog import format_class, read_classes_file
from .coco import coco_source
from .cvat import cvat_source
from .import_core import (BACKGROUND, ImportSummary, Item, Source, class_ids, generated_palette, output_name,
                          read_pixels, unpacked)
from .masks import colors_source, ids_source, voc_source

FORMATS = ("cvat", "coco", "labelme", "voc", "ids", "colors")
# the LabelMe shapes drawn into the labels, and those skipped (they cover no area)
DRAWN_SHAPES = ("polygon", "rectangle", "circle")
SKIPPED_SHAPES = ("line", "point", "linestrip")
# tolerance for coordinates that are whole numbers up to float noise
EPS = 1e-6


# ---- LabelMe shapes -----------------------------------------------------------------------------
# Coordinates are pixel coordinates as LabelMe writes them: pixel (x, y) is the point (x, y). A
# pixel belongs to a shape when that point lies inside it or on its edge.

def polygon_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels inside (even-odd rule) or on the edges of a closed polygon.

    Args:
        points: N x 2 float (x, y) vertices, N >= 3.
    Returns:
        height x width bool.
    """
    start, end = points, np.roll(points, -1, axis=0)
    spans = np.zeros((height, width + 1), dtype=np.int32)
    rows_all, xs_all = [], []
    for (x0, y0), (x1, y1) in zip(start, end):
        if y0 == y1:
            continue
        low, high = min(y0, y1), max(y0, y1)
        rows = np.arange(max(0, math.ceil(low)), min(height - 1, math.ceil(high) - 1) + 1)
        rows = rows[(rows >= low) & (rows < high)]   # half-open: a vertex row counts once
        rows_all.append(rows)
        xs_all.append(x0 + (rows - y0) * (x1 - x0) / (y1 - y0))
    if rows_all:
        rows, xs = np.concatenate(rows_all), np.concatenate(xs_all)
        order = np.lexsort((xs, rows))
        rows, xs = rows[order], xs[order]
        # each row has an even number of crossings: consecutive pairs are the inside spans
        row, left, right = rows[0::2], np.ceil(xs[0::2] - EPS), np.floor(xs[1::2] + EPS)
        left, right = np.clip(left, 0, width).astype(int), np.clip(right + 1, 0, width).astype(int)
        keep = left < right
        np.add.at(spans, (row[keep], left[keep]), 1)
        np.add.at(spans, (row[keep], right[keep]), -1)
    mask = np.cumsum(spans, axis=1)[:, :width] > 0
    for (x0, y0), (x1, y1) in zip(start, end):   # the edges themselves
        ys, xs = segment_pixels(x0, y0, x1, y1, height, width)
        mask[ys, xs] = True
    return mask


def segment_pixels(x0: float, y0: float, x1: float, y1: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The (rows, columns) of the pixels whose points lie on the segment (x0, y0)-(x1, y1)."""
    if abs(x1 - x0) >= abs(y1 - y0):   # walk the whole x values
        if x0 > x1:
            x0, y0, x1, y1 = x1, y1, x0, y0
        xs = np.arange(math.ceil(x0 - EPS), math.floor(x1 + EPS) + 1)
        ys = y0 + (xs - x0) * (y1 - y0) / (x1 - x0) if x1 != x0 else np.full(len(xs), y0)
    else:
        if y0 > y1:
            x0, y0, x1, y1 = x1, y1, x0, y0
        ys = np.arange(math.ceil(y0 - EPS), math.floor(y1 + EPS) + 1)
        xs = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
    on = (np.abs(xs - np.round(xs)) < EPS) & (np.abs(ys - np.round(ys)) < EPS)
    xs, ys = np.round(xs[on]).astype(int), np.round(ys[on]).astype(int)
    inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    return ys[inside], xs[inside]


def rectangle_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels of the axis-aligned rectangle with corners points[0], points[1], edges included."""
    (x0, y0), (x1, y1) = points
    mask = np.zeros((height, width), dtype=bool)
    left, right = max(0, math.ceil(min(x0, x1) - EPS)), min(width - 1, math.floor(max(x0, x1) + EPS))
    top, bottom = max(0, math.ceil(min(y0, y1) - EPS)), min(height - 1, math.floor(max(y0, y1) + EPS))
    if left <= right and top <= bottom:
        mask[top:bottom + 1, left:right + 1] = True
    return mask


def circle_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels within the circle of centre points[0] through points[1], edge included."""
    (cx, cy), (px, py) = points
    r2 = (px - cx) ** 2 + (py - cy) ** 2
    ys, xs = np.ogrid[0:height, 0:width]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r2 + EPS


def shape_points(shape: dict, kind: str, where: str) -> np.ndarray:
    """A shape's points as N x 2 float, checked for its kind."""
    points = shape.get("points")
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 2 or array.shape[1] != 2 or not np.isfinite(array).all():
        raise InputError(f"{where}: points must be a list of [x, y] numbers, got {str(points)[:60]}")
    need = {"polygon": "at least 3", "rectangle": "2", "circle": "2"}[kind]
    if (kind == "polygon" and len(array) < 3) or (kind != "polygon" and len(array) != 2):
        raise InputError(f"{where}: a {kind} needs {need} points, it has {len(array)}")
    return array


def labelme_shapes(doc: dict, path: Path) -> list[tuple[int, str, str, dict]]:
    """(index, label, shape type, shape) of each shape of a LabelMe document, validated."""
    shapes = doc.get("shapes")
    if not isinstance(shapes, list):
        raise InputError(f"{path}: not a LabelMe file (no 'shapes' list)")
    out = []
    for index, shape in enumerate(shapes):
        if not isinstance(shape, dict):
            raise InputError(f"{path}: shape {index}: not an object")
        label = shape.get("label")
        where = f"{path}: shape {index} ({label!r})"
        if not isinstance(label, str) or not label.strip():
            raise InputError(f"{where}: the label must be a non-empty string")
        kind = shape.get("shape_type") or "polygon"   # files of old LabelMe versions have none
        if kind not in DRAWN_SHAPES + SKIPPED_SHAPES:
            raise InputError(f"{where}: shape_type {kind!r} is not supported (drawn: {', '.join(DRAWN_SHAPES)}; "
                             f"skipped: {', '.join(SKIPPED_SHAPES)})")
        out.append((index, label.strip(), kind, shape))
    return out


def read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a LabelMe file (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: not a LabelMe file (not a JSON object)")
    return doc


def labelme_image(doc: dict, path: Path) -> tuple[Path | np.ndarray, tuple[int, int]]:
    """The image of a LabelMe document: decoded pixels of its imageData, else the file at its
    imagePath (relative to the JSON's folder). Returns it and its (height, width)."""
    if doc.get("imageData"):
        try:
            data = base64.b64decode(doc["imageData"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise InputError(f"{path}: imageData is not valid base64") from None
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if pixels is None or pixels.dtype != np.uint8:
            raise InputError(f"{path}: imageData is not an 8-bit image OpenCV can decode")
        return pixels, pixels.shape[:2]
    name = doc.get("imagePath")
    if not isinstance(name, str) or not name:
        raise InputError(f"{path}: no imageData and no imagePath")
    image = path.parent / name.replace("\\", "/")
    if not image.is_file():
        raise MissingFileError(f"{path}: imagePath {name} not found ({image}) and no imageData")
    return image, read_pixels(image, "image").shape[:2]


def rasterize(shapes: list, size: tuple[int, int], ids: dict[str, int], fill: int, path: Path,
              skipped: Counter) -> np.ndarray:
    """Draw a document's shapes in order (later over earlier); lines, points and line strips are
    counted in `skipped`. Returns H x W uint8 ids, `fill` where no shape is drawn."""
    height, width = size
    label = np.full((height, width), fill, dtype=np.uint8)
    draw = {"polygon": polygon_mask, "rectangle": rectangle_mask, "circle": circle_mask}
    for index, name, kind, shape in shapes:
        if kind in SKIPPED_SHAPES:
            skipped[kind] += 1
            continue
        points = shape_points(shape, kind, f"{path}: shape {index} ({name!r})")
        if kind == "circle":   # its box: centre +- radius
            radius = math.hypot(*(points[1] - points[0]))
            corners = np.array([points[0] - radius, points[0] + radius])
        else:
            corners = np.array([points.min(0), points.max(0)])
        # draw in the shape's box only (the image's part of it): shifted points, a small mask
        left, top = (max(0, math.floor(v)) for v in corners[0])
        right, bottom = min(width, math.floor(corners[1][0]) + 2), min(height, math.floor(corners[1][1]) + 2)
        if left >= right or top >= bottom:
            continue
        mask = draw[kind](points - (left, top), bottom - top, right - left)
        label[top:bottom, left:right][mask] = ids[name]
    return label


# ---- the formats --------------------------------------------------------------------------------

def labelme_source(src: Path, classes: Path | None, ignore_classes: list[str], ignore_index: int) -> Source:
    files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() == ".json")
    if not files:
        raise MissingFileError(f"{src}: no LabelMe .json files in it")
    found: dict[str, str] = {}   # label -> first file and shape that has it
    for path in files:
        for index, label, _, _ in labelme_shapes(read_json(path), path):
            found.setdefault(label, f"{path}: shape {index}")
    if classes is not None:
        names, palette = read_classes_file(classes)
        for label, where in found.items():
            if label not in names:
                raise InputError(f"{where} ({label!r}): label not in the classes file {classes}")
        palette = palette or generated_palette(names)
    else:
        names = sorted(found)
        if BACKGROUND in names:
            names = [BACKGROUND] + [n for n in names if n != BACKGROUND]
        palette = generated_palette(names)
    ids = class_ids(names, ignore_classes, ignore_index, str(classes) if classes else f"the labels of {src}")
    id_of = dict(zip(names, ids))
    fill = id_of.get(BACKGROUND, ignore_index)
    source = Source([n for n, i in zip(names, ids) if i != ignore_index],
                    [c for c, i in zip(palette, ids) if i != ignore_index], iter(()), len(files))

    def items() -> Iterator[Item]:
        for path in files:
            doc = read_json(path)
            image, size = labelme_image(doc, path)
            declared = (doc.get("imageHeight"), doc.get("imageWidth"))
            if None not in declared and tuple(declared) != tuple(size):
                raise InputError(f"{path}: imageHeight x imageWidth {declared[0]}x{declared[1]} but the image is "
                                 f"{size[0]}x{size[1]} (height x width)")
            label = rasterize(labelme_shapes(doc, path), size, id_of, fill, path, source.shapes_skipped)
            yield Item(output_name(path.stem, str(path)), image, label)
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
    made = [p for p in [root.parent, *root.parent.parents] if not p.exists()]
    tmp = root.parent / f".{root.name}.import-{os.getpid()}-{secrets.token_hex(4)}"
    written: list[tuple[str, str]] = []
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        seen = set()
        for item in tqdm(source.items, total=source.total, desc=f"import {fmt}", unit="image", disable=not progress):
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
            raise InputError(f"{src}: nothing to import ({skipped_text(source.skipped) or 'no images'}"
                             + "".join(f"; {note}" for note in source.notes) + ")")
        line_of = {image: f"{image} {label}\n" for image, label in written}
        train, val = split_names(list(line_of), val_fraction, seed)
        (tmp / "classes.txt").write_text(classes_text(source.names, source.palette, ignore_index, fmt, src))
        (tmp / "train.txt").write_text("".join(line_of[n] for n in train))
        if val:
            (tmp / "val.txt").write_text("".join(line_of[n] for n in val))
        check_target(root)
        if root.is_dir():
            root.rmdir()
        os.rename(tmp, root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(e, CGNetError):
            counts = f"{len(written)} imported"
            skipped = sum(source.skipped.values())
            if skipped:
                counts += f", {skipped} skipped"
            raise type(e)(f"{e} ({counts} before it; nothing written to {root})") from None
        raise
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
