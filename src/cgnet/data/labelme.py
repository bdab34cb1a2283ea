"""`cgnet data import --from labelme`: a folder of LabelMe JSON files, labelled exactly as
labelme's own converter draws them.

labelme 7's `shapes_to_label` (what its `labelme2voc` example and its tutorials use) draws each
shape with Pillow's `ImageDraw` into the image, in file order, later shapes over earlier ones:

- `polygon` and `oriented_rectangle` (4 corners): a filled polygon plus its one-pixel outline;
- `rectangle` (two opposite corners, any way round): a filled rectangle, edges included;
- `circle` (centre, a point on it): a filled ellipse in the box centre +- radius;
- `line` (2 points) and `linestrip`: a 10 pixel wide line (a line strip with rounded joints);
- `point`: a filled circle of radius 5;
- `mask` (the AI mask tool): a base64 PNG whose non-zero pixels are placed at the shape's box,
  its top-left corner the rounded first point;
- `points` (AI prompt points): labelme draws nothing; they are skipped and counted.

Drawing the same shapes with the same Pillow calls gives the same pixels; the only difference is
that all shapes go into one image (each with its class id as the ink) instead of one mask per
shape, which sets the same pixels in the same order.

The folder is walked with its subfolders, as labelme's Open Dir does; an output name keeps the
JSON file's path below the folder (`seq2/0001.json` -> `images/seq2/0001.<ext>`). A `.json` file
that is not a LabelMe file (no `shapes` and `imagePath`), or not JSON at all, is skipped and
counted. The label `__ignore__` (labelme2voc's) draws the ignore id; `_background_` is class 0 and
fills what no shape covers. The image is the embedded `imageData` or the file at `imagePath`, in
the displayed frame (EXIF orientation applied, as labelme shows it and annotates it).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
from collections import Counter
from pathlib import Path, PureWindowsPath
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from ..common import InputError, MissingFileError
from ..images import decode_pixels, displayed_size
from .import_core import BACKGROUND, Classes, Found, ImportOptions, Item, output_name

# labelme2voc's label for pixels that are ignored in training
IGNORE_LABEL = "__ignore__"
# labelme's shape_to_mask defaults: the width of lines and line strips, the radius of a point
LINE_WIDTH = 10
POINT_RADIUS = 5
# the shape types labelme 7 writes; `points` covers no area (labelme draws none)
SHAPE_TYPES = ("polygon", "rectangle", "oriented_rectangle", "circle", "line", "linestrip", "point", "mask",
               "points")
NO_AREA = ("points",)
# (fewest, most) points of each shape type; None: no upper bound
POINT_COUNTS = {"polygon": (3, None), "rectangle": (2, 2), "oriented_rectangle": (4, 4), "circle": (2, 2),
                "line": (2, 2), "linestrip": (2, None), "point": (1, 1), "mask": (2, 2), "points": (1, None)}


# ---- finding and reading the files --------------------------------------------------------------

def json_files(src: Path) -> list[Path]:
    """Every `.json` file in `src` and its subfolders (any case), in path order."""
    found = []
    for folder, _, files in os.walk(src):
        found += [Path(folder) / f for f in files if f.lower().endswith(".json")]
    return sorted(found, key=lambda p: p.relative_to(src).as_posix())


def read_document(path: Path) -> tuple[dict | None, str]:
    """A LabelMe document, or (None, why it is not one): not JSON text, or JSON without LabelMe's
    `shapes` and `imagePath` keys."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, ".json files that are not valid JSON"
    if not isinstance(doc, dict) or "shapes" not in doc or "imagePath" not in doc:
        return None, ".json files that are not LabelMe files"
    return doc, ""


def labelme_shapes(doc: dict, path: Path) -> list[tuple[int, str, str, dict]]:
    """(index, label, shape type, shape) of each shape of a LabelMe document, its type checked."""
    shapes = doc["shapes"]
    if not isinstance(shapes, list):
        raise InputError(f"{path}: 'shapes' is not a list")
    out = []
    for index, shape in enumerate(shapes):
        if not isinstance(shape, dict):
            raise InputError(f"{path}: shape {index}: not an object")
        label = shape.get("label")
        where = f"{path}: shape {index} ({label!r})"
        if not isinstance(label, str) or not label.strip():
            raise InputError(f"{where}: the label must be a non-empty string")
        kind = shape.get("shape_type") or "polygon"   # files of old LabelMe versions have none
        if kind not in SHAPE_TYPES:
            raise InputError(f"{where}: shape_type {kind!r} is not one labelme writes ({', '.join(SHAPE_TYPES)})")
        out.append((index, label.strip(), kind, shape))
    return out


