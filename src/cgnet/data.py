"""List-file datasets, validation, the original release's training augmentation, statistics.

A list file has one `<image> <label>` pair per line, relative to the data root (test lists may
hold images only). Images are read with OpenCV and turned into RGB; grayscale and RGBA images
are converted. Every problem is reported with the list file, the line and the file involved.

Augmentation (training only) follows the original release: scale by 0.5 + k/10 with k uniform in
0..15 (bilinear image, nearest label), normalise, pad bottom/right to the crop size with 0 (the
image, after normalisation) and the ignore id (the label), random crop, horizontal flip with
probability 1/2. The random draws of a sample depend only on (seed, epoch, index), never on the
worker that loads it, so runs can be resumed exactly and give the same crops with any number of
workers (bilinear resizing can differ in the last bit between thread counts).
The same torch code runs on the CPU in loader workers and on a GPU over an in-memory dataset.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .datasets import DatasetInfo
from .fileio import write_atomic
from .preprocess import normalize_

cv2.setNumThreads(1)  # loader workers parallelise across images; OpenCV threads would oversubscribe

SCALES = tuple(0.5 + k / 10 for k in range(16))


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path | None
    where: str  # "list.txt:12", for error messages


def read_list(list_file: str | os.PathLike, root: str | os.PathLike, *, labels: bool = True,
              check_files: bool = True) -> list[Sample]:
    """Parse a list file; `labels=True` requires a label on every line."""
    list_file, root = Path(list_file), Path(root)
    if not list_file.is_file():
        raise FileNotFoundError(f"list file {list_file} does not exist")
    samples = []
    for no, line in enumerate(list_file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{list_file}:{no}"
        if len(fields) > 2 or (labels and len(fields) != 2):
            want = "'<image> <label>'" if labels else "'<image> [<label>]'"
            raise ValueError(f"{where}: expected {want}, got {line.strip()!r}")
        image = root / fields[0]
        label = root / fields[1] if len(fields) == 2 else None
        if check_files:
            for kind, path in (("image", image), ("label", label)):
                if path is not None and not path.is_file():
                    raise FileNotFoundError(f"{where}: {kind} {path} does not exist")
        samples.append(Sample(image, label, where))
    if not samples:
        raise ValueError(f"{list_file}: the list is empty")
    return samples


def read_image(path: Path, where: str = "") -> np.ndarray:
    """H x W x 3 uint8 RGB; grayscale and RGBA are converted."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{where + ': ' if where else ''}cannot read image {path} (corrupt or not an image)")
    if img.dtype != np.uint8:
        raise ValueError(f"{where + ': ' if where else ''}image {path} is {img.dtype}, expected 8-bit")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: Path, num_classes: int, ignore_index: int, where: str = "") -> np.ndarray:
    """H x W uint8 class ids, checked against [0, num_classes) and the ignore id."""
    prefix = f"{where}: " if where else ""
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise ValueError(f"{prefix}cannot read label {path} (corrupt or not an image)")
    if lab.ndim != 2 or lab.dtype != np.uint8:
        raise ValueError(f"{prefix}label {path} must be a single-channel 8-bit image of class ids, "
                         f"got shape {lab.shape} {lab.dtype}")
    ids = np.unique(lab)
    bad = [int(i) for i in ids if i >= num_classes and i != ignore_index]
    if bad:
        raise ValueError(f"{prefix}label {path} has ids {bad} outside [0, {num_classes}) that are not "
                         f"the ignore id {ignore_index}")
    return lab


# ---- augmentation --------------------------------------------------------------------------

def draw_params(rng: np.random.Generator, height: int, width: int, crop: tuple[int, int]) -> dict:
    """The random choices for one training sample (cheap scalars, drawn on the CPU)."""
    scale = SCALES[rng.integers(len(SCALES))]
    h, w = int(round(height * scale)), int(round(width * scale))
    ph, pw = max(h, crop[0]), max(w, crop[1])
    return {"size": (h, w), "top": int(rng.integers(ph - crop[0] + 1)),
            "left": int(rng.integers(pw - crop[1] + 1)), "flip": bool(rng.integers(2))}


