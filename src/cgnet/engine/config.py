"""The training configuration: one frozen, typed `TrainConfig`, the paper's presets as overrides
of it, and `resolve_config` (defaults <- preset <- command line; on --resume, the run's own
settings <- preset <- command line). The resolved config is printed, written to OUT/config.json
and stored in every checkpoint; `TrainConfig.from_dict` reads it back. `check_config` refuses
settings that cannot train before anything touches the disk; `compare_for_resume` refuses a
resumed run whose command line changes what the run learns.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from ..common import CGNetError, default_device, parse_floats
from ..data.catalog import DATASETS, read_class_names, resolve_dataset


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
    time_budget: float | None = None            # minutes, setup included: `epochs` is cut to fit after 2 epochs
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
    compile_optimizer: bool = True              # --compile on CUDA: Adam's update compiled with the step
    cuda_graph: bool | None = None              # default: on where possible
    sync_bn: bool = False
    workers: int | None = None
    loader: str = "auto"                        # workers, memory (decode once, augment on the device)
    val_every: int = 10
    save_every: int = 1                         # write last.pt every K epochs (and after the last)
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
                   help="fit the whole run (data loading and compilation included) into this many minutes: "
                        "after 2 epochs, --epochs is cut to what fits (the poly schedule then spans the "
                        "shorter run)")
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
    p.add_argument("--compile-optimizer", action=argparse.BooleanOptionalAction, default=None,
                   help="with --compile on CUDA: compile Adam's update with the step (default); "
                        "--no-compile-optimizer runs it eagerly inside the step's CUDA graph (less to "
                        "compile; its GPU speed is not measured yet)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay the training step as one CUDA graph (default on where possible)")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--workers", type=int, help="loader workers per process")
    p.add_argument("--loader", choices=["auto", "workers", "memory"],
                   help="memory: decode once, augment on the device (auto: memory on CUDA)")
    p.add_argument("--val-every", type=int, help="validate every K epochs (and after the last)")
    p.add_argument("--save-every", type=int, metavar="K",
                   help="write last.pt every K epochs and after the last (default 1; Ctrl-C and SIGTERM "
                        "save where the run is in any case)")
    p.add_argument("--out", help="run folder (config, log, checkpoints, curve)")
    p.add_argument("--resume", nargs="?", const="auto",
                   help="continue from OUT/last.pt or a given checkpoint, with the run's own settings (options "
                        "that change what the run learns are refused)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


# Settings that define what a run learns (its data, schedule, model, loss, preprocessing and
# seed): `--resume` refuses a command line that changes one of them. The rest (speed, precision,
# loader, how often it validates, where it stops this time) may change on resume.
RUN_DEFINING = ("preset", "dataset", "classes", "ignore_index", "train_split", "val_split", "epochs", "batch_size",
                "crop", "lr", "betas", "eps", "weight_decay", "poly_power", "time_budget", "m", "n", "dropout",
                "class_weights", "preprocess", "mean", "std", "seed")
# not taken from the run on --resume: where it writes, and where this invocation stops
NOT_INHERITED = ("out", "max_iters", "resolved_preprocess")


def resolve_config(args: argparse.Namespace, resumed: dict | None = None) -> TrainConfig:
    """Defaults <- preset <- command line, with the device-dependent defaults filled in.

    With `resumed` (the config stored in the checkpoint being resumed) the run's own settings
    replace the defaults, so `cgnet train --out RUN --resume` continues the run as it was."""
    values: dict = {}
    if resumed:
        known = {f.name for f in fields(TrainConfig)}
        values.update({k: tuple(v) if isinstance(v, list) else v for k, v in resumed.items()
                       if k in known and k not in NOT_INHERITED})
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
        raise ConfigError(f"--crop takes one or two sizes, got {' '.join(map(str, crop))}")
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


def show(value) -> str:
    """A value as it is typed on the command line: 0 (not 0.0), 32 32, 0.5,0.5,0.5."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (tuple, list)):
        return ",".join(show(v) for v in value)
    return str(value)


def _at_least(option: str, value, low) -> None:
    if value < low:
        raise ConfigError(f"{option} {show(value)}: must be at least {low}")


def _positive(option: str, value: float, what: str = "a positive number") -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{option} {show(value)}: must be {what}")


