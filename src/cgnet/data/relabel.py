"""Label PNGs rewritten through a lookup table: a dataset's released ids become the ids training
reads (Cityscapes' label ids -> train ids, ADE20K's 0..150 -> 0..149 and 255). One home for the
converters of every dataset: a process pool, a progress bar, and outputs newer than their source
kept."""
from __future__ import annotations

from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..common import InputError
from ..images import write_image

# below this many files a process pool costs more to start than it saves
MIN_PARALLEL = 8


def relabel_one(job: tuple[Path, Path, np.ndarray]) -> None:
    """Write `lut[label]` of the 8-bit single-channel PNG `source` to `target` (atomically).

    Args:
        job: (source, target, lut), lut a 256-entry uint8 array.
    """
    source, target, lut = job
    labels = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise InputError(f"{source}: cannot read the label image (missing or corrupt)")
    if labels.ndim != 2 or labels.dtype != np.uint8:
        channels = 1 if labels.ndim == 2 else labels.shape[2]
        raise InputError(f"{source}: expected a single-channel 8-bit label image, got "
                         f"{channels} channel(s) of {labels.dtype}")
    write_image(target, lut[labels], atomic=True)


def is_up_to_date(source: Path, target: Path) -> bool:
    try:
        return target.stat().st_mtime >= source.stat().st_mtime
    except FileNotFoundError:
        return False


def relabel_files(pairs: list[tuple[Path, Path]], lut: np.ndarray, *, workers: int = 2, force: bool = False,
                  progress: bool = True, desc: str = "labels") -> tuple[int, int]:
    """Convert each (source, target) pair through `lut`; a target newer than its source is kept
    unless `force`. Returns (converted, skipped).

    Args:
        pairs: the label files and where their converted copies go.
        lut: 256 uint8 entries, new id of each released id.
        workers: processes (a pool only from `MIN_PARALLEL` files on).
        force: convert up-to-date files too.
        progress: a progress bar titled `desc`.
    """
    todo = [(source, target, lut) for source, target in pairs if force or not is_up_to_date(source, target)]
    with tqdm(total=len(todo), desc=desc, unit="file", disable=not progress) as bar:
        if workers > 1 and len(todo) > MIN_PARALLEL:
            with Pool(min(workers, len(todo))) as pool:
                for _ in pool.imap_unordered(relabel_one, todo, chunksize=4):
                    bar.update()
        else:
            for job in todo:
                relabel_one(job)
                bar.update()
    return len(todo), len(pairs) - len(todo)
