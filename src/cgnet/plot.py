"""Training curves as a PNG drawn with OpenCV (no plotting library needed)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from .common import MissingFileError
from .images import write_image

PANEL_W, PANEL_H, MARGIN = 420, 300, 50


COLORS = [(20, 20, 200), (200, 60, 20), (40, 140, 40), (160, 40, 160), (0, 140, 200)]  # BGR


def _panel(series, title: str, xlabel: str) -> np.ndarray:
    """One chart of several lines: `series` is a list of (xs, ys, BGR colour, label or None),
    all on the same axes (x from 0, y from the smallest to the largest value)."""
    img = np.full((PANEL_H, PANEL_W, 3), 255, np.uint8)
    x0, y0, x1, y1 = MARGIN, 25, PANEL_W - 15, PANEL_H - 40
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    cv2.putText(img, title, (x0, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, ((x0 + x1) // 2 - 20, PANEL_H - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    lines = []
    for xs, ys, color, label in series:
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None and np.isfinite(y)]
        if pts:
            lines.append((np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float), color, label))
    if not lines:
        return img
    xmin, xmax = 0.0, max(max(xv.max() for xv, *_ in lines), 1e-9)
    xmin = min(xmin, min(xv.min() for xv, *_ in lines))
    ymin, ymax = min(yv.min() for _, yv, *_ in lines), max(yv.max() for _, yv, *_ in lines)
    if ymax - ymin < 1e-12:
        ymin, ymax = ymin - 0.5, ymax + 0.5
    for label, yy in ((ymax, y0), (ymin, y1)):
        cv2.putText(img, f"{label:.3g}", (2, int(yy) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"{xmax:.4g}", (x1 - 30, y1 + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (xv, yv, color, label) in enumerate(lines):
        px = x0 + (xv - xmin) / (xmax - xmin) * (x1 - x0)
        py = y1 - (yv - ymin) / (ymax - ymin) * (y1 - y0)
        line = np.stack([px, py], 1).round().astype(np.int32)
        cv2.polylines(img, [line], False, color, 2, cv2.LINE_AA)
        for p in line if len(line) < 60 else []:
            cv2.circle(img, tuple(int(v) for v in p), 3, color, -1)
        if label:
            cv2.putText(img, label, (x0 + 8, y1 - 10 - 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    return img


def read_log(run_dir: Path) -> list[dict]:
    """The epoch records of a run folder's log.jsonl."""
    log = Path(run_dir) / "log.jsonl"
    if not log.is_file():
        raise MissingFileError(f"{log} does not exist: not a run folder of cgnet train")
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def plot_history(history: list[dict], path: Path, x: str = "epoch") -> Path:
    """Loss, learning rate and validation mIoU against epochs (or 'elapsed_s')."""
    xs = [r[x] / (60 if x == "elapsed_s" else 1) for r in history]
    xlabel = "minutes" if x == "elapsed_s" else x
    val = [(xx, 100 * r["val_miou"]) for xx, r in zip(xs, history) if "val_miou" in r]
    panels = [_panel([(xs, [r["loss"] for r in history], COLORS[1], None)], "training loss", xlabel),
              _panel([(xs, [r["lr"] for r in history], COLORS[2], None)], "learning rate", xlabel),
              _panel([([v[0] for v in val], [v[1] for v in val], COLORS[0], None)], "val mIoU %", xlabel)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.concatenate(panels, 1))
    return path


def plot_run(run_dir: Path, x: str = "epoch") -> Path:
    history = read_log(run_dir)
    return plot_history(history, Path(run_dir) / ("curve.png" if x == "epoch" else "curve_time.png"), x=x)


def plot_compare(run_dirs: list[Path], path: Path, labels: list[str] | None = None) -> Path:
    """Several runs in one chart: validation mIoU against wall-clock minutes (the runs' own
    elapsed_s, setup included), one coloured line each, labelled with the run folder's name.

    Args:
        run_dirs: run folders of cgnet train (at most 5).
        path: the PNG to write.
        labels: a label per run (default: the folders' names).
    """
    if len(run_dirs) > len(COLORS):
        raise MissingFileError(f"at most {len(COLORS)} runs in one chart, got {len(run_dirs)}")
    labels = labels or [Path(r).name for r in run_dirs]
    series = []
    for run_dir, color, label in zip(run_dirs, COLORS, labels):
        val = [(r["elapsed_s"] / 60, 100 * r["val_miou"]) for r in read_log(run_dir) if "val_miou" in r]
        series.append(([v[0] for v in val], [v[1] for v in val], color, label))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, _panel(series, "val mIoU % against wall-clock", "minutes"))
    return path


# ---- cgnet plot ----------------------------------------------------------------------------------

def add_plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="+", help="run folder(s) of cgnet train")
    p.add_argument("--out", help="with several runs: the comparison PNG (default compare.png)")


def cmd_plot(args: argparse.Namespace) -> int:
    """`cgnet plot`: one run's curves against epochs and wall-clock, or several runs compared."""
    if len(args.run) > 1 or args.out:
        print(plot_compare([Path(r) for r in args.run], Path(args.out or "compare.png")))
        return 0
    for x in ("epoch", "elapsed_s"):
        print(plot_run(Path(args.run[0]), x=x))
    return 0
