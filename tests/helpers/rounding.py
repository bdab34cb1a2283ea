"""How far two float computations of the same CGNet logits can be apart by rounding alone, and the
pixels whose class may therefore differ (near ties), for the tests that compare inference paths
(eager, BN-folded and compiled, bf16 autocast).

A length-K sum of products in floating point is within K*u*sum|w*x| of the exact value (u the unit
roundoff); the bounds below take the logits' largest magnitude for sum|w*x|. Two computations that
each obey a bound B per logit differ by at most 2*B, and a pixel's arg max can only change where
its top-2 gap is at most twice the largest change of its logits.
"""
import torch
from torch import nn

FP32_U = 2.0 ** -24  # float32 unit roundoff (24 significant bits, round to nearest)
BF16_U = 2.0 ** -8   # bfloat16 unit roundoff (8 significant bits)


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    """The convolutions and linear layers: the only places where rounding enters a sum of products."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def longest_reduction(model: nn.Module) -> int:
    """K: the most products summed into one output value by any layer (its fan-in)."""
    return max(m.in_features if isinstance(m, nn.Linear) else
               m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] for m in weighted_layers(model))


def fp32_difference_bound(model: nn.Module, logits: torch.Tensor) -> float:
    """Largest |a - b| between two fp32 computations a, b of `logits` (N x C x H x W) that differ
    in summation order and in rounding of folded weights: each is within K*u*max|logits| of exact."""
    return 2 * longest_reduction(model) * FP32_U * float(logits.abs().max())


def bf16_difference_bound(model: nn.Module, logits: torch.Tensor) -> float:
    """Largest |a - b| between `logits` in fp32 and the same under bf16 autocast: each layer run in
    bf16 rounds its input and its weights (a relative 2*u_bf16 on each product, summed in fp32),
    and the errors of the L layers add up: L * 2*u_bf16 * max|logits|."""
    return len(weighted_layers(model)) * 2 * BF16_U * float(logits.abs().max())


def top2_gap(logits: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x H x W: best minus second-best score of each pixel."""
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def near_ties(logits: torch.Tensor, change) -> torch.Tensor:
    """N x H x W bool: the pixels whose class can flip when every logit moves by at most `change`
    (a number, or an N x H x W tensor per pixel)."""
    return top2_gap(logits) <= 2 * change
