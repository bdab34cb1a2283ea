"""Batch-1 inference latency of CGNet on a CUDA GPU (default 1024x2048, 19 classes), timed with
CUDA events after warm-up: eager fp32, channels_last, bf16/fp16 autocast, and the same replayed
as a CUDA graph. Prints min and median milliseconds and the ratio to eager fp32 of the same run.

    python benchmarks/gpu_latency.py [--size 1024 2048] [--runs 50]
"""
import argparse
import statistics

import torch

from cgnet import CGNet


def timed(fn, runs):
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return min(times), statistics.median(times)


@torch.no_grad()
def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, nargs=2, default=[1024, 2048])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--classes", type=int, default=19)
    args = p.parse_args()
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, input 1x3x{args.size[0]}x{args.size[1]}")
    print(f"{'mode':<28}{'min ms':>9}{'median ms':>11}{'ratio':>8}")
    base = None
    for name, cl, dtype, graph in [("fp32", False, None, False), ("fp32+channels_last", True, None, False),
                                   ("bf16+channels_last", True, torch.bfloat16, False),
                                   ("fp16+channels_last", True, torch.float16, False),
                                   ("fp32+channels_last+graph", True, None, True),
                                   ("bf16+channels_last+graph", True, torch.bfloat16, True),
                                   ("fp16+channels_last+graph", True, torch.float16, True)]:
        model = CGNet(args.classes).to(dev).eval()
        x = torch.randn(1, 3, *args.size, device=dev)
        if cl:
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

        def fwd():
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None, cache_enabled=False):
                return model(x)
        try:
            for _ in range(5):
                fwd()
            torch.cuda.synchronize()
            fn = fwd
            if graph:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    fwd()
                fn = g.replay
                for _ in range(3):
                    fn()
            best, med = timed(fn, args.runs)
        except Exception as e:
            print(f"{name:<28}  failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
            continue
        base = base or med
        print(f"{name:<28}{best:>9.2f}{med:>11.2f}{base / med:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
