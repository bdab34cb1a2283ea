"""The original release's training augmentation.

Scale by 0.5 + k/10 with k uniform in 0..15 (bilinear image, nearest label), normalise, pad
bottom/right to the crop size with 0 (the image, after normalisation) and the ignore id (the
label), random crop, horizontal flip with probability 1/2. The random draws of a sample depend
only on (seed, epoch, index), never on the worker that loads it, so runs can be resumed exactly
and give the same crops with any number of workers.

Two implementations of the same steps and draws:
- `augment_batch` (the CPU: loader workers and the in-memory loader): 8-bit all the way to the
  crop. OpenCV's bilinear resize of the uint8 image (fixed-point weights, rounded to 8 bits),
  the label's nearest neighbours by index (torch's `nearest` rule, so labels are identical to
  `augment`'s), only the crop's pixels copied (flipped as they are copied), and one normalisation
  of the whole batch by a 256-entry table per channel (the float32 values `normalize_` gives for
  each 8-bit value). numpy and OpenCV (one thread) only: it runs beside the training step in a
  background thread without taking torch's threads.
- `augment` (tensors on any device: the in-memory loader on a GPU): float bilinear resize of the
  whole image, then the same steps. Its image values differ from `augment_batch`'s by the 8-bit
  rounding of the resize (at most about one 8-bit level); labels are the same.
"""
from __future__ import annotations

import cv2
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


def crop_extent(params: dict, crop: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the crop that hold the scaled image; the rest (bottom rows, and right
    columns, left ones after a flip) is padding."""
    (h, w), t, l = params["size"], params["top"], params["left"]
    return min(crop[0], h - t), min(crop[1], w - l)


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output index under torch's `nearest` interpolation (int64, size_out):
    identity at the same size, i // 2 at twice the size, else floor(i * (in / out)) in float32,
    clamped to in - 1."""
    out = np.arange(size_out)
    if size_out == size_in:
        return out
    if size_out == 2 * size_in:
        return out >> 1
    scale = np.float32(size_in) / np.float32(size_out)
    return np.minimum(np.floor(out.astype(np.float32) * scale).astype(np.int64), size_in - 1)


def normalization_table(spec: dict) -> np.ndarray:
    """3 x 256 float32: `normalize_`'s value of each 8-bit level in each channel."""
    levels = torch.arange(256, dtype=torch.float32).expand(3, 1, 256).clone()
    return normalize_(levels, spec)[:, 0].numpy()


def augment_batch(images: list[np.ndarray], labels: list[np.ndarray], params: list[dict], crop: tuple[int, int],
                  spec: dict, ignore_index: int, softs: list[np.ndarray] | None = None):
    """The augmentation of a batch, 8-bit until the crop is cut (see the module's docstring).

    Args:
        images: H x W x 3 uint8 RGB arrays (sizes may differ).
        labels: H x W uint8 class ids, one per image.
        params: `draw_params` of each sample.
        crop: (height, width) of the crops.
        spec: the preprocessing (`cgnet.preprocess`).
        ignore_index: the label of padded pixels.
        softs: a distillation teacher's H x W x C uint8 probabilities (`cgnet.engine.teacher`), one
            per image, or None: scaled bilinearly (as the image), cropped and flipped with it.

    Returns:
        float32 B x 3 x crop_h x crop_w normalised images (0 where padded) and int64
        B x crop_h x crop_w labels (`ignore_index` where padded); with `softs`, also uint8
        B x crop_h x crop_w x C soft targets (all 0 where padded).
    """
    ch, cw = crop
    pixels = np.zeros((len(images), ch, cw, 3), np.uint8)
    ids = np.full((len(images), ch, cw), ignore_index, np.uint8)
    soft_out = None if softs is None else np.zeros((len(images), ch, cw, softs[0].shape[2]), np.uint8)
    extents = []
    for i, (image, label, p) in enumerate(zip(images, labels, params)):
        (h, w), t, l = p["size"], p["top"], p["left"]
        vh, vw = crop_extent(p, crop)
        soft = None if softs is None else softs[i]
        if (h, w) != image.shape[:2]:
            # only the rows and columns the crop keeps
            rows = nearest_indices(label.shape[0], h)[t:t + vh]
            cols = nearest_indices(label.shape[1], w)[l:l + vw]
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
            label = label[rows[:, None], cols]
            if soft is not None:
                soft = cv2.resize(soft, (w, h), interpolation=cv2.INTER_LINEAR)
        else:
            label = label[t:t + vh, l:l + vw]
        image = image[t:t + vh, l:l + vw]
        if soft is not None:
            soft = soft[t:t + vh, l:l + vw]
        if p["flip"]:
            pixels[i, :vh, cw - vw:], ids[i, :vh, cw - vw:] = image[:, ::-1], label[:, ::-1]
            if soft is not None:
                soft_out[i, :vh, cw - vw:] = soft[:, ::-1]
        else:
            pixels[i, :vh, :vw], ids[i, :vh, :vw] = image, label
            if soft is not None:
                soft_out[i, :vh, :vw] = soft
        extents.append((vh, vw, p["flip"]))
    table = normalization_table(spec)
    out = np.empty((len(images), 3, ch, cw), np.float32)
    for c in range(3):
        np.take(table[c], pixels[..., c], out=out[:, c], mode="clip")  # clip: unbuffered (levels are 0..255)
    for i, (vh, vw, flip) in enumerate(extents):
        out[i, :, vh:] = 0
        if flip:
            out[i, :, :, :cw - vw] = 0
        else:
            out[i, :, :, vw:] = 0
    if soft_out is not None:
        return torch.from_numpy(out), torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(soft_out)
    return torch.from_numpy(out), torch.from_numpy(ids.astype(np.int64))


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])
