"""Training and evaluation throughput of CGNet for several execution modes, on CPU or CUDA.

    python benchmarks/train_throughput.py [--device cuda] [--batch 8 32] [--iters 20]

Each mode runs warm-up steps, then timed steps (forward, class-weighted loss, backward, Adam) on
random data at 360x360 (11 classes); the table gives images/s and the ratio to eager fp32
measured in the same run. Evaluation throughput is forward-only at 360x480, batch 1. On Linux the
script restarts itself once with cgnet's allocator settings (see cgnet.cli.ALLOCATOR_ENV) unless
--default-allocator is given.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn as nn

from cgnet import CGNet
from cgnet.cli import ALLOCATOR_ENV
from cgnet.common import autocast
from cgnet.engine.config import TrainConfig
from cgnet.engine.steps import make_eager_step, make_graphed_step

MODES = {  # name -> (channels_last, amp, compile, cuda graph)
    "fp32": (False, "off", False, False),
    "fp32+channels_last": (True, "off", False, False),
    "bf16+channels_last": (True, "bf16", False, False),
    "fp32+channels_last+compile": (True, "off", True, False),
    "bf16+channels_last+compile": (True, "bf16", True, False),
}
CUDA_MODES = {"fp16+channels_last": (True, "fp16", False, False),
              "fp32+channels_last+cudagraph": (True, "off", False, True),
              "bf16+channels_last+cudagraph": (True, "bf16", False, True)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(device, batch, mode, warmup, iters, crop=360, classes=11):
    """Images/s of the engine's own training step (cgnet.engine.steps.make_eager_step / make_graphed_step)."""
    channels_last, amp, compiled, graphed = mode
    torch.manual_seed(0)
    model = CGNet(classes).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run = torch.compile(model) if compiled else model
    if graphed:
        opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(1e-3, device=device), weight_decay=5e-4,
                               capturable=True, foreach=True)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    crit = nn.CrossEntropyLoss(weight=torch.rand(classes, device=device) + 1, ignore_index=classes)
    cfg = TrainConfig(channels_last=channels_last, amp=amp, crop=(crop, crop))
    x = torch.randn(batch, 3, crop, crop, device=device)
    y = torch.randint(0, classes + 1, (batch, crop, crop), device=device)
    step = make_graphed_step(model, crit, opt, device, cfg, batch, classes) if graphed else \
        make_eager_step(run, crit, opt, scaler, device, cfg)
    if step is None:
        raise RuntimeError("CUDA graph capture failed")
    for _ in range(warmup):
        step(x, y)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        loss = step(x, y)
    sync(device)
    dt = time.perf_counter() - t0
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss in mode {mode}")
    return batch * iters / dt


@torch.no_grad()
def bench_eval(device, mode, warmup, iters, size=(360, 480), classes=11):
    channels_last, amp, compiled, _ = mode
    model = CGNet(classes).to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run = torch.compile(model) if compiled else model
    x = torch.randn(1, 3, *size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(warmup):
        with autocast(device, amp):
            run(x)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        with autocast(device, amp):
            run(x)
    sync(device)
    return iters / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[8])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--modes", nargs="+", help="subset of modes to run")
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--default-allocator", action="store_true")
    args = p.parse_args()
    if not args.default_allocator and sys.platform.startswith("linux") and \
            not all(k in os.environ for k in ALLOCATOR_ENV):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ALLOCATOR_ENV})
    device = torch.device(args.device)
    modes = dict(MODES, **(CUDA_MODES if device.type == "cuda" else {}))
    if args.modes:
        modes = {k: modes[k] for k in args.modes}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; allocator env: {'default' if args.default_allocator else 'cgnet'}")
    print(f"{'mode':<30}{'batch':>6}{'train img/s':>13}{'ratio':>8}{'eval img/s':>12}{'ratio':>8}")
    for batch in args.batch:
        base_t = base_e = None
        for mname, mode in modes.items():
            try:
                t = bench_train(device, batch, mode, args.warmup, args.iters)
                e = None if args.no_eval else bench_eval(device, mode, args.warmup, args.iters * 2)
            except Exception as ex:  # one failing mode (e.g. compile) must not hide the others
                print(f"{mname:<30}{batch:>6}  failed: {type(ex).__name__}: {str(ex).splitlines()[0][:120]}")
                continue
            base_t = base_t or t
            if e is not None:
                base_e = base_e or e
            es = f"{e:>12.1f}{e / base_e:>8.2f}" if e is not None else ""
            print(f"{mname:<30}{batch:>6}{t:>13.2f}{t / base_t:>8.2f}{es}", flush=True)


if __name__ == "__main__":
    main()
