"""ADE20K as the MIT Scene Parsing benchmark releases it (ADEChallengeData2016): the label id
conversion and the list files.

The facts, from the challenge's development kit (github.com/CSAILVision/sceneparsing, README.md
and objectInfo150.txt) and its page (sceneparsing.csail.mit.edu):

- `ADEChallengeData2016.zip` unpacks to `images/{training,validation}/ADE_{train,val}_<8 digits>.jpg`
  and `annotations/{training,validation}/<same stem>.png`, plus objectInfo150.txt and
  sceneCategories.txt: 20,210 training and 2,000 validation images. The test images are a separate
  release without annotations, so there is no test split here.
- An annotation is a single-channel 8-bit PNG of ids 0..150: 0 is "other objects", which the
  evaluation leaves out; 1..150 are the classes of objectInfo150.txt, in its order.

Training here needs class ids from 0 and an ignore id above them, so `convert_train_ids` writes
`annotations_trainids/<split>/<stem>.png` with id - 1 (0..149) and 255 for 0, once; `write_lists`
then writes the `<image> <label>` lists. Class names are the first name of each objectInfo150.txt
entry ("building, edifice" -> building). The release defines no colours: the palette is cgnet's
`default_palette`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..common import IMAGE_EXTS, InputError, MissingFileError
from ..fileio import write_atomic
from ..visualize import default_palette
from .info import DatasetInfo
from .relabel import relabel_files

CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)
IGNORE = 255
# cgnet split -> the release's folder name
FOLDERS = {"train": "training", "val": "validation"}
TRAIN_IDS = "annotations_trainids"

ADE20K = DatasetInfo(
    name="ade20k",
    classes=CLASSES,
    palette=tuple(tuple(c) for c in default_palette(len(CLASSES))),
    ignore_index=IGNORE,
    lists={s: f"ade20k_{s}_list.txt" for s in ("train", "val", "trainval")},
)
LAYOUT = """ADEChallengeData2016/
  images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
  annotations/{training,validation}/ADE_{train,val}_<8 digits>.png      (0 = other objects, 1..150 = classes)
  annotations_trainids/{training,validation}/...png   (written by ade20k-trainids: 0..149, 255 = other objects)"""
DOWNLOAD_PAGE = "http://sceneparsing.csail.mit.edu"
ARCHIVE_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"


def _label_to_train_lut() -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[1:len(CLASSES) + 1] = np.arange(len(CLASSES), dtype=np.uint8)
    return lut


LABEL_TO_TRAIN_ID: np.ndarray = _label_to_train_lut()
LABEL_TO_TRAIN_ID.flags.writeable = False


def train_ids_path(root: Path, label: Path) -> Path:
    """annotations/<split>/<stem>.png -> annotations_trainids/<split>/<stem>.png."""
    return root / TRAIN_IDS / label.parent.name / label.name


def convert_train_ids(root: str | os.PathLike, *, workers: int = 2, force: bool = False,
                      progress: bool = True) -> tuple[int, int]:
    """Write annotations_trainids/{training,validation}/*.png from annotations/ under root: id - 1,
    and 255 for 0 ("other objects") and for ids above 150.

    Outputs newer than their source are kept unless `force`. Returns (converted, skipped).
    """
    root = Path(root)
    sources = [p for folder in FOLDERS.values() for p in sorted((root / "annotations" / folder).glob("*.png"))]
    if not sources:
        raise MissingFileError(f"no ADE20K annotations under {root}: expected "
                               f"{root / 'annotations'}/{{training,validation}}/ADE_*.png")
    return relabel_files([(p, train_ids_path(root, p)) for p in sources], LABEL_TO_TRAIN_ID, workers=workers,
                         force=force, progress=progress, desc="ADE20K train ids")


def _split_lines(root: Path, split: str) -> list[str]:
    folder = FOLDERS[split]
    images_dir = root / "images" / folder
    if not images_dir.is_dir():
        raise MissingFileError(f"{images_dir} is missing: the ADE20K {split} images "
                               f"(images/{folder}/ADE_*.jpg) are needed")
    images = sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise MissingFileError(f"{images_dir} has no images")
    lines = []
    for image in images:
        released = root / "annotations" / folder / f"{image.stem}.png"
        label = train_ids_path(root, released)
        if not label.is_file():
            if released.is_file():
                raise InputError(f"{label} does not exist yet (only {released} does): run "
                                 f"`cgnet data ade20k-trainids --root {root}` first")
            raise InputError(f"{image}: no annotation for it (looked for {released})")
        lines.append(f"{image.relative_to(root).as_posix()} {label.relative_to(root).as_posix()}\n")
    return lines


def write_lists(root: str | os.PathLike) -> dict[str, Path]:
    """Write ade20k_{train,val,trainval}_list.txt in root; returns split -> list file.

    Every list is built before any is written, so an error leaves no mixed old/new set behind."""
    root = Path(root)
    lines = {split: _split_lines(root, split) for split in FOLDERS}
    lines["trainval"] = lines["train"] + lines["val"]
    written = {}
    for split, split_lines in lines.items():
        written[split] = write_atomic(root / ADE20K.list_file(split), "".join(split_lines))
    return written
