"""`cgnet data import --from labelstudio`: Label Studio's "JSON" export (a list of tasks with their
annotations), or its "JSON-MIN" export (one record per annotation, its regions under the name of
the labelling tag), with the shapes converted as label-studio-sdk's converter converts them:

- `polygonlabels`: points in percent of the image, `x / 100 * original_width` (the SDK's COCO
  export), filled by pycocotools as the COCO reader fills polygons;
- `rectanglelabels`: `x`, `y` (the top-left corner, percent), `width`, `height` and `rotation`
  (degrees, clockwise about that corner): the four corners of the SDK's YOLO OBB export, filled
  as a polygon;
- `brushlabels`: Label Studio's brush RLE (a bit stream of RGBA values, see `decode_brush_rle`),
  decoded here and checked value for value against the SDK's `brush.decode_rle`; a pixel is
  covered where its alpha value is not 0, as the SDK's brush-to-COCO export takes it.

Regions are painted in the order of the annotation's `result`, later over earlier. Regions
without area (key points, choices, text) are skipped and counted; ellipses are refused.

Several annotations of one task: the newest one that was not cancelled (largest `created_at`;
the first in the file on a tie) is taken, as the SDK's converters list it first; JSON-MIN records
of one task id are chosen the same way. A task whose annotations are all cancelled is skipped.

Images: the file named by the task's `data` value (an upload's path, a `?d=` local-file path or a
URL), looked for in --images, else beside the JSON and in its images/ folder: the longest tail
of its path found there (the subfolders it keeps become the output name's), with and without
the 8-character prefix Label Studio gives uploaded files (`1a2b3c4d-photo.jpg`).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
from pycocotools import mask as mask_utils

from ..common import IMAGE_EXTS, InputError, MissingFileError
from ..images import displayed_size
from .import_core import Classes, Found, ImportOptions, Item, output_name

AREA_TYPES = ("polygonlabels", "rectanglelabels", "brushlabels")
REFUSED_TYPES = ("ellipselabels",)
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


# ---- the brush RLE -------------------------------------------------------------------------------

def decode_brush_rle(rle: list[int], expected: int, where: str) -> np.ndarray:
    """Label Studio's brush RLE as its flat values (RGBA per pixel, row by row).

    The bytes are read as one bit stream, most significant bit first: 32 bits give the number of
    values, 5 bits the word size minus 1, then four 4-bit fields the bit widths (minus 1) of the
    four run-length sizes. Then, until every value is set: 1 bit says a repeated run (1) or a run
    of literal words (0), 2 bits pick one of the four run-length sizes, that many bits give the
    run length minus 1; a repeated run is followed by one word, a literal run by one word per value.

    Args:
        rle: the `rle` list of byte values.
        expected: original_width x original_height x 4.
        where: the region, for messages.
    Returns:
        (expected,) int64 values.
    """
    try:
        data = bytes(rle)
    except (TypeError, ValueError):
        raise InputError(f"{where}: rle must be a list of byte values (0..255)") from None
    bits = (np.unpackbits(np.frombuffer(data, np.uint8)) + ord("0")).tobytes().decode()
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise InputError(f"{where}: the brush RLE ends early ({len(data)} bytes)")
        pos += n
        return int(bits[pos - n:pos], 2)

    count = read(32)
    if count != expected:
        raise InputError(f"{where}: the brush RLE holds {count} values, expected original_width x original_height "
                         f"x 4 = {expected}")
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.int64)
    i = 0
    while i < count:
        repeated = read(1)
        end = min(i + 1 + read(sizes[read(2)]), count)
        if repeated:
            out[i:end] = read(word)
        else:
            out[i:end] = [read(word) for _ in range(end - i)]
        i = end
    return out


# ---- regions -------------------------------------------------------------------------------------

def numbers(value: dict, keys: tuple[str, ...], where: str) -> list[float]:
    """Fields of a region's value as finite numbers."""
    got = [value.get(k) for k in keys]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in got):
        raise InputError(f"{where}: {', '.join(keys)} must be numbers, got {', '.join(repr(v) for v in got)}")
    return [float(v) for v in got]


def percent_points(value: dict, where: str) -> list[tuple[float, float]]:
    """A polygon's `points` ([x, y] in percent), each inside 0..100."""
    points = value.get("points")
    if not isinstance(points, list) or len(points) < 3:
        raise InputError(f"{where}: points must be a list of at least 3 [x, y] pairs, got {str(points)[:60]}")
    for index, point in enumerate(points):
        if not (isinstance(point, list) and len(point) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in point)):
            raise InputError(f"{where}: point {index} is {str(point)[:40]}, not an [x, y] pair of numbers")
    bad = next((p for p in points if not (0 <= p[0] <= 100 and 0 <= p[1] <= 100)), None)
    if bad is not None:
        raise InputError(f"{where}: point {bad} is outside the image (Label Studio's points are percent, 0..100)")
    return [(float(x), float(y)) for x, y in points]


