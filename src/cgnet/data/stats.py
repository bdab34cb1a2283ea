"""Dataset statistics: per-channel mean and std, pixel counts per class and class weights."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..fileio import write_atomic
from .info import DatasetInfo
from .listset import SegDataset, ignore_stop_signals, worker_context


class _StatsItems(Dataset):
    def __init__(self, ds: SegDataset):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        img, lab = self.ds.load(i)
        x = img.reshape(-1, 3).astype(np.float64) / 255.0
        counts = np.bincount(lab.ravel(), minlength=256)[: self.ds.info.num_classes]
        return x.mean(0), x.std(0), counts


def list_digest(list_file: Path) -> str:
    return hashlib.sha256(Path(list_file).read_bytes()).hexdigest()[:16]


def dataset_stats(ds: SegDataset, *, cache_dir: str | os.PathLike | None = None, workers: int = 2,
                  progress: bool = True) -> dict:
    """Per-channel RGB mean/std (averages over images of per-image values, on the [0, 1] scale),
    pixel counts and class weights 1 / ln(1.10 + p_c), p_c over labelled pixels.

    Cached as JSON in cache_dir under a name keyed by the list file's content.
    """
    from tqdm import tqdm
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"stats_{ds.info.name}_{list_digest(ds.list_file)}.json"
        if cache.is_file():
            return json.loads(cache.read_text())
    # an own generator: starting the loader draws a seed from it, and a draw from the global one
    # would make a training run depend on whether its statistics were cached
    loader = torch.utils.data.DataLoader(_StatsItems(ds), batch_size=None, num_workers=workers,
                                         generator=torch.Generator().manual_seed(0), worker_init_fn=ignore_stop_signals,
                                         multiprocessing_context=worker_context(workers))
    means, stds, counts = [], [], np.zeros(ds.info.num_classes, dtype=np.int64)
    for m, s, c in tqdm(loader, total=len(ds), desc="dataset stats", disable=not progress):
        means.append(np.asarray(m))
        stds.append(np.asarray(s))
        counts += np.asarray(c)
    share = counts / max(1, counts.sum())
    stats = {"dataset": ds.info.name, "list_file": str(ds.list_file), "list_sha256": list_digest(ds.list_file),
             "images": len(ds), "mean_rgb": np.mean(means, 0).tolist(), "std_rgb": np.mean(stds, 0).tolist(),
             "pixel_counts": counts.tolist(),
             "class_weights": (1.0 / np.log(1.10 + share)).tolist()}
    if cache is not None:
        write_atomic(cache, json.dumps(stats, indent=1))
    return stats


def stats_table(stats: dict, info: DatasetInfo) -> str:
    lines = [f"{stats['dataset']}: {stats['images']} images from {stats['list_file']}",
             "mean (RGB, 0-1): " + "  ".join(f"{v:.4f}" for v in stats["mean_rgb"]),
             "std  (RGB, 0-1): " + "  ".join(f"{v:.4f}" for v in stats["std_rgb"]),
             f"{'id':>3}  {'class':<14}{'pixels':>12}{'share %':>9}{'weight':>9}"]
    total = max(1, sum(stats["pixel_counts"]))
    for i, (name, n, w) in enumerate(zip(info.classes, stats["pixel_counts"], stats["class_weights"])):
        lines.append(f"{i:>3}  {name:<14}{n:>12,}{100 * n / total:>9.2f}{w:>9.4f}")
    return "\n".join(lines)