def shape_points(shape: dict, kind: str, where: str) -> np.ndarray:
    """A shape's points as N x 2 float64, their number checked for its type."""
    points = shape.get("points")
    valid = isinstance(points, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
        for p in points)
    array = np.asarray(points, dtype=np.float64) if valid and points else None
    if array is None or not np.isfinite(array).all():
        raise InputError(f"{where}: points must be a list of [x, y] numbers, got {str(points)[:60]}")
    fewest, most = POINT_COUNTS[kind]
    if len(array) < fewest or (most is not None and len(array) > most):
        need = f"{fewest}" if fewest == most else f"at least {fewest}"
        article = "an" if kind[0] in "aeiou" else "a"
        raise InputError(f"{where}: {article} {kind} needs {need} point{'s' * (fewest != 1)}, it has {len(array)}")
    return array


def mask_patch(shape: dict, where: str) -> np.ndarray:
    """A `mask` shape's bitmap: its base64 PNG decoded as labelme does (Pillow's values, so a
    palette PNG gives its indices), non-zero = covered. Returns h x w bool."""
    text = shape.get("mask")
    if not isinstance(text, str) or not text:
        raise InputError(f"{where}: a mask shape needs its 'mask' (a base64 PNG)")
    try:
        with Image.open(io.BytesIO(base64.b64decode(text))) as image:
            pixels = np.asarray(image)
    except (binascii.Error, ValueError, OSError, UnidentifiedImageError):
        raise InputError(f"{where}: 'mask' is not a base64-encoded image") from None
    if pixels.ndim != 2:
        raise InputError(f"{where}: 'mask' must be a single-channel image, got {pixels.shape[1]}x{pixels.shape[0]} "
                         f"with {pixels.shape[2]} channels")
    return pixels != 0


# ---- drawing ------------------------------------------------------------------------------------

def draw_shape(draw: ImageDraw.ImageDraw, kind: str, points: np.ndarray, value: int) -> None:
    """One shape drawn with `value` as labelme's `shape_to_mask` draws it (same Pillow calls)."""
    xy = [tuple(p) for p in points.tolist()]
    if kind in ("polygon", "oriented_rectangle"):
        draw.polygon(xy, fill=value, outline=value)
    elif kind == "rectangle":
        (x0, y0), (x1, y1) = xy
        draw.rectangle(((min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1))), fill=value, outline=value)
    elif kind in ("circle", "point"):
        (cx, cy) = xy[0]
        radius = math.sqrt((cx - xy[1][0]) ** 2 + (cy - xy[1][1]) ** 2) if kind == "circle" else POINT_RADIUS
        draw.ellipse(((cx - radius, cy - radius), (cx + radius, cy + radius)), fill=value, outline=value)
    elif kind == "line":
        draw.line(xy, fill=value, width=LINE_WIDTH)
    elif kind == "linestrip":
        draw.line(xy, fill=value, width=LINE_WIDTH, joint="curve")
    else:
        raise ValueError(f"draw_shape: {kind!r} is not drawn")


def paste_mask(canvas: Image.Image, patch: np.ndarray, points: np.ndarray, value: int, where: str) -> None:
    """A `mask` shape's bitmap set to `value` where labelme 7 places it: the top-left corner is
    the rounded first point (round half to even, numpy's); whole-number points crop the bitmap
    to their box, fractional ones keep its size; what falls outside the image is cut off."""
    (x1, y1), (x2, y2) = np.round(points).astype(int)
    if np.array_equal(points, np.trunc(points)):
        box_h, box_w = y2 - y1 + 1, x2 - x1 + 1
    else:
        box_h, box_w = patch.shape
    width, height = canvas.size
    top, bottom, left, right = max(y1, 0), min(y1 + box_h, height), max(x1, 0), min(x1 + box_w, width)
    if top >= bottom or left >= right:
        return
    piece = patch[top - y1:bottom - y1, left - x1:right - x1]
    if piece.shape != (bottom - top, right - left):
        raise InputError(f"{where}: the mask is {patch.shape[1]}x{patch.shape[0]} pixels, smaller than its box "
                         f"{box_w}x{box_h} (width x height)")
    canvas.paste(value, (left, top, right, bottom), Image.fromarray(piece.astype(np.uint8) * 255))


