"""ONNX Runtime against eager PyTorch on the CPU: which session settings and which file variants
make it faster or slower, and where its time goes.

    python -m benchmarks.onnxruntime_settings [--size 360 480] [--runs 20] [--rounds 3]
        [--presets default threads-1 ...] [--no-int8] [--calibration 200] [--data-root CAMVID]
        [--profile-runs 10] [--top 12] [--json FILE]

In one run, on one float32 1 x 3 x H x W input (default 360x480, batch 1), timed in alternating
rounds (`benchmarks.devices.alternating_times`: 3 warm-up calls, then --runs timed ones per round):

- eager fp32 PyTorch (the model as trained, NCHW: `cgnet bench`'s torch-eager-fp32), the baseline;
- cgnet's fp32 ONNX file (as `cgnet export` writes it: BN folded, PReLU as max(x, a*x), the
  XNNPACK rewrites) under each session setting of `cgnet.deploy.runners.ORT_PRESETS` (threads,
  spinning, optimisation level: "extended" leaves out the NCHWc layout transformer, parallel
  execution, denormals as zero);
- the fp32 file with PReLU kept as ONNX PRelu, with PReLU as (1 - a) * relu(x) + a * x (ops the
  NCHWc layout covers, unlike Max), and without the XNNPACK rewrites (default settings);
- cgnet's int8 file (static QDQ, per-channel 7-bit weights, calibrated on --calibration CamVid
  training crops) with the default and the "extended" settings, and the same quantisation with
  8-bit weights.

It prints each variant's median ms and its ratio to eager fp32 (eager median / variant median:
below 1 is slower than eager), the largest logit difference of each fp32 variant to eager, and
ORT's own profile (`SessionOptions.enable_profiling`, --profile-runs calls) of the default settings
on the fp32 and the int8 file: the top --top operator types by kernel time, with their share of all
kernel time, ms per run and calls per run (ReorderInput / ReorderOutput are the NCHWc layout
transformer's conversions). int8 needs the checkpoint's training images (--data-root, or the
dataset in its default place); without them it is skipped with a note. --json FILE writes every
timing and the profiles.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from benchmarks.devices import alternating_times
from benchmarks.xnnpack_rewrites import without_rewrites
from cgnet import load_model
from cgnet.common import CGNetError, DEFAULT_WEIGHTS
from cgnet.deploy.export import calibration_inputs
from cgnet.deploy.formats import _quantize_onnx_int8, write_onnx
from cgnet.deploy.runners import DEFAULT_ORT, ORT_PRESETS, onnxruntime_runner, onnxruntime_session, torch_runner
from cgnet.deploy.simplify import MaxPReLU, simplify_for_inference

EAGER = "eager fp32 (torch)"
FILE_VARIANTS = ("fp32 PReLU op", "fp32 PReLU as relu-add", "fp32 without XNNPACK rewrites")


class ReluAddPReLU(torch.nn.Module):
    """PReLU as (1 - a) * relu(x) + a * x (equal to max(x, a*x) up to rounding, for any a): made
    of ops ORT's NCHWc layout covers (Relu, per-channel Mul, Add), where max(x, a*x) makes it
    convert both operands back to NCHW (a ReorderOutput each) and the result in again."""

    def __init__(self, prelu: MaxPReLU):
        super().__init__()
        self.register_buffer("slope", prelu.slope.clone())
        self.register_buffer("rest", 1 - prelu.slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest * torch.relu(x) + self.slope * x


def relu_add_prelu(simple: torch.nn.Module) -> torch.nn.Module:
    """The simplified model with every MaxPReLU as `ReluAddPReLU`."""
    for parent in list(simple.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MaxPReLU):
                setattr(parent, name, ReluAddPReLU(child))
    return simple


def profile_summary(events: list[dict], runs: int, top: int) -> list[dict]:
    """ORT profile events -> the `top` operator types by kernel time: op, ms per run, share of all
    kernel time, calls per run. Kernel events are cat "Node" named "<node>_kernel_time"."""
    total, calls = defaultdict(float), defaultdict(int)
    for event in events:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            total[op] += event["dur"] / 1000  # microseconds -> ms
            calls[op] += 1
    whole = sum(total.values())
    ranked = sorted(total, key=total.get, reverse=True)[:top]
    return [{"op": op, "ms_per_run": total[op] / runs, "share": total[op] / whole if whole else 0.0,
             "calls_per_run": calls[op] / runs} for op in ranked]


def ort_profile(path: Path, x: np.ndarray, runs: int, top: int, prefix: Path) -> list[dict]:
    """`profile_summary` of `runs` calls of the file under the default settings (a profiled
    session profiles every call: it makes runs + 1 and leaves the first, with its one-time
    allocations, out)."""
    session = onnxruntime_session(path, dataclasses.replace(DEFAULT_ORT, profile=str(prefix)))
    name = session.get_inputs()[0].name
    for _ in range(runs + 1):
        session.run(None, {name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    runs_seen = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    first_end = runs_seen[1] if len(runs_seen) > 1 else 0  # the second run's start: drop what came before
    return profile_summary([e for e in events if e.get("ts", 0) >= first_end], runs, top)


def write_files(model, tmp: Path, int8: bool, calibration_count: int, data_root: str | None) -> tuple[dict, list[str]]:
    """The ONNX files compared: {variant: path}, and notes on what was left out."""
    meta = dict(model.meta, export_format="onnx", export_precision="fp32")
    files, notes = {}, []
    for variant, simple in (("fp32", simplify_for_inference(model)),
                            ("fp32 PReLU op", simplify_for_inference(model, prelu_as_max=False)),
                            ("fp32 PReLU as relu-add", relu_add_prelu(simplify_for_inference(model))),
                            ("fp32 without XNNPACK rewrites", without_rewrites(simplify_for_inference(model)))):
        files[variant] = tmp / f"{variant.replace(' ', '_')}.onnx"
        write_onnx(simple, files[variant], meta)
    if int8:
        try:
            calibration = calibration_inputs(model, data_root, count=calibration_count)
        except CGNetError as error:
            return files, [f"note: int8 skipped: {error}"]
        for variant, reduce_range in (("int8", True), ("int8 8-bit weights", False)):
            files[variant] = tmp / f"{variant.replace(' ', '_')}.onnx"
            _quantize_onnx_int8(files["fp32"], files[variant], calibration, reduce_range=reduce_range)
    return files, notes


def build_runners(model, files: dict, presets: list[str]) -> dict:
    runners = {EAGER: torch_runner(model, "fp32", "cpu", channels_last=False)}
    for preset in presets:
        runners[f"fp32 {preset}"] = onnxruntime_runner(files["fp32"], ORT_PRESETS[preset])
    for variant in FILE_VARIANTS:
        runners[f"{variant} (default)"] = onnxruntime_runner(files[variant], DEFAULT_ORT)
    if "int8" in files:
        for preset in ("default", "extended"):
            runners[f"int8 {preset}"] = onnxruntime_runner(files["int8"], ORT_PRESETS[preset])
        runners["int8 8-bit weights (default)"] = onnxruntime_runner(files["int8 8-bit weights"], DEFAULT_ORT)
    return runners


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=DEFAULT_WEIGHTS)
    parser.add_argument("--size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=20, help="timed calls per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--presets", nargs="+", choices=list(ORT_PRESETS), default=list(ORT_PRESETS))
    parser.add_argument("--no-int8", dest="int8", action="store_false")
    parser.add_argument("--calibration", type=int, default=200, help="int8 calibration crops (cgnet export: 200)")
    parser.add_argument("--data-root", help="the checkpoint's dataset, for int8 calibration")
    parser.add_argument("--profile-runs", type=int, default=10)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    model = load_model(args.checkpoint)
    h, w = args.size
    x = np.random.default_rng(0).standard_normal((1, 3, h, w), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():  # the TorchScript-based exporter's deprecation and folding warnings
            warnings.simplefilter("ignore")
            files, notes = write_files(model, Path(tmp), args.int8, args.calibration, args.data_root)
        for note in notes:
            print(note)
        runners = build_runners(model, files, args.presets)
        reference = runners[EAGER](x)
        diffs = {name: float(np.abs(run(x) - reference).max()) for name, run in runners.items()
                 if name.startswith("fp32")}
        times = alternating_times(runners, x, args.rounds, args.runs)
        profiles = {variant: ort_profile(files[variant], x, args.profile_runs, args.top, Path(tmp) / variant.split()[0])
                    for variant in ("fp32", "int8") if variant in files}
    medians = {name: statistics.median(t) for name, t in times.items()}
    rows = [{"variant": name, "median_ms": medians[name], "ratio_to_eager": medians[EAGER] / medians[name],
             "max_abs_logit_diff": diffs.get(name), "times_ms": times[name]} for name in runners]
    print(f"\n{platform.processor() or platform.machine()}; torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads); onnxruntime {onnxruntime.__version__}; {h}x{w}, batch 1; medians of {args.rounds} alternating "
          f"rounds of {args.runs} calls")
    print(f"{'variant':<40}{'median ms':>11}{'x eager':>9}{'max |diff|':>12}")
    for row in rows:
        diff = f"{row['max_abs_logit_diff']:.2g}" if row["max_abs_logit_diff"] is not None else "-"
        slower = "  slower than eager" if row["ratio_to_eager"] < 1 else ""
        print(f"{row['variant']:<40}{row['median_ms']:>11.1f}{row['ratio_to_eager']:>9.2f}{diff:>12}{slower}")
    for variant, table in profiles.items():
        print(f"\nORT profile, {variant} file, default settings ({args.profile_runs} runs): top {len(table)} op types")
        print(f"{'op':<28}{'ms/run':>9}{'share':>8}{'calls/run':>11}")
        for r in table:
            print(f"{r['op']:<28}{r['ms_per_run']:>9.2f}{100 * r['share']:>7.1f}%{r['calls_per_run']:>11.1f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "threads": torch.get_num_threads(), "size": [h, w],
            "rounds": args.rounds, "runs": args.runs, "notes": notes, "rows": rows,
            "presets": {p: dataclasses.asdict(ORT_PRESETS[p]) for p in args.presets}, "profiles": profiles}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
