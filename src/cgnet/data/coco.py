"""COCO instances JSON ("COCO 1.0" in CVAT, `instances_*.json`): polygons and RLE masks
(compressed, or uncompressed as `iscrowd` regions have them), decoded only by pycocotools.

Class ids follow the categories sorted by category id (or `--classes`). A pixel that no
annotation covers gets the ignore id, or the `--background NAME` class. Annotations are painted
in file order: a later annotation covers an earlier one where they overlap (crowd regions too).
Annotations without a segmentation (boxes only) are skipped and counted.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np
from pycocotools import mask as mask_utils

from ..common import InputError, MissingFileError
from .import_core import Classes, Found, ImportOptions, Item, missing_note, output_name


def find_coco_json(src: Path) -> Path:
    """The instances JSON: `src` itself, or the one COCO JSON in src/annotations/ or src/."""
    if src.is_file():
        return src
    found = sorted((src / "annotations").glob("*.json")) or sorted(src.glob("*.json"))
    if not found:
        raise MissingFileError(f"{src}: no COCO .json in it or in its annotations/ folder")
    instances = [p for p in found if p.name.startswith("instances")] or found
    if len(instances) > 1:
        raise InputError(f"{src}: several COCO files ({', '.join(p.name for p in instances)}); give one of them "
                         "as the source")
    return instances[0]


def read_coco(path: Path) -> dict:
    """The JSON, with its images, annotations and categories lists checked."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a COCO file (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: not a COCO file (not a JSON object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise InputError(f"{path}: not a COCO instances file (no {key!r} list)")
    return doc


def categories(doc: dict, path: Path) -> dict[int, str]:
    """category id -> name, sorted by id."""
    names = {}
    for index, category in enumerate(doc["categories"]):
        cid, name = (category.get("id"), category.get("name")) if isinstance(category, dict) else (None, None)
        if not isinstance(cid, int) or not isinstance(name, str) or not name.strip():
            raise InputError(f"{path}: categories[{index}]: needs an integer 'id' and a 'name', got "
                             f"{str(category)[:80]}")
        if cid in names or name.strip() in names.values():
            raise InputError(f"{path}: categories[{index}]: id {cid} or name {name!r} repeats")
        names[cid] = name.strip()
    if not names:
        raise InputError(f"{path}: no categories")
    return dict(sorted(names.items()))


def segmentation_mask(ann: dict, height: int, width: int, where: str) -> np.ndarray | None:
    """The pixels an annotation covers (height x width bool), None when it has no segmentation.

    Polygons (a list of [x1, y1, x2, y2, ...]) and uncompressed RLE go through
    `frPyObjects`; compressed RLE is decoded as it is. Nothing here decodes by hand."""
    seg = ann.get("segmentation")
    if seg is None or seg == []:
        return None
    try:
        if isinstance(seg, list):
            if not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg):
                raise ValueError("polygons must be lists of at least 3 x, y pairs")
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            if list(seg.get("size", [])) != [height, width] or sum(seg["counts"]) != height * width:
                raise ValueError(f"an RLE of size {seg.get('size')} with {sum(seg['counts'])} pixels for a "
                                 f"{height}x{width} image")
            rle = mask_utils.frPyObjects(seg, height, width)
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), str):
            if list(seg.get("size", [])) != [height, width]:
                raise ValueError(f"an RLE of size {seg.get('size')} for a {height}x{width} image")
            rle = {"size": [height, width], "counts": seg["counts"].encode("ascii")}
        else:
            raise ValueError("expected polygons or an RLE")
        mask = mask_utils.decode(rle)
    except (ValueError, TypeError, UnicodeEncodeError) as e:
        raise InputError(f"{where}: segmentation is not readable ({e})") from None
    return mask.astype(bool)


def image_index(doc: dict, path: Path) -> list[tuple[dict, list[dict]]]:
    """Each image record (checked) with its annotations, both in file order."""
    by_image = defaultdict(list)
    for index, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise InputError(f"{path}: annotations[{index}]: needs 'image_id' and 'category_id'")
        by_image[ann["image_id"]].append({**ann, "_index": index})
    records = []
    for index, image in enumerate(doc["images"]):
        ok = isinstance(image, dict) and isinstance(image.get("file_name"), str)
        if not ok or not all(isinstance(image.get(k), int) and image[k] > 0 for k in ("width", "height")):
            raise InputError(f"{path}: images[{index}]: needs 'id', 'file_name' and positive integer 'width' "
                             f"and 'height', got {str(image)[:80]}")
        records.append((image, by_image.get(image.get("id"), [])))
    return records


def draw_image(image: dict, anns: list[dict], id_of: dict[int, int], fill: int, path: Path,
               box_only: list[int]) -> np.ndarray:
    """An image's label: its annotations painted in file order (later over earlier)."""
    height, width = image["height"], image["width"]
    label = np.full((height, width), fill, dtype=np.uint8)
    for ann in anns:
        where = f"{path}: annotations[{ann['_index']}] (image {image['file_name']!r})"
        if ann["category_id"] not in id_of:
            raise InputError(f"{where}: category_id {ann['category_id']!r} is not in the categories")
        mask = segmentation_mask(ann, height, width, where)
        if mask is None:
            box_only.append(ann["_index"])
            continue
        label[mask] = id_of[ann["category_id"]]
    return label


def read(src: Path, opts: ImportOptions) -> Found:
    """A COCO instances JSON (the file or its export folder) and its images: --images, else
    beside the JSON, images/ or images/<subset>/ of the export (subset: instances_<subset>.json)."""
    path = find_coco_json(src)
    doc = read_coco(path)
    category = categories(doc, path)
    export = path.parent.parent if path.parent.name == "annotations" else path.parent
    subset = path.stem.removeprefix("instances_")
    folders = [opts.images] if opts.images is not None else [path.parent, export / "images", export / "images" / subset]
    records = image_index(doc, path)

    def items(resolved: Classes) -> Iterator[Item]:
        id_of = {cid: resolved.id_of[name] for cid, name in category.items()}
        box_only: list[int] = []
        for image, anns in records:
            where = f"{path}: image {image['file_name']!r}"
            name = output_name(str(Path(image["file_name"]).with_suffix("")), where)
            file = next((f / image["file_name"] for f in folders if (f / image["file_name"]).is_file()), None)
            if file is None:
                yield Item(name, None, None, image["file_name"])
                continue
            yield Item(name, file, draw_image(image, anns, id_of, resolved.fill, path, box_only), where)
        if box_only:
            found.notes.append(missing_note(f"{path}: annotations without a segmentation (boxes only) "
                                            "skipped, by index", [str(i) for i in box_only]))
    found = Found(list(category.values()), items, len(records), f"{path} (categories)",
                  looked_in=", ".join(map(str, folders)))
    return found
