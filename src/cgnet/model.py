"""CGNet: A Light-weight Context Guided Network for Semantic Segmentation.

Wu, Tang, Liu, Zhang, Zhang. IEEE Transactions on Image Processing 30 (2020).
https://arxiv.org/abs/1811.08201

The network follows the original release exactly (same layers, order of concatenations,
BatchNorm eps 1e-3, per-channel PReLU), so the release's checkpoints load into it through
`cgnet.checkpoint`. The module names here are our own.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional

from .common import InputError

__all__ = ["CGNet", "CGBlock", "CGDownBlock", "GlobalContext"]

BN_EPS = 1e-3


class BNAct(nn.Sequential):
    """BatchNorm followed by a per-channel PReLU."""

    def __init__(self, chs: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(chs, eps=BN_EPS)
        self.act = nn.PReLU(chs)


class ConvBNAct(nn.Sequential):
    """k x k convolution without bias, BatchNorm, PReLU."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, (kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chs, eps=BN_EPS)
        self.act = nn.PReLU(out_chs)


def depthwise3x3(chs: int, dilation: int) -> nn.Conv2d:
    return nn.Conv2d(chs, chs, 3, 1, padding=dilation, dilation=dilation, groups=chs, bias=False)


def depthwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Run a depthwise convolution, in fp32 under CPU bf16 autocast: the CPU bf16 kernel's weight
    gradient turned non-finite after ~60 CamVid training steps (stage 2, dilation 2) while every
    activation and input gradient stayed finite. Depthwise layers are a few % of the FLOPs."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return conv(x.float())
    return conv(x)


