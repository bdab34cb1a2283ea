"""Training and evaluation throughput of CGNet for several execution modes, on CPU or CUDA.

    python -m benchmarks.train_throughput [--device cuda] [--batch 8 32] [--iters 20]

Each mode builds the engine's own training step (cgnet.engine.steps), runs warm-up steps, then
timed steps (forward, class-weighted loss, backward, Adam) on random data at 360x360 (11
classes). For each mode the table gives images/s, the ratio to eager fp32 and to
bf16+channels_last+cudagraph (the fastest step before the compiled one; CUDA only, '-' on CPU),
the seconds of pure steps per CamVid train+val epoch (468 images: 468 // batch steps) and the
minutes for the paper's 800 epochs (without data loading, validation and checkpoints), and the
seconds spent before the first timed step (compiling, capturing, checking against eager and the
warm-up). A compiled step that fell back (see its warning) is marked and not reported as
compiled. On the CPU the compiled-step modes compile with cgnet.engine.steps.CPU_INDUCTOR_OPTIONS
(inductor's peak-memory reordering off: with it, torch 2.13 gave zero gradients there);
+no-hfusion compiles with the other work-around instead (horizontal fusion off). Evaluation throughput is forward-only at 360x480, batch 1. --profile N then runs N more
steps of each mode under torch.profiler and prints its operators and kernels by self device time
(CUDA: kernels replayed inside a CUDA graph may show as the graph launch only; the modes without a
graph show every kernel); --profile-shapes splits each operator by its input shapes. On Linux the script
restarts itself once with cgnet's allocator settings (see cgnet.cli.ALLOCATOR_ENV) unless
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
from cgnet.engine.steps import make_compiled_step, make_eager_step, make_graphed_step
from cgnet.engine.train import FROZEN
from benchmarks.devices import profile_table, sync

CAMVID_TRAINVAL = 468  # images in the `camvid` preset's training list
EPOCHS = 800           # the paper's CamVid schedule
GRAPH_BASELINE = "bf16+channels_last+cudagraph"

MODES = {  # name -> (channels_last, amp, how): eager, compile (the model), cudagraph, compiled-step
    "fp32": (False, "off", "eager"),
    "fp32+channels_last": (True, "off", "eager"),
    "bf16+channels_last": (True, "bf16", "eager"),
    "fp32+channels_last+compile": (True, "off", "compile"),
    "bf16+channels_last+compile": (True, "bf16", "compile"),
    "fp32+channels_last+compiled-step": (True, "off", "compiled-step"),
    "bf16+channels_last+compiled-step": (True, "bf16", "compiled-step"),
    # forward, loss and backward compiled; Adam eager after them (in the same CUDA graph on CUDA)
    "fp32+channels_last+compiled-fwdbwd": (True, "off", "compiled-fwdbwd"),
    "bf16+channels_last+compiled-fwdbwd": (True, "bf16", "compiled-fwdbwd"),
    # the other inductor work-around for the CPU's zero gradients (see steps.CPU_INDUCTOR_OPTIONS):
    # horizontal fusion off, peak-memory reordering left on; the plain compiled-step modes use
    # CPU_INDUCTOR_OPTIONS on the CPU
    "fp32+channels_last+compiled-step+no-hfusion": (True, "off", "compiled-step", "no-hfusion"),
    # fine-tuning with --freeze stage2: stages 1 and 2 take no gradient (their backward is skipped)
    "fp32+freeze-stage2": (False, "off", "eager", "freeze-stage2"),
    "fp32+channels_last+freeze-stage2": (True, "off", "eager", "freeze-stage2"),
    "fp32+channels_last+compiled-step+freeze-stage2": (True, "off", "compiled-step", "freeze-stage2"),
}
CUDA_MODES = {"fp16+channels_last": (True, "fp16", "eager"),
              "fp32+channels_last+cudagraph": (True, "off", "cudagraph"),
              GRAPH_BASELINE: (True, "bf16", "cudagraph"),
              # inductor's own CUDA graphs (mode="reduce-overhead") instead of one captured here
              "bf16+channels_last+compiled-step-ro": (True, "bf16", "compiled-step-ro")}


def bench_train(device, batch, mode, warmup, iters, crop=360, classes=11, blocks=(3, 21), profile_steps=0,
                by_shape=False):
    """(images/s, seconds before the first timed step, what ran, the profile table or None) for
    the engine's training step."""
    channels_last, amp, how, *variant = mode
    torch.manual_seed(0)
    model = CGNet(classes, m=blocks[0], n=blocks[1]).to(device).train()
    if "freeze-stage2" in variant:  # as cgnet train --init ... --freeze stage2 does
        for name in FROZEN["stage2"]:
            getattr(model, name).requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if how == "cudagraph":
        opt = torch.optim.Adam(trainable, lr=torch.tensor(1e-3, device=device), weight_decay=5e-4,
                               capturable=True, foreach=True)
    else:
        opt = torch.optim.Adam(trainable, lr=1e-3, weight_decay=5e-4, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    crit = nn.CrossEntropyLoss(weight=torch.rand(classes, device=device) + 1, ignore_index=classes)
    cfg = TrainConfig(channels_last=channels_last, amp=amp, crop=(crop, crop), batch_size=batch)
    x = torch.randn(batch, 3, crop, crop, device=device)
    y = torch.randint(0, classes + 1, (batch, crop, crop), device=device)
    sync(device)
    t0 = time.perf_counter()
    if how == "cudagraph":
        step = make_graphed_step(model, crit, opt, device, cfg, batch, classes)
        if step is None:
            raise RuntimeError("CUDA graph capture failed")
        kind = "cudagraph"
    elif how.startswith("compiled-"):
        step = make_compiled_step(model, crit, opt, scaler, device, cfg, batch, classes,
                                  mode="reduce-overhead" if how.endswith("-ro") else None,
                                  compile_optimizer=how != "compiled-fwdbwd",
                                  options={"cpp.max_horizontal_fusion_size": 1} if "no-hfusion" in variant else None)
        if step is None:  # refused by its check against eager (printed): the eager step, marked as such
            step, kind = make_eager_step(model, crit, opt, scaler, device, cfg), "eager (fallback)"
        else:
            kind = step.kind
    else:
        step = make_eager_step(torch.compile(model) if how == "compile" else model, crit, opt, scaler, device, cfg)
        kind = how
    for _ in range(warmup):
        step(x, y)
    sync(device)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(iters):
        loss = step(x, y)
    sync(device)
    dt = time.perf_counter() - t0
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss in mode {mode}")
    table = profile_table(lambda: step(x, y), device, profile_steps, by_shape=by_shape) if profile_steps else None
    return batch * iters / dt, setup, kind, table


@torch.no_grad()
def bench_eval(device, mode, warmup, iters, size=(360, 480), classes=11):
    channels_last, amp, how, *variant = mode
    model = CGNet(classes).to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run = torch.compile(model) if how.startswith("compile") else model
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


def epoch_projection(batch: int, images_per_s: float) -> tuple[float, float]:
    """Seconds of pure training steps per CamVid train+val epoch, and minutes for 800 epochs."""
    per_epoch = (CAMVID_TRAINVAL // batch) * batch / images_per_s
    return per_epoch, per_epoch * EPOCHS / 60


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[8])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--modes", nargs="+", help="subset of modes to run")
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--default-allocator", action="store_true")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, profile N more steps of each mode and print the top operators/kernels")
    p.add_argument("--profile-shapes", action="store_true",
                   help="with --profile: one row per operator and input shapes (e.g. which convolutions)")
    p.add_argument("--crop", type=int, default=360, help="training crop (default the paper's 360)")
    p.add_argument("--blocks", type=int, nargs=2, default=[3, 21], metavar=("M", "N"),
                   help="CG blocks in stages 2 and 3 (a smaller net for a quick check of the script)")
    args = p.parse_args()
    if not args.default_allocator and sys.platform.startswith("linux") and \
            not all(k in os.environ for k in ALLOCATOR_ENV):
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.train_throughput", *sys.argv[1:]],
                  {**os.environ, **ALLOCATOR_ENV})
    device = torch.device(args.device)
    modes = dict(MODES, **(CUDA_MODES if device.type == "cuda" else {}))
    if args.modes:
        unknown = [k for k in args.modes if k not in modes]
        if unknown:
            p.error(f"unknown mode(s) {unknown} on {device.type}; known: {', '.join(modes)}")
        modes = {k: modes[k] for k in args.modes}
    # the baselines first, so that every row can be divided by them
    baselines = [k for k in ("fp32", GRAPH_BASELINE) if k in modes]
    order = baselines + [k for k in modes if k not in baselines]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    allocator = "default" if args.default_allocator else "cgnet"
    print(f"device: {name}; torch {torch.__version__}; allocator env: {allocator}; "
          f"crop {args.crop}, CGNet M={args.blocks[0]} N={args.blocks[1]}")
    for batch in args.batch:
        results = {}
        for mname in order:
            try:
                t, setup, kind, table = bench_train(device, batch, modes[mname], args.warmup, args.iters, args.crop,
                                                    blocks=tuple(args.blocks), profile_steps=args.profile,
                                                    by_shape=args.profile_shapes)
                e = None if args.no_eval else bench_eval(device, modes[mname], args.warmup, args.iters * 2)
            except Exception as ex:  # one failing mode (e.g. compile) must not hide the others
                why = str(ex).splitlines()[0][:120] if str(ex) else ""
                print(f"{mname:<36}{batch:>6}  failed: {type(ex).__name__}: {why}", flush=True)
                continue
            results[mname] = (t, e, setup, kind)
            print(f"measured {mname} (batch {batch}): {t:.2f} img/s; {setup:.1f} s compile/capture/warm-up "
                  f"before timing", flush=True)
            if table:
                print(f"profile of {args.profile} steps of {mname} ({kind}), batch {batch}:\n{table}", flush=True)
        base_t = results.get("fp32", (None,))[0]
        base_g = results.get(GRAPH_BASELINE, (None,))[0]
        base_e = results.get("fp32", (None, None))[1]
        print(f"\n{'mode':<36}{'batch':>6}{'img/s':>9}{'x fp32':>8}{'x graph':>8}{'s/epoch':>9}{'800 ep min':>11}"
              f"{'setup s':>9}{'eval img/s':>12}{'x fp32':>8}  ran")
        for mname, (t, e, setup, kind) in results.items():
            per_epoch, minutes = epoch_projection(batch, t)
            ratio = f"{t / base_t:>8.2f}" if base_t else f"{'-':>8}"
            graph_ratio = f"{t / base_g:>8.2f}" if base_g else f"{'-':>8}"
            if e is None:
                evals = f"{'-':>12}{'-':>8}"
            else:
                evals = f"{e:>12.1f}" + (f"{e / base_e:>8.2f}" if base_e else f"{'-':>8}")
            fell_back = modes[mname][2].startswith("compiled-") and not kind.startswith("compiled")
            print(f"{mname:<36}{batch:>6}{t:>9.2f}{ratio}{graph_ratio}{per_epoch:>9.2f}{minutes:>11.1f}{setup:>9.1f}"
                  f"{evals}  {kind}{'  (FELL BACK: not the compiled step)' if fell_back else ''}", flush=True)
        print(f"(s/epoch: {CAMVID_TRAINVAL // batch} steps of batch {batch}, steps only; x graph: ratio to "
              f"{GRAPH_BASELINE}{'' if base_g else ', CUDA only'})")


if __name__ == "__main__":
    main()
