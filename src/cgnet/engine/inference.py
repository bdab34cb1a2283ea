"""The model over a dataset: multi-scale + flip inference (`predict_logits`), the confusion matrix
over a loader, all-reduced across processes (`evaluate`), and saved prediction pictures. The
commands that use it are in `cgnet.engine.commands`; the scores come from `cgnet.confusion`."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional
from torch.utils.data import DataLoader

from tqdm import tqdm

from ..common import autocast
from ..data.info import DatasetInfo
from ..data.listset import ignore_stop_signals, worker_context
from ..confusion import ConfusionMatrix
from ..images import read_rgb, write_image
from ..visualize import blend, colorize


def make_eval_loader(ds, rank: int = 0, world: int = 1, workers: int = 1, persistent: bool = False) -> DataLoader:
    """Batch-1 loader over `ds`; each rank takes every world-th image, without the padding
    DistributedSampler adds. `persistent` keeps the workers between passes (validation during
    training: no new worker processes every --val-every epochs)."""
    return DataLoader(ds, batch_size=1, sampler=list(range(rank, len(ds), world)), num_workers=workers,
                      persistent_workers=persistent and workers > 0, worker_init_fn=ignore_stop_signals,
                      multiprocessing_context=worker_context(workers))


@torch.no_grad()
def predict_logits(model, image: torch.Tensor, *, scales=(1.0,), flip: bool = False, precision: str = "fp32",
                   channels_last: bool = False) -> torch.Tensor:
    """Class scores at the image's size.

    Args:
        model: B x 3 x H x W -> B x C x h x w logits.
        image: B x 3 x H x W normalised input.
        scales: the input is resized by each factor (bilinear) and the output resized back.
        flip: add the horizontally mirrored view of each scale (its output mirrored back).
        precision: autocast precision ('fp32', 'bf16', 'fp16').

    Returns:
        B x C x H x W: softmax averaged over the views when there are several, plain logits for one.
    """
    size = image.shape[-2:]
    views = [(s, f) for s in scales for f in ((False, True) if flip else (False,))]
    total = None
    for scale, flipped in views:
        x = image
        if scale != 1.0:
            x = functional.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        if flipped:
            x = x.flip(-1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(image.device, precision):
            out = model(x).float()
        if flipped:
            out = out.flip(-1)
        if out.shape[-2:] != size:
            out = functional.interpolate(out, size=size, mode="bilinear", align_corners=False)
        if len(views) > 1:
            out = out.softmax(1)
        total = out if total is None else total + out
    return total


@torch.no_grad()
def evaluate(model, loader, info: DatasetInfo, device, *, precision: str = "fp32", channels_last: bool = False,
             scales=(1.0,), flip: bool = False, progress: bool = True, save_dir: Path | None = None) -> dict:
    """Confusion matrix over the loader's images (all-reduced across ranks) -> scores.

    Returns:
        `ConfusionMatrix.scores()`: miou, iou per class, pixel_acc, mean_acc, miou_original, pixels.
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(info.num_classes, info.ignore_index, device)
    ds = loader.dataset
    for image, label, index in tqdm(loader, desc="evaluate", disable=not progress, leave=False, dynamic_ncols=True):
        logits = predict_logits(model, image.to(device), scales=scales, flip=flip, precision=precision,
                                channels_last=channels_last)
        pred = logits.argmax(1)
        if label.numel():
            cm.update(pred, label.to(device))
        if save_dir is not None:
            for p, i in zip(pred, index.tolist()):
                save_prediction(p.cpu().numpy().astype(np.uint8), ds.samples[i].image, info, save_dir)
    cm.all_reduce()
    model.train(was_training)
    return cm.scores()


def save_prediction(pred: np.ndarray, image_path: Path, info: DatasetInfo, save_dir: Path) -> None:
    """Train-id PNG, colour PNG and overlay (image blended with the colours) for one image."""
    stem = image_path.stem
    for sub in ("trainids", "color", "overlay"):
        (save_dir / sub).mkdir(parents=True, exist_ok=True)
    color = colorize(pred, info.palette)
    write_image(save_dir / "trainids" / f"{stem}.png", pred)
    write_image(save_dir / "color" / f"{stem}.png", cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
    overlay = blend(read_rgb(image_path), color, 0.5)
    write_image(save_dir / "overlay" / f"{stem}.jpg", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
