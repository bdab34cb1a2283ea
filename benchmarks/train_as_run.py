"""`cgnet train` as a user runs it, against a plain eager fp32 PyTorch loop, in one run.

    python -m benchmarks.train_as_run --data-root ../shared/datasets/CamVid [--rounds 3] [--json out.json]
    python -m benchmarks.train_as_run --data-root ... --cpu-capability avx2    # the AVX2 kind, emulated
    python -m benchmarks.train_as_run --data-root ... \\
        --variant "defaults=" --variant "dw-taps=--depthwise-backward taps" --variant "no-compile=--no-compile"

Each round times, one after the other (so that a drifting machine hits all alike):

(a) the baseline: a plain eager fp32 loop in this process over the same model (CGNet M3N21, 11
    classes, NCHW, no compile): Adam (lr 1e-3, weight decay 5e-4), class-weighted cross-entropy
    with the ignore id, the batch already in memory (random tensors), `--warmup` untimed steps,
    then `--iters` timed ones: images/s = batch x iters / their seconds;
(b) each variant: `cgnet train --dataset camvid --batch-size 8 --crop 360 --data-root ROOT` plus
    the variant's options, in a subprocess, stopped by --max-iters after warmup + iters
    iterations. Its progress bar (tqdm, on stderr) is read as it is drawn and the time each
    iteration count first appears is noted: images/s = batch x iters / (time at iteration
    warmup + iters - time at iteration warmup), so data loading is included and set-up (data
    statistics, decoding to memory, compiling) is not; `setup_s` is the time to iteration
    `warmup`.

Each variant's settings (loader, workers, the training backward passes, channels_last, compile,
amp) are read from its run's config.json and its settings lines. The table gives each variant's
images/s per round, their median and the ratio of medians to the baseline's (x eager).
`--cpu-capability avx2` runs everything with ATEN_CPU_CAPABILITY=avx2 and
ONEDNN_MAX_CPU_ISA=AVX2 (ATen's and oneDNN's kernels both limited to AVX2), to stand in for an
AVX2-only CPU. Like cgnet itself, the script restarts itself once with cgnet's allocator
settings (cgnet.cli.ALLOCATOR_ENV), with the capability variables set before torch loads.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from cgnet import CGNet
from cgnet.cli import ALLOCATOR_ENV
from cgnet.common import inductor_cache

ISA_ENV = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
DEFAULT_VARIANTS = ["defaults=",
                    "upsample-compiler=--upsample-backward compiler",
                    "earlier-defaults=--loader workers --depthwise-backward aten --prelu-backward aten "
                    "--upsample-backward compiler"]
SETTINGS = ("loader", "workers", "depthwise_backward", "prelu_backward", "upsample_backward", "channels_last", "compile",
            "amp")
BAR = re.compile(r"epoch (\d+)/\d+:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")
CLASSES, IGNORE = 11, 11  # CamVid


def cpu_description() -> dict:
    """The CPU model, the kernels ATen picked, and whether bf16/AMX are native."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "capability": torch.backends.cpu.get_cpu_capability(),
            "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
            "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_tile" in flags,
            "threads": torch.get_num_threads(), "cores": os.cpu_count()}


