"""mmsegmentation's two published Cityscapes CGNet configs, built and run by mmseg's own code with
random weights, to check that `cgnet.load_model` reads mmseg's checkpoints and computes the same
logits.

`python tests/helpers/mmseg_cgnet.py OUT` (in a venv with mmsegmentation, mmengine and mmcv-lite:
see tests/data/mmseg_cgnet/README.md for the versions) writes, for each config NAME:
- OUT/NAME.pth: the model's weights saved as mmseg saves a checkpoint (mmengine's
  `save_checkpoint` of `{"meta", "state_dict"}`, the form mmseg's publish_model.py leaves), after
  drawing every weight, BatchNorm statistic, PReLU slope and the head's bias at random;
- OUT/logits.pt: a dict of tensors, per config the logits of mmseg's own forward (its
  `data_preprocessor`, then `encode_decode`, in eval mode) of `fixture_image(512, 1024)` at the
  pixels `sample_pixels(512, 1024)` ("NAME/512x1024", classes x pixels) and of
  `fixture_image(*ODD_SIZE)` whole ("NAME/odd", classes x H x W).
`fixture_image` and `sample_pixels` need only numpy, so the tests rebuild the same inputs.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np

CONFIGS = {"cgnet_512x1024_60k_cityscapes": "cgnet_fcn_4xb8-60k_cityscapes-512x1024.py",
           "cgnet_680x680_60k_cityscapes": "cgnet_fcn_4xb4-60k_cityscapes-680x680.py"}
FULL_SIZE = (512, 1024)
ODD_SIZE = (45, 67)
SAMPLED = 2048


def fixture_image(height: int, width: int) -> np.ndarray:
    """H x W x 3 uint8, in BGR order (as mmseg's image loader gives it): an integer hash of the
    row, column and channel, so any numpy rebuilds it bit for bit."""
    i = np.arange(height, dtype=np.int64)[:, None, None]
    j = np.arange(width, dtype=np.int64)[None, :, None]
    c = np.arange(3, dtype=np.int64)[None, None, :]
    x = (i * 73856093) ^ (j * 19349663) ^ (c * 83492791)
    x = (x * 2654435761) % (1 << 32)
    return (x >> 24).astype(np.uint8)


def sample_pixels(height: int, width: int, count: int = SAMPLED) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of `count` pixels: the four corners, then pixels drawn by an integer hash."""
    k = np.arange(count - 4, dtype=np.int64)
    rows = np.concatenate([[0, 0, height - 1, height - 1], (k * 2654435761 + 12345) % (1 << 32) % height])
    cols = np.concatenate([[0, width - 1, 0, width - 1], (k * 40503 * 40503 + 777) % (1 << 32) % width])
    return rows, cols


def _stub_mmcv_ops() -> None:
    """mmcv-lite has no compiled ops, but mmseg's package imports names from mmcv.ops at import
    time (for other models). CGNet uses none: register a stand-in whose names refuse to run."""
    class NotBuilt:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("mmcv.ops is not built (mmcv-lite)")

    class Ops(types.ModuleType):
        __path__: list = []

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (NotBuilt,), {})

    sys.modules["mmcv.ops"] = Ops("mmcv.ops")


def _randomize(model, generator) -> None:
    import torch
    from torch import nn

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.empty_like(m.running_mean).uniform_(-0.3, 0.3, generator=generator))
                m.running_var.copy_(torch.empty_like(m.running_var).uniform_(0.5, 2.0, generator=generator))
                m.weight.copy_(torch.empty_like(m.weight).uniform_(0.5, 1.5, generator=generator))
                m.bias.copy_(torch.empty_like(m.bias).uniform_(-0.2, 0.2, generator=generator))
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.empty_like(m.weight).uniform_(-0.3, 0.6, generator=generator))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.empty_like(m.bias).uniform_(-0.5, 0.5, generator=generator))


def _logits(model, image_bgr: np.ndarray):
    """mmseg's own forward of one BGR uint8 image: its data preprocessor, then encode_decode."""
    import torch
    from mmseg.structures import SegDataSample

    h, w = image_bgr.shape[:2]
    sample = SegDataSample(metainfo={"img_shape": (h, w), "ori_shape": (h, w), "pad_shape": (h, w)})
    data = {"inputs": [torch.from_numpy(image_bgr).permute(2, 0, 1).contiguous()], "data_samples": [sample]}
    with torch.no_grad():
        data = model.data_preprocessor(data, False)
        return model.encode_decode(data["inputs"], [s.metainfo for s in data["data_samples"]])


def write_fixture(out: Path) -> None:
    _stub_mmcv_ops()
    import mmcv
    import mmengine
    import mmseg
    import torch
    from mmengine.runner.checkpoint import get_state_dict, save_checkpoint, weights_to_cpu
    from mmseg.apis import init_model
    from mmseg.datasets import CityscapesDataset

    configs = Path(mmseg.__file__).parent / ".mim" / "configs" / "cgnet"
    out.mkdir(parents=True, exist_ok=True)
    logits, rows, cols = {}, *sample_pixels(*FULL_SIZE)
    for seed, (name, config) in enumerate(CONFIGS.items()):
        model = init_model(str(configs / config), checkpoint=None, device="cpu")
        _randomize(model, torch.Generator().manual_seed(seed))
        meta = {"mmseg_version": mmseg.__version__, "mmcv_version": mmcv.__version__,
                "mmengine_version": mmengine.__version__, "config": model.cfg.pretty_text,
                "dataset_meta": {"classes": list(CityscapesDataset.METAINFO["classes"]),
                                 "palette": [list(c) for c in CityscapesDataset.METAINFO["palette"]]}}
        path = out / f"{name}.pth"
        save_checkpoint({"meta": meta, "state_dict": weights_to_cpu(get_state_dict(model))}, str(path))
        model = init_model(str(configs / config), checkpoint=str(path), device="cpu")  # as mmseg reads it
        full = _logits(model, fixture_image(*FULL_SIZE))[0]
        logits[f"{name}/512x1024"] = full[:, torch.from_numpy(rows), torch.from_numpy(cols)].clone()
        logits[f"{name}/odd"] = _logits(model, fixture_image(*ODD_SIZE))[0].clone()
        print(name, "max |logit|", float(full.abs().max()), "classes hit", int(full.argmax(0).unique().numel()))
    torch.save(logits, out / "logits.pt")


if __name__ == "__main__":
    write_fixture(Path(sys.argv[1]))
