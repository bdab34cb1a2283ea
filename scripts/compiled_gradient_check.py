"""Gradients of CGNet through torch.compile against eager ones, one training batch, fp32.

    python scripts/compiled_gradient_check.py --compiled model   # what `cgnet train --compile` does on a CPU
    python scripts/compiled_gradient_check.py --compiled loss    # model and class-weighted loss compiled
    python scripts/compiled_gradient_check.py --compiled step    # model, loss and backward() compiled

Prints the relative difference of all gradients together (|compiled - eager| / |eager|) and the
parameters that differ most. Found with it on a 2-core CPU, torch 2.13.0, each with a fresh
TORCHINDUCTOR_CACHE_DIR (crop 64, batch 8 unless said):
  --compiled model                      6.662e-04  (agrees: fp32 sums in another order)
  --compiled loss                       1.000e+00  (zero gradients)
  --compiled step                       1.000e+00  (zero gradients; also with --blocks 2 2)
  --compiled step --blocks 2 2 --crop 32 --batch 2   2.049e-06  (agrees: the size of tests/test_steps.py)
The class-weighted cross-entropy alone, compiled at 8x11x64x64, agrees with eager (~1e-7), so
it is the model and the loss in one graph that loses the gradient. Further probes (scratch
scripts, M2N2, crop 64, batch 8, one graph each): a mean-square loss agrees (1.8e-6); unweighted
cross-entropy gives zero gradients too, with or without channels_last; bilinear upsampling by 8
followed by cross-entropy, without the network, agrees (3e-7). On an H200 (torch 2.11) the
compiled whole step passed cgnet's check against eager and trained the shipped weights.

The cause (M2N2, crop 64, batch 8, TORCH_LOGS=output_code): in the generated backward, the
bilinear up-sampling's gradient -- four scatter-adds (atomic_add) of the log-softmax gradient
into zero-filled buffers -- runs in the LAST C++ kernel, while the FIRST kernel zero-fills those
buffers and at once sums them into the gradient of the classifier's output: it sums zeros, and
every gradient behind the classifier is zero. (The C++ backend writes consecutive scheduled
nodes into one kernel up to the next library call, so this is the order of the nodes, not a
fusion.) One inductor switch at a time (model and unweighted loss compiled as by --compiled loss, NCHW):
  loop_ordering_after_fusion=False                                  1.000e+00  (still zero)
  loop_reindexing_after_fusion=False, loop_index_inversion_in_fusion=False  1.000e+00
  cpp.max_horizontal_fusion_size=1                                  1.961e-06  (agrees)
  reorder_for_peak_memory=False                                     1.960e-06  (agrees)
The peak-memory reordering runs after fusion, so without it the same kernels run in the order
fusion left them: that pass puts the scatter after its reader. At full size (M3N21, crop 360,
batch 8, --compiled step) both switches give 1.005e-03, the size of fp32 rounding for this
network: eager fp32 against eager fp64 differs by 9.3e-04 there.
--amp bf16 runs the forward under autocast in both (eager bf16 against compiled bf16) and also
prints how far eager bf16 is from eager fp32, the size of bf16's own rounding;
--training-kernels puts in the CPU's training backward passes (`cgnet train`'s defaults,
engine.config.CPU_TRAINING_DEFAULTS). With torch 2.13.0 on a 2-core AMD EPYC (AVX-512, avx512_bf16),
crop 64, batch 8, --amp bf16 (eager bf16 is 1.7e-01 from eager fp32 in each):
  --compiled model --training-kernels   1.294e-01  (agrees, to bf16's rounding)
  --compiled model                      1.441e-01  (agrees)
  --compiled step                       1.000e+00  (zero gradients: the reordering above)
  --compiled step --cpu-options         1.441e-01  (agrees)
so the CPU bf16 "zero gradients" once blamed on inductor's bf16 kernels came from the compiled
whole step's reordering; `cgnet train --compile` on the CPU compiles the model only.
--option KEY=VALUE (repeatable) compiles with such inductor options; --cpu-options uses
cgnet.engine.steps.CPU_INDUCTOR_OPTIONS, what `make_compiled_step` uses on the CPU.
"""
import argparse
import ast
import time