def augment(image: torch.Tensor, label: torch.Tensor, params: dict, crop: tuple[int, int],
            spec: dict, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 3 x H x W image and H x W label (any device) -> normalised crop and int64 label."""
    img = image[None].float()
    lab = label[None, None].float()
    if params["size"] != tuple(image.shape[-2:]):
        img = F.interpolate(img, size=params["size"], mode="bilinear", align_corners=False)
        lab = F.interpolate(lab, size=params["size"], mode="nearest")
    img = normalize_(img[0], spec)
    lab = lab[0, 0]
    h, w = params["size"]
    if h < crop[0] or w < crop[1]:
        img = F.pad(img, (0, max(0, crop[1] - w), 0, max(0, crop[0] - h)), value=0.0)
        lab = F.pad(lab, (0, max(0, crop[1] - w), 0, max(0, crop[0] - h)), value=float(ignore_index))
    t, l = params["top"], params["left"]
    img = img[:, t:t + crop[0], l:l + crop[1]]
    lab = lab[t:t + crop[0], l:l + crop[1]]
    if params["flip"]:
        img, lab = img.flip(-1), lab.flip(-1)
    return img.contiguous(), lab.long()


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


class SegDataset(Dataset):
    """A list-file dataset. Training mode returns augmented crops; otherwise full images.

    Items are (image float 3 x H x W, label int64 H x W, index). Without labels (test lists) the
    label is an empty tensor.
    """

    def __init__(self, root: str | os.PathLike, list_file: str | os.PathLike, info: DatasetInfo,
                 spec: dict, *, train: bool = False, crop: tuple[int, int] = (360, 360), seed: int = 0,
                 labels: bool = True):
        self.root, self.info, self.spec = Path(root), info, spec
        list_path = Path(list_file)
        if not list_path.is_absolute() and not list_path.exists():
            list_path = self.root / list_path
        self.list_file = list_path
        self.samples = read_list(list_path, self.root, labels=labels or train)
        self.train, self.crop, self.seed, self.epoch = train, tuple(crop), seed, 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Loader workers are re-created each epoch, so they see the new value."""
        self.epoch = epoch

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decoded, validated uint8 RGB image and label ids (None for image-only lists)."""
        s = self.samples[index]
        img = read_image(s.image, s.where)
        if s.label is None:
            return img, None
        lab = read_label(s.label, self.info.num_classes, self.info.ignore_index, s.where)
        if lab.shape != img.shape[:2]:
            raise ValueError(f"{s.where}: image {s.image} is {img.shape[1]}x{img.shape[0]} but label "
                             f"{s.label} is {lab.shape[1]}x{lab.shape[0]} (width x height)")
        return img, lab

    def __getitem__(self, index: int):
        img, lab = self.load(index)
        image = torch.from_numpy(img).permute(2, 0, 1)
        label = torch.from_numpy(lab) if lab is not None else torch.empty(0, dtype=torch.uint8)
        if not self.train:
            return normalize_(image.float(), self.spec), label.long(), index
        params = draw_params(sample_rng(self.seed, self.epoch, index), img.shape[0], img.shape[1], self.crop)
        image, label = augment(image, label, params, self.crop, self.spec, self.info.ignore_index)
        return image, label, index


class MemoryTrainSet:
    """Training crops from images decoded once and kept (uint8) on a device: for GPUs, where
    loader workers cannot keep up. Same augmentation and same random draws as SegDataset."""

    def __init__(self, dataset: SegDataset, device: torch.device, progress: bool = True):
        from tqdm import tqdm
        self.ds, self.device = dataset, device
        self.images, self.labels = [], []
        for i in tqdm(range(len(dataset)), desc="decode to memory", disable=not progress):
            img, lab = dataset.load(i)
            self.images.append(torch.from_numpy(img).permute(2, 0, 1).to(device))
            self.labels.append(torch.from_numpy(lab).to(device))

    def batch(self, indices: list[int], epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        ds = self.ds
        out = [augment(self.images[i], self.labels[i],
                       draw_params(sample_rng(ds.seed, epoch, i), *self.images[i].shape[-2:], ds.crop),
                       ds.crop, ds.spec, ds.info.ignore_index) for i in indices]
        return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])


def seed_worker(worker_id: int) -> None:
    """Loader workers: per-worker torch/numpy seeds from the loader's base seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random
    random.seed(seed)


# ---- statistics ----------------------------------------------------------------------------

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
    loader = torch.utils.data.DataLoader(_StatsItems(ds), batch_size=None, num_workers=workers)
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


# ---- pictures ------------------------------------------------------------------------------

def colorize(label: np.ndarray, palette) -> np.ndarray:
    """Class ids -> RGB; ids without a colour (ignore) are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[label]


def denormalize(image: torch.Tensor, spec: dict) -> np.ndarray:
    """Inverse of preprocess.normalize_, back to H x W x 3 uint8 RGB."""
    mean = torch.tensor(spec["mean"])[:, None, None]
    std = torch.tensor(spec["std"])[:, None, None]
    x = (image.cpu().float() * std + mean) / spec["value_scale"]
    if spec["channel_order"] == "BGR":
        x = x.flip(0)
    return x.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
