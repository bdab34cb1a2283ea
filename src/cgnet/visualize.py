"""Pictures of predictions: class colours, overlays and the inverse of the normalisation."""
from __future__ import annotations

import cv2
import numpy as np
import torch


def default_palette(num_classes: int) -> list[list[int]]:
    """A fixed, well-spread RGB colour per class, for models whose checkpoint names none."""
    return [[(37 * i) % 256, (97 * i + 80) % 256, (151 * i + 160) % 256] for i in range(num_classes)]


def colorize(label: np.ndarray, palette) -> np.ndarray:
    """H x W class ids -> H x W x 3 uint8 RGB; ids without a colour (ignore) are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[label]


def blend(image: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) * image + alpha * colours, rounded, uint8."""
    return cv2.addWeighted(image, 1.0 - alpha, color, alpha, 0.0)


def denormalize(image: torch.Tensor, spec: dict) -> np.ndarray:
    """Inverse of preprocess.normalize_: 3 x H x W float -> H x W x 3 uint8 RGB."""
    mean = torch.tensor(spec["mean"])[:, None, None]
    std = torch.tensor(spec["std"])[:, None, None]
    x = (image.cpu().float() * std + mean) / spec["value_scale"]
    if spec["channel_order"] == "BGR":
        x = x.flip(0)
    return x.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
