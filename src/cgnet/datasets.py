"""What each dataset is: class names, colours, ignore id and list-file names.

A custom dataset is a `DatasetInfo` built from the user's class names and ignore index; its list
files are given explicitly (see README, "Custom datasets").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
            raise ValueError(f"{self.name}: {len(self.classes)} classes but {len(self.palette)} colours")
        if 0 <= self.ignore_index < len(self.classes):
            raise ValueError(f"{self.name}: ignore index {self.ignore_index} is a class id "
                             f"(classes are 0..{len(self.classes) - 1})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_path(self, root: str | Path, split: str) -> Path:
        """A split name (train, val, ...) as its list file under root, or a list file path as is."""
        return Path(root) / self.list_file(split) if split in self.lists else Path(split)

    def list_file(self, split: str) -> str:
        if split not in self.lists:
            raise ValueError(f"{self.name} has no {split!r} split; it has {sorted(self.lists)}")
        return self.lists[split]


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
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} "
                         "(or give --classes and --ignore-index for a custom one)") from None


def read_class_names(text: str) -> list[str]:
    """Class names from 'a,b,c' or from a file with one name per line."""
    path = Path(text)
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"no class names in {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"class names repeat: {names}")
    return names


def resolve_dataset(name: str | None, classes: list[str] | None = None, ignore_index: int | None = None,
                    palette=None) -> DatasetInfo:
    """A known dataset by name, or a custom one when class names are given."""
    if classes:
        if ignore_index is None:
            raise ValueError("a custom dataset needs --ignore-index (the label id that marks unlabelled pixels)")
        return custom_dataset(classes, ignore_index, {}, palette=palette, name=name or "custom")
    if name is None:
        raise ValueError("give --dataset camvid or cityscapes, or --classes and --ignore-index for your own")
    return get_dataset(name)


def custom_dataset(classes: list[str], ignore_index: int, lists: dict[str, str],
                   palette: list[tuple[int, int, int]] | None = None, name: str = "custom") -> DatasetInfo:
    """A dataset of the user's: colours default to a fixed, well-spread palette."""
    if palette is None:
        palette = [((37 * i) % 256, (97 * i + 80) % 256, (151 * i + 160) % 256) for i in range(len(classes))]
    return DatasetInfo(name, tuple(classes), tuple(tuple(c) for c in palette), ignore_index, dict(lists))
