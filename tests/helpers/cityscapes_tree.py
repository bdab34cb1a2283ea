"""A tiny fake Cityscapes tree with the real folder layout and file names."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

DEFAULT_SPLITS = {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}, "test": {"berlin": 2}}
NUM_LABEL_IDS = 34  # label ids 0..33 of the official table


def _random_label_ids(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    # draws include -1 (license plate), stored as 0 in an 8-bit PNG
    ids = rng.integers(-1, NUM_LABEL_IDS, size=size[0] * size[1])
    ids[:NUM_LABEL_IDS] = np.arange(NUM_LABEL_IDS)  # every id appears at least once
    rng.shuffle(ids)
    return np.clip(ids, 0, None).astype(np.uint8).reshape(size)


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def make_cityscapes_tree(root, *, splits: dict[str, dict[str, int]] | None = None,
                         size: tuple[int, int] = (16, 32), coarse: bool = True, seed: int = 0) -> Path:
    """Write images, gtFine (and gtCoarse for train/val) files under root; returns root.

    Test-split gtFine labels are all zeros, as in the real release.
    """
    root = Path(root)
    splits = DEFAULT_SPLITS if splits is None else splits
    rng = np.random.default_rng(seed)
    h, w = size
    for split, cities in splits.items():
        for city, count in cities.items():
            for i in range(count):
                base = f"{city}_000000_{i:06d}"
                _write(root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png",
                       rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                fine = root / "gtFine" / split / city
                if split == "test":
                    label_ids = np.zeros(size, np.uint8)
                else:
                    label_ids = _random_label_ids(rng, size)
                _write(fine / f"{base}_gtFine_labelIds.png", label_ids)
                _write(fine / f"{base}_gtFine_color.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                _write(fine / f"{base}_gtFine_instanceIds.png", label_ids.astype(np.uint16) * 1000)
                (fine / f"{base}_gtFine_polygons.json").write_text(json.dumps({}))
                if coarse and split != "test":
                    _write(root / "gtCoarse" / split / city / f"{base}_gtCoarse_labelIds.png",
                           _random_label_ids(rng, size))
    return root
