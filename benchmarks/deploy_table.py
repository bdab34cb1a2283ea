"""The table users choose a deployment file from: every format x precision of the formats table
(`cgnet.deploy.formats.FORMATS`) whose runtime is installed, written by `cgnet export` from one
checkpoint, each measured in one run on this machine:

- file size (the file and its companions);
- test mIoU on every frame of the checkpoint's dataset's test split, through the file's own
  runtime (`load_exported(...).predict`);
- pixel agreement of its class ids with eager fp32 PyTorch on the same frames;
- latency at 360x480 (batch 1, normalised float input to logits on the host), as the ratio of
  eager fp32's median to its median, the two timed in alternating rounds so that a machine's
  drift hits both alike. Exporting and compiling are reported, not timed in.

    python -m benchmarks.deploy_table --data-root ../shared/datasets/CamVid --json results/deploy_table.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cgnet.checkpoint import load_model
from cgnet.common import DEFAULT_WEIGHTS
from cgnet.data.catalog import dataset_from_meta
from cgnet.data.listset import read_label, read_list
from cgnet.deploy.export import export
from cgnet.deploy.formats import FORMATS
from cgnet.deploy.predictor import Predictor, load_exported
from cgnet.deploy.runners import torch_runner
from cgnet.confusion import ConfusionMatrix
from cgnet.images import read_rgb


def paths_to_measure(only: list[str] | None) -> list[tuple[str, str]]:
    """(format, precision) of every writable format whose runtime is installed."""
    pairs = [(name, precision) for name, f in FORMATS.items() if f.write is not None and f.installed()
             for precision in f.precisions]
    return [p for p in pairs if not only or f"{p[0]}-{p[1]}" in only]


def median_ms(run, x: np.ndarray, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(x)
        times.append(1000 * (time.perf_counter() - start))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=DEFAULT_WEIGHTS)
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--only", nargs="+", metavar="FORMAT-PRECISION", help="e.g. onnx-fp32 executorch-int8")
    parser.add_argument("--runs", type=int, default=20, help="timed calls per path and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=0, help="score only the first N frames (0: all)")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()

    model = load_model(args.checkpoint)
    info = dataset_from_meta(model.meta)
    samples = read_list(info.split_path(args.data_root, args.split), args.data_root, progress=False)
    samples = samples[:args.frames] if args.frames else samples
    images = [read_rgb(s.image) for s in samples]
    labels = [torch.from_numpy(read_label(s.label, info.num_classes, info.ignore_index).astype(np.int64)) for s in samples]
    eager = Predictor(torch_runner(model, "fp32", "cpu", channels_last=False), model.meta, "torch")
    reference = [eager.predict(image) for image in tqdm(images, desc="eager fp32", leave=False)]

    rows = [{"format": "torch (eager, the reference)", "precision": "fp32", "file_mb": None, "export_s": 0.0,
             "predictor": eager}]
    with tempfile.TemporaryDirectory() as tmp:
        for name, precision in paths_to_measure(args.only):
            entry = FORMATS[name]
            start = time.perf_counter()
            path = export(model, Path(tmp) / f"{name}_{precision}{entry.suffix}", name, precision,
                          data_root=str(args.data_root), log=lambda *a: None)
            rows.append({"format": name, "precision": precision, "export_s": time.perf_counter() - start,
                         "file_mb": sum(p.stat().st_size for p in entry.files(path)) / 2**20,
                         "predictor": load_exported(path)})
        for row in rows:
            matrix = ConfusionMatrix(info.num_classes, info.ignore_index)
            same = total = 0
            for image, label, ref in zip(images, labels, tqdm(reference, desc=f"{row['format']} {row['precision']}",
                                                               leave=False)):
                ids = row["predictor"].predict(image)
                matrix.update(torch.from_numpy(ids.astype(np.int64)), label)
                same, total = same + int((ids == ref).sum()), total + ids.size
            row["test_miou"], row["agreement"] = matrix.scores()["miou"], same / total
        x = eager.input(np.zeros((360, 480, 3), np.uint8) + 128)
        times = {id(row): [] for row in rows}
        for _ in range(args.rounds):
            for row in rows:
                run = row["predictor"].run
                for _ in range(3):  # warm-up
                    run(x)
                times[id(row)] += median_ms(run, x, args.runs)
    base = statistics.median(times[id(rows[0])])
    for row in rows:
        row["median_ms_360x480"] = statistics.median(times[id(row)])
        row["ratio_to_eager_fp32"] = base / row["median_ms_360x480"]
        del row["predictor"]
    machine = platform.processor() or platform.machine()
    print(f"{machine}, {torch.get_num_threads()} threads, torch {torch.__version__}; {len(images)} "
          f"{info.name} {args.split} frames; latency: batch 1, 360x480, {args.rounds} x {args.runs} runs")
    print(f"{'format':<30}{'precision':>10}{'MB':>7}{'mIoU':>8}{'agree %':>10}{'ms':>8}{'x eager':>9}{'export s':>10}")
    for r in rows:
        size = f"{r['file_mb']:.2f}" if r["file_mb"] is not None else "-"
        print(f"{r['format']:<30}{r['precision']:>10}{size:>7}{100 * r['test_miou']:>8.2f}{100 * r['agreement']:>10.3f}"
              f"{r['median_ms_360x480']:>8.1f}{r['ratio_to_eager_fp32']:>9.2f}{r['export_s']:>10.1f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": machine, "threads": torch.get_num_threads(),
                                                   "torch": torch.__version__, "frames": len(images),
                                                   "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