import torch
import torch.nn as nn

from cgnet import CGNet
from cgnet.common import autocast
from cgnet.engine.config import CPU_TRAINING_DEFAULTS
from cgnet.engine.grads import use_training_kernels
from cgnet.engine.steps import CPU_INDUCTOR_OPTIONS


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compiled", choices=["model", "loss", "step"], default="step")
    p.add_argument("--blocks", type=int, nargs=2, default=[3, 21], metavar=("M", "N"))
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an inductor option for torch.compile, e.g. cpp.max_horizontal_fusion_size=1")
    p.add_argument("--cpu-options", action="store_true", help="compile with steps.CPU_INDUCTOR_OPTIONS")
    p.add_argument("--amp", choices=["off", "bf16"], default="off", help="autocast of the forward, eager and compiled")
    p.add_argument("--training-kernels", action="store_true",
                   help="the CPU's training backward passes (engine.config.CPU_TRAINING_DEFAULTS)")
    args = p.parse_args()
    options = dict(CPU_INDUCTOR_OPTIONS) if args.cpu_options else {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--option {item!r}: expected KEY=VALUE")
        options[key] = ast.literal_eval(value)
    compile_kwargs = {"options": options} if options else {}
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = CGNet(11, m=args.blocks[0], n=args.blocks[1])
    if args.training_kernels:
        use_training_kernels(model, depthwise=CPU_TRAINING_DEFAULTS["depthwise_backward"],
                             prelu=CPU_TRAINING_DEFAULTS["prelu_backward"],
                             upsample=CPU_TRAINING_DEFAULTS["upsample_backward"])
    model = model.to(device).train().to(memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss(weight=torch.linspace(1, 2, 11, device=device), ignore_index=11)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(args.batch, 3, args.crop, args.crop, generator=gen, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 11, (args.batch, args.crop, args.crop), generator=gen, device=device)

    def loss_of(net, amp=args.amp):
        with autocast(device, amp):
            logits = net(x)
        return criterion(logits.float(), y)

    saved = {k: v.clone() for k, v in model.state_dict().items()}  # BN running statistics

    def eager_gradients(amp):
        loss_of(model, amp).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
        return grads

    eager = eager_gradients(args.amp)
    fp32 = eager_gradients("off") if args.amp != "off" else None

    t0 = time.perf_counter()
    if args.compiled == "model":
        loss_of(torch.compile(model, **compile_kwargs)).backward()
    elif args.compiled == "loss":
        torch.compile(lambda: loss_of(model), **compile_kwargs)().backward()
    else:
        def step():
            loss = loss_of(model)
            loss.backward()
            return loss.detach()
        torch.compile(step, **compile_kwargs)()
    seconds = time.perf_counter() - t0

    compiled = {name: p.grad if p.grad is not None else torch.zeros_like(p) for name, p in model.named_parameters()}
    diff = torch.cat([(eager[k] - compiled[k]).flatten() for k in eager]).norm()
    total = torch.cat([g.flatten() for g in eager.values()]).norm()
    print(f"torch {torch.__version__}, {device}, CGNet M{args.blocks[0]}N{args.blocks[1]}, crop {args.crop}, "
          f"batch {args.batch}, compiled: {args.compiled}, amp {args.amp}, training kernels {args.training_kernels}, "
          f"options {options} ({seconds:.0f} s to compile and run)")
    print(f"gradients, all together: |compiled - eager| / |eager| = {float(diff / total):.3e}")
    if fp32 is not None:
        off = torch.cat([(eager[k] - fp32[k]).flatten() for k in eager]).norm()
        print(f"  for scale, eager {args.amp} against eager fp32: {float(off / torch.cat([g.flatten() for g in fp32.values()]).norm()):.3e}")
    worst = sorted(((float((eager[k] - compiled[k]).norm() / eager[k].norm().clamp_min(1e-12)), k) for k in eager),
                   reverse=True)[:5]
    for rel, name in worst:
        print(f"  {name:<32} {rel:.3e}  |eager| {float(eager[name].norm()):.3e}  "
              f"|compiled| {float(compiled[name].norm()):.3e}")


if __name__ == "__main__":
    main()
