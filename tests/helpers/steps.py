"""The tiny training setup the step tests share."""
import torch
import torch.nn as nn

from cgnet import CGNet

CLASSES = 11


def build(seed: int = 0, prelu_slope: float | None = None):
    """CGNet M2N2, its class-weighted loss and Adam, as train.py builds them on the CPU; every
    PReLU's slopes set to `prelu_slope` when given."""
    torch.manual_seed(seed)
    model = CGNet(CLASSES, m=2, n=2).train().to(memory_format=torch.channels_last)
    if prelu_slope is not None:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.PReLU):
                    module.weight.fill_(prelu_slope)
    criterion = nn.CrossEntropyLoss(weight=torch.linspace(1, 2, CLASSES), ignore_index=CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    return model, criterion, optimizer


def no_scaler():
    return torch.amp.GradScaler("cpu", enabled=False)
