"""Parameters, FLOPs and activation memory of a CGNet, per stage.

FLOPs are 2 x multiply-adds of the convolutions and linear layers (BatchNorm, PReLU, pooling and
the final interpolation are left out, as is usual). Activation memory is what autograd keeps for
the backward pass of one training step, measured with saved-tensor hooks, excluding parameters;
tensors shared between layers are counted once.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from .checkpoint import load_model
from .common import number_type, parse_size
from .model import CGNet
from .options import add_checkpoint_arg

STAGES = {"stem": "stage1", "bn_act1": "stage1",
          "down2": "stage2", "stage2": "stage2", "bn_act2": "stage2",
          "down3": "stage3", "stage3": "stage3", "bn_act3": "stage3",
          "drop": "head", "classifier": "head", "resize": "head"}
STAGE_ORDER = ["stage1", "stage2", "stage3", "head"]


def _layer_flops(mod: nn.Module, out: torch.Tensor) -> int:
    if isinstance(mod, nn.Conv2d):
        kh, kw = mod.kernel_size
        return 2 * out.numel() * (mod.in_channels // mod.groups) * kh * kw
    if isinstance(mod, nn.Linear):
        return 2 * out.numel() * mod.in_features
    return 0


@torch.no_grad()
def count_flops(model: CGNet, height: int, width: int, batch: int = 1) -> dict[str, int]:
    """FLOPs per stage (and 'total') for one forward pass at batch x 3 x height x width."""
    flops = dict.fromkeys(STAGE_ORDER, 0)
    handles = []
    for name, child in model.named_children():
        stage = STAGES[name]
        for mod in child.modules():
            def hook(mod, inp, out, stage=stage):
                flops[stage] += _layer_flops(mod, out)
            handles.append(mod.register_forward_hook(hook))
    try:
        was_training = model.training
        model.eval()
        p = next(model.parameters())
        model(torch.zeros(batch, 3, height, width, device=p.device, dtype=p.dtype))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    flops["total"] = sum(flops[s] for s in STAGE_ORDER)
    return flops


def count_activation_bytes(model: CGNet, height: int, width: int, batch: int = 1) -> dict[str, int]:
    """Bytes autograd saves for backward in one training forward pass, per stage (and 'total')."""
    saved = dict.fromkeys(STAGE_ORDER, 0)
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    current = ["stage1"]  # the input injection runs before any module: charge it to stage 1
    handles = [child.register_forward_pre_hook(lambda mod, inp, s=STAGES[name]: current.__setitem__(0, s))
               for name, child in model.named_children()]

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs and ptr not in seen:
            seen.add(ptr)
            saved[current[0]] += storage.nbytes()
        return t

    was_training = model.training
    model.train()
    p = next(model.parameters())
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(torch.zeros(batch, 3, height, width, device=p.device, dtype=p.dtype))
        del out
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    saved["total"] = sum(saved[s] for s in STAGE_ORDER)
    return saved


def count_params(model: CGNet) -> dict[str, int]:
    params = dict.fromkeys(STAGE_ORDER, 0)
    for name, child in model.named_children():
        params[STAGES[name]] += sum(p.numel() for p in child.parameters())
    params["total"] = sum(params[s] for s in STAGE_ORDER)
    return params


def profile_table(model: CGNet, height: int, width: int, activations: bool = True) -> str:
    """A printable per-stage table of parameters, GFLOPs and training activation memory."""
    params = count_params(model)
    flops = count_flops(model, height, width)
    acts = count_activation_bytes(model, height, width) if activations else None
    cfg = model.config
    lines = [f"CGNet  classes={cfg['num_classes']}  M={cfg['m']}  N={cfg['n']}  "
             f"input 1x3x{height}x{width}",
             f"{'stage':<8}{'params':>12}{'GFLOPs':>10}" + (f"{'activations MB':>17}" if acts else "")]
    for s in STAGE_ORDER + ["total"]:
        row = f"{s:<8}{params[s]:>12,}{flops[s] / 1e9:>10.3f}"
        if acts:
            row += f"{acts[s] / 2**20:>17.1f}"
        lines.append(row)
    lines.append("GFLOPs = 2 x multiply-adds of convolutions and linear layers; activations = what "
                 "autograd saves for backward at batch 1, fp32.")
    return "\n".join(lines)


# ---- cgnet info ----------------------------------------------------------------------------------

def add_info_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (a checkpoint, or an architecture with random weights)")
    add_checkpoint_arg(g, default="none: an architecture with random weights, from --num-classes and --blocks "
                                  "(counting needs no trained weights)")
    g.add_argument("--num-classes", type=number_type(int, minimum=1), help="classes (19 for Cityscapes, 11 for CamVid)")
    g.add_argument("--blocks", type=int, nargs=2, default=[3, 21], metavar=("M", "N"),
                   help="blocks in stages 2 and 3 (default 3 21)")
    p.add_argument("--size", type=parse_size, nargs="+", default=[(1024, 2048)], metavar="HxW",
                   help="input sizes (default 1024x2048)")
    p.add_argument("--activations", action=argparse.BooleanOptionalAction, default=True,
                   help="measure training activation memory (one forward pass per size)")


def cmd_info(args: argparse.Namespace) -> int:
    """`cgnet info`: the per-stage table of a checkpoint's model, or of an architecture, per --size."""
    if args.checkpoint:
        model = load_model(args.checkpoint, num_classes=args.num_classes)
    else:
        m, n = args.blocks
        model = CGNet(args.num_classes if args.num_classes is not None else 19, m=m, n=n).eval()
    for i, (h, w) in enumerate(args.size):
        if i:
            print()
        print(profile_table(model, h, w, activations=args.activations))
    return 0
