"""What a dataset is to the loaders: `DatasetInfo` (class names, colours, ignore id, list files)
and how a split names its list file. The known datasets' entries are in `catalog.DATASETS`; each
reader module (camvid.py, cityscapes.py, ade20k.py) defines its own `DatasetInfo`."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..common import InputError

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
    relative to the data root. A missing path that already starts with the root (one this function
    or `DatasetInfo.split_path` returned) is kept as it is, so resolving twice names the file once."""
    path, root = Path(list_file), Path(root)
    if path.is_absolute() or path.exists():
        return path
    if (root / path).exists():
        return root / path
    under_root = bool(root.parts) and path.parts[:len(root.parts)] == root.parts
    return path if under_root else root / path
