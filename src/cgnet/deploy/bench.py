"""`cgnet bench`: batch-1 latency and throughput of every available backend and precision, with
the ratio to eager fp32 PyTorch measured in the same run.

Paths measured (those whose backend is installed):
- torch eager fp32: the model as trained (the baseline); torch eager bf16 / fp16 (only when
  asked for): the same under autocast;
- torch fp32 / bf16: BN folded, PReLU as max, channels_last, torch.compile
  (cgnet.deploy.runners.compile_for_inference; bf16: under autocast), static shapes per size;
- torch compiled-cudagraph fp32 / bf16 / fp16 (CUDA only): the same, compiled with
  mode="reduce-overhead" (inductor replays it as CUDA graphs);
- every backend and precision of the formats table (`cgnet.deploy.formats`: onnxruntime fp32 /
  int8, openvino fp32 / bf16, ...): the files `cgnet export` writes.
Latency: warm-up runs, then the min and median of N timed runs (CUDA: synchronised with events),
of one call from a normalised float32 array on the host to its result on the host: the logits
(default), or with --output labels the uint8 class ids, which the torch paths compute where the
model runs (the compiled paths inside the compiled graph, so the full-size logits are never
written; on a GPU only the class ids are copied back), and the exported paths with numpy. On
CUDA cuDNN picks its kernels by timing them (cudnn.benchmark; the shapes are static).
A path slower than eager fp32 (ratio below 1) says so in the table ("slower than eager") and
in its JSON row (`slower_than_eager`).
Peak memory: the process's resident-set high-water mark, reset before each path (Linux), or
torch.cuda.max_memory_allocated on CUDA. --agreement-frames N: the argmax agreement of every path
with eager fp32 (on the same device) over N test frames of the checkpoint's dataset, when found.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_model
from ..common import DEFAULT_WEIGHTS, number_type, parse_size, quiet_third_party
from ..data.catalog import dataset_from_meta, find_data_root
from ..data.listset import read_list
from ..images import read_rgb
from ..options import add_checkpoint_arg, add_data_root_arg, add_device_arg
from ..preprocess import to_tensor
from .export import export
from .formats import FORMATS, available_backends, format_for_backend
from .runners import compiled_torch_runner, torch_runner

# the torch paths, then one per (backend, precision) of the formats table
PATHS = ["torch-eager-fp32", "torch-fp32", "torch-bf16", "torch-compiled-cudagraph-fp32",
         "torch-compiled-cudagraph-bf16", "torch-compiled-cudagraph-fp16"] + \
        [f"{f.backend}-{precision}" for f in FORMATS.values() if f.backend for precision in f.precisions]
CUDA_ONLY = ("torch-compiled-cudagraph-fp32", "torch-compiled-cudagraph-bf16", "torch-compiled-cudagraph-fp16")
# the model as trained under autocast: measured only when asked for (what a precision alone changes)
EAGER_AUTOCAST = ["torch-eager-bf16", "torch-eager-fp16"]


def _writable(path: str) -> bool:
    """Whether an exported path's precision can be written here (OpenVINO int8 needs NNCF too)."""
    backend, precision = path.split("-")[0], path.split("-")[-1]
    fmt = next((f for f in FORMATS.values() if f.backend == backend), None)
    return fmt is None or fmt.installed_for(precision)


def select_paths(requested: list[str] | None, device: torch.device, have: list[str]) -> tuple[list[str], list[str]]:
    """The paths to measure (requested, or all whose backend is installed) and one-line notes on
    those left out: CUDA runs only the torch paths; the CUDA graph paths need CUDA."""
    paths = list(requested) if requested else [p for p in PATHS if p.split("-")[0] in have and _writable(p)]
    notes = []
    if device.type == "cuda":
        paths = [p for p in paths if p.startswith("torch")]
    else:
        skipped = [p for p in paths if p in CUDA_ONLY] if requested else list(CUDA_ONLY)
        paths = [p for p in paths if p not in CUDA_ONLY]
        if skipped:
            notes.append(f"note: {', '.join(skipped)} needs --device cuda (CUDA graphs); skipped")
    return paths, notes


