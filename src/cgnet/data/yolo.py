"""`cgnet data import --from yolo`: an Ultralytics YOLO segmentation dataset, the layout
Ultralytics trains on and Roboflow's "YOLOv8 PyTorch TXT" / "YOLOv11 PyTorch TXT" export of a
segmentation project writes (also CVAT's "Ultralytics YOLO Segmentation 1.0"):

    data.yaml           names (a list, or {index: name}), path (optional), train, val (, test):
                        folders of images, or .txt lists of image paths (CVAT's export)
    images/train/...    (or train/images/ in Roboflow's export: `train: ../train/images`)
    labels/train/x.txt  one object a line: `class x1 y1 x2 y2 ...`, coordinates normalised to 0..1

An image's label file is its path with the last `/images/` replaced by `/labels/` and the
extension by `.txt` (as Ultralytics finds it); an image without one has no objects. The split
of data.yaml is kept: train.txt, val.txt (and test.txt) list the images of its train, val (and
test) entries.

Drawn as Ultralytics' semantic segmentation task draws a polygon dataset
(`PolygonSemanticDataset.load_mask` in ultralytics/data/dataset.py, ultralytics 8.4): the
coordinates as float32 times the image's width and height, cut to whole pixels toward zero
(numpy's int32 cast) and filled by OpenCV's `fillPoly` (`polygon2mask` in ultralytics/data/utils.py);
where objects overlap, they are ordered by `np.argsort(-areas)` of their filled areas and each
later one drawn over the earlier ones, so smaller objects lie over larger ones
(`polygons2masks_overlap`). Pixels no object covers are the class `background`, which
Ultralytics adds after the names (`add_polygon_background`; before the one name of a
single-class dataset, which it trains as a binary mask); --background NAME names that class
instead, and --ignore-class background makes them the ignore id (255, Ultralytics' ignore value).

No size check applies: a label file holds no size, only fractions of its image's width and
height, so the label is drawn at the image's displayed size and cannot disagree with it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import yaml

from ..common import IMAGE_EXTS, InputError, MissingFileError
from ..images import displayed_size
from .import_core import Classes, Found, ImportOptions, Item, files_under, output_name

SPLITS = ("train", "val", "test")
BACKGROUND = "background"   # the class Ultralytics' semantic task gives pixels no polygon covers


def read_data_yaml(path: Path) -> tuple[list[str], dict]:
    """data.yaml: its class names (index order) and the whole document."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or "names" not in doc:
        raise InputError(f"{path}: no 'names' (the class names of the dataset)")
    names = doc["names"]
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise InputError(f"{path}: names must be indexed 0..{len(names) - 1}, got {sorted(names)}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise InputError(f"{path}: names must be a list of class names, got {str(doc['names'])[:60]}")
    names = [str(n).strip() for n in names]
    if len(set(names)) != len(names):
        raise InputError(f"{path}: a class name repeats in names")
    return names, doc


def split_images(yaml_path: Path, doc: dict, split: str) -> list[tuple[str, Path]]:
    """(output name, image) of a split. Its entry is a folder of images or a .txt list of image
    paths (CVAT's export), relative to `path` (itself relative to data.yaml's folder); a folder
    not found there is looked for relative to data.yaml's folder, as Ultralytics does for
    Roboflow's `../train/images`."""
    entry = doc.get(split)
    if entry is None:
        return []
    if not isinstance(entry, str):
        raise InputError(f"{yaml_path}: {split} must be a folder of images or a .txt list, got {str(entry)[:60]}")
    root = yaml_path.parent / str(doc.get("path") or ".")
    found = next((c for c in (root / entry, yaml_path.parent / entry.removeprefix("../")) if c.exists()), None)
    if found is None:
        raise MissingFileError(f"{yaml_path}: {split} {entry} not found (looked in {root / entry})")
    if found.is_file():
        listed = [line.strip() for line in text_lines(found, "a list of image paths") if line.strip()]
        images = [root / line.removeprefix("./") for line in listed]
        base = root / "images" / split
        return [(f"{split}/{(p.relative_to(base) if p.is_relative_to(base) else Path(p.name)).with_suffix('').as_posix()}",
                 p) for p in images]
    return [(f"{split}/{name}", p) for name, p in files_under(found, IMAGE_EXTS)]


def text_lines(path: Path, what: str) -> list[str]:
    """A text file's lines; not UTF-8 text is one error line."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not {what} (not UTF-8 text: byte {e.start})") from None


def label_path(image: Path) -> Path:
    """Ultralytics' label file of an image: the last /images/ -> /labels/, the extension -> .txt."""
    text = str(image)
    a, b = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(b.join(text.rsplit(a, 1)) if a in text else text).with_suffix(".txt")


def read_objects(path: Path, n_classes: int) -> list[tuple[int, np.ndarray]]:
    """A label file's objects: (class index, N x 2 normalised points), checked line by line."""
    objects = []
    for no, line in enumerate(text_lines(path, "a label file: 'class x1 y1 x2 y2 ...' lines"), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{no}"
        try:
            cls, coords = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            raise InputError(f"{where}: expected 'class x1 y1 x2 y2 ...' numbers, got {line.strip()[:60]!r}") from None
        if not 0 <= cls < n_classes:
            raise InputError(f"{where}: class {cls} is past names (classes 0..{n_classes - 1})")
        if len(coords) % 2:
            raise InputError(f"{where}: an odd number of coordinates ({len(coords)}); a polygon is x y pairs")
        if len(coords) < 6:
            raise InputError(f"{where}: a polygon needs at least 3 points, got {len(coords) // 2} (a box line of a "
                             "detection dataset is not read)")
        bad = next((v for v in coords if not (np.isfinite(v) and 0 <= v <= 1)), None)
        if bad is not None:
            raise InputError(f"{where}: coordinate {bad} is outside 0..1 (normalised to the image's size)")
        objects.append((cls, np.asarray(coords, dtype=np.float32).reshape(-1, 2)))
    return objects


def draw_objects(objects: list[tuple[int, np.ndarray]], size: tuple[int, int], ids: list[int],
                 fill: int) -> np.ndarray:
    """The objects drawn as Ultralytics' semantic task draws them (`PolygonSemanticDataset.load_mask`:
    float32 coordinates times the size, `polygon2mask` per object, `polygons2masks_overlap`'s
    order: `np.argsort(-areas)`, smaller objects over larger ones)."""
    height, width = size
    masks = []
    for _, points in objects:
        mask = np.zeros((height, width), dtype=np.uint8)
        scaled = points.astype(np.float32) * np.array([width, height], dtype=np.float32)
        cv2.fillPoly(mask, [scaled.astype(np.int32)], color=1)
        masks.append(mask)
    label = np.full((height, width), fill, dtype=np.uint8)
    for index in np.argsort(-np.asarray([m.sum() for m in masks])):
        label[masks[index] != 0] = ids[objects[index][0]]
    return label


def find_yaml(src: Path) -> Path:
    """data.yaml: `src` itself, or the one data.yaml (or *.yaml) in the folder."""
    if src.is_file():
        return src
    found = [src / "data.yaml"] if (src / "data.yaml").is_file() else sorted(src.glob("*.yaml"))
    if len(found) != 1:
        raise MissingFileError(f"{src}: no data.yaml (an Ultralytics dataset's names and splits) in it"
                               if not found else f"{src}: several .yaml files; give the dataset's as the source")
    return found[0]


def read(src: Path, opts: ImportOptions) -> Found:
    """An Ultralytics YOLO segmentation dataset (see the module docstring)."""
    yaml_path = find_yaml(src)
    names, doc = read_data_yaml(yaml_path)
    images = [(split, *named) for split in SPLITS for named in split_images(yaml_path, doc, split)]
    if not images:
        raise MissingFileError(f"{yaml_path}: no images in its train/val folders")

    # Ultralytics' semantic task makes uncovered pixels a class of their own: `background`, after
    # the names (with one name: before it, a binary mask); --background NAME replaces it
    found_names = names if opts.background is not None else \
        [BACKGROUND, *names] if len(names) == 1 else [*names, BACKGROUND]

    def items(classes: Classes) -> Iterator[Item]:
        ids = [classes.id_of[n] for n in names]
        fill = classes.fill if opts.background is not None else classes.id_of[BACKGROUND]
        for split, name, image in images:
            if not image.is_file():
                yield Item(output_name(name, str(image)), None, None, str(image), split)
                continue
            labels = label_path(image)
            objects = read_objects(labels, len(names)) if labels.is_file() else []
            name = output_name(name, str(image))
            label = draw_objects(objects, displayed_size(image), ids, fill)
            yield Item(name, image, label, str(labels), split)
    return Found(found_names, items, len(images), f"{yaml_path} (names)")