def _not_negative(option: str, value: float, why: str = "") -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{option} {show(value)}: must be 0 or more{why}")


def _three_values(option: str, values) -> None:
    if values is not None and len(values) != 3:
        raise ConfigError(f"{option} {show(values)}: needs 3 values (one per channel), got {len(values)}")
    if values is not None and not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{option} {show(values)}: must be finite numbers")


def list_file_of(root: Path, info, option: str, split: str) -> Path:
    """A split's list file as the training will read it (a split name, or a file relative to the
    current folder or the data root); ConfigError when there is none."""
    try:
        path = info.split_path(root, split)
    except ValueError as e:
        raise ConfigError(f"{option} {split}: {e}") from None
    if not path.is_file():
        raise ConfigError(f"{option} {split}: list file {path} does not exist")
    return path


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings that cannot train, before anything touches the disk: each a one-line
    ConfigError naming the option and the value."""
    on_cuda = cfg.device.startswith("cuda")
    if cfg.amp == "fp16" and not on_cuda:
        raise ConfigError("--amp fp16 needs CUDA; use --amp bf16 or off on the CPU")
    if cfg.sync_bn and not on_cuda:
        raise ConfigError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only")
    if cfg.compile and cfg.amp == "bf16" and not on_cuda:
        # seen with torch 2.13: inductor's CPU bf16 kernels give CGNet zero gradients everywhere
        raise ConfigError("--compile with --amp bf16 on the CPU trains nothing (inductor's CPU bf16 kernels give "
                          "CGNet zero gradients); use --amp off with --compile, or --no-compile with bf16")
    # the schedule
    _at_least("--epochs", cfg.epochs, 1)
    if cfg.max_iters is not None and cfg.max_iters < 1:
        raise ConfigError(f"--max-iters {cfg.max_iters}: must be at least 1 (leave it out to train all --epochs)")
    if cfg.time_budget is not None:
        _positive("--time-budget", cfg.time_budget, "a positive number of minutes")
    _at_least("--batch-size", cfg.batch_size, 1)
    world = int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size}: the global batch does not split over {world} processes")
    if min(cfg.crop) < 8:
        raise ConfigError(f"--crop {show(cfg.crop[0]) if cfg.crop[0] == cfg.crop[1] else ' '.join(map(str, cfg.crop))}"
                          ": each side must be at least 8 pixels (the network works at 1/8 resolution)")
    _positive("--lr", cfg.lr)
    _not_negative("--weight-decay", cfg.weight_decay)
    _not_negative("--poly-power", cfg.poly_power, " (a negative power makes the learning rate rise)")
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        raise ConfigError(f"betas {show(cfg.betas)}: two values in [0, 1)")
    _positive("eps", cfg.eps)
    # the model, the loss and the preprocessing
    if cfg.m < 2 or cfg.n < 2:
        raise ConfigError(f"--blocks {cfg.m} {cfg.n}: each stage needs at least 2 blocks "
                          "(one down-sampling block plus M-1 or N-1 CG blocks)")
    if not (math.isfinite(cfg.dropout) and 0 <= cfg.dropout < 1):
        raise ConfigError(f"--dropout {show(cfg.dropout)}: must be in [0, 1)")
    _three_values("--mean", cfg.mean)
    _three_values("--std", cfg.std)
    if cfg.std is not None and cfg.preprocess == "standard" and min(cfg.std) <= 0:
        raise ConfigError(f"--std {show(cfg.std)}: must be positive")
    if cfg.std is not None and cfg.preprocess == "original" and any(v != 1 for v in cfg.std):
        raise ConfigError(f"--std {show(cfg.std)}: the 'original' preprocessing divides by no std; leave --std out")
    _at_least("--seed", cfg.seed, 0)
    # how it runs
    if cfg.workers is not None:
        _at_least("--workers", cfg.workers, 0)
    _at_least("--val-every", cfg.val_every, 1)
    _at_least("--save-every", cfg.save_every, 1)
    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        raise ConfigError(f"--device {cfg.device}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device}: this machine has no CUDA device (PyTorch sees none); "
                          "use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {cfg.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    # the data: the dataset, its folder and its list files
    known = cfg.dataset in DATASETS and not cfg.classes
    if known and cfg.ignore_index is not None and cfg.ignore_index != DATASETS[cfg.dataset].ignore_index:
        raise ConfigError(f"--ignore-index {cfg.ignore_index}: {cfg.dataset}'s ignore id is fixed at "
                          f"{DATASETS[cfg.dataset].ignore_index}; --ignore-index is for custom datasets (--classes)")
    if cfg.classes and cfg.ignore_index is not None and not 0 <= cfg.ignore_index <= 255:
        raise ConfigError(f"--ignore-index {cfg.ignore_index}: labels are 8-bit images, so it must be 0..255")
    try:
        info = resolve_dataset(cfg.dataset, list(cfg.classes) if cfg.classes else None, cfg.ignore_index)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.data_root is None:
        raise ConfigError("--data-root is required (the folder with the dataset's list files)")
    root = Path(cfg.data_root)
    if not root.is_dir():
        raise ConfigError(f"--data-root {root}: " + ("not a folder" if root.exists() else "no such folder"))
    train_list = list_file_of(root, info, "--train-split", cfg.train_split)
    if cfg.val_split and cfg.val_split != "none":
        list_file_of(root, info, "--val-split", cfg.val_split)
    images = sum(1 for line in train_list.read_bytes().splitlines() if line.strip())
    if images < cfg.batch_size:
        raise ConfigError(f"--batch-size {cfg.batch_size}: the training list {train_list} has {images} images, "
                          "fewer than one batch")


# ---- --resume ---------------------------------------------------------------------------------

def _option(name: str) -> str:
    return {"m": "--blocks", "betas": "betas", "eps": "eps"}.get(name, "--" + name.replace("_", "-"))


def _flag(name: str, value) -> str:
    """`--lr 0.001`, `--blocks 3 21`, `--no-class-weights`, `no --time-budget`."""
    option = _option(name)
    if value is None:
        return f"no {option}"
    if isinstance(value, bool):
        return option if value else "--no-" + option[2:]
    return f"{option} {_value(name, value)}"


def _value(name: str, value) -> str:
    if name in ("m", "crop") and isinstance(value, (list, tuple)):
        return " ".join(show(v) for v in value)
    return show(value)


def _comparable(config: dict) -> dict:
    """A config dict with lists for tuples and --blocks as one entry (under 'm')."""
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    if "m" in out and "n" in out:
        out["m"] = [out["m"], out.pop("n")]
    return out


def compare_for_resume(saved: dict, cfg: TrainConfig, *, schedule_fixed: bool = False) -> list[str]:
    """Check a resumed run's config against the one stored in its checkpoint.

    A change of a `RUN_DEFINING` setting, or of the device's kind (cpu, cuda), raises one
    ConfigError naming each with its old and new value; `epochs` is not compared once a
    --time-budget has fixed the schedule (`schedule_fixed`), nor what is never inherited (the
    folder, --max-iters). Returns the accepted changes, as `--workers 2 -> 0`, for the log."""
    old, new = _comparable(saved), _comparable(cfg.to_dict())
    refused, accepted = [], []
    for name in new:
        if name not in old or name in NOT_INHERITED or (name == "epochs" and schedule_fixed):
            continue
        if old[name] == new[name]:
            continue
        if name == "device":
            kinds = [torch.device(d).type if d else None for d in (old[name], new[name])]
            (refused if kinds[0] != kinds[1] else accepted).append(name)
        else:
            (refused if name in RUN_DEFINING else accepted).append(name)
    if refused:
        name = refused[0]
        if len(refused) == 1 and not isinstance(new[name], bool) and None not in (old[name], new[name]):
            change = f"the run was trained with {_flag(name, old[name])}, this command says {_value(name, new[name])}"
        else:
            change = (f"the run was trained with {' '.join(_flag(n, old[n]) for n in refused)}, this command says "
                      f"{' '.join(_flag(n, new[n]) for n in refused)}")
        keep = "it" if len(refused) == 1 else "them"
        raise ConfigError(f"--resume: {change}; keep {keep}, or start a new run with another --out")
    return [f"{_option(n)} {_value(n, old[n]) if old[n] is not None else 'none'} -> "
            f"{_value(n, new[n]) if new[n] is not None else 'none'}" for n in accepted]
