"""List-file datasets: `<image> <label>` lines read, validated and served as tensors.

A list file has one `<image> <label>` pair per line, relative to the data root (test lists may
hold images only). Images are read with OpenCV and turned into RGB; grayscale and RGBA images
are converted. Every problem is reported with the list file, the line and the file involved.

Training items are augmented by `cgnet.data.augment`: on the CPU by `augment_batch` (8-bit, in
loader workers or, with `MemoryTrainSet`, in background threads over images decoded once), on a
GPU by `augment` over images decoded once into its memory.
"""
from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ..preprocess import normalize_
from .augment import augment, augment_batch, draw_params, sample_rng
from .info import DatasetInfo, resolve_list_file
from ..common import InputError, MissingFileError
from ..images import read_rgb
from ..pipeline import prefetch

cv2.setNumThreads(1)  # loader workers parallelise across images; OpenCV threads would oversubscribe


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path | None
    where: str  # "list.txt:12", for error messages


def read_list(list_file: str | os.PathLike, root: str | os.PathLike, *, labels: bool = True,
              check_files: bool = True, progress: bool = True) -> list[Sample]:
    """Parse a list file; `labels=True` requires a label on every line.

    With `check_files`, every image and label is checked to exist and be readable, in one pass
    before any is decoded (with a progress bar on lists of more than 2,000 lines), so a missing
    file is reported at once rather than after the frames before it were processed.
    """
    list_file, root = Path(list_file), Path(root)
    if not list_file.is_file():
        raise MissingFileError(f"list file {list_file} does not exist")
    lines = list_file.read_text().splitlines()
    samples = []
    for no, line in enumerate(tqdm(lines, desc=f"checking {list_file.name}", unit="line", leave=False,
                                   disable=not progress or len(lines) <= 2000), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{list_file}:{no}"
        if len(fields) > 2 or (labels and len(fields) != 2):
            want = "'<image> <label>'" if labels else "'<image> [<label>]'"
            raise InputError(f"{where}: expected {want}, got {line.strip()!r}")
        image = root / fields[0]
        label = root / fields[1] if len(fields) == 2 else None
        if check_files:
            for kind, path in (("image", image), ("label", label)):
                if path is not None and not path.is_file():
                    raise MissingFileError(f"{where}: {kind} {path} does not exist")
                if path is not None and not os.access(path, os.R_OK):
                    raise InputError(f"{where}: {kind} {path} is not readable (permissions)")
        samples.append(Sample(image, label, where))
    if not samples:
        raise InputError(f"{list_file}: the list is empty")
    return samples


def read_label(path: Path, num_classes: int, ignore_index: int, where: str = "") -> np.ndarray:
    """H x W uint8 class ids, checked against [0, num_classes) and the ignore id."""
    prefix = f"{where}: " if where else ""
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise InputError(f"{prefix}cannot read label {path} (corrupt or not an image)")
    if lab.ndim != 2 or lab.dtype != np.uint8:
        raise InputError(f"{prefix}label {path} must be a single-channel 8-bit image of class ids, "
                         f"got shape {lab.shape} {lab.dtype}")
    ids = np.unique(lab)
    bad = [int(i) for i in ids if i >= num_classes and i != ignore_index]
    if bad:
        raise InputError(f"{prefix}label {path} has ids {bad} outside [0, {num_classes}) that are not "
                         f"the ignore id {ignore_index}")
    return lab


class SegDataset(Dataset):
    """A list-file dataset. Training mode returns augmented crops; otherwise full images.

    Items are (image float 3 x H x W, label int64 H x W, index). Without labels (test lists) the
    label is an empty tensor.
    """

    def __init__(self, root: str | os.PathLike, list_file: str | os.PathLike, info: DatasetInfo,
                 spec: dict, *, train: bool = False, crop: tuple[int, int] = (360, 360), seed: int = 0,
                 labels: bool = True):
        self.root, self.info, self.spec = Path(root), info, spec
        self.list_file = list_path = resolve_list_file(self.root, list_file)
        self.samples = read_list(list_path, self.root, labels=labels or train)
        self.train, self.crop, self.seed, self.epoch = train, tuple(crop), seed, 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Loader workers are re-created each epoch, so they see the new value."""
        self.epoch = epoch

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decoded, validated uint8 RGB image (in the displayed frame: EXIF orientation applied) and
        label ids (None for image-only lists)."""
        s = self.samples[index]
        img = read_rgb(s.image, s.where)
        if s.label is None:
            return img, None
        lab = read_label(s.label, self.info.num_classes, self.info.ignore_index, s.where)
        if lab.shape != img.shape[:2]:
            raise InputError(f"{s.where}: image {s.image} is {img.shape[1]}x{img.shape[0]} but label "
                             f"{s.label} is {lab.shape[1]}x{lab.shape[0]} (width x height)")
        return img, lab

    def __getitem__(self, index: int):
        img, lab = self.load(index)
        image = torch.from_numpy(img).permute(2, 0, 1)
        label = torch.from_numpy(lab) if lab is not None else torch.empty(0, dtype=torch.uint8)
        if not self.train:
            return normalize_(image.float(), self.spec), label.long(), index
        images, labels = augment_batch([img], [lab], [self.params(index, self.epoch, img.shape[:2])], self.crop,
                                       self.spec, self.info.ignore_index)
        return images[0], labels[0], index

    def params(self, index: int, epoch: int, size: tuple[int, int]) -> dict:
        """The augmentation's draws for an item of an epoch (a function of seed, epoch and index)."""
        return draw_params(sample_rng(self.seed, epoch, index), size[0], size[1], self.crop)


class MemoryTrainSet:
    """Training crops from images decoded once and kept as uint8: in the process's memory on the
    CPU (augmented by `augment_batch`, in background threads: `batches`), in the device's memory
    on a GPU (augmented there by `augment`, where loader workers cannot keep up). The same random
    draws as SegDataset; on the CPU the same crops too.

    Args:
        dataset: the training SegDataset (its list, crop, preprocessing and seed).
        device: where the images are kept and augmented.
        progress: a progress bar while decoding.
        soft_reader: (image path, (H, W)) -> H x W x C uint8 distillation targets kept beside each
            image (the CPU only); batches then carry them as a third tensor (`augment_batch`).
    """

    def __init__(self, dataset: SegDataset, device: torch.device, progress: bool = True, soft_reader=None):
        self.ds, self.device = dataset, torch.device(device)
        self.images, self.labels = [], []
        self.softs = None if soft_reader is None else []
        for i in tqdm(range(len(dataset)), desc="decode to memory", disable=not progress):
            img, lab = dataset.load(i)
            if self.softs is not None:
                self.softs.append(soft_reader(dataset.samples[i].image, img.shape[:2]))
            if self.device.type == "cpu":
                self.images.append(img)
                self.labels.append(lab)
            else:
                self.images.append(torch.from_numpy(img).permute(2, 0, 1).to(device))
                self.labels.append(torch.from_numpy(lab).to(device))

    def batch(self, indices: list[int], epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """B x 3 x H x W float images and B x H x W int64 labels: the items `indices` of an epoch."""
        ds = self.ds
        if self.device.type == "cpu":
            params = [ds.params(i, epoch, self.images[i].shape[:2]) for i in indices]
            return augment_batch([self.images[i] for i in indices], [self.labels[i] for i in indices], params,
                                 ds.crop, ds.spec, ds.info.ignore_index,
                                 None if self.softs is None else [self.softs[i] for i in indices])
        out = [augment(self.images[i], self.labels[i], ds.params(i, epoch, self.images[i].shape[-2:]),
                       ds.crop, ds.spec, ds.info.ignore_index) for i in indices]
        return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])

    def batches(self, groups: list[list[int]], epoch: int, threads: int = 0):
        """`batch` of each group of indices, in order; on the CPU with `threads` > 0 built ahead
        in that many background threads (at most threads + 1 batches ahead), beside the step."""
        threads = threads if self.device.type == "cpu" else 0
        return prefetch(groups, lambda indices: self.batch(indices, epoch), threads, name="cgnet-batches")