def rasterize(shapes: list, size: tuple[int, int], value_of: dict[str, int], fill: int, path: Path,
              skipped: Counter) -> np.ndarray:
    """A document's shapes drawn in file order (later over earlier); shapes that cover no area are
    counted in `skipped`. Returns H x W uint8 ids, `fill` where no shape is drawn."""
    height, width = size
    canvas = Image.new("L", (width, height), fill)
    draw = ImageDraw.Draw(canvas)
    for index, name, kind, shape in shapes:
        where = f"{path}: shape {index} ({name!r})"
        points = shape_points(shape, kind, where)
        if kind in NO_AREA:
            skipped[kind] += 1
        elif kind == "mask":
            paste_mask(canvas, mask_patch(shape, where), points, value_of[name], where)
        else:
            draw_shape(draw, kind, points, value_of[name])
    return np.array(canvas)


# ---- images, classes, the source ----------------------------------------------------------------

def labelme_image(doc: dict, path: Path) -> tuple[Path | np.ndarray, tuple[int, int]]:
    """The image of a LabelMe document: the decoded pixels of its imageData, else the file at its
    imagePath (relative to the JSON's folder; Windows separators allowed). Returns it and its
    displayed (height, width)."""
    if doc.get("imageData"):
        try:
            data = base64.b64decode(doc["imageData"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise InputError(f"{path}: imageData is not valid base64") from None
        pixels = decode_pixels(data, "imageData", str(path))
        return pixels, pixels.shape[:2]
    name = doc.get("imagePath")
    if not isinstance(name, str) or not name:
        raise InputError(f"{path}: no imageData and no imagePath")
    image = path.parent / PureWindowsPath(name).as_posix()
    if not image.is_file():
        raise MissingFileError(f"{path}: imagePath {name} not found ({image}) and no imageData")
    return image, displayed_size(image, str(path))


def labelme_names(found: dict[str, str], src: Path, has_classes: bool) -> list[str]:
    """The class names of the labels found, sorted, `_background_` first (`__ignore__` is no
    class). `found`: label -> where it first appears."""
    names = sorted(n for n in found if n != IGNORE_LABEL)
    if BACKGROUND in names:
        names = [BACKGROUND] + [n for n in names if n != BACKGROUND]
    if not names and not has_classes:
        raise InputError(f"{src}: no labelled shapes (only {IGNORE_LABEL})")
    return names


def labelme_documents(src: Path) -> tuple[list[Path], Counter, dict[str, str]]:
    """The LabelMe files under `src`, the other `.json` files skipped (reason -> count; the reason
    names the first such file) and the labels found (label -> the file and shape it first has)."""
    files, skipped, first, found = [], Counter(), {}, {}
    for path in json_files(src):
        doc, why = read_document(path)
        if doc is None:
            first.setdefault(why, path.relative_to(src).as_posix())
            skipped[why] += 1
            continue
        files.append(path)
        for index, label, _, _ in labelme_shapes(doc, path):
            found.setdefault(label, f"{path}: shape {index}")
    skipped = Counter({f"{why} (first: {first[why]})": n for why, n in skipped.items()})
    if not files:
        other = "; ".join(f"{n} {why}" for why, n in skipped.items())
        raise MissingFileError(f"{src}: no LabelMe .json files in it or its subfolders" + (f" ({other})" if other else ""))
    return files, skipped, found


def read(src: Path, opts: ImportOptions) -> Found:
    """A folder of LabelMe files (see the module docstring)."""
    files, skipped, first = labelme_documents(src)
    names = labelme_names(first, src, opts.classes is not None)

    def items(resolved: Classes) -> Iterator[Item]:
        value_of = {**resolved.id_of, IGNORE_LABEL: resolved.ignore_index}
        fill = value_of.get(BACKGROUND, resolved.ignore_index)
        for path in files:
            doc = read_document(path)[0]
            image, size = labelme_image(doc, path)
            declared = (doc.get("imageHeight"), doc.get("imageWidth"))
            if None not in declared and tuple(declared) != tuple(size):
                raise InputError(f"{path}: imageHeight x imageWidth {declared[0]}x{declared[1]} but the image is "
                                 f"{size[0]}x{size[1]} as displayed (height x width)")
            label = rasterize(labelme_shapes(doc, path), size, value_of, fill, path, found.shapes_skipped)
            name = path.relative_to(src).with_suffix("").as_posix()
            yield Item(output_name(name, str(path)), image, label, str(path))
    found = Found(names, items, len(files), f"the labels of {src}", where_of=first, reserved=(IGNORE_LABEL,),
                  skipped=skipped)
    return found
