"""Cityscapes-scale training throughput, and the wall-clock it projects for the paper's recipe.

    python -m benchmarks.cityscapes_projection --device cuda [--images 64] [--iters 30] [-- --compile]

Runs the `cityscapes` preset's training step (680x680 crops, batch 16, class-weighted loss,
Adam, poly schedule) exactly as `cgnet train` builds it (data, statistics, model, optimiser and
step come from cgnet.engine.train), on a generated tree with the real Cityscapes layout and
names (2048x1024 frames of random pixels and labels; no Cityscapes data exists here), or on
--data-root. Options after `--` go to the training parser (e.g. --compile, --amp bf16,
--loader workers). It reports:
- images/s of the whole pipeline (the loader feeding the step), after warm-up;
- images/s of the step alone, on one batch held on the device;
- the projection: 300 epochs of the 2,975 training images (185 steps of 16 per epoch) at each
  rate, without validation and checkpoints. It is a projection from a short run on generated
  frames, not a measured training run: random-pixel PNGs decode slower than real frames, so a
  workers loader here is a pessimistic estimate.
--json FILE also writes the figures (the raw timings and what the table derives from them).
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cgnet.common import CGNetError, default_device
from cgnet.data import cityscapes
from cgnet.engine.config import add_train_args, resolve_config
from cgnet.engine.train import build_data, build_model_and_optimizer, wrap_for_training
from cgnet.fileio import check_writable, write_atomic
from benchmarks.devices import sync

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.cityscapes_tree import make_cityscapes_tree  # noqa: E402  (the tests' generator)

TRAIN_IMAGES = 2975  # Cityscapes gtFine train
EPOCHS = 300         # the paper's Cityscapes schedule (the `cityscapes` preset)


def timed_steps(step, batches, device: torch.device, warmup: int, iters: int) -> tuple[float, float]:
    """(seconds for `iters` steps after `warmup`, seconds of the warm-up) over an iterator of batches."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        images, labels = next(batches)
        step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
    sync(device)
    t1 = time.perf_counter()
    for _ in range(iters):
        images, labels = next(batches)
        step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
    sync(device)
    return time.perf_counter() - t1, t1 - t0


def endless(data):
    """The training batches epoch after epoch (the generated tree holds only a few batches)."""
    epoch = 0
    while True:
        yield from data.batches(epoch)
        epoch += 1


def projection_hours(images_per_s: float, batch: int) -> float:
    return EPOCHS * (TRAIN_IMAGES // batch) * batch / images_per_s / 3600


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--data-root", help="a Cityscapes tree (default: generate one in a temporary folder)")
    p.add_argument("--images", type=int, default=48, help="training frames to generate (default 48)")
    p.add_argument("--size", type=int, nargs=2, default=[1024, 2048], metavar=("H", "W"),
                   help="generated frame size (default Cityscapes' 1024 2048)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    p.add_argument("train_args", nargs="*", help="after --: options of cgnet train (e.g. --compile --amp bf16)")
    args = p.parse_args()
    device = torch.device(args.device or default_device())
    if args.json:
        try:
            check_writable(args.json, "--json", folder=False)
        except CGNetError as e:
            sys.exit(f"cityscapes_projection.py: error: {e}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root
        if root is None:
            t0 = time.perf_counter()
            root = make_cityscapes_tree(Path(tmp) / "cityscapes", size=tuple(args.size), coarse=False,
                                        splits={"train": {"aachen": args.images}, "val": {"frankfurt": 1}})
            cityscapes.convert_train_ids(root, workers=2, progress=False)  # what `cgnet data cityscapes` does
            cityscapes.write_lists(root)
            print(f"generated {args.images} train frames of {args.size[0]}x{args.size[1]} in "
                  f"{time.perf_counter() - t0:.0f} s")
        parser = argparse.ArgumentParser()
        add_train_args(parser)
        train_args = parser.parse_args(["--preset", "cityscapes", "--data-root", str(root), "--device", str(device),
                                        "--out", str(Path(tmp) / "run"), "--no-progress", "--val-split", "none",
                                        *args.train_args])
        cfg = resolve_config(train_args)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as cgnet train does
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        data = build_data(cfg, device, Path(cfg.out))
        parts = build_model_and_optimizer(cfg, data, device)
        step = wrap_for_training(parts, cfg, data, device)
        setup = time.perf_counter() - t0
        batch = cfg.batch_size
        batches = endless(data)
        pipeline_s, warm_s = timed_steps(step, batches, device, args.warmup, args.iters)
        images, labels = next(batches)
        images, labels = images.to(device), labels.to(device)
        per_step = []
        for _ in range(args.iters):
            t = time.perf_counter()
            step(images, labels)
            sync(device)
            per_step.append(time.perf_counter() - t)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    kind = getattr(step, "kind", "eager")
    pipeline = args.iters * batch / pipeline_s
    alone = batch / statistics.median(per_step)
    print(f"device: {name}; torch {torch.__version__}; step: {kind}; loader: {cfg.loader}; "
          f"crop {cfg.crop[0]}x{cfg.crop[1]}, batch {batch}, amp {cfg.amp}")
    print(f"set-up (data statistics, model, step; compiling included): {setup:.1f} s; warm-up "
          f"({args.warmup} steps): {warm_s:.1f} s")
    print(f"{'measured':<34}{'img/s':>9}{'s/step':>9}{'300 epochs, h':>15}")
    rows = []
    for what, rate in (("pipeline (loader + step)", pipeline), ("step alone (median)", alone)):
        print(f"{what:<34}{rate:>9.1f}{batch / rate:>9.3f}{projection_hours(rate, batch):>15.2f}")
        rows.append({"measured": what, "images_per_s": rate, "s_per_step": batch / rate,
                     "projection_hours": projection_hours(rate, batch)})
    print(f"PROJECTION, not a training run: {EPOCHS} epochs x {TRAIN_IMAGES // batch} steps of {batch} "
          f"(2,975 train images), no validation or checkpoints, from {args.iters} steps on "
          f"{'generated' if args.data_root is None else 'the given'} frames")
    if args.json:
        figures = {"device": name, "torch": torch.__version__, "step": kind, "loader": cfg.loader,
                   "crop": list(cfg.crop), "batch": batch, "amp": cfg.amp, "setup_s": setup,
                   "warmup_steps": args.warmup, "warmup_s": warm_s, "iters": args.iters,
                   "pipeline_s": pipeline_s, "step_s": per_step, "epochs": EPOCHS, "train_images": TRAIN_IMAGES,
                   "steps_per_epoch": TRAIN_IMAGES // batch, "generated": args.data_root is None, "rows": rows}
        write_atomic(args.json, json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
