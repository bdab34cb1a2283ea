"""The training configuration: one frozen, typed `TrainConfig`, the paper's presets as overrides
of it, and `resolve_config` (defaults <- preset <- command line). The resolved config is printed,
written to OUT/config.json and stored in every checkpoint; `TrainConfig.from_dict` reads it back.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, fields, replace

from ..common import CGNetError, default_device, parse_floats
from ..data.catalog import read_class_names


class ConfigError(CGNetError, ValueError):
    """A training setting that cannot work; the message names the option and the value."""


@dataclass(frozen=True)
class TrainConfig:
    # what to train on
    preset: str | None = None
    dataset: str = "camvid"
    classes: tuple[str, ...] | None = None      # a custom dataset's class names
    ignore_index: int | None = None             # a custom dataset's unlabelled id
    data_root: str | None = None
    train_split: str = "train"                  # split name or list file
    val_split: str | None = "val"               # 'none' skips validation
    # the schedule (the paper's: Adam, poly 0.9, every iteration)
    epochs: int = 800
    batch_size: int = 8                         # global, split across processes
    crop: tuple[int, int] = (360, 360)
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    max_iters: int | None = None                # stop early; the schedule still spans `epochs`
    time_budget: float | None = None            # minutes: `epochs` is cut to fit after 2 epochs
    # the model and the loss
    m: int = 3
    n: int = 21
    dropout: float = 0.0
    class_weights: bool = True                  # 1 / ln(1.10 + class share)
    preprocess: str = "standard"
    mean: tuple[float, ...] | None = None       # default: the training list's statistics
    std: tuple[float, ...] | None = None
    seed: int = 0
    # how it runs
    device: str | None = None                   # default: cuda when available
    amp: str | None = None                      # off, bf16, fp16 (default: bf16 on CUDA, off on CPU)
    channels_last: bool = True
    compile: bool = False
    cuda_graph: bool | None = None              # default: on where possible
    sync_bn: bool = False
    workers: int | None = None
    loader: str = "auto"                        # workers, memory (decode once, augment on the device)
    val_every: int = 10
    out: str = "runs/cgnet"
    progress: bool = True
    # filled in by training: the preprocessing the model was trained with
    resolved_preprocess: dict | None = None

    def to_dict(self) -> dict:
        """JSON-able (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """The inverse of `to_dict`; unknown keys (from other versions) are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v
                      for k, v in data.items() if k in known})


# The paper's recipes (Wu et al. 2020, section IV; the original release's scripts).
PRESETS: dict[str, dict] = {
    "cityscapes": dict(dataset="cityscapes", train_split="train", val_split="val", crop=(680, 680),
                       batch_size=16, epochs=300),
    "cityscapes-trainval": dict(dataset="cityscapes", train_split="trainval", val_split="val",
                                crop=(680, 680), batch_size=16, epochs=350),
    "camvid": dict(dataset="camvid", train_split="trainval", val_split="val", crop=(360, 360),
                   batch_size=8, epochs=800),
    # ours: the camvid recipe fitted to 2.5 hours of a 2-core CPU (fp32, channels_last, compiled)
    "camvid-cpu": dict(dataset="camvid", train_split="trainval", val_split="val", crop=(360, 360),
                       batch_size=8, epochs=800, time_budget=150, compile=True, amp="off", val_every=5,
                       workers=1),
}


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), help="one of the paper's recipes")
    p.add_argument("--dataset", help="camvid or cityscapes")
    p.add_argument("--classes", type=read_class_names,
                   help="your own dataset: class names, 'a,b,c' or a file with one per line (with --ignore-index, "
                        "and list files for --train-split/--val-split)")
    p.add_argument("--ignore-index", type=int, help="label id of unlabelled pixels (custom datasets)")
    p.add_argument("--data-root", help="dataset folder (with the list files)")
    p.add_argument("--train-split", help="train, trainval, or a list file")
    p.add_argument("--val-split", help="split or list file validated on ('none' to skip)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-iters", type=int, help="stop after this many iterations (schedule still spans --epochs)")
    p.add_argument("--time-budget", type=float, metavar="MIN",
                   help="fit the schedule to this many minutes of training: after 2 epochs, --epochs is "
                        "cut to what fits (the poly schedule then spans the shorter run)")
    p.add_argument("--batch-size", type=int, help="global batch, split across processes")
    p.add_argument("--crop", type=int, nargs="+", metavar="PX", help="crop size: S or H W")
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--poly-power", type=float)
    # one option for both: torchrun rejects a bare --m among the script's arguments as ambiguous
    p.add_argument("--blocks", type=int, nargs=2, metavar=("M", "N"), help="blocks in stages 2 and 3 (default 3 21)")
    p.add_argument("--dropout", type=float)
    p.add_argument("--class-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="weight the loss by 1/ln(1.10 + class share) (default on)")
    p.add_argument("--preprocess", choices=["standard", "original"])
    p.add_argument("--mean", type=parse_floats, help="3 values; default: computed on the training list")
    p.add_argument("--std", type=parse_floats)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], help="default: bf16 on CUDA, off on CPU")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay the training step as one CUDA graph (default on where possible)")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--workers", type=int, help="loader workers per process")
    p.add_argument("--loader", choices=["auto", "workers", "memory"],
                   help="memory: decode once, augment on the device (auto: memory on CUDA)")
    p.add_argument("--val-every", type=int, help="validate every K epochs (and after the last)")
    p.add_argument("--out", help="run folder (config, log, checkpoints, curve)")
    p.add_argument("--resume", nargs="?", const="auto", help="continue from OUT/last.pt or a given checkpoint")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- preset <- command line, with the device-dependent defaults filled in."""
    values: dict = {}
    if getattr(args, "preset", None):
        values.update(PRESETS[args.preset], preset=args.preset)
    for f in fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = tuple(value) if isinstance(value, list) else value
    if getattr(args, "blocks", None):
        values["m"], values["n"] = args.blocks
    crop = tuple(values.get("crop", TrainConfig.crop))
    if len(crop) not in (1, 2):
        raise ConfigError(f"--crop takes one or two sizes, got {list(crop)}")
    values["crop"] = (crop[0], crop[0]) if len(crop) == 1 else crop
    cfg = TrainConfig(**values)

    device = cfg.device or default_device()
    on_cuda = device.startswith("cuda")
    cfg = replace(cfg, device=device,
                  amp=cfg.amp or ("bf16" if on_cuda else "off"),
                  workers=cfg.workers if cfg.workers is not None else (min(8, os.cpu_count() or 1) if on_cuda else 1),
                  loader=cfg.loader if cfg.loader != "auto" else ("memory" if on_cuda else "workers"))
    check_config(cfg)
    return cfg


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings that cannot train, before anything touches the disk."""
    on_cuda = cfg.device.startswith("cuda")
    if cfg.amp == "fp16" and not on_cuda:
        raise ConfigError("--amp fp16 needs CUDA; use --amp bf16 or off on the CPU")
    if cfg.sync_bn and not on_cuda:
        raise ConfigError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only")
    if cfg.data_root is None:
        raise ConfigError("--data-root is required (the folder with the dataset's list files)")
