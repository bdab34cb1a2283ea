"""What each dataset is (class names, colours, ignore id, list-file names) and where its data lives.

A custom dataset is a `DatasetInfo` built from the user's class names and ignore index; its list
files are given explicitly (see docs/data.md, "Custom datasets").
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..visualize import default_palette
from ..common import InputError, MissingFileError

SPLITS = ("train", "val", "trainval", "test")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int
    # split -> list file, relative to the data root
    lists: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.palette) != len(self.classes):
            raise InputError(f"{self.name}: {len(self.classes)} classes but {len(self.palette)} colours")
        if 0 <= self.ignore_index < len(self.classes):
            raise InputError(f"{self.name}: ignore index {self.ignore_index} is a class id "
                             f"(classes are 0..{len(self.classes) - 1})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_path(self, root: str | Path, split: str) -> Path:
        """A split name (train, val, ...) as its list file under root, or a list file path
        (see `resolve_list_file`)."""
        return Path(root) / self.list_file(split) if split in self.lists else resolve_list_file(root, split)

    def list_file(self, split: str) -> str:
        if split not in self.lists:
            raise InputError(f"{self.name} has no {split!r} split; it has {sorted(self.lists)}")
        return self.lists[split]


def resolve_list_file(root: str | Path, list_file: str | os.PathLike) -> Path:
    """A list file as given when it exists (absolute, or relative to the current folder), else
    relative to the data root."""
    path = Path(list_file)
    return path if path.is_absolute() or path.exists() else Path(root) / path


CAMVID = DatasetInfo(
    name="camvid",
    classes=("Sky", "Building", "Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car",
             "Pedestrian", "Bicyclist"),
    palette=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
             (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
    ignore_index=11,
    lists={s: f"camvid_{s}_list.txt" for s in SPLITS},
)

CITYSCAPES = DatasetInfo(
    name="cityscapes",
    classes=("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
             "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
             "bus", "train", "motorcycle", "bicycle"),
    palette=((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
             (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
             (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
             (0, 80, 100), (0, 0, 230), (119, 11, 32)),
    ignore_index=255,
    lists={s: f"cityscapes_{s}_list.txt" for s in SPLITS},
)

# Cityscapes label id of each train id 0..18 (the official labels.py table)
CITYSCAPES_TRAIN_TO_LABEL_ID = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

DATASETS = {d.name: d for d in (CAMVID, CITYSCAPES)}


def get_dataset(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} "
                         "(or give --classes and --ignore-index for a custom one)") from None


class ClassesError(InputError, argparse.ArgumentTypeError):
    """A bad classes file or list; an argparse type error too, so `--classes` shows the line."""


# a colour as the classes file writes it: r,g,b
_COLOR = re.compile(r"^(\d+),(\d+),(\d+)$")


def parse_class_line(line: str, where: str) -> tuple[str, tuple[int, int, int] | None]:
    """One line of a classes file: `name`, `name r,g,b`, or CamVid's `r g b name` (its
    label_colors.txt). Returns the name and its colour (None when the line gives none).

    Args:
        line: the line, without its newline.
        where: 'file:line' for error messages.
    """
    fields = line.split()
    if len(fields) >= 4 and all(f.isdigit() for f in fields[:3]):
        name, rgb = " ".join(fields[3:]), fields[:3]
    elif len(fields) >= 2 and _COLOR.match(fields[-1]):
        name, rgb = line.strip().rsplit(None, 1)[0].strip(), fields[-1].split(",")
    else:
        return line.strip(), None
    color = tuple(int(v) for v in rgb)
    if max(color) > 255:
        raise ClassesError(f"{where}: colour {','.join(rgb)} of {name!r}: each value must be 0..255")
    return name, color


def parse_classes(lines: list[tuple[str, str]], source: str) -> tuple[list[str], list[tuple[int, int, int]] | None]:
    """Class names and their colours (all or none) from (where, line) pairs.

    Args:
        lines: ('file:line', text) for each line that names a class.
        source: the file or option, for the messages that name no line.
    Returns:
        (names, palette): palette is None when no line gives a colour.
    """
    names, colors, first = [], [], {}
    for where, line in lines:
        name, color = parse_class_line(line, where)
        if name in first:
            raise ClassesError(f"{where}: class {name!r} repeats ({first[name]})")
        first[name] = where
        names.append(name)
        colors.append(color)
    if not names:
        raise ClassesError(f"no class names in {source}")
    given = [c is not None for c in colors]
    if any(given) and not all(given):
        where = lines[given.index(False)][0]
        raise ClassesError(f"{where}: class {names[given.index(False)]!r} has no colour (r,g,b) but other "
                           "lines do: give every class one, or none")
    if not any(given):
        return names, None
    seen = {}
    for (where, _), name, color in zip(lines, names, colors):
        if color in seen:
            raise ClassesError(f"{where}: colour {','.join(map(str, color))} of {name!r} is also "
                               f"{seen[color][0]!r}'s ({seen[color][1]})")
        seen[color] = (name, where)
    return names, colors


def read_classes_file(path: str | os.PathLike) -> tuple[list[str], list[tuple[int, int, int]] | None]:
    """A classes file: one class per line, `name` or `name r,g,b` (or CamVid's `r g b name`), in
    label id order; blank lines and lines starting with '#' are left out.

    Args:
        path: the file.
    Returns:
        (names, palette): palette is None when the file gives no colours.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"classes file {path} does not exist")
    lines = [(f"{path}:{no}", line) for no, line in enumerate(path.read_text().splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    return parse_classes(lines, str(path))


def format_class(name: str, color=None) -> str:
    """A class as a classes-file line: `name` or `name r,g,b`."""
    return name if color is None else f"{name} {','.join(str(int(v)) for v in color)}"


def read_class_names(text: str) -> list[str]:
    """`--classes`: names from 'a,b,c', or the classes of a file (see `read_classes_file`).

    A file with colours gives each entry as `name r,g,b`, so the colours travel with the names
    (in the training config too); `split_class_entries` separates them again."""
    path = Path(text)
    if path.is_file():
        names, palette = read_classes_file(path)
        return [format_class(n, c) for n, c in zip(names, palette or [None] * len(names))]
    if path.suffix.lower() in (".txt", ".csv", ".names") and "," not in text:
        raise ClassesError(f"classes file {text} does not exist")
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ClassesError(f"no class names in {text!r}")
    if len(set(names)) != len(names):
        raise ClassesError(f"class names repeat: {names}")
    return names


def split_class_entries(entries: list[str]) -> tuple[list[str], list[tuple[int, int, int]] | None]:
    """`read_class_names`' entries as names and colours (None when they carry none)."""
    return parse_classes([(f"--classes entry {i + 1}", e) for i, e in enumerate(entries)], "--classes")


def resolve_dataset(name: str | None, classes: list[str] | None = None, ignore_index: int | None = None,
                    palette=None) -> DatasetInfo:
    """A known dataset by name, or a custom one when class names are given.

    Args:
        name: the dataset's name (a known one when no classes are given).
        classes: the custom dataset's classes, as `read_class_names` gives them: names, or
            `name r,g,b` entries whose colours become the palette.
        ignore_index: the label id of unlabelled pixels (custom datasets).
        palette: colours that replace those of the entries (default: theirs, else `default_palette`).
    """
    if classes:
        if ignore_index is None:
            raise InputError("a custom dataset needs --ignore-index (the label id that marks unlabelled pixels)")
        names, colors = split_class_entries(list(classes))
        return custom_dataset(names, ignore_index, {}, palette=palette if palette is not None else colors,
                              name=name or "custom")
    if name is None:
        raise InputError("give --dataset camvid or cityscapes, or --classes and --ignore-index for your own")
    return get_dataset(name)


def custom_dataset(classes: list[str], ignore_index: int, lists: dict[str, str],
                   palette: list[tuple[int, int, int]] | None = None, name: str = "custom") -> DatasetInfo:
    """A dataset of the user's: colours default to a fixed, well-spread palette."""
    if palette is None:
        palette = default_palette(len(classes))
    return DatasetInfo(name, tuple(classes), tuple(tuple(c) for c in palette), ignore_index, dict(lists))


# folder name of each known dataset under ./data and ../shared/datasets
DATA_FOLDERS = {"camvid": "CamVid", "cityscapes": "cityscapes"}


def data_root_candidates(dataset: str) -> list[Path]:
    """Where a dataset is looked for, in order: $CGNET_DATA, ./data/<Name>, ../shared/datasets/<Name>."""
    folder = DATA_FOLDERS.get(dataset, dataset)
    candidates = [Path(os.environ["CGNET_DATA"])] if os.environ.get("CGNET_DATA") else []
    return candidates + [Path("data") / folder, Path("..") / "shared" / "datasets" / folder]


def find_data_root(dataset: str) -> Path | None:
    """The first folder of `data_root_candidates` that exists, or None."""
    return next((c for c in data_root_candidates(dataset) if c.is_dir()), None)


def default_data_root(dataset: str) -> Path:
    """`find_data_root`, or FileNotFoundError saying where it looked and how to get the data."""
    root = find_data_root(dataset)
    if root is not None:
        return root
    hint = "cgnet data download camvid --root data/CamVid" if dataset == "camvid" else \
        "download it from cityscapes-dataset.com, then cgnet data cityscapes-trainids and cgnet data lists"
    where = ", ".join(map(str, data_root_candidates(dataset)))
    raise MissingFileError(f"no {dataset} data in {where}; give --data-root or set CGNET_DATA (to get it: {hint})")


def dataset_from_meta(meta: dict, name: str | None = None) -> DatasetInfo:
    """The description of a checkpoint's dataset: a known one by name, or the custom one that
    travels in the metadata (classes, ignore id, palette).

    Args:
        meta: a checkpoint's metadata (`model.meta`).
        name: overrides the dataset the metadata names.
    """
    name = name or meta.get("dataset")
    # a run trained with --classes under a known dataset's name (`cgnet train --dataset` defaults
    # to camvid) is a custom one: its own classes and palette
    trained_custom = bool((meta.get("config") or {}).get("classes")) and meta.get("classes")
    if name in DATASETS and not trained_custom:
        return DATASETS[name]
    if name is None or not meta.get("classes"):
        raise InputError("the checkpoint does not say its dataset: give --dataset camvid or cityscapes")
    ignore = meta.get("ignore_index")
    return custom_dataset(meta["classes"], 255 if ignore is None else ignore, {}, palette=meta.get("palette"),
                          name=name)
