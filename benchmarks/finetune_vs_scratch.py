"""Fine-tuning the shipped CamVid weights against training from scratch, on a new labelling, for
the same CPU time.

The new labelling is a coarse one of CamVid, made as a user would make theirs: 5 classes (flat,
construction, nature and sky, vehicle, person) drawn as RGB colour masks for 50 training frames,
then imported with `cgnet data import --from colors`. The shipped weights were trained on these
very scenes, so this shows the mechanics and the time saved, not transfer to a new domain.

The runs (`--arms`, default scratch and finetune; freeze-stage2 adds `--freeze stage2` to the
fine-tuning) train at the same time with one thread each, for `--minutes` of
wall-clock: each pinned to its own core when there are no more runs than cores, else sharing the
cores (the CPU seconds each got are printed and saved). They use the camvid recipe's crop and
batch, `--time-budget` fitting the poly schedule to the time, and validate on 40 evenly spaced
coarse test frames. Then every last checkpoint is scored on all 233 test frames, and `cgnet plot`
draws the curves.

    python -m benchmarks.finetune_vs_scratch --minutes 15 --work runs/finetune_vs_scratch \\
        --json results/finetune_vs_scratch.json --plot docs/img/finetune_vs_scratch.png
    python -m benchmarks.finetune_vs_scratch --arms finetune freeze-stage2 --minutes 15 \\
        --work runs/finetune_options --json results/finetune_options.json --plot docs/img/finetune_options.png
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from cgnet.data.catalog import CAMVID, find_data_root
from cgnet.data.listset import read_list

# CamVid's 11 classes -> 5: flat, construction, nature and sky, vehicle, person
COARSE = {"flat": ("Road", "Sidewalk"), "construction": ("Building", "Pole", "SignSymbol", "Fence"),
          "nature-sky": ("Sky", "Tree"), "vehicle": ("Car",), "person": ("Pedestrian", "Bicyclist")}
COLORS = {"flat": (128, 64, 128), "construction": (70, 70, 70), "nature-sky": (107, 142, 35),
          "vehicle": (0, 0, 142), "person": (220, 20, 60)}
IGNORE = 255
# what each run adds to the common `cgnet train` arguments
ARMS = {"scratch": [], "finetune": ["--init", "camvid"],
        "freeze-stage2": ["--init", "camvid", "--freeze", "stage2"]}


def coarse_lut() -> np.ndarray:
    """CamVid label id -> coarse id (void and anything else -> IGNORE)."""
    lut = np.full(256, IGNORE, np.uint8)
    for new, (name, members) in enumerate(COARSE.items()):
        for member in members:
            lut[CAMVID.classes.index(member)] = new
    return lut


def evenly(items: list, count: int) -> list:
    return [items[i] for i in np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int)]


def make_dataset(camvid: Path, work: Path, frames: int, seed: int) -> Path:
    """Colour masks for `frames` training frames, imported with `cgnet data import --from colors`,
    and the coarse test labels (ids) with test.txt (all) and test40.txt (40 evenly spaced)."""
    lut = coarse_lut()
    palette = np.zeros((256, 3), np.uint8)
    palette[IGNORE] = (0, 0, 0)
    for new, name in enumerate(COARSE):
        palette[new] = COLORS[name]
    src = work / "export"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    (src / "classes.txt").write_text("".join(f"{n} {','.join(map(str, COLORS[n]))}\n" for n in COARSE) + "void 0,0,0\n")
    for sample in evenly(read_list(camvid / "camvid_train_list.txt", camvid, progress=False), frames):
        shutil.copy(sample.image, src / sample.image.name)
        ids = lut[cv2.imread(str(sample.label), cv2.IMREAD_UNCHANGED)]
        cv2.imwrite(str(src / f"{sample.image.stem}_L.png"), cv2.cvtColor(palette[ids], cv2.COLOR_RGB2BGR))
    root = work / "coarse5"
    shutil.rmtree(root, ignore_errors=True)
    cgnet("data", "import", "--from", "colors", str(src), "--root", str(root), "--classes", str(src / "classes.txt"),
          "--mask-suffix", "_L", "--ignore-class", "void", "--val-fraction", "0", "--seed", str(seed), "--no-progress")
    (root / "testlabels").mkdir()
    lines = []
    for sample in read_list(camvid / "camvid_test_list.txt", camvid, progress=False):
        target = root / "testlabels" / sample.label.name
        cv2.imwrite(str(target), lut[cv2.imread(str(sample.label), cv2.IMREAD_UNCHANGED)])
        lines.append(f"{sample.image} {target}\n")
    (root / "test.txt").write_text("".join(lines))
    (root / "test40.txt").write_text("".join(evenly(lines, 40)))
    return root


def cgnet(*argv: str, **popen) -> subprocess.Popen | None:
    command = [sys.executable, "-m", "cgnet", *argv]
    if popen:
        return subprocess.Popen(command, **popen)
    subprocess.run(command, check=True)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camvid", help="the real CamVid (default: where cgnet finds it)")
    parser.add_argument("--work", default="runs/finetune_vs_scratch")
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock (= CPU time) of each run")
    parser.add_argument("--frames", type=int, default=50, help="training frames of the new labelling")
    parser.add_argument("--val-every", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=["scratch", "finetune"],
                        help="the runs to compare (default: scratch finetune)")
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--plot", help="the comparison chart (cgnet plot)")
    args = parser.parse_args()
    camvid = Path(args.camvid) if args.camvid else find_data_root("camvid")
    if camvid is None:
        parser.error("no CamVid found: give --camvid")
    work = Path(args.work).resolve()
    root = make_dataset(camvid.resolve(), work, args.frames, args.seed)
    common = ["train", "--dataset", "coarse5", "--classes", str(root / "classes.txt"), "--ignore-index", str(IGNORE),
              "--data-root", str(root), "--train-split", "train.txt", "--val-split", "test40.txt",
              "--crop", "360", "--batch-size", "8", "--epochs", "1000", "--time-budget", str(args.minutes),
              "--val-every", str(args.val_every), "--workers", "0", "--device", "cpu", "--amp", "off",
              "--no-compile", "--seed", str(args.seed), "--no-progress"]
    arms = {name: ARMS[name] for name in args.arms}
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cores = sorted(os.sched_getaffinity(0))
    pinned = len(arms) <= len(cores)
    running = {}
    for core, (name, extra) in zip(cores * len(arms), arms.items()):
        shutil.rmtree(work / name, ignore_errors=True)
        log = open(work / f"{name}.out", "w")
        pin = (lambda core=core: os.sched_setaffinity(0, {core})) if pinned else None
        running[name] = cgnet(*common, *extra, "--out", str(work / name), env=env, stdout=log,
                              stderr=subprocess.STDOUT, preexec_fn=pin)
    cpu_s, failed = {}, []
    for name, process in running.items():
        _, status, usage = os.wait4(process.pid, 0)
        cpu_s[name] = usage.ru_utime + usage.ru_stime
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {failed}; see {work}/*.out")
        return 1
    result = {"machine": platform.processor() or platform.machine(), "threads_per_run": 1,
              "pinned_to_own_core": pinned, "minutes": args.minutes, "frames": args.frames,
              "classes": list(COARSE), "runs": {}}
    for name in arms:
        scores = work / f"{name}_test.json"
        cgnet("eval", "--checkpoint", str(work / name / "last.pt"), "--data-root", str(root), "--split", "test.txt",
              "--workers", "0", "--json", str(scores))
        log = [json.loads(line) for line in (work / name / "log.jsonl").read_text().splitlines()]
        result["runs"][name] = {"args": arms[name], "test_miou_233": json.loads(scores.read_text())["miou"],
                                "epochs": log[-1]["epoch"], "cpu_s": round(cpu_s[name], 1),
                                "curve": [(r["elapsed_s"] / 60, r["val_miou"]) for r in log if "val_miou" in r]}
        print(f"{name:<14} {result['runs'][name]['epochs']} epochs in {args.minutes} min "
              f"({cpu_s[name]:.0f} CPU s): test mIoU {100 * result['runs'][name]['test_miou_233']:.2f} (233 frames)")
    if args.plot:
        cgnet("plot", *(str(work / name) for name in arms), "--out", args.plot)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
