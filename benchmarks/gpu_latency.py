"""Batch-1 inference latency of CGNet on a CUDA GPU (default 1024x2048, 19 classes), model only:
the input already on the device, the output left there. Timed with CUDA events after warm-up:
eager fp32, channels_last, bf16/fp16 autocast, the same replayed as a CUDA graph, and the
compiled path (`cgnet.deploy.runners.compile_for_inference`: BN folded, PReLU as max, inductor,
CUDA graphs) returning logits, or class ids with the argmax inside the compiled graph. Prints
min and median milliseconds and the ratio to eager fp32 of the same run, and the compile time.

    python -m benchmarks.gpu_latency [--size 1024 2048] [--runs 50] [--profile]

--profile also prints torch.profiler's top kernels by device time for eager fp32 and for the
compiled bf16 class-id path without CUDA graphs (inside a graph the kernels are not listed).
--device cpu runs the same rows on the CPU with a wall clock (a dry run of the script).
--json FILE also writes the rows' figures (the ratio is the first row's median over the row's).
"""
import argparse
import json
import statistics
import sys
import time

import torch

from cgnet import CGNet
from cgnet.common import CGNetError, autocast
from cgnet.deploy.runners import compile_for_inference
from cgnet.fileio import check_writable, write_atomic
from benchmarks.devices import profile_table, sync

ROWS = [  # name, channels_last, precision, how: eager | graph (captured here) | compiled | compiled-ids
    ("fp32", False, "fp32", "eager"), ("fp32+channels_last", True, "fp32", "eager"),
    ("bf16+channels_last", True, "bf16", "eager"), ("fp16+channels_last", True, "fp16", "eager"),
    ("fp32+channels_last+graph", True, "fp32", "graph"), ("bf16+channels_last+graph", True, "bf16", "graph"),
    ("fp16+channels_last+graph", True, "fp16", "graph"),
    ("compiled+graph fp32", True, "fp32", "compiled"), ("compiled+graph bf16", True, "bf16", "compiled"),
    ("compiled+graph fp16", True, "fp16", "compiled"), ("compiled+graph bf16 class ids", True, "bf16", "compiled-ids"),
    ("compiled+graph fp16 class ids", True, "fp16", "compiled-ids"),
]


def timed(fn, runs, device):
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return times


def build(name, channels_last, precision, how, model, x, device):
    """The callable to time for one row (compiled rows: compiled and warmed up here)."""
    if how.startswith("compiled"):
        compiled = compile_for_inference(model, device, labels=how.startswith("compiled-ids"))

        def run():
            with autocast(device, precision):
                return compiled(x)
        return run
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

    def fwd():
        with autocast(device, precision, cache=False):
            return model(x)
    if how == "graph":
        for _ in range(5):
            fwd()
        sync(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fwd()
        return graph.replay
    return fwd


@torch.inference_mode()
def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, nargs=2, default=[1024, 2048])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--device", default="cuda")
    p.add_argument("--rows", nargs="+", help="a subset of the rows, by name")
    p.add_argument("--blocks", type=int, nargs=2, default=[3, 21], metavar=("M", "N"),
                   help="CG blocks in stages 2 and 3 (a smaller net for a dry run)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--json", metavar="FILE", help="also write the rows' figures to FILE as JSON")
    args = p.parse_args()
    if args.json:
        try:
            check_writable(args.json, "--json", folder=False)
        except CGNetError as e:
            sys.exit(f"gpu_latency.py: error: {e}")
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (wall clock; a dry run)"
    print(f"{name}, torch {torch.__version__}, input 1x3x{args.size[0]}x{args.size[1]}, {args.classes} classes")
    print(f"{'mode':<32}{'min ms':>9}{'median ms':>11}{'ratio':>8}{'setup s':>9}")
    base = None
    rows = [r for r in ROWS if not args.rows or r[0] in args.rows]
    figures = []
    for row_name, channels_last, precision, how in rows:
        if dev.type != "cuda" and (how == "graph" or precision == "fp16"):
            continue  # captured CUDA graphs and fp16 are for the GPU
        torch.manual_seed(0)
        model = CGNet(args.classes, m=args.blocks[0], n=args.blocks[1]).to(dev).eval()
        x = torch.randn(1, 3, *args.size, device=dev)
        try:
            t0 = time.perf_counter()
            fn = build(row_name, channels_last, precision, how, model, x, dev)
            for _ in range(5):
                fn()
            sync(dev)
            setup = time.perf_counter() - t0
            times = timed(fn, args.runs, dev)
            best, med = min(times), statistics.median(times)
        except Exception as e:  # one failing row (a compile) must not hide the others
            print(f"{row_name:<32}  failed: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}")
            figures.append({"mode": row_name, "failed": f"{type(e).__name__}: {e}"})
            continue
        base = base or med
        print(f"{row_name:<32}{best:>9.2f}{med:>11.2f}{base / med:>8.2f}{setup:>9.1f}", flush=True)
        figures.append({"mode": row_name, "min_ms": best, "median_ms": med, "ratio": base / med, "setup_s": setup,
                        "times_ms": times})
    if args.json:
        write_atomic(args.json, json.dumps({"device": name, "torch": torch.__version__, "size": args.size,
                                            "classes": args.classes, "blocks": args.blocks, "runs": args.runs,
                                            "rows": figures}, indent=1) + "\n")
    if args.profile:
        torch.manual_seed(0)
        model = CGNet(args.classes, m=args.blocks[0], n=args.blocks[1]).to(dev).eval()
        x = torch.randn(1, 3, *args.size, device=dev)
        print(f"\nprofile: eager fp32\n{profile_table(lambda: model(x), dev, 5, rows=20)}")
        ids = compile_for_inference(model, dev, labels=True, cuda_graphs=False)

        def run():
            with autocast(dev, "bf16"):
                return ids(x)
        for _ in range(3):
            run()
        print(f"\nprofile: compiled bf16 class ids, no CUDA graph\n{profile_table(run, dev, 5, rows=20)}")


if __name__ == "__main__":
    main()