class GlobalContext(nn.Module):
    """Channel reweighting from the globally pooled feature (the paper's f_glo)."""

    def __init__(self, chs: int, reduction: int):
        super().__init__()
        self.fc1 = nn.Linear(chs, chs // reduction)
        self.fc2 = nn.Linear(chs // reduction, chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean((2, 3))
        w = torch.sigmoid(self.fc2(functional.relu(self.fc1(w))))
        return x * w[:, :, None, None]


class CGBlock(nn.Module):
    """Residual context guided block: local + dilated surrounding context, joint BN+PReLU, f_glo."""

    def __init__(self, chs: int, dilation: int, reduction: int):
        super().__init__()
        mid = chs // 2
        self.reduce = ConvBNAct(chs, mid, 1)
        self.loc = depthwise3x3(mid, 1)
        self.sur = depthwise3x3(mid, dilation)
        self.bn_act = BNAct(chs)
        self.glo = GlobalContext(chs, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce(x)
        joint = self.bn_act(torch.cat([depthwise(self.loc, y), depthwise(self.sur, y)], 1))
        return x + self.glo(joint)


class CGDownBlock(nn.Module):
    """Context guided block that halves the resolution (no residual)."""

    def __init__(self, in_chs: int, out_chs: int, dilation: int, reduction: int):
        super().__init__()
        self.conv = ConvBNAct(in_chs, out_chs, 3, stride=2)
        self.loc = depthwise3x3(out_chs, 1)
        self.sur = depthwise3x3(out_chs, dilation)
        self.bn_act = BNAct(2 * out_chs)
        self.fuse = nn.Conv2d(2 * out_chs, out_chs, 1, bias=False)
        self.glo = GlobalContext(out_chs, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        joint = self.bn_act(torch.cat([depthwise(self.loc, y), depthwise(self.sur, y)], 1))
        return self.glo(self.fuse(joint))


def inject(x: torch.Tensor, explicit_pad: bool = False) -> torch.Tensor:
    """Input injection: the image average-pooled to half its resolution (3x3, stride 2, one
    pixel of zero padding counted in the average: count_include_pad, PyTorch's default).

    explicit_pad=True pads with zeros first and pools without padding: the same values (the
    padded zeros were counted anyway), in the form XNNPACK delegates (it refuses padding inside
    an average pool); `cgnet.deploy.simplify` switches it on."""
    if explicit_pad:
        return functional.avg_pool2d(functional.pad(x, (1, 1, 1, 1)), 3, stride=2)
    return functional.avg_pool2d(x, 3, stride=2, padding=1)


class Resize(nn.Module):
    """Bilinear resize (align_corners=False) of B x C x h x w to B x C x H x W: the logits to the
    image's size. A module, with no weights, so that training can put ATen's kernels kept whole
    under torch.compile in its place (`cgnet.engine.grads.KeptResize`)."""

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        return functional.interpolate(x, size=size, mode="bilinear", align_corners=False)


class CGNet(nn.Module):
    """CGNet, the Context Guided Network (Wu et al., "CGNet: A Light-weight Context Guided Network
    for Semantic Segmentation", IEEE TIP 2020, arXiv:1811.08201).

    Stage 1 is three 3x3 convolutions at 1/2 resolution; stages 2 (1/4) and 3 (1/8) are a
    down-sampling CG block followed by M-1 and N-1 residual CG blocks. The input image, average
    pooled, is concatenated at the end of stages 1 and 2. A 1x1 classifier and bilinear
    up-sampling give per-pixel logits. The defaults are the paper's CGNet_M3N21 (496,306
    parameters with 19 classes). Module names are ours; `cgnet.load_model` maps the original
    release's names onto them.

    Args:
        num_classes: output classes (19 for Cityscapes, 11 for CamVid).
        m: blocks in stage 2, down-sampling block included (>= 2).
        n: blocks in stage 3, down-sampling block included (>= 2).
        dropout: Dropout2d probability before the classifier (the original release used 0.1 in
            some runs; its checkpoints then name the classifier `classifier.1`).
        classifier_bias: give the 1x1 classifier a bias (mmsegmentation's CGNet head has one;
            the original release's and ours have none, and then the state dict has no
            `classifier.bias`).

    Shapes:
        input: B x 3 x H x W, normalised as the checkpoint's `meta["preprocess"]` says; any H, W.
        output: B x num_classes x H x W logits.
    """

    def __init__(self, num_classes: int = 19, *, m: int = 3, n: int = 21, dropout: float = 0.0,
                 classifier_bias: bool = False):
        super().__init__()
        if m < 2 or n < 2:
            raise InputError(f"CGNet needs m >= 2 and n >= 2 (got m={m}, n={n}): "
                             "each stage is one down-sampling block plus m-1 (n-1) CG blocks")
        if num_classes < 1:
            raise InputError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {dropout}")
        self.num_classes, self.m, self.n, self.dropout = num_classes, m, n, dropout
        self.classifier_bias = bool(classifier_bias)
        self.explicit_inject_pad = False  # see `inject`; not in the state dict

        # stage 1: 1/2 resolution, three plain convolutions, then the image injected
        self.stem = nn.Sequential(ConvBNAct(3, 32, 3, 2), ConvBNAct(32, 32, 3), ConvBNAct(32, 32, 3))
        self.bn_act1 = BNAct(32 + 3)
        # stage 2: 1/4 resolution
        self.down2 = CGDownBlock(32 + 3, 64, dilation=2, reduction=8)
        self.stage2 = nn.Sequential(*[CGBlock(64, dilation=2, reduction=8) for _ in range(m - 1)])
        self.bn_act2 = BNAct(128 + 3)
        # stage 3: 1/8 resolution
        self.down3 = CGDownBlock(128 + 3, 128, dilation=4, reduction=16)
        self.stage3 = nn.Sequential(*[CGBlock(128, dilation=4, reduction=16) for _ in range(n - 1)])
        self.bn_act3 = BNAct(256)
        # head
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(256, num_classes, 1, bias=self.classifier_bias)
        self.resize = Resize()

        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]                                              # (H, W)
        pad = getattr(self, "explicit_inject_pad", False)
        img2 = inject(x, pad)                                            # B x 3 x H/2 x W/2
        img4 = inject(img2, pad)                                         # B x 3 x H/4 x W/4

        x = self.bn_act1(torch.cat([self.stem(x), img2], 1))             # B x 35 x H/2 x W/2
        d2 = self.down2(x)                                               # B x 64 x H/4 x W/4
        x = self.bn_act2(torch.cat([self.stage2(d2), d2, img4], 1))      # B x 131 x H/4 x W/4
        d3 = self.down3(x)                                               # B x 128 x H/8 x W/8
        x = self.bn_act3(torch.cat([d3, self.stage3(d3)], 1))            # B x 256 x H/8 x W/8

        x = self.classifier(self.drop(x))                                # B x classes x H/8 x W/8
        return self.resize(x, size)                                      # B x classes x H x W

    @property
    def config(self) -> dict:
        """The architecture as JSON-able data; `CGNet(**model.config)` rebuilds it
        (`classifier_bias` is there only when true, so models without it record what they did)."""
        config = {"num_classes": self.num_classes, "m": self.m, "n": self.n, "dropout": self.dropout}
        if self.classifier_bias:
            config["classifier_bias"] = True
        return config
