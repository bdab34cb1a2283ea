"""The original release's training augmentation, as plain tensor code that runs on any device.

Scale by 0.5 + k/10 with k uniform in 0..15 (bilinear image, nearest label), normalise, pad
bottom/right to the crop size with 0 (the image, after normalisation) and the ignore id (the
label), random crop, horizontal flip with probability 1/2. The random draws of a sample depend
only on (seed, epoch, index), never on the worker that loads it, so runs can be resumed exactly
and give the same crops with any number of workers (bilinear resizing can differ in the last
bit between thread counts).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional

from ..preprocess import normalize_

SCALES = tuple(0.5 + k / 10 for k in range(16))


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
        img = functional.interpolate(img, size=params["size"], mode="bilinear", align_corners=False)
        lab = functional.interpolate(lab, size=params["size"], mode="nearest")
    img = normalize_(img[0], spec)
    lab = lab[0, 0]
    h, w = params["size"]
    if h < crop[0] or w < crop[1]:
        img = functional.pad(img, (0, max(0, crop[1] - w), 0, max(0, crop[0] - h)), value=0.0)
        lab = functional.pad(lab, (0, max(0, crop[1] - w), 0, max(0, crop[0] - h)), value=float(ignore_index))
    t, l = params["top"], params["left"]
    img = img[:, t:t + crop[0], l:l + crop[1]]
    lab = lab[t:t + crop[0], l:l + crop[1]]
    if params["flip"]:
        img, lab = img.flip(-1), lab.flip(-1)
    return img.contiguous(), lab.long()


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])