def memory_estimate(dataset: SegDataset) -> int:
    """Bytes that `MemoryTrainSet` would keep for `dataset`: its first image and label decoded,
    times the list's length (CamVid's frames are all one size)."""
    img, lab = dataset.load(0)
    return len(dataset) * (img.nbytes + (lab.nbytes if lab is not None else 0))


def available_memory() -> int | None:
    """Bytes of memory the system has available (Linux's MemAvailable); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def worker_context(workers: int):
    """The multiprocessing context of a DataLoader's workers: forkserver once JAX is imported in this
    process (LiteRT's converter, `cgnet export --format litert`, brings it: JAX runs threads, and a
    fork of a process with threads can deadlock, as JAX's own warning says), else None (the
    platform's default: fork on Linux, which starts workers fastest). None without workers, where
    DataLoader takes no context. The forkserver imports this module once, so each worker it forks
    starts with torch and cgnet's data code loaded."""
    if workers == 0 or "jax" not in sys.modules:
        return None
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def ignore_stop_signals(worker_id: int = 0) -> None:
    """Loader workers leave Ctrl-C and others' SIGTERM to the main process, which saves the run and
    then shuts them down (and they exit by themselves when it dies). A signal to the whole process
    group (`pkill -f`, systemd, a scheduler's preemption) killed a persistent validation worker
    first, and the training stopped with a traceback instead of saving where it stood.

    SIGTERM from the process that started the worker still ends it (exit status 0, as PyTorch's own
    worker handler does): that is how multiprocessing stops the workers of a loader still alive at
    interpreter exit, and a worker ignoring it kept the exit waiting forever. SIGTERM is blocked and
    a thread reads the sender of each one (`sigwaitinfo`), which a Python signal handler cannot."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is None:  # called in the main process (num_workers=0): nothing to do
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the thread below inherits the mask
    threading.Thread(target=_exit_on_sigterm_from, args=(parent.pid,), daemon=True,
                     name="cgnet-sigterm").start()


def _exit_on_sigterm_from(pid: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != pid:
        pass
    os._exit(0)


def seed_worker(worker_id: int) -> None:
    """Loader workers: per-worker torch/numpy seeds from the loader's base seed; stop signals are
    the main process's (`ignore_stop_signals`)."""
    ignore_stop_signals(worker_id)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