def rectangle_corners(value: dict, width: int, height: int, where: str) -> list[float]:
    """A rectangle's corners in pixels as the SDK's YOLO OBB export computes them: the top-left
    corner (x, y), then along the rotated width and height (rotation in degrees, clockwise with
    y pointing down). Returns [x1, y1, ..., x4, y4]."""
    x, y, w, h = numbers(value, ("x", "y", "width", "height"), where)
    rotation = numbers(value, ("rotation",), where)[0] if "rotation" in value else 0.0
    if not (0 <= x <= 100 and 0 <= y <= 100 and w >= 0 and h >= 0):
        raise InputError(f"{where}: x {x}, y {y} must be in 0..100 and width {w}, height {h} at least 0 (percent)")
    x, y, w, h = x / 100 * width, y / 100 * height, w / 100 * width, h / 100 * height
    cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    corners = [(x, y), (x + w * cos, y + w * sin), (x + w * cos - h * sin, y + w * sin + h * cos), (x - h * sin, y + h * cos)]
    return [v for corner in corners for v in corner]


def region_mask(region: dict, kind: str, size: tuple[int, int], where: str) -> np.ndarray:
    """The pixels a region covers (height x width bool)."""
    height, width = size
    value = region["value"]
    if kind == "brushlabels":
        if value.get("format", "rle") != "rle" or "rle" not in value:
            raise InputError(f"{where}: a brush region needs its 'rle' (format 'rle')")
        values = decode_brush_rle(value["rle"], width * height * 4, where)
        return values.reshape(height, width, 4)[:, :, 3] != 0
    if kind == "polygonlabels":
        flat = [v for x, y in percent_points(value, where) for v in (x / 100 * width, y / 100 * height)]
    else:
        flat = rectangle_corners(value, width, height, where)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([flat], height, width))).astype(bool)


def region_kind(region: dict, where: str) -> tuple[str, str | None]:
    """(type, label) of a result entry; label None for types without area."""
    kind = str(region.get("type", "")).lower()
    value = region.get("value")
    if kind in REFUSED_TYPES:
        raise InputError(f"{where}: {kind} regions are not read (polygons, rectangles and brush masks are)")
    if kind not in AREA_TYPES:
        return kind or "untyped", None
    labels = value.get(kind) if isinstance(value, dict) else None
    if not isinstance(labels, list) or not labels or not all(isinstance(n, str) and n.strip() for n in labels):
        raise InputError(f"{where}: value.{kind} must name its label, got {str(labels)[:60]}")
    return kind, labels[0].strip()


def region_size(region: dict, where: str) -> tuple[int, int]:
    """A region's (original_height, original_width)."""
    h, w = region.get("original_height"), region.get("original_width")
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise InputError(f"{where}: original_width and original_height must be positive whole numbers, got {w!r} "
                         f"and {h!r}")
    return h, w


# ---- tasks and annotations -----------------------------------------------------------------------

META_KEYS = ("id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement")


def newest(annotations: list[tuple[str, dict]]) -> tuple[str, dict] | None:
    """The annotation taken: the newest (largest created_at, ISO text) not cancelled; the first
    in file order on a tie. None when all are cancelled."""
    kept = [(where, a) for where, a in annotations if not (a.get("was_cancelled") or a.get("skipped"))]
    if not kept:
        return None
    return max(enumerate(kept), key=lambda ia: (str(ia[1][1].get("created_at") or ""), -ia[0]))[1]


def image_value(data: dict, where: str) -> str:
    """The task's image: data['image'], else its one string value with an image extension."""
    if isinstance(data.get("image"), str):
        return data["image"]
    found = [v for v in data.values() if isinstance(v, str) and image_name(v).lower().endswith(IMAGE_EXTS)]
    if len(found) != 1:
        raise InputError(f"{where}: no 'image' in the task's data (and not one image path among its values)")
    return found[0]


def json_min_regions(record: dict) -> list[dict]:
    """A JSON-MIN record's regions as JSON results ({type, value, original_width, original_height})."""
    regions = []
    for key, value in record.items():
        if key in META_KEYS or not isinstance(value, list):
            continue
        for region in value:
            kind = next((k for k in AREA_TYPES + REFUSED_TYPES if isinstance(region, dict) and k in region), None)
            if kind is not None:
                regions.append({"type": kind, "value": region, "original_width": region.get("original_width"),
                                "original_height": region.get("original_height")})
    return regions


