"""An independent, functional forward pass of the original release's network.

Written from ../shared/reference/cgnet_architecture.md and working directly on the original
release's state_dict keys, so that tests can compare `cgnet.CGNet` loaded through the key
conversion against a computation that shares no code with it.
"""
import re
from pathlib import Path

import torch
from torch.nn import functional


def read_key_list(path: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split(" ", 1)
        shapes[key] = tuple(int(v) for v in re.findall(r"\d+", shape))
    return shapes


def variant_shapes(base: dict, num_classes: int = 19, n: int = 21) -> dict:
    """Derive another configuration's keys from the M3N21 list (other classes, fewer stage-3 blocks)."""
    out = {}
    for key, shape in base.items():
        m = re.match(r"level3\.(\d+)\.", key)
        if m and int(m.group(1)) >= n - 1:
            continue
        if key.startswith("classifier."):
            shape = (num_classes,) + shape[1:]
        out[key] = shape
    return out


def random_original_state(shapes: dict, gen: torch.Generator) -> dict:
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("running_mean") or key.endswith("bn.bias") or key.endswith(".bias"):
            state[key] = torch.randn(shape, generator=gen) * 0.1
        elif key.endswith("bn.weight"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("act.weight"):
            state[key] = torch.rand(shape, generator=gen) * 0.5
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
    return state


def forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode forward of the original network given its (unprefixed) state dict."""
    def bp(p, x):
        x = functional.batch_norm(x, sd[p + "bn.running_mean"], sd[p + "bn.running_var"],
                         sd[p + "bn.weight"], sd[p + "bn.bias"], False, 0.0, 1e-3)
        return functional.prelu(x, sd[p + "act.weight"])

    def cbp(p, x, stride):
        w = sd[p + "conv.weight"]
        return bp(p, functional.conv2d(x, w, None, stride, (w.shape[-1] - 1) // 2))

    def dw(w, x, d):
        return functional.conv2d(x, w, None, 1, d, d, x.shape[1])

    def glo(p, x):
        y = functional.relu(functional.linear(x.mean((2, 3)), sd[p + "F_glo.fc.0.weight"], sd[p + "F_glo.fc.0.bias"]))
        y = torch.sigmoid(functional.linear(y, sd[p + "F_glo.fc.2.weight"], sd[p + "F_glo.fc.2.bias"]))
        return x * y[:, :, None, None]

    def down(p, x, d):
        y = cbp(p + "conv1x1.", x, 2)
        j = torch.cat([dw(sd[p + "F_loc.conv.weight"], y, 1), dw(sd[p + "F_sur.conv.weight"], y, d)], 1)
        j = functional.prelu(functional.batch_norm(j, sd[p + "bn.running_mean"], sd[p + "bn.running_var"],
                                 sd[p + "bn.weight"], sd[p + "bn.bias"], False, 0.0, 1e-3),
                    sd[p + "act.weight"])
        return glo(p, functional.conv2d(j, sd[p + "reduce.conv.weight"]))

    def block(p, x, d):
        y = cbp(p + "conv1x1.", x, 1)
        j = torch.cat([dw(sd[p + "F_loc.conv.weight"], y, 1), dw(sd[p + "F_sur.conv.weight"], y, d)], 1)
        return x + glo(p, bp(p + "bn_prelu.", j))

    def count(prefix):
        return len({k.split(".")[1] for k in sd if k.startswith(prefix)})

    size = x.shape[-2:]
    pool = lambda t: functional.avg_pool2d(t, 3, 2, 1)
    i1, i2 = pool(x), pool(pool(x))
    y = cbp("level1_2.", cbp("level1_1.", cbp("level1_0.", x, 2), 1), 1)
    y = bp("b1.", torch.cat([y, i1], 1))
    d2 = down("level2_0.", y, 2)
    y = d2
    for k in range(count("level2.")):
        y = block(f"level2.{k}.", y, 2)
    y = bp("bn_prelu_2.", torch.cat([y, d2, i2], 1))
    d3 = down("level3_0.", y, 4)
    y = d3
    for k in range(count("level3.")):
        y = block(f"level3.{k}.", y, 4)
    y = bp("bn_prelu_3.", torch.cat([d3, y], 1))
    w = sd["classifier.1.conv.weight"] if "classifier.1.conv.weight" in sd else sd["classifier.0.conv.weight"]
    return functional.interpolate(functional.conv2d(y, w), size, mode="bilinear", align_corners=False)
