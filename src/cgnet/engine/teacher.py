"""Soft targets for distillation: a teacher's class probabilities on every training image, computed
once and stored outside the repository, then read by `cgnet train --teacher DIR`.

The teacher is usually the model's own multi-scale + flip prediction (`predict_logits` with several
views: the softmax averaged over them), which scores higher than its single-scale pass; distilling
it teaches the single-scale pass what the views agree on, at no cost at inference.

Storage: one `<image stem>.npy` per training image, H x W x C uint8, the probability times 255
rounded (a step of 1/255; `read_soft` renormalises), at the image's own size, so the training
augmentation can scale, crop and flip it with the image. `teacher.json` records the weights
(sha256), the views, the classes and the list it was computed on.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from tqdm import tqdm

from ..common import CGNetError
from ..fileio import atomic_open, write_atomic
from .inference import predict_logits

MANIFEST = "teacher.json"
TEACHER_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # the views of `cgnet eval --scales ... --flip`


class TeacherError(CGNetError, ValueError):
    """A teacher folder that does not fit the run: the message names the folder and what is wrong."""


def soft_path(folder: Path, image: Path) -> Path:
    return Path(folder) / f"{Path(image).stem}.npy"


def quantize(probs: torch.Tensor) -> np.ndarray:
    """C x H x W probabilities -> H x W x C uint8 (p * 255, rounded)."""
    return (probs.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


@torch.no_grad()
def write_teacher(model, dataset, folder: Path, *, scales=TEACHER_SCALES, flip: bool = True,
                  weights: str = "", weights_sha256: str = "", progress: bool = True) -> dict:
    """The teacher's probabilities for every item of `dataset` (a SegDataset, train=False), one
    file each in `folder`; items already written are skipped, so an interrupted run continues.

    Args:
        weights, weights_sha256: the teacher's name or path and its file's digest, kept in the
            manifest (a name such as 'camvid' means other weights after a new release).

    Returns the manifest written to folder/teacher.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    views = len(scales) * (2 if flip else 1)
    for index in tqdm(range(len(dataset)), desc="teacher", disable=not progress, dynamic_ncols=True):
        sample = dataset.samples[index]
        path = soft_path(folder, sample.image)
        if path.exists():
            continue
        image, _, _ = dataset[index]
        probs = predict_logits(model, image[None], scales=scales, flip=flip, channels_last=True)[0]
        if views == 1:
            probs = probs.softmax(0)
        else:
            probs = probs / views
        with atomic_open(path) as f:
            np.save(f, quantize(probs))
    manifest = {"classes": list(dataset.info.classes), "scales": list(scales), "flip": flip,
                "weights": weights, "weights_sha256": weights_sha256, "list": str(dataset.list_file), "images": len(dataset)}
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def read_manifest(folder: Path, classes: list[str]) -> dict:
    """The teacher folder's manifest, checked against the run's classes."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise TeacherError(f"--teacher {folder}: no {MANIFEST} (write the folder with `cgnet soft-targets`)")
    manifest = json.loads(path.read_text())
    if list(manifest["classes"]) != list(classes):
        raise TeacherError(f"--teacher {folder}: the teacher's classes {manifest['classes']} are not this run's "
                           f"{list(classes)}")
    return manifest


def read_soft(folder: Path, image: Path, shape: tuple[int, int], num_classes: int) -> np.ndarray:
    """H x W x C uint8 soft targets of one training image, checked against its size."""
    path = soft_path(folder, image)
    if not path.is_file():
        raise TeacherError(f"--teacher {folder}: no soft targets for {image} ({path.name} missing)")
    soft = np.load(path, allow_pickle=False)
    if soft.shape != (*shape, num_classes) or soft.dtype != np.uint8:
        raise TeacherError(f"--teacher {folder}: {path.name} is {soft.dtype} {soft.shape}, expected uint8 "
                           f"{(*shape, num_classes)}")
    return soft


class DistillLoss(nn.Module):
    """The run's class-weighted cross-entropy on the labels, plus `weight` times the cross-entropy
    against the teacher's soft targets (KL divergence to the teacher plus its constant entropy: the
    same gradient), averaged over the pixels the teacher covers (padding has all-zero targets).

    Args:
        criterion: the run's `nn.CrossEntropyLoss` (its class weights and ignore index are used).
        weight: the soft term's weight.

    Shapes: logits B x C x H x W float; labels B x H x W int64; soft B x H x W x C uint8 (or None:
    the plain cross-entropy)."""

    def __init__(self, criterion: nn.CrossEntropyLoss, weight: float):
        super().__init__()
        self.class_weight = criterion.weight
        self.ignore_index, self.soft_weight = criterion.ignore_index, weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor | None = None) -> torch.Tensor:
        logp = functional.log_softmax(logits, 1)
        loss = functional.nll_loss(logp, labels, weight=self.class_weight, ignore_index=self.ignore_index)
        if soft is None:
            return loss
        target = soft.permute(0, 3, 1, 2).float()
        total = target.sum(1, keepdim=True)
        target = target / total.clamp_min(1.0)
        covered = (total > 0).sum().clamp_min(1)
        return loss + self.soft_weight * -(target * logp).sum() / covered