class EagerBaseline:
    """The plain loop: one model, optimiser and in-memory batch kept across rounds."""

    def __init__(self, batch: int, crop: tuple[int, int], blocks: tuple[int, int]):
        torch.manual_seed(0)
        self.model = CGNet(CLASSES, m=blocks[0], n=blocks[1]).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, weight_decay=5e-4)
        weight = 1 / torch.log(1.10 + torch.linspace(0.01, 0.3, CLASSES))  # cgnet's 1/ln(1.10 + share)
        self.criterion = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE)
        self.x = torch.randn(batch, 3, *crop)
        self.y = torch.randint(0, CLASSES + 1, (batch, *crop))

    def step(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.criterion(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def round(self, warmup: int, iters: int) -> dict:
        for _ in range(warmup):
            self.step()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            loss = self.step()
            times.append(time.perf_counter() - start)
        if loss != loss:
            raise RuntimeError("the eager baseline's loss is NaN")
        return {"step_s": times, "images_per_s": len(self.x) * iters / sum(times)}


def read_progress(stream, start: float) -> list[list[float]]:
    """[global iteration, seconds since start] for each iteration count the progress bar shows,
    the first time it shows it; reads `stream` (bytes, tqdm's \\r-separated redraws) to its end."""
    stamps, seen, pending = [], set(), b""
    while True:
        chunk = os.read(stream.fileno(), 4096)
        if not chunk:
            break
        now = time.perf_counter() - start
        pending += chunk
        *parts, pending = re.split(rb"[\r\n]", pending)
        for part in parts:
            match = BAR.search(part.decode("utf-8", "replace"))
            if match:
                epoch, n, total = (int(g) for g in match.groups())
                done = (epoch - 1) * total + n
                if done not in seen:
                    seen.add(done)
                    stamps.append([done, now])
    return stamps


def rate_from_stamps(stamps: list[list[float]], first: int, last: int, batch: int) -> tuple[float, int, int]:
    """(images/s, a, b) between the iteration counts a and b of a run's progress stamps: a the
    first count drawn at or after `first`, b the last drawn at or before `last` (tqdm redraws at
    most every 0.1 s, so a fast run may skip counts; a CamVid step takes seconds on a CPU)."""
    drawn = {int(n): t for n, t in stamps if first <= n <= last}
    if len(drawn) < 2:
        raise RuntimeError(f"the progress bar drew fewer than 2 iteration counts in {first}..{last} "
                           f"(drawn: {[int(n) for n, _ in stamps]})")
    a, b = min(drawn), max(drawn)
    return batch * (b - a) / (drawn[b] - drawn[a]), a, b


def run_variant(name: str, flags: list[str], args, work: Path, round_no: int) -> dict:
    """One `cgnet train` run of a variant, timed from its progress bar."""
    out = work / f"{name}-{round_no}"
    out.mkdir(parents=True)
    for cache in work.glob("stats_*.json"):  # the training list's statistics: computed once
        shutil.copy(cache, out / cache.name)
    command = [sys.executable, "-m", "cgnet", "train", "--dataset", "camvid", "--batch-size", str(args.batch_size),
               "--crop", *map(str, args.crop), "--data-root", args.data_root, "--out", str(out),
               "--max-iters", str(args.warmup + args.iters), *args.train_args, *flags]
    log = open(out.parent / f"{out.name}.stdout", "w+")
    start = time.perf_counter()
    # tqdm redraws at most every 0.1 s by default, so fast iterations could pass undrawn and leave
    # too few stamps; every iteration is drawn instead (tqdm reads TQDM_* defaults from the environment)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_MININTERVAL="0", TQDM_MINITERS="1")
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.PIPE, env=env)
    timer = threading.Timer(args.run_timeout, child.kill)  # a run that hangs is killed, and reported
    timer.start()
    try:
        stamps = read_progress(child.stderr, start)
        code = child.wait()
    finally:
        timer.cancel()
    log.seek(0)
    lines = log.read().splitlines()
    if code != 0:
        raise RuntimeError(f"{shlex.join(command)} exited {code}; its output: {' | '.join(lines[-5:])}")
    for cache in out.glob("stats_*.json"):
        shutil.copy(cache, work / cache.name)
    config = json.loads((out / "config.json").read_text())
    rate, first, last = rate_from_stamps(stamps, args.warmup, args.warmup + args.iters, args.batch_size)
    return {"command": command, "stamps": stamps, "from_iter": first, "to_iter": last, "images_per_s": rate,
            "setup_s": dict((int(n), t) for n, t in stamps)[first],
            "settings": {key: config.get(key) for key in SETTINGS},
            "settings_lines": [line for line in lines if line.startswith(("speed settings:", "training loader:"))]}


def parse_variants(specs: list[str]) -> dict[str, list[str]]:
    variants = {}
    for spec in specs:
        name, sep, flags = spec.partition("=")
        if not sep or not name or "/" in name:
            raise SystemExit(f"--variant {spec!r}: expected NAME=OPTIONS (OPTIONS may be empty)")
        variants[name] = shlex.split(flags)
    return variants


def summarise(figures: dict) -> None:
    """Medians and ratios, added to `figures` in place."""
    base = statistics.median(r["images_per_s"] for r in figures["baseline"]["rounds"])
    figures["baseline"]["images_per_s_median"] = base
    for variant in figures["variants"]:
        rates = [r["images_per_s"] for r in variant["rounds"]]
        variant["images_per_s_median"] = statistics.median(rates) if rates else None
        variant["ratio"] = variant["images_per_s_median"] / base if rates else None


def print_table(figures: dict) -> None:
    print(f"\n{'variant':<28}{'img/s by round':<30}{'median':>8}{'x eager':>9}  settings")
    rates = " ".join(f"{r['images_per_s']:.2f}" for r in figures["baseline"]["rounds"])
    print(f"{'plain eager fp32 (a)':<28}{rates:<30}{figures['baseline']['images_per_s_median']:>8.2f}{1.0:>9.2f}"
          "  NCHW, no compile, tensors in memory")
    for v in figures["variants"]:
        rates = " ".join(f"{r['images_per_s']:.2f}" for r in v["rounds"])
        settings = ", ".join(f"{k}={v['settings'][k]}" for k in SETTINGS) if v.get("settings") else v.get("error")
        median = f"{v['images_per_s_median']:>8.2f}{v['ratio']:>9.2f}" if v["rounds"] else f"{'-':>8}{'-':>9}"
        print(f"{v['name']:<28}{rates:<30}{median}  {settings}")
    print(f"(images/s of cgnet train from its progress bar between iterations {figures['warmup']} and "
          f"{figures['warmup'] + figures['iters']}, or the nearest counts it drew inside them; x eager: ratio of "
          "medians)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True, help="the CamVid folder (its list files)")
    p.add_argument("--variant", action="append", metavar="NAME=OPTIONS",
                   help=f"cgnet train options of a variant (repeatable; default: {' ; '.join(DEFAULT_VARIANTS)})")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=4, help="iterations not timed (the issue timed 4-24)")
    p.add_argument("--iters", type=int, default=20, help="iterations timed")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, nargs=2, default=[360, 360], metavar=("H", "W"))
    p.add_argument("--blocks", type=int, nargs=2, default=[3, 21], metavar=("M", "N"),
                   help="the model's blocks (a smaller net for a quick check of the script); passed to cgnet train")
    p.add_argument("--cpu-capability", choices=sorted(ISA_ENV), default="native",
                   help="avx2: ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2 (an AVX2-only CPU, emulated)")
    p.add_argument("--run-timeout", type=float, default=3600, help="seconds one cgnet train run may take")
    p.add_argument("--json", help="write the figures (raw timings included) to this file")
    p.add_argument("train_args", nargs="*", help="after --: more cgnet train options, for every variant")
    args = p.parse_args()
    env = {**ALLOCATOR_ENV, **ISA_ENV[args.cpu_capability]}
    if sys.platform.startswith("linux") and any(os.environ.get(k) != v for k, v in env.items()):
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.train_as_run", *sys.argv[1:]],
                  {**os.environ, **env})
    # before the baseline's Adam, whose import of inductor fixes TORCHINDUCTOR_CACHE_DIR for the runs below
    inductor_cache()
    args.train_args = [*args.train_args, "--blocks", *map(str, args.blocks)]
    variants = parse_variants(args.variant or DEFAULT_VARIANTS)
    figures = {"cpu": cpu_description(), "torch": torch.__version__, "batch": args.batch_size, "crop": args.crop,
               "blocks": args.blocks, "warmup": args.warmup, "iters": args.iters, "rounds_asked": args.rounds,
               "cpu_capability_asked": args.cpu_capability, "baseline": {"rounds": []},
               "variants": [{"name": n, "flags": f, "rounds": []} for n, f in variants.items()]}
    cpu = figures["cpu"]
    print(f"CPU: {cpu['model']}; ATen capability {cpu['capability']} "
          f"(ATEN_CPU_CAPABILITY={cpu['ATEN_CPU_CAPABILITY']}, ONEDNN_MAX_CPU_ISA={cpu['ONEDNN_MAX_CPU_ISA']}); "
          f"avx512_bf16 {cpu['avx512_bf16']}, AMX {cpu['amx']}; "
          f"{cpu['threads']} threads; torch {torch.__version__}", flush=True)
    baseline = EagerBaseline(args.batch_size, tuple(args.crop), tuple(args.blocks))
    with tempfile.TemporaryDirectory(prefix="train_as_run-") as work:
        for round_no in range(args.rounds):
            result = baseline.round(args.warmup, args.iters)
            figures["baseline"]["rounds"].append(result)
            print(f"round {round_no + 1}: plain eager fp32 {result['images_per_s']:.2f} img/s", flush=True)
            for variant in figures["variants"]:
                try:
                    result = run_variant(variant["name"], variant["flags"], args, Path(work), round_no)
                except RuntimeError as e:  # one failing variant must not hide the others
                    variant["error"] = str(e)
                    print(f"round {round_no + 1}: {variant['name']} failed: {e}", flush=True)
                    continue
                variant["rounds"].append(result)
                variant["settings"] = result["settings"]
                print(f"round {round_no + 1}: {variant['name']} {result['images_per_s']:.2f} img/s "
                      f"(set-up {result['setup_s']:.0f} s); {'; '.join(result['settings_lines'])}", flush=True)
    summarise(figures)
    print_table(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
