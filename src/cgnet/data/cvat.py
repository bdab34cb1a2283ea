"""CVAT's exports: "Segmentation mask 1.1" (colour masks and labelmap.txt) and "CVAT for images
1.1" (annotations.xml: polygons, boxes, polylines, points and RLE masks per image).

CVAT for images 1.1 is drawn as CVAT draws it when it exports segmentation masks (through
datumaro): polygons and boxes (a box as its 4-corner polygon) are rasterised by pycocotools
(`frPyObjects`, the same call datumaro makes, on the coordinates as float32, as datumaro keeps
them), masks are CVAT's RLE over their box, and the
shapes are painted in `z_order` order, lowest first; equal `z_order`s in file order, later over
earlier. Polylines and points cover no area: they are skipped and counted.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from pycocotools import mask as mask_utils

from ..common import InputError, MissingFileError
from .import_core import Classes, Found, ImportOptions, Item, colors_to_ids, find_image, hex_color, output_name, read_mask

# the CVAT shapes that cover area, and those that do not (skipped and counted)
AREA_SHAPES = ("polygon", "box", "mask")
LINE_SHAPES = ("polyline", "points")
# CVAT shapes refused with one line (CVAT's mask export draws ellipses as datumaro's polygon
# approximation, which is not reproduced here)
OTHER_SHAPES = ("ellipse", "cuboid", "skeleton")


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




def segmentation_mask_read(src: Path) -> Found:
    """CVAT's "Segmentation mask 1.1": labelmap.txt, SegmentationClass/<name>.png colour masks,
    JPEGImages/<name>.<ext>, ImageSets/Segmentation/*.txt image names."""
    labelmap = src / "labelmap.txt"
    names, colors = read_cvat_labelmap(labelmap)
    lists = sorted((src / "ImageSets" / "Segmentation").glob("*.txt"))
    if not lists:
        raise MissingFileError(f"{src}: no ImageSets/Segmentation/*.txt (the export's image names)")
    image_names = []
    for list_file in lists:
        for line in list_file.read_text().splitlines():
            if line.strip() and line.strip() not in image_names:
                image_names.append(line.strip())

    def items(resolved: Classes) -> Iterator[Item]:
        ids = [resolved.id_of[n] for n in names]
        for name in image_names:
            where = f"{lists[0].parent}: {name!r}"
            image = find_image(src / "JPEGImages", name)
            if image is None:
                raise MissingFileError(f"{where}: no image JPEGImages/{name}.<ext> for it")
            mask_path = src / "SegmentationClass" / f"{name}.png"
            if not mask_path.is_file():
                found.skipped["without a mask"] += 1
                continue
            label = colors_to_ids(read_mask(mask_path, "colour")[0], colors, ids, str(mask_path), str(labelmap))
            yield Item(output_name(name, where), image, label, str(mask_path))
    found = Found(names, items, len(image_names), str(labelmap), dict(zip(names, colors)))
    return found


# ---- CVAT for images 1.1 -------------------------------------------------------------------------

@dataclass
class Frame:
    """One <image> of annotations.xml: its name, size and shapes (XML elements, file order)."""
    name: str
    height: int
    width: int
    subset: str
    shapes: list[ElementTree.Element]


def read_annotations_xml(path: Path) -> tuple[list[str], dict[str, tuple[int, int, int]], list[Frame]]:
    """annotations.xml: the labels of <meta> (names in order, colours where given) and the frames."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as e:
        raise InputError(f"{path}: not valid XML ({e})") from None
    if root.tag != "annotations":
        raise InputError(f"{path}: not a CVAT export (the root element is <{root.tag}>, not <annotations>)")
    if root.find("track") is not None:
        raise InputError(f"{path}: a 'CVAT for video 1.1' export (it has <track> elements); export the task as "
                         "'CVAT for images 1.1'")
    names, colors = [], {}
    for labels in root.iter("labels"):
        for label in labels.findall("label"):
            name = (label.findtext("name") or "").strip()
            if name and name not in names:
                names.append(name)
                color = hex_color(label.findtext("color"))
                if color is not None:
                    colors[name] = color
    frames = []
    for index, image in enumerate(root.findall("image")):
        where = f"{path}: <image> {index + 1}"
        name = image.get("name")
        try:
            width, height = int(image.get("width")), int(image.get("height"))
        except (TypeError, ValueError):
            raise InputError(f"{where} ({name!r}): width and height must be whole numbers, got "
                             f"{image.get('width')!r} and {image.get('height')!r}") from None
        if not name or width < 1 or height < 1:
            raise InputError(f"{where}: needs a name and a positive width and height")
        shapes = [el for el in image if el.tag in AREA_SHAPES + LINE_SHAPES + OTHER_SHAPES]
        frames.append(Frame(name, height, width, image.get("subset") or "", shapes))
    if not frames:
        raise InputError(f"{path}: no <image> elements (no annotated frames)")
    return names, colors, frames


def numbers(element: ElementTree.Element, keys: tuple[str, ...], where: str) -> list[float]:
    """Attributes of a shape as numbers."""
    try:
        values = [float(element.get(k)) for k in keys]
    except (TypeError, ValueError):
        raise InputError(f"{where}: {', '.join(keys)} must be numbers, got "
                         f"{', '.join(repr(element.get(k)) for k in keys)}") from None
    if not np.isfinite(values).all():
        raise InputError(f"{where}: {', '.join(keys)} must be finite numbers")
    return values


def polygon_points(element: ElementTree.Element, where: str) -> list[float]:
    """A polygon's `points="x1,y1;x2,y2;..."` as [x1, y1, x2, y2, ...]."""
    text = element.get("points") or ""
    try:
        flat = [float(v) for pair in text.split(";") for v in pair.split(",")]
    except ValueError:
        flat = []
    if len(flat) < 6 or len(flat) % 2 or not np.isfinite(flat).all():
        raise InputError(f"{where}: points must be at least 3 'x,y' pairs separated by ';', got {text[:60]!r}")
    return flat


def cvat_rle_mask(element: ElementTree.Element, frame: Frame, where: str) -> np.ndarray:
    """A <mask>: CVAT's RLE (run lengths, first of 0s, over its box row by row) placed at
    left/top on the frame. Decoded by pycocotools: CVAT's row-major runs over a height x width
    box are COCO's column-major runs over a width x height one."""
    left, top, width, height = (int(v) for v in numbers(element, ("left", "top", "width", "height"), where))
    try:
        counts = [int(v) for v in (element.get("rle") or "").split(",")]
    except ValueError:
        counts = [-1]
    if min(counts) < 0 or sum(counts) != width * height:
        raise InputError(f"{where}: rle must be whole run lengths adding up to width x height = "
                         f"{width * height}, got {(element.get('rle') or '')[:60]!r}")
    if left < 0 or top < 0 or width < 1 or height < 1 or left + width > frame.width or top + height > frame.height:
        raise InputError(f"{where}: the mask's box (left {left}, top {top}, {width}x{height}) is not inside "
                         f"the {frame.width}x{frame.height} frame")
    rle = mask_utils.frPyObjects({"counts": counts, "size": [width, height]}, width, height)
    canvas = np.zeros((frame.height, frame.width), dtype=bool)
    canvas[top:top + height, left:left + width] = mask_utils.decode(rle).T.astype(bool)
    return canvas


def shape_mask(element: ElementTree.Element, frame: Frame, where: str) -> np.ndarray:
    """The pixels a polygon, box or mask covers (frame.height x frame.width bool)."""
    if element.tag == "mask":
        return cvat_rle_mask(element, frame, where)
    if element.tag == "box":
        x0, y0, x1, y1 = numbers(element, ("xtl", "ytl", "xbr", "ybr"), where)
        flat = [x0, y0, x1, y0, x1, y1, x0, y1]   # datumaro's Bbox.as_polygon
    else:
        flat = polygon_points(element, where)
    # datumaro keeps coordinates as float32: pycocotools then rounds 5 x (a float32) to pixels,
    # which at .5 ties differs from the float64 value
    flat = np.asarray(flat, dtype=np.float32).astype(np.float64).tolist()
    rles = mask_utils.frPyObjects([flat], frame.height, frame.width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def draw_frame(frame: Frame, id_of: dict[str, int], fill: int, where: str, shapes_skipped) -> np.ndarray:
    """A frame's label: its shapes painted by z_order (stable: file order within one z_order).

    Returns:
        frame.height x frame.width uint8 ids (`fill` where no shape covers).
    """
    label = np.full((frame.height, frame.width), fill, dtype=np.uint8)
    shapes = []
    for index, element in enumerate(frame.shapes):
        at = f"{where}: <{element.tag}> {index + 1} ({element.get('label')!r})"
        if element.tag in LINE_SHAPES:
            shapes_skipped["points shape" if element.tag == "points" else element.tag] += 1
            continue
        if element.tag not in AREA_SHAPES:
            raise InputError(f"{at}: <{element.tag}> shapes are not read (polygons, boxes and masks are); "
                             "convert them in CVAT or delete them")
        if element.get("label") not in id_of:
            raise InputError(f"{at}: the label is not one of the task's labels")
        shapes.append((numbers(element, ("z_order",), at)[0] if element.get("z_order") else 0.0, index, at, element))
    for _, _, at, element in sorted(shapes, key=lambda s: (s[0], s[1])):
        label[shape_mask(element, frame, at)] = id_of[element.get("label")]
    return label


def frame_image(images: list[Path], frame: Frame) -> Path | None:
    """A frame's image file: <folder>/<name> or <folder>/<subset>/<name> for each image folder."""
    for folder in images:
        for path in (folder / frame.name, folder / frame.subset / frame.name):
            if path.is_file():
                return path
    return None


def annotations_xml_read(path: Path, images: Path | None) -> Found:
    """CVAT for images 1.1: annotations.xml and (when exported with images) images/."""
    names, colors, frames = read_annotations_xml(path)
    folders = [images] if images is not None else [path.parent / "images", path.parent]
    found = Found(names, lambda resolved: None, len(frames), f"{path} (<labels>)", colors, looked_in=str(folders[0]))

    def items(resolved: Classes) -> Iterator[Item]:
        for index, frame in enumerate(frames):
            where = f"{path}: <image> {index + 1} ({frame.name!r})"
            name = output_name(str(Path(frame.name).with_suffix("")), where)
            image = frame_image(folders, frame)
            if image is None:
                yield Item(name, None, None, frame.name)
                continue
            yield Item(name, image, draw_frame(frame, resolved.id_of, resolved.fill, where, found.shapes_skipped),
                       where)
    found.items = items
    return found


def read(src: Path, opts: ImportOptions) -> Found:
    """Either CVAT export, told apart by its files: labelmap.txt (Segmentation mask 1.1) or
    annotations.xml (CVAT for images 1.1; `src` may be the XML file itself)."""
    if src.is_file() and src.suffix.lower() == ".xml":
        return annotations_xml_read(src, opts.images)
    if (src / "labelmap.txt").is_file():
        if opts.images is not None or opts.background is not None:
            raise InputError("--images and --background are for CVAT for images 1.1 (annotations.xml); a "
                             "Segmentation mask 1.1 export has its own JPEGImages/ and background class")
        return segmentation_mask_read(src)
    # CVAT names it annotations.xml; datumaro's exporter <subset>.xml (e.g. default.xml)
    xml = [src / "annotations.xml"] if (src / "annotations.xml").is_file() else sorted(src.glob("*.xml"))
    if len(xml) > 1:
        raise InputError(f"{src}: several .xml files ({', '.join(p.name for p in xml)}); give one of them as the "
                         "source")
    if xml:
        return annotations_xml_read(xml[0], opts.images)
    raise MissingFileError(f"{src} is not a CVAT export: no labelmap.txt ('Segmentation mask 1.1') and no "
                           "annotations.xml ('CVAT for images 1.1') in it")
