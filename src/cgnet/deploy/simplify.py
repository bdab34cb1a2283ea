"""CGNet simplified for inference: the exports and the compiled inference paths run this.

BatchNorm is folded into the convolution before it (including the joint BN of each CG block,
split across its two depthwise convolutions), and PReLU is written as max(x, a*x), which
runtimes and inductor execute faster than PReLU and which equals it for every slope a <= 1: for
x >= 0, x >= a*x; for x < 0, a*x >= x (negative slopes included, where a*x > 0 > x). Trained
CGNets have negative slopes, so the check is a <= 1, not 0 <= a <= 1; PReLU is kept if any slope
exceeds 1.

Two rewrites that keep every value put the model in the form XNNPACK (ExecuTorch's CPU
delegate) runs whole: the global context pools with keepdim=True (B x C x 1 x 1) and reshapes,
and the input injection pads with zeros explicitly before its average pool (PyTorch's default
count_include_pad=True counted those zeros anyway). Without them XNNPACK left 26 ops to the
portable kernels and split the graph into 25 delegate calls. The bottom of `cgnet.deploy` with
`runners`: it imports nothing else of it.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..common import InputError
from torch.nn import functional

from ..model import CGBlock, CGDownBlock, CGNet, ConvBNAct, GlobalContext


class MaxPReLU(nn.Module):
    """PReLU with per-channel slopes a <= 1, as max(x, a*x)."""

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        self.register_buffer("slope", prelu.weight.detach().clone().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, x * self.slope)


class KeepdimGlobalContext(nn.Module):
    """`GlobalContext` with the same layers and values, pooled with keepdim=True: B x C x 1 x 1,
    reshaped to B x C for its two linear layers and back for the reweighting."""

    def __init__(self, glo: GlobalContext):
        super().__init__()
        self.fc1, self.fc2 = glo.fc1, glo.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean((2, 3), keepdim=True)                                  # B x C x 1 x 1
        w = self.fc2(functional.relu(self.fc1(pooled.flatten(1))))            # B x C
        return x * torch.sigmoid(w).view(w.shape[0], w.shape[1], 1, 1)


def prelu_max_is_exact(model: nn.Module) -> bool:
    return all(bool((m.weight <= 1).all()) for m in model.modules() if isinstance(m, nn.PReLU))


@torch.no_grad()
def _fold_joint_bn(block: CGBlock | CGDownBlock) -> None:
    """BN(cat[loc(y), sur(y)]) is a per-channel affine map: move it into the two depthwise convs."""
    bn = block.bn_act.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    half = block.loc.out_channels
    for conv, sl in ((block.loc, slice(0, half)), (block.sur, slice(half, 2 * half))):
        conv.weight.mul_(scale[sl].view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(shift[sl].clone())
    block.bn_act.bn = nn.Identity()


def simplify_for_inference(model: CGNet, prelu_as_max: bool | None = None) -> nn.Module:
    """A folded copy of `model` in eval mode (see module docstring). prelu_as_max=None: when valid."""
    model = copy.deepcopy(model).float().eval()
    for mod in list(model.modules()):
        if isinstance(mod, ConvBNAct):
            mod.conv = fuse_conv_bn_eval(mod.conv, mod.bn)
            mod.bn = nn.Identity()
        elif isinstance(mod, (CGBlock, CGDownBlock)):
            _fold_joint_bn(mod)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GlobalContext):
                setattr(parent, name, KeepdimGlobalContext(child))
    if isinstance(model, CGNet):
        model.explicit_inject_pad = True
    if prelu_as_max is None:
        prelu_as_max = prelu_max_is_exact(model)
    elif prelu_as_max and not prelu_max_is_exact(model):
        raise InputError("a PReLU slope exceeds 1: max(x, a*x) would differ from PReLU")
    if prelu_as_max:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.PReLU):
                    setattr(parent, name, MaxPReLU(child))
    return model