def dataset_test_frames(meta: dict, data_root: str | None, count: int) -> tuple[list[np.ndarray], str | None]:
    """Up to `count` frames of the test list of the checkpoint's dataset (evenly spaced), and where
    they came from; ([], None) when no such list is found."""
    try:
        info = dataset_from_meta(meta)
        root = Path(data_root) if data_root else find_data_root(info.name)
        list_file = info.split_path(root, "test") if root is not None else None
    except ValueError:
        return [], None
    if list_file is None or not list_file.is_file():
        return [], None
    images = [s.image for s in read_list(list_file, root, labels=False, progress=False)]
    picks = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int)
    return [read_rgb(images[i]) for i in picks], f"{len(picks)} {info.name} test frames from {root}"


def class_ids(output: np.ndarray) -> np.ndarray:
    """N x H x W class ids from a runner's output: N x C x H x W logits, or class ids already."""
    output = np.asarray(output)
    return output.argmax(1) if output.ndim == 4 else output


def argmax_agreement(run, reference, inputs: list[np.ndarray]) -> float:
    """Fraction of pixels where `run` and `reference` pick the same class (each returns logits or
    class ids)."""
    same = total = 0
    for x in inputs:
        a, b = class_ids(run(x)), class_ids(reference(x))
        same += int((a == b).sum())
        total += a.size
    return same / total


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
    except OSError:
        pass


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def build_runner(path: str, model, workdir: Path, device: torch.device, data_root: str | None,
                 labels: bool = False):
    """A callable on a float32 1 x 3 x H x W array for one measured path: logits, or class ids."""
    backend, precision = path.rsplit("-", 1)
    if backend == "torch-eager":
        return torch_runner(model, precision, device, channels_last=False, labels=labels)
    if backend in ("torch", "torch-compiled-cudagraph"):  # shapes static per size: one compile (and graph) each
        return compiled_torch_runner(model, precision, device, labels=labels,
                                     cuda_graphs=backend == "torch-compiled-cudagraph")
    fmt = format_for_backend(backend)
    out = export(model, workdir / f"{path}{fmt.suffix}", fmt.name, precision, data_root=data_root,
                 log=lambda *a: None)
    with quiet_third_party():  # the runtime's start-up lines; --debug shows them
        run = fmt.load(out, precision)
    return (lambda x: run(x).argmax(1).astype(np.uint8)) if labels else run


def time_runner(run, x: np.ndarray, warmup: int, runs: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            run(x)
            times.append(1000 * (time.perf_counter() - t0))
    return times


def slower_note(ratio: float | None, lead: str = "  ") -> str:
    """'  slower than eager' after a path whose ratio to eager fp32 is below 1, else ''."""
    return f"{lead}slower than eager" if ratio is not None and ratio < 1 else ""


def add_bench_args(p: argparse.ArgumentParser) -> None:
    add_checkpoint_arg(p)
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(360, 480), (512, 1024), (1024, 2048)],
                   metavar="HxW")
    p.add_argument("--paths", nargs="+", choices=PATHS + EAGER_AUTOCAST,
                   help=f"default: all available of {', '.join(PATHS)} (also: {', '.join(EAGER_AUTOCAST)})")
    p.add_argument("--runs", type=number_type(int, minimum=1), default=20)
    p.add_argument("--warmup", type=number_type(int, minimum=0), default=3)
    add_device_arg(p, default="cpu", why="cpu: the exported runtimes run on the CPU, and eager fp32 on it is "
                                         "the baseline; cuda times the torch paths on the GPU")
    add_data_root_arg(p, use="frames to verify the exports on, and --agreement-frames' test frames; without "
                             "one, synthetic frames")
    p.add_argument("--json", dest="json_out", help="write the results as JSON here")
    p.add_argument("--output", choices=["logits", "labels"], default="logits",
                   help="what one timed call returns to the host: float32 logits (default) or uint8 class ids "
                        "(torch paths: the argmax taken where the model runs)")
    p.add_argument("--agreement-frames", type=number_type(int, minimum=0), default=0, metavar="N",
                   help="also report each path's argmax agreement with eager fp32 on N test frames of the "
                        "checkpoint's dataset (when found)")


