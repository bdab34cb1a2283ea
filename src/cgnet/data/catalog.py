"""The datasets cgnet knows by name, in one table, and how any dataset is described.

`DATASETS` holds one `Dataset` entry per known dataset: its `DatasetInfo` (class names, palette,
ignore id, list-file names), its default folder, the folder layout it expects, the list writer,
the label converter, the download (or the line that says how to get it), the `cgnet test`
submission ids, and its training recipes (presets). Every consumer reads the table: the `cgnet
data` commands (lists, <name>-trainids, download, stats, show), `cgnet train --dataset` and
`--preset` (engine/config.py builds `PRESETS` from the entries), `eval`, `test`, and the search
for a dataset's folder. A new dataset is one entry here plus its reader module (as camvid.py,
cityscapes.py, ade20k.py), which defines its `DatasetInfo`, layout, list writer and converter.

A custom dataset is a `DatasetInfo` built from the user's class names and ignore index; its list
files are given explicitly (see docs/data.md, "Your own data"). This module also reads classes files.
"""
from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..common import InputError, MissingFileError
from ..visualize import default_palette
from . import ade20k, camvid, cityscapes
from .info import DatasetInfo

# the entries' descriptions, each defined by its reader module
CAMVID, CITYSCAPES, ADE20K = camvid.CAMVID, cityscapes.CITYSCAPES, ade20k.ADE20K


@dataclass(frozen=True)
class Dataset:
    """One dataset cgnet knows by name (an entry of `DATASETS`)."""
    info: DatasetInfo              # classes, palette, ignore id, list-file names
    title: str                     # how messages name it: 'CamVid'
    folder: str                    # its folder under ./data and ../shared/datasets
    layout: str                    # the tree it expects under --data-root (docs and --help)
    write_lists: Callable          # write_lists(root) -> {split: list file written}
    convert: Callable | None = None  # convert(root, workers=, force=, progress=) -> (converted, skipped):
    #                                  the released label files -> the ids training reads
    convert_help: str = ""         # --help of `cgnet data <name>-trainids`
    download: Callable | None = None  # download(root, url=, archive=, sha256=) -> root
    hint: str = ""                 # how to get the data when there is no download
    submission: Callable | None = None  # train ids -> the ids the benchmark server takes (`cgnet test`)
    presets: dict[str, dict] = field(default_factory=dict)  # `cgnet train --preset NAME` -> TrainConfig overrides

    @property
    def name(self) -> str:
        return self.info.name

    def how_to_get(self) -> str:
        """The command or the steps that get the data."""
        if self.download is not None:
            return f"cgnet data download {self.name} --root data/{self.folder}"
        return self.hint


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset(CAMVID, "CamVid", "CamVid", camvid.LAYOUT, camvid.write_lists, download=camvid.download_camvid,
            presets={
                "camvid": dict(train_split="trainval", val_split="val", crop=(360, 360), batch_size=8, epochs=800),
                # ours: the camvid recipe fitted to 2.5 hours of a 2-core CPU (fp32; channels_last and the
                # compiled model where the CPU's vector instructions make them faster: cpu_speed_defaults)
                "camvid-cpu": dict(train_split="trainval", val_split="val", crop=(360, 360), batch_size=8,
                                   epochs=800, time_budget=150, amp="off", val_every=5, workers=1)}),
    Dataset(CITYSCAPES, "Cityscapes", "cityscapes", cityscapes.LAYOUT, cityscapes.write_lists,
            convert=cityscapes.convert_train_ids,
            convert_help="labelIds -> labelTrainIds PNGs (gtFine and gtCoarse)",
            hint="download it from cityscapes-dataset.com (an account is needed), then cgnet data "
                 "cityscapes-trainids and cgnet data lists",
            submission=cityscapes.train_ids_to_label_ids,
            presets={
                "cityscapes": dict(train_split="train", val_split="val", crop=(680, 680), batch_size=16,
                                   epochs=300),
                "cityscapes-trainval": dict(train_split="trainval", val_split="val", crop=(680, 680),
                                            batch_size=16, epochs=350)}),
    Dataset(ADE20K, "ADE20K", "ADEChallengeData2016", ade20k.LAYOUT, ade20k.write_lists,
            convert=ade20k.convert_train_ids,
            convert_help="annotations (0 = other, 1..150) -> annotations_trainids (0..149, 255 = other)",
            hint=f"download ADEChallengeData2016.zip from {ade20k.DOWNLOAD_PAGE} ({ade20k.ARCHIVE_URL}), "
                 "unzip it, then cgnet data ade20k-trainids and cgnet data lists"),
)}


def get_entry(name: str) -> Dataset:
    """The `DATASETS` entry of a known dataset; InputError naming the known ones otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} "
                         "(or give --classes and --ignore-index for a custom one)") from None


def get_dataset(name: str) -> DatasetInfo:
    return get_entry(name).info


def known_names(sep: str = ", ") -> str:
    """'camvid, cityscapes, ade20k': for --help texts and messages."""
    return sep.join(DATASETS)


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
        raise InputError(f"give --dataset ({known_names()}), or --classes and --ignore-index for your own")
    return get_dataset(name)


def custom_dataset(classes: list[str], ignore_index: int, lists: dict[str, str],
                   palette: list[tuple[int, int, int]] | None = None, name: str = "custom") -> DatasetInfo:
    """A dataset of the user's: colours default to a fixed, well-spread palette."""
    if palette is None:
        palette = default_palette(len(classes))
    return DatasetInfo(name, tuple(classes), tuple(tuple(c) for c in palette), ignore_index, dict(lists))


def data_root_candidates(dataset: str) -> list[Path]:
    """Where a dataset is looked for, in order: $CGNET_DATA, ./data/<folder>, ../shared/datasets/<folder>
    (the entry's folder; a custom dataset's name)."""
    folder = DATASETS[dataset].folder if dataset in DATASETS else dataset
    candidates = [Path(os.environ["CGNET_DATA"])] if os.environ.get("CGNET_DATA") else []
    return candidates + [Path("data") / folder, Path("..") / "shared" / "datasets" / folder]


def find_data_root(dataset: str) -> Path | None:
    """The first folder of `data_root_candidates` that exists, or None."""
    return next((c for c in data_root_candidates(dataset) if c.is_dir()), None)


def default_data_root(dataset: str) -> Path:
    """`find_data_root`, or MissingFileError saying where it looked and how to get the data."""
    root = find_data_root(dataset)
    if root is not None:
        return root
    where = ", ".join(map(str, data_root_candidates(dataset)))
    get = f" (to get it: {DATASETS[dataset].how_to_get()})" if dataset in DATASETS else ""
    raise MissingFileError(f"no {dataset} data in {where}; give --data-root or set CGNET_DATA{get}")


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
        return DATASETS[name].info
    if name is None or not meta.get("classes"):
        raise InputError(f"the checkpoint does not say its dataset: give --dataset ({known_names()})")
    ignore = meta.get("ignore_index")
    return custom_dataset(meta["classes"], 255 if ignore is None else ignore, {}, palette=meta.get("palette"),
                          name=name)
