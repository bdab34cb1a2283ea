"""How an image becomes the network's input, described as JSON-able data stored in checkpoints.

A spec is a dict ``{"mode", "channel_order", "value_scale", "mean", "std"}`` and the input is
``(image_in_channel_order * value_scale - mean) / std`` per channel.

Two modes:
- ``standard`` (our default): RGB, values scaled to [0, 1], per-channel mean and std.
- ``original``: the original release's convention, needed for its checkpoints. Images stay on
  the 0-255 scale with no division by std, and the mean vector, which the release computed on
  OpenCV's BGR arrays, is subtracted from the RGB array as it is: channel 0 (R) gets the B mean.
  The spec stores the vector in the order it is subtracted, so the quirk is explicit.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .common import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vec3(name: str, values: Sequence[float]) -> list[float]:
    values = [float(v) for v in values]
    if len(values) != 3:
        raise InputError(f"{name} needs 3 values (one per channel), got {len(values)}: {values}")
    return values


def standard_spec(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> dict:
    """RGB in [0, 1], then (x - mean) / std; mean and std are on the [0, 1] scale."""
    std = _vec3("std", std)
    if min(std) <= 0:
        raise InputError(f"std must be positive, got {std}")
    return {"mode": "standard", "channel_order": "RGB", "value_scale": 1.0 / 255.0,
            "mean": _vec3("mean", mean), "std": std}


def original_spec(bgr_mean: Sequence[float]) -> dict:
    """The original release: RGB on 0-255, minus the BGR-ordered mean vector, no std."""
    return {"mode": "original", "channel_order": "RGB", "value_scale": 1.0,
            "mean": _vec3("mean", bgr_mean), "std": [1.0, 1.0, 1.0]}


def make_spec(mode: str, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> dict:
    if mode == "standard":
        return standard_spec(mean if mean is not None else IMAGENET_MEAN,
                             std if std is not None else IMAGENET_STD)
    if mode == "original":
        if mean is None:
            raise InputError("the 'original' preprocessing needs the mean the weights were trained "
                             "with (--mean B,G,R on the 0-255 scale, as the release computed it)")
        if std is not None and any(s != 1.0 for s in std):
            raise InputError("the 'original' preprocessing divides by no std; leave --std out")
        return original_spec(mean)
    raise InputError(f"unknown preprocessing mode {mode!r}: expected 'standard' or 'original'")


def check_spec(spec: dict) -> dict:
    missing = {"mode", "channel_order", "value_scale", "mean", "std"} - set(spec)
    if missing:
        raise InputError(f"preprocessing spec lacks {sorted(missing)}: {spec}")
    if spec["channel_order"] not in ("RGB", "BGR"):
        raise InputError(f"channel_order must be 'RGB' or 'BGR', got {spec['channel_order']!r}")
    _vec3("mean", spec["mean"])
    _vec3("std", spec["std"])
    return spec


def to_tensor(image_rgb: np.ndarray, spec: dict) -> torch.Tensor:
    """H x W x 3 uint8 RGB array -> 3 x H x W float32 tensor, normalised as `spec` says."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise InputError(f"expected an H x W x 3 RGB image, got shape {image_rgb.shape}")
    x = torch.from_numpy(np.ascontiguousarray(image_rgb)).permute(2, 0, 1).float()
    if spec["channel_order"] == "BGR":
        x = x.flip(0)
    return normalize_(x, spec)


def normalize_(x: torch.Tensor, spec: dict) -> torch.Tensor:
    """In place on a float (..., 3, H, W) tensor of 0-255 values in the spec's channel order."""
    mean = torch.tensor(spec["mean"], dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(spec["std"], dtype=x.dtype, device=x.device)[:, None, None]
    return x.mul_(spec["value_scale"]).sub_(mean).div_(std)
