"""Confusion matrix and the standard segmentation scores.

The standard mIoU (the Cityscapes benchmark's) averages IoU = TP / (TP + FP + FN) over every
class that appears in the ground truth or in the prediction; pixels whose ground truth is the
ignore id count nowhere. The original CGNet release averaged only over classes with at least one
true positive, which leaves out classes the model never gets right and can read higher.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .common import InputError


class ConfusionMatrix:
    """Accumulated on the device with bincount; rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int, device: torch.device | str = "cpu"):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape:
            raise InputError(f"prediction {tuple(pred.shape)} and ground truth {tuple(target.shape)} differ in shape")
        k = self.num_classes
        keep = target != self.ignore_index
        t, p = target[keep].long(), pred[keep].long()
        bad = (t < 0) | (t >= k)
        if bad.any():
            raise InputError(f"ground-truth ids {sorted(set(t[bad].tolist()))} are neither classes "
                             f"0..{k - 1} nor the ignore id {self.ignore_index}")
        self.mat += torch.bincount(t * k + p, minlength=k * k).reshape(k, k)

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat)

    def scores(self) -> dict:
        m = self.mat.double().cpu()
        tp = m.diag()
        gt, pr = m.sum(1), m.sum(0)
        union = gt + pr - tp
        present = union > 0
        iou = torch.where(present, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
        total = m.sum()
        return {
            "miou": float(iou[present].mean()) if present.any() else float("nan"),
            "iou": iou.tolist(),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "mean_acc": float(acc[gt > 0].mean()) if (gt > 0).any() else float("nan"),
            # the original release's mean: only classes with a true positive
            "miou_original": float(iou[tp > 0].mean()) if (tp > 0).any() else float("nan"),
            "pixels": int(total),
        }


def scores_table(scores: dict, class_names) -> str:
    lines = [f"{'class':<16}{'IoU %':>8}"]
    for name, v in zip(class_names, scores["iou"]):
        lines.append(f"{name:<16}{'-' if v != v else f'{100 * v:.2f}':>8}")
    lines += [f"{'mIoU':<16}{100 * scores['miou']:>8.2f}",
              f"{'pixel acc':<16}{100 * scores['pixel_acc']:>8.2f}",
              f"{'mean acc':<16}{100 * scores['mean_acc']:>8.2f}"]
    return "\n".join(lines)
