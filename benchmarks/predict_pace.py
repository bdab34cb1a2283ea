"""Does `cgnet predict` on a video run at the model's pace? frames/s x the path's median model
latency (goal >= 0.9: decoding, overlay and encoding hidden behind the model).

    python -m benchmarks.predict_pace [--frames 150] [--size 360 480] [--root CAMVID | --synthetic]
        [--runs 30] [--rounds 2] [--json FILE] [-- PREDICT OPTIONS]

Writes a video of --frames frames of HxW (default 480x360: CamVid test frames in list order, or
moving synthetic frames with --synthetic or when CamVid is not found; mp4v, 30 fps) into a
temporary folder. Each round runs `python -m cgnet predict VIDEO --no-progress PREDICT OPTIONS` as
a user would (a subprocess, default path unless options say otherwise) and reads from its last
line the frames, the path (backend and precision) and its frames/s; then, in this process, the
same path (`make_predictor` with that backend and precision and the command's other options) runs
`predict` (preprocessing, forward, argmax: what `cgnet predict` calls per frame) on the video's
own decoded frames, one after the other, --runs times after 3 warm-up calls: the model-bound
latency. Per round and over all rounds it prints frames/s x median latency; the rounds alternate so
that a machine's drift hits both alike. --json FILE writes every figure and the raw last lines.
Exits 1 when the run's frame count is not --frames.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from cgnet.cli import make_parser
from cgnet.data.catalog import CAMVID, find_data_root
from cgnet.deploy.predictor import make_predictor

FPS = 30.0
LAST_LINE = re.compile(r"segmented \d+ images? and (?P<frames>\d+) frames? from 1 video with (?P<backend>\S+) "
                       r"\((?P<precision>\S+)\) -> .*: (?P<rate>\d+(?:\.\d+)?) frames/s")


def camvid_frames(root: Path, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """The first `count` CamVid test frames (list order: consecutive street scenes), BGR, H x W."""
    lines = (root / CAMVID.list_file("test")).read_text().split()[::2]
    frames = []
    for name in (lines * (count // len(lines) + 1))[:count]:
        image = cv2.imread(str(root / name), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"cannot read {root / name}")
        frames.append(cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
                      if image.shape[:2] != size else image)
    return frames


def synthetic_frames(count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """`count` frames of a gradient with a moving bright box, BGR, H x W."""
    h, w = size
    base = np.zeros((h, w, 3), np.uint8)
    base[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    base[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    frames = []
    for i in range(count):
        frame = base.copy()
        x = (7 * i) % max(1, w - w // 4)
        frame[h // 3: h // 3 + h // 4, x: x + w // 4] = 230
        frames.append(frame)
    return frames


def write_video(path: Path, frames: list[np.ndarray]) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, frames[0].shape[1::-1])
    if not writer.isOpened():
        raise SystemExit("this OpenCV build cannot write mp4v")
    for frame in frames:
        writer.write(frame)
    writer.release()


def decoded_frames(path: Path) -> list[np.ndarray]:
    """The video's frames as `cgnet predict` feeds them to the model: RGB."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while (got := cap.read())[0]:
        frames.append(cv2.cvtColor(got[1], cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def run_predict(video: Path, out: Path, options: list[str]) -> tuple[dict, str, float]:
    """`cgnet predict` on the video as a user runs it: its parsed last line, that line, wall seconds."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cgnet", "predict", str(video), "--out", str(out), "--no-progress",
                           *options], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    found = LAST_LINE.fullmatch(lines[-1]) if done.returncode == 0 and lines else None
    if found is None:
        raise SystemExit(f"cgnet predict failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return found.groupdict(), lines[-1], wall


def same_path(backend: str, precision: str, options: list[str], video: Path):
    """The Predictor `cgnet predict VIDEO OPTIONS` used, whose backend and precision it printed."""
    args = make_parser().parse_args(["predict", str(video), *options])
    compiled = backend == "torch-compiled"
    return make_predictor(args.checkpoint, backend="torch" if compiled else backend, precision=precision,
                          device=args.device, data_root=args.data_root, compile=compiled or args.compile)


def model_latency_ms(predictor, frames: list[np.ndarray], runs: int, warmup: int = 3) -> list[float]:
    """Milliseconds of `predictor.predict` on the frames in turn, one call after the other."""
    for i in range(warmup):
        predictor.predict(frames[i % len(frames)])
    times = []
    for i in range(runs):
        start = time.perf_counter()
        predictor.predict(frames[i % len(frames)])
        times.append(1000 * (time.perf_counter() - start))
    return times


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    parser.add_argument("--root", help="CamVid (default: where cgnet finds it)")
    parser.add_argument("--synthetic", action="store_true", help="synthetic frames instead of CamVid's")
    parser.add_argument("--runs", type=int, default=30, help="timed model calls per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    size = tuple(args.size)
    root = None if args.synthetic else (Path(args.root) if args.root else find_data_root("camvid"))
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "street.mp4"
        source = f"CamVid test frames from {root}" if root else "synthetic frames"
        write_video(video, camvid_frames(root, args.frames, size) if root else synthetic_frames(args.frames, size))
        frames = decoded_frames(video)
        print(f"video: {len(frames)} frames of {size[1]}x{size[0]} ({source}), mp4v; "
              f"cgnet predict options: {' '.join(options) or '(defaults)'}", flush=True)
        rounds, predictor = [], None
        for r in range(args.rounds):
            line, text, wall = run_predict(video, Path(tmp) / f"out{r}", options)
            if int(line["frames"]) != args.frames:
                print(f"cgnet predict wrote {line['frames']} frames of {args.frames}: {text}")
                return 1
            predictor = predictor or same_path(line["backend"], line["precision"], options, video)
            times = model_latency_ms(predictor, frames, args.runs)
            rate, median = float(line["rate"]), statistics.median(times)
            rounds.append({"frames_per_s": rate, "latency_ms": times, "median_ms": median,
                           "ratio": rate * median / 1000, "last_line": text, "wall_s": wall})
            print(f"round {r + 1}: {rate:.2f} frames/s; median model latency {median:.1f} ms; "
                  f"frames/s x model s {rate * median / 1000:.3f}", flush=True)
    rate = statistics.median(r["frames_per_s"] for r in rounds)
    median = statistics.median(t for r in rounds for t in r["latency_ms"])
    result = {"machine": platform.processor() or platform.machine(), "frames": args.frames,
              "size": list(size), "source": source, "options": options, "backend": line["backend"],
              "precision": line["precision"], "rounds": rounds, "frames_per_s": rate, "median_ms": median,
              "ratio": rate * median / 1000}
    print(f"path {line['backend']} ({line['precision']}): {rate:.2f} frames/s (median of {len(rounds)} runs) x "
          f"{median:.1f} ms (median model latency, {len(rounds) * args.runs} calls) = {result['ratio']:.3f} "
          f"(goal >= 0.9)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
