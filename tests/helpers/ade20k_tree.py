"""A tiny fake ADE20K SceneParsing tree (ADEChallengeData2016) with the real folder layout and
file names: images/{training,validation}/ADE_{train,val}_<8 digits>.jpg, annotations/<same>/*.png
(ids 0..150, 0 = other objects), objectInfo150.txt and sceneCategories.txt beside them."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# the release's folder and file-name prefix of each split
SPLITS = {"training": "ADE_train", "validation": "ADE_val"}
NUM_IDS = 151  # 0 = other objects, 1..150 = the classes


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def make_ade20k_tree(root, *, counts: dict[str, int] | None = None, size: tuple[int, int] = (16, 24),
                     seed: int = 0) -> Path:
    """Write `counts` images and annotations per release folder (default 3 training, 2 validation);
    every annotation holds each id 0..150 at least once. Returns root."""
    root = Path(root)
    counts = {"training": 3, "validation": 2} if counts is None else counts
    rng = np.random.default_rng(seed)
    h, w = size
    assert h * w >= NUM_IDS
    for folder, count in counts.items():
        prefix = SPLITS[folder]
        for i in range(1, count + 1):
            stem = f"{prefix}_{i:08d}"
            _write(root / "images" / folder / f"{stem}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            ids = rng.integers(0, NUM_IDS, h * w)
            ids[:NUM_IDS] = np.arange(NUM_IDS)
            rng.shuffle(ids)
            _write(root / "annotations" / folder / f"{stem}.png", ids.astype(np.uint8).reshape(h, w))
    (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n")
    (root / "sceneCategories.txt").write_text("ADE_train_00000001 airport_terminal\n")
    return root
