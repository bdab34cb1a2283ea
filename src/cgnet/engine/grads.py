"""Training-only backward passes for the layers whose ATen backward bounds a CPU training step
(docs/speed.md: on a 2-core AVX2 EPYC a 3x3 depthwise convolution's backward took 18.8 ms against
1.3 ms for its forward, PReLU's 8.3 ms against 1.1 ms).

- `DepthwiseConvFunction`: a "same" depthwise convolution (stride 1, zero padding of
  dilation x (k - 1) / 2, no bias: all of CGNet's, dilations 1, 2 and 4). Its forward is the usual
  convolution. Its backward computes the input gradient with the same fast forward kernel, on the
  output gradient with the taps flipped (for stride 1 and this padding, the transposed
  convolution is that convolution), and the weight gradient either tap by tap (`taps`: for each
  of the k x k taps, the product of the output gradient with the input shifted by that tap,
  summed over batch and pixels) or as one depthwise forward convolution (`conv`: the N x C
  input planes as groups, each output-gradient plane as its k-sized-frame kernel, stride equal
  to the dilation, then summed over the batch).
- `PReLUFunction`: the input gradient and the slope gradient's terms in one pass (ATen's fused
  elementwise kernel), then one per-channel sum.
- `bilinear_resize`: the logits' bilinear up-sampling to the image size as a custom operator, so
  that torch.compile keeps ATen's kernels whole instead of tracing them. Inductor (CPU, torch 2.13)
  decomposes the up-sampling's backward into scatter-adds into a zero-filled buffer: 172 ms a
  step at batch 8, crop 360, on the 2-core Xeon, against 13 ms for ATen's channels_last kernel.

`use_training_kernels` puts them into a model for training: each matching layer is replaced by a
module holding the same Parameter under the same name (the resize has none), so the state_dict,
the optimiser's parameters and checkpoints are unchanged. Which ones a run uses:
`--depthwise-backward`, `--prelu-backward` and `--upsample-backward` (defaults in
`cgnet.engine.config.CPU_TRAINING_DEFAULTS`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable
from torch.nn import functional

from ..model import Resize

DEPTHWISE_BACKWARDS = ("aten", "taps", "conv")
PRELU_BACKWARDS = ("aten", "fused")
UPSAMPLE_BACKWARDS = ("compiler", "aten")  # what torch.compile makes of it / ATen's kernels kept whole


def depthwise_input_grad(grad_out: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
    """Input gradient of a "same" depthwise convolution: the forward convolution of the output
    gradient (N x C x H x W) with each channel's k x k taps (weight C x 1 x k x k) flipped."""
    padding = dilation * (weight.shape[-1] - 1) // 2
    return functional.conv2d(grad_out, weight.flip(-2, -1), padding=padding, dilation=dilation,
                             groups=weight.shape[0])


def depthwise_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, k: int, dilation: int,
                          method: str = "taps") -> torch.Tensor:
    """Weight gradient (C x 1 x k x k) of a "same" depthwise convolution of x (N x C x H x W).

    grad[c, a, b] = sum over n, i, j of grad_out[n, c, i, j] * x[n, c, i + d(a - r), j + d(b - r)]
    (r = (k - 1) / 2, x zero outside the image).

    Args:
        method: `taps` (one product and per-channel sum per tap, over the rows and columns where
            the shifted input is inside the image) or `conv` (one depthwise forward convolution:
            the N*C planes of x as groups, the planes of grad_out as their H x W kernels,
            padding r*d and stride d give the k x k shifts, then a sum over the batch).
    """
    n, c, h, w = x.shape
    r = (k - 1) // 2
    if method == "conv":
        planes = x.reshape(1, n * c, h, w)
        kernels = grad_out.reshape(n * c, 1, h, w)
        return functional.conv2d(planes, kernels, padding=r * dilation, stride=dilation,
                                 groups=n * c).view(n, c, k, k).sum(0).unsqueeze(1)
    taps = []
    for a in range(k):
        dy = (a - r) * dilation
        for b in range(k):
            dx = (b - r) * dilation
            out_rows, in_rows = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h + min(0, dy))
            out_cols, in_cols = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w + min(0, dx))
            taps.append((grad_out[:, :, out_rows, out_cols] * x[:, :, in_rows, in_cols]).sum((0, 2, 3)))
    return torch.stack(taps, 1).view(c, 1, k, k)