def cmd_bench(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # static shapes: let cuDNN time its kernels once per size
    model = load_model(args.checkpoint or DEFAULT_WEIGHTS)
    labels = args.output == "labels"
    paths, notes = select_paths(args.paths, device, available_backends())
    for note in notes:
        print(note)
    sizes = args.sizes
    rows, base = [], {}  # base: eager fp32's median ms per size
    frames, inputs, reference, agreement = [], [], None, {}
    if args.agreement_frames > 0:
        frames, source = dataset_test_frames(model.meta, args.data_root, args.agreement_frames)
        print(f"agreement with eager fp32 on {source}" if frames else
              "note: no test frames of the checkpoint's dataset found; agreement skipped")
        inputs = [to_tensor(f, model.meta["preprocess"])[None].numpy() for f in frames]
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            _reset_peak_rss()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            run = build_runner(path, model, Path(tmp), device, args.data_root, labels)
            for h, w in sizes:
                x = np.random.default_rng(0).standard_normal((1, 3, h, w), dtype=np.float32)
                times = time_runner(run, x, args.warmup, args.runs, device)
                peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mb()
                rows.append({"path": path, "size": f"{h}x{w}", "min_ms": min(times),
                             "median_ms": statistics.median(times), "images_per_s": 1000 / statistics.median(times),
                             "peak_mem_mb": peak})
                if path == "torch-eager-fp32":
                    base[f"{h}x{w}"] = statistics.median(times)
                # the ratio as soon as it is known: a run cut short by a time limit still shows it
                ratio = (f" ({base[f'{h}x{w}'] / statistics.median(times):.2f}x eager fp32"
                         f"{slower_note(base[f'{h}x{w}'] / statistics.median(times), ': ')})"
                         if f"{h}x{w}" in base else "")
                print(f"  {path:<29} {h}x{w}: {statistics.median(times):8.1f} ms{ratio}", flush=True)
            if inputs and path != "torch-eager-fp32":
                reference = reference or torch_runner(model, "fp32", device, channels_last=False, labels=labels)
                agreement[path] = argmax_agreement(run, reference, inputs)
                print(f"  {path:<29} argmax agreement with eager fp32: {100 * agreement[path]:.3f}%", flush=True)
    for r in rows:
        r["ratio_to_eager_fp32"] = base[r["size"]] / r["median_ms"] if r["size"] in base else None
        r["slower_than_eager"] = r["ratio_to_eager_fp32"] < 1 if r["ratio_to_eager_fp32"] is not None else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    what = "uint8 class ids" if labels else "float32 logits"
    print(f"\n{name}; torch {torch.__version__}; batch 1; {args.runs} runs after {args.warmup} warm-up; "
          f"output: {what} on the host")
    print(f"{'path':<30}{'size':>10}{'min ms':>9}{'median ms':>11}{'img/s':>8}{'x eager':>9}{'peak MB':>9}")
    for r in rows:
        ratio = f"{r['ratio_to_eager_fp32']:.2f}" if r["ratio_to_eager_fp32"] else "-"
        peak = f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] else "-"
        print(f"{r['path']:<30}{r['size']:>10}{r['min_ms']:>9.1f}{r['median_ms']:>11.1f}{r['images_per_s']:>8.1f}"
              f"{ratio:>9}{peak:>9}{slower_note(r['ratio_to_eager_fp32'])}")
    if agreement:
        print(f"argmax agreement with eager fp32 ({len(inputs)} test frames): "
              + ", ".join(f"{p} {100 * a:.3f}%" for p, a in agreement.items()))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"device": name, "torch": torch.__version__, "output": args.output,
                                                   "rows": rows,
                                                   "argmax_agreement": agreement}, indent=1))
    return 0
