"""A CGNet with non-trivial BatchNorm statistics and PReLU slopes (negative ones included), so
that folding them for inference is exercised: a fresh model's BN is the identity."""
import torch
import torch.nn as nn

from cgnet import CGNet


def randomized(model: CGNet, low_slope=-0.3, high_slope=0.6) -> CGNet:
    """Draws BN statistics and affine parameters and PReLU slopes in [low_slope, high_slope)
    from torch's global generator (seed it first); returns the model in eval mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(low_slope, high_slope)
    return model.eval()