class DepthwiseConvFunction(torch.autograd.Function):
    """y = conv2d(x, weight, padding=dilation*(k-1)/2, dilation=dilation, groups=C), with the
    backward of `depthwise_input_grad` and `depthwise_weight_grad` (see the module's docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, dilation: int, method: str) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.dilation, ctx.method = dilation, method
        padding = dilation * (weight.shape[-1] - 1) // 2
        return functional.conv2d(x, weight, padding=padding, dilation=dilation, groups=weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = depthwise_input_grad(grad_out, weight, ctx.dilation)
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad_out, weight.shape[-1], ctx.dilation, ctx.method)
        return grad_x, grad_w, None, None


class PReLUFunction(torch.autograd.Function):
    """y = x where x > 0, else slope[c] * x (per channel, dimension 1), with both gradients from
    one elementwise pass (ATen's `_prelu_kernel_backward`) and one per-channel sum."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        slope = _broadcast_slope(weight.to(x.dtype), x)
        ctx.save_for_backward(x, slope)
        ctx.weight_dtype = weight.dtype
        return torch.ops.aten._prelu_kernel(x, slope)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x, slope = ctx.saved_tensors
        grad_x, terms = torch.ops.aten._prelu_kernel_backward(grad_out, x, slope)
        if slope.numel() == 1:
            grad_w = terms.sum().reshape(1)
        else:
            grad_w = terms.sum([d for d in range(terms.dim()) if d != 1])
        return grad_x, grad_w.to(ctx.weight_dtype)


def _broadcast_slope(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The slope shaped to broadcast over x: (C,) -> 1 x C x 1 x ... (one slope: as it is)."""
    if weight.numel() == 1:
        return weight
    return weight.view(1, -1, *([1] * (x.dim() - 2)))


def _aten_resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """ATen's bilinear up-sampling (align_corners=False) of x (N x C x h x w) to N x C x height x
    width. On fake tensors the same call gives the output's shape and strides."""
    return torch.ops.aten.upsample_bilinear2d(x, [height, width], False)


def _aten_resize_backward(grad_out: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The gradient (N x C x height x width) of `_aten_resize` from an input of height x width,
    given the gradient of its output (N x C x H x W): ATen's upsample_bilinear2d_backward."""
    n, c, out_h, out_w = grad_out.shape
    return torch.ops.aten.upsample_bilinear2d_backward(grad_out, [out_h, out_w], [n, c, height, width], False)


# under torch.compile opaque calls: inductor runs ATen's kernels instead of tracing them
bilinear_resize = torch.library.custom_op("cgnet::bilinear_resize", _aten_resize, mutates_args=())
bilinear_resize.register_fake(_aten_resize)
bilinear_resize_backward = torch.library.custom_op("cgnet::bilinear_resize_backward", _aten_resize_backward,
                                                   mutates_args=())


@bilinear_resize_backward.register_fake
def _resize_backward_shape(grad_out: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The gradient's shape and layout (that of grad_out, as ATen's kernel gives it), also for
    symbolic sizes, which ATen's meta function of the backward does not take."""
    n, c = grad_out.shape[:2]
    channels_last = grad_out.dim() == 4 and not grad_out.is_contiguous() and \
        grad_out.is_contiguous(memory_format=torch.channels_last)
    return grad_out.new_empty((n, c, height, width)).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _keep_input_size(ctx, inputs, output) -> None:
    ctx.in_size = tuple(inputs[0].shape[-2:])


def _bilinear_resize_grad(ctx, grad_out: torch.Tensor):
    return bilinear_resize_backward(grad_out, *ctx.in_size), None, None


bilinear_resize.register_autograd(_bilinear_resize_grad, setup_context=_keep_input_size)


class KeptResize(nn.Module):
    """Stands in for the model's `Resize` during training: `bilinear_resize` (the same values)."""

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        return bilinear_resize(x, int(size[0]), int(size[1]))


class DepthwiseConv(nn.Module):
    """Stands in for a "same" depthwise nn.Conv2d during training: the same weight Parameter (so
    the same state_dict key), `DepthwiseConvFunction` as forward."""

    def __init__(self, conv: nn.Conv2d, method: str):
        super().__init__()
        self.weight = conv.weight
        self.dilation, self.method = conv.dilation[0], method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return DepthwiseConvFunction.apply(x, self.weight, self.dilation, self.method)


class FusedPReLU(nn.Module):
    """Stands in for an nn.PReLU during training: the same weight Parameter, `PReLUFunction`."""

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        self.weight = prelu.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return PReLUFunction.apply(x, self.weight)


def is_same_depthwise(conv: nn.Module) -> bool:
    """A depthwise nn.Conv2d that `DepthwiseConvFunction` computes: one input channel per group,
    a square odd kernel, stride 1, zero padding of dilation * (k - 1) / 2 on both axes, no bias."""
    if type(conv) is not nn.Conv2d:
        return False
    k, d = conv.kernel_size[0], conv.dilation[0]
    return (conv.groups == conv.in_channels == conv.out_channels and conv.bias is None
            and conv.kernel_size == (k, k) and k % 2 == 1 and conv.stride == (1, 1)
            and conv.dilation == (d, d) and conv.padding == (d * (k - 1) // 2,) * 2
            and conv.padding_mode == "zeros")


def use_training_kernels(model: nn.Module, depthwise: str = "aten", prelu: str = "aten",
                         upsample: str = "compiler") -> dict[str, int]:
    """Replace, in place, the model's "same" depthwise convolutions (unless `depthwise` is
    `aten`), its PReLUs (when `prelu` is `fused`) and its `Resize` (when `upsample` is `aten`) by
    the modules above, each keeping its Parameter and name. Returns how many of each were
    replaced."""
    if depthwise not in DEPTHWISE_BACKWARDS or prelu not in PRELU_BACKWARDS or upsample not in UPSAMPLE_BACKWARDS:
        raise ValueError(f"unknown backward: depthwise {depthwise!r} (one of {DEPTHWISE_BACKWARDS}), "
                         f"prelu {prelu!r} (one of {PRELU_BACKWARDS}), upsample {upsample!r} "
                         f"(one of {UPSAMPLE_BACKWARDS})")
    counts = {"depthwise": 0, "prelu": 0, "upsample": 0}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if depthwise != "aten" and is_same_depthwise(child):
                setattr(parent, name, DepthwiseConv(child, depthwise))
                counts["depthwise"] += 1
            elif prelu == "fused" and type(child) is nn.PReLU:
                setattr(parent, name, FusedPReLU(child))
                counts["prelu"] += 1
            elif upsample == "aten" and type(child) is Resize:
                setattr(parent, name, KeptResize())
                counts["upsample"] += 1
    return counts
