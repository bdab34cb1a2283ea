"""Training curves as a PNG drawn with OpenCV (no plotting library needed)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from .common import MissingFileError

PANEL_W, PANEL_H, MARGIN = 420, 300, 50


def _panel(xs, ys, title: str, xlabel: str, color) -> np.ndarray:
    img = np.full((PANEL_H, PANEL_W, 3), 255, np.uint8)
    x0, y0, x1, y1 = MARGIN, 25, PANEL_W - 15, PANEL_H - 40
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    cv2.putText(img, title, (x0, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, ((x0 + x1) // 2 - 20, PANEL_H - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None and np.isfinite(y)]
    if not pts:
        return img
    xv, yv = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
    xmin, xmax = min(0.0, xv.min()), max(xv.max(), 1e-9)
    ymin, ymax = yv.min(), yv.max()
    if ymax - ymin < 1e-12:
        ymin, ymax = ymin - 0.5, ymax + 0.5
    px = x0 + (xv - xmin) / (xmax - xmin) * (x1 - x0)
    py = y1 - (yv - ymin) / (ymax - ymin) * (y1 - y0)
    for label, yy in ((ymax, y0), (ymin, y1)):
        cv2.putText(img, f"{label:.3g}", (2, int(yy) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"{xmax:.4g}", (x1 - 30, y1 + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    line = np.stack([px, py], 1).round().astype(np.int32)
    cv2.polylines(img, [line], False, color, 2, cv2.LINE_AA)
    for p in line if len(line) < 60 else []:
        cv2.circle(img, tuple(int(v) for v in p), 3, color, -1)
    return img


def plot_history(history: list[dict], path: Path, x: str = "epoch") -> Path:
    """Loss, learning rate and validation mIoU against epochs (or 'elapsed_s')."""
    xs = [r[x] / (60 if x == "elapsed_s" else 1) for r in history]
    xlabel = "minutes" if x == "elapsed_s" else x
    val = [(xx, 100 * r["val_miou"]) for xx, r in zip(xs, history) if "val_miou" in r]
    panels = [_panel(xs, [r["loss"] for r in history], "training loss", xlabel, (200, 60, 20)),
              _panel(xs, [r["lr"] for r in history], "learning rate", xlabel, (40, 140, 40)),
              _panel([v[0] for v in val], [v[1] for v in val], "val mIoU %", xlabel, (20, 20, 200))]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(panels, 1))
    return path


def plot_run(run_dir: Path, x: str = "epoch") -> Path:
    log = Path(run_dir) / "log.jsonl"
    if not log.is_file():
        raise MissingFileError(f"{log} does not exist: not a run folder of cgnet train")
    history = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return plot_history(history, Path(run_dir) / ("curve.png" if x == "epoch" else "curve_time.png"), x=x)