def read_tasks(path: Path) -> list[tuple[str, str, list[dict]]]:
    """(where, image value, result) of each task, its annotation chosen (see the module docstring);
    JSON and JSON-MIN exports alike."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a Label Studio JSON export ({e})") from None
    if not isinstance(doc, list) or not all(isinstance(t, dict) for t in doc):
        raise InputError(f"{path}: not a Label Studio JSON export (not a list of tasks)")
    tasks: dict[object, tuple[str, dict, list[tuple[str, dict]]]] = {}
    for index, task in enumerate(doc):
        where = f"{path}: task {task.get('id', index)!r}"
        if "data" in task or "annotations" in task or "completions" in task:   # JSON
            data, entries = task.get("data"), task.get("annotations", task.get("completions"))
            if not isinstance(data, dict) or not isinstance(entries, list):
                raise InputError(f"{where}: needs a 'data' object and an 'annotations' list")
            tasks[("task", index)] = (where, data, [(where, a) for a in entries if isinstance(a, dict)])
        else:   # JSON-MIN: a record per annotation
            record = {"result": json_min_regions(task), "created_at": task.get("created_at")}
            key = ("min", task.get("id", index))
            tasks.setdefault(key, (where, task, []))[2].append((where, record))
    out = []
    for where, data, records in tasks.values():
        chosen = newest(records)
        result = chosen[1].get("result") if chosen else None
        if chosen is not None and not isinstance(result, list):
            raise InputError(f"{where}: the annotation's 'result' is not a list")
        out.append((where, image_value(data, where), result))
    if not out:
        raise InputError(f"{path}: no tasks")
    return out


def image_parts(value: str) -> list[str]:
    """The path parts of a task's image value: `/data/upload/3/1a2b3c4d-x.jpg`,
    `/data/local-files/?d=dir/x.jpg`, `https://host/x.jpg`, `s3://bucket/x.jpg`."""
    url = urlparse(value)
    local = parse_qs(url.query).get("d")
    return [p for p in PurePosixPath(unquote(local[0] if local else url.path)).parts if p not in ("/", ".")]


def image_name(value: str) -> str:
    """The file name in a task's image value (its last path part)."""
    parts = image_parts(value)
    return parts[-1] if parts else ""


def find_task_image(value: str, folders: list[Path]) -> tuple[Path, str] | None:
    """The image file of a task and its path relative to the folder that has it: the longest
    tail of the value's path found in a folder (so `?d=photos/site/a/x.jpg` keeps `site/a/` where
    the folder holds `site/a/x.jpg`, and `--images` may be Label Studio's media folder, which
    holds `upload/3/1a2b3c4d-x.jpg`), its file name also without the upload prefix."""
    parts = image_parts(value)
    for start in range(len(parts)):
        tail = parts[start:]
        if ".." in tail:
            continue
        for candidate in (tail, tail[:-1] + [UPLOAD_PREFIX.sub("", tail[-1])]):
            for folder in folders:
                if candidate[-1] and folder.joinpath(*candidate).is_file():
                    return folder.joinpath(*candidate), "/".join(candidate)
    return None


# ---- the reader ------------------------------------------------------------------------------------

def export_file(src: Path) -> Path:
    """The export's JSON: `src`, or the one .json in the folder."""
    if src.is_file():
        return src
    found = sorted(src.glob("*.json"))
    if len(found) != 1:
        raise MissingFileError(f"{src}: expected one Label Studio .json export in it, found "
                               f"{len(found) or 'none'}{': ' + ', '.join(p.name for p in found) if found else ''}")
    return found[0]


def draw_task(result: list[dict], size: tuple[int, int], classes: Classes, where: str, skipped) -> np.ndarray:
    """A task's label: its regions painted in result order, later over earlier."""
    label = np.full(size, classes.fill, dtype=np.uint8)
    for index, region in enumerate(result):
        at = f"{where}: result {index}"
        kind, name = region_kind(region, at)
        if name is None:
            skipped[kind] += 1
            continue
        region_size(region, at)   # checked: the driver compares the size with the image's
        label[region_mask(region, kind, size, f"{at} ({name!r})")] = classes.id_of[name]
    return label


def read(src: Path, opts: ImportOptions) -> Found:
    """A Label Studio JSON or JSON-MIN export (see the module docstring)."""
    path = export_file(src)
    tasks = read_tasks(path)
    where_of: dict[str, str] = {}
    for where, _, result in tasks:
        for index, region in enumerate(result or []):
            at = f"{where}: result {index}"
            if not isinstance(region, dict):
                raise InputError(f"{at}: not an object")
            name = region_kind(region, at)[1]
            if name is not None:
                region_size(region, at)
                where_of.setdefault(name, at)
    folders = [opts.images] if opts.images is not None else [path.parent, path.parent / "images"]

    def items(classes: Classes) -> Iterator[Item]:
        for where, value, result in tasks:
            if result is None:
                found.skipped["with every annotation cancelled"] += 1
                continue
            found_image = find_task_image(value, folders)
            if found_image is None:
                name = output_name(PurePosixPath(image_name(value)).stem or "?", where)
                yield Item(name, None, None, image_name(value) or value)
                continue
            image, relative = found_image
            name = output_name(str(PurePosixPath(relative).with_suffix("")), where)
            sizes = {region_size(r, where) for r in result if region_kind(r, where)[1] is not None}
            if len(sizes) > 1:
                raise InputError(f"{where}: its regions give different original sizes {sorted(sizes)}")
            size = sizes.pop() if sizes else displayed_size(image)
            yield Item(name, image, draw_task(result, size, classes, where, found.shapes_skipped),
                       f"{where} (original_width x original_height)")
    found = Found(sorted(where_of), items, len(tasks), f"the labels of {path}", where_of=where_of,
                  looked_in=", ".join(map(str, folders)))
    return found
