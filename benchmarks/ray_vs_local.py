"""Ray's overhead: `cgnet predict --engine ray` against local `cgnet predict` on the same frames, in
one run, and the ratio of their throughputs (goal: at least 0.8 on 2 cores).

    python -m benchmarks.ray_vs_local [--frames 200] [--size 360 480] [--root CAMVID | --synthetic]
        [--rounds 2] [--address ADDRESS] [--json FILE] [-- PREDICT OPTIONS]

Writes --frames images of HxW (CamVid test frames in list order, or synthetic frames with
--synthetic or when CamVid is not found) into a temporary folder; each round runs, as a user
would (subprocesses, `--no-progress`), local `cgnet predict FOLDER` and `cgnet predict FOLDER
--engine ray` (a local Ray in the process, or --address), each into a fresh output folder, the
order alternating between rounds so that a machine's drift hits both alike. Each run is timed
from the start of the process to its end (Ray's start-up counts: it is what a user waits for)
and by the frames/s its summary line gives. Prints, per round and over all rounds, local
frames/s, Ray frames/s and Ray / local; --json FILE writes every figure and the raw summary
lines. Exits 1 when a run fails or the two runs' masks differ.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from cgnet.data.catalog import find_data_root


def write_frames(folder: Path, count: int, size: tuple[int, int], root: Path | None) -> None:
    """`count` PNG frames of size (height, width): CamVid test frames when `root` is given."""
    folder.mkdir(parents=True)
    sources = []
    if root is not None:
        lines = (root / "camvid_test_list.txt").read_text().split()
        sources = [root / p for p in lines[0::2]]
    rng = np.random.default_rng(0)
    for i in range(count):
        if sources:
            image = cv2.resize(cv2.imread(str(sources[i % len(sources)])), size[::-1], interpolation=cv2.INTER_AREA)
        else:
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"frame{i:06d}.png"), image)


def run(args: list[str]) -> tuple[float, str]:
    """Wall-clock seconds of one `cgnet predict` process and its last line."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cgnet", "predict", *args, "--no-progress"], capture_output=True,
                          text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"cgnet predict {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, done.stdout.strip().splitlines()[-1]


def reported_pace(line: str) -> float:
    """The frames/s (or images/s) a summary line gives."""
    return float(re.findall(r"([0-9.]+|inf) (?:images|frames)/s", line)[-1])


def same_masks(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in (a / "masks").iterdir())
    return names == sorted(p.name for p in (b / "masks").iterdir()) and \
        all((a / "masks" / n).read_bytes() == (b / "masks" / n).read_bytes() for n in names)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    p.add_argument("--root", help="CamVid (default: found where cgnet looks; else synthetic frames)")
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--address", help="a Ray cluster for --engine ray (default: a local Ray in the process)")
    p.add_argument("--json")
    p.add_argument("options", nargs=argparse.REMAINDER, help="-- then options for both predict commands")
    args = p.parse_args(argv)
    options = [o for o in args.options if o != "--"]
    root = None if args.synthetic else (Path(args.root) if args.root else find_data_root("camvid"))
    ray_args = ["--engine", "ray"] + (["--address", args.address] if args.address else [])
    rounds = []
    with tempfile.TemporaryDirectory(prefix="cgnet-ray-bench-") as tmp:
        frames = Path(tmp) / "frames"
        write_frames(frames, args.frames, tuple(args.size), root)
        for r in range(args.rounds):
            figures = {}
            for engine in (["local", "ray"] if r % 2 == 0 else ["ray", "local"]):
                out = Path(tmp) / f"{engine}{r}"
                extra = ray_args if engine == "ray" else []
                seconds, line = run([str(frames), "--out", str(out), *extra, *options])
                figures[engine] = {"wall_s": seconds, "frames_per_s": args.frames / seconds,
                                   "reported_per_s": reported_pace(line), "line": line}
            if not same_masks(Path(tmp) / f"local{r}", Path(tmp) / f"ray{r}"):
                print("the masks of the two runs differ", file=sys.stderr)
                return 1
            figures["ratio"] = figures["ray"]["frames_per_s"] / figures["local"]["frames_per_s"]
            rounds.append(figures)
            print(f"round {r + 1}: local {figures['local']['frames_per_s']:.2f} frames/s, ray "
                  f"{figures['ray']['frames_per_s']:.2f} frames/s (start to end of each process): "
                  f"ray / local {figures['ratio']:.2f}")
    local = sum(f["local"]["wall_s"] for f in rounds)
    ray = sum(f["ray"]["wall_s"] for f in rounds)
    print(f"all {args.rounds} rounds, {args.frames} frames of {args.size[0]}x{args.size[1]}: ray / local "
          f"{local / ray:.2f} (median of rounds {statistics.median(f['ratio'] for f in rounds):.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"frames": args.frames, "size": args.size, "rounds": rounds,
                                               "ratio": local / ray}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
