"""The training configuration: one frozen, typed `TrainConfig` whose fields each carry their
command-line option, --help group, value check and --resume policy (`option`); the parser is built
from them (`add_train_args`). The paper's presets are overrides of it, and `resolve_config` merges
defaults <- preset <- --config file <- command line (on --resume, the run's own settings come
first). The resolved config is printed, written to OUT/config.json and stored in every checkpoint;
`TrainConfig.from_dict` reads it back, and `--config OUT/config.json` starts the same recipe
(the file is read by `cgnet.engine.config_file`). `check_config` refuses settings that cannot
train before anything touches the disk; `cgnet.engine.resume.compare_for_resume` refuses a resumed
run whose command line changes what the run learns, by the fields' resume policies.

A new option is one field here (with its `option(...)`) and the code that uses it.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from ..checkpoint import resolve_weights
from ..common import ConfigError, cpu_has_native_bf16, default_device, parse_floats
from ..data.catalog import DATASETS, known_names, read_class_names, resolve_dataset
from .config_file import read_config_file


# ---- single-value checks: each raises one ConfigError naming the option and the value ---------

def show(value) -> str:
    """A value as it is typed on the command line: 0 (not 0.0), 32 32, 0.5,0.5,0.5."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (tuple, list)):
        return ",".join(show(v) for v in value)
    return str(value)


def at_least(low: int, why: str = ""):
    def check(option: str, value) -> None:
        if value < low:
            raise ConfigError(f"{option} {show(value)}: must be at least {low}{why}")
    return check


def positive(what: str = "a positive number"):
    def check(option: str, value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{option} {show(value)}: must be {what}")
    return check


def not_negative(why: str = ""):
    def check(option: str, value: float) -> None:
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{option} {show(value)}: must be 0 or more{why}")
    return check


def fraction(option: str, value: float) -> None:
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ConfigError(f"{option} {show(value)}: must be in [0, 1)")


def three_values(option: str, values) -> None:
    if len(values) != 3:
        raise ConfigError(f"{option} {show(values)}: needs 3 values (one per channel), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{option} {show(values)}: must be finite numbers")


def adam_betas(option: str, values) -> None:
    if len(values) != 2 or not all(0 <= b < 1 for b in values):
        raise ConfigError(f"{option} {show(values)}: two values in [0, 1)")


# ---- the options ------------------------------------------------------------------------------

# What --resume does with a setting of the run it continues:
DEFINES = "defines the run"         # what the run learns: a change is refused
MAY_CHANGE = "may change"           # how it runs: taken from the run, a change is accepted and logged
SAME_KIND = "may change within its kind"  # the device: cuda:0 -> cuda:1 yes, cuda -> cpu no
FRESH = "not inherited"             # where this invocation writes or stops, what training fills in
POLICIES = (DEFINES, MAY_CHANGE, SAME_KIND, FRESH)
GROUPS = ("data", "schedule", "model", "speed", "output")


def option(default, help: str | None, group: str | None, resume: str, *, flag: str | None = "",
           check=None, **parser):
    """A `TrainConfig` field with what the command line, the checks and --resume need to know.

    Args:
        default: the value when neither a preset, a --config file nor the command line sets it.
        help: the --help text (None: no command-line option).
        group: the --help group (one of GROUPS).
        resume: what --resume does with it (one of POLICIES).
        flag: the option ('' : --field-name; None: none, set only by presets and config files).
        check: check(option, value) raising ConfigError, run when the value is not None.
        parser: argparse keyword arguments (type, choices, nargs, metavar, action).
    """
    meta = dict(help=help, group=group, resume=resume, flag=flag, check=check, parser=parser)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


# The CPU's defaults for the training loader and the training-only backward passes
# (cgnet.engine.grads), in one place: each was the faster choice when `cgnet train` runs on the CPU
# (the in-memory loader over loader workers, the depthwise taps and the fused PReLU backward over
# ATen's, ATen's up-sampling kept whole under compile), measured against a plain eager fp32 loop by
# benchmarks/train_as_run.py. The figures and the machines: docs/speed.md and results/.
CPU_TRAINING_DEFAULTS = {"loader": "memory", "depthwise_backward": "taps", "prelu_backward": "fused",
                         "upsample_backward": "aten"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run is. Each field carries its command-line option, --help group,
    value check and --resume policy (`option`); `add_train_args` builds the parser from them."""
    preset: str | None = option(None, "one of the paper's recipes", None, DEFINES)  # in the recipe group
    # what to train on
    dataset: str = option("camvid", f"{known_names(' / ')}, or your own dataset's name (with --classes)", "data",
                          DEFINES)
    classes: tuple[str, ...] | None = option(
        None, "your own dataset: class names, 'a,b,c' or a file with one per line (`name r,g,b` lines give colours; "
              "with --ignore-index, and list files for --train-split/--val-split)", "data", DEFINES,
        type=read_class_names)
    ignore_index: int | None = option(None, "label id of unlabelled pixels (custom datasets)", "data", DEFINES,
                                      type=int)
    data_root: str | None = option(None, "dataset folder (with the list files); required", "data", MAY_CHANGE)
    train_split: str = option("train", "train, trainval, or a list file", "data", DEFINES)
    val_split: str | None = option("val", "split or list file validated on ('none' to skip)", "data", DEFINES)
    # the schedule (the paper's: Adam, poly 0.9, every iteration)
    epochs: int = option(800, "epochs of the poly schedule", "schedule", DEFINES, check=at_least(1), type=int)
    batch_size: int = option(8, "global batch, split across processes", "schedule", DEFINES, check=at_least(1),
                             type=int)
    crop: tuple[int, int] = option((360, 360), "crop size: S or H W", "schedule", DEFINES, type=int, nargs="+",
                                   metavar="PX")
    lr: float = option(1e-3, "base learning rate", "schedule", DEFINES, check=positive(), type=float)
    betas: tuple[float, float] = option((0.9, 0.999), None, "schedule", DEFINES, flag=None, check=adam_betas)
    eps: float = option(1e-8, None, "schedule", DEFINES, flag=None, check=positive())
    weight_decay: float = option(5e-4, "Adam's L2 weight decay", "schedule", DEFINES, check=not_negative(),
                                 type=float)
    poly_power: float = option(0.9, "lr = base * (1 - iteration / iterations) ** power", "schedule", DEFINES,
                               check=not_negative(" (a negative power makes the learning rate rise)"), type=float)
    max_iters: int | None = option(None, "stop after this many iterations (schedule still spans --epochs)",
                                   "schedule", FRESH, check=at_least(1, " (leave it out to train all --epochs)"),
                                   type=int)
    time_budget: float | None = option(
        None, "fit the whole run (data loading and compilation included) into this many minutes: after 2 epochs, "
              "--epochs is cut to what fits (the poly schedule then spans the shorter run)", "schedule", DEFINES,
        check=positive("a positive number of minutes"), type=float, metavar="MIN")
    seed: int = option(0, "seed of the weights, the shuffling and the augmentation", "schedule", DEFINES,
                       check=at_least(0), type=int)
    # the model and the loss
    # one option for both: torchrun rejects a bare --m among the script's arguments as ambiguous
    m: int = option(3, "blocks in stages 2 and 3 (default 3 21)", "model", DEFINES, flag="--blocks", type=int,
                    nargs=2, metavar=("M", "N"))
    n: int = option(21, None, "model", DEFINES, flag=None)
    dropout: float = option(0.0, "dropout before the classifier", "model", DEFINES, check=fraction, type=float)
    init: str | None = option(
        None, "start from trained weights: 'camvid' (the shipped weights) or a checkpoint, ours or the original "
              "release's; tensors that match in name and shape are loaded, the classifier's rows are matched to "
              "this run's classes by name (reordered; classes the weights lack are re-initialised; by position "
              "only when the weights' names are unknown), and the run keeps the weights' preprocessing unless --mean/--std are given",
        "model", DEFINES, metavar="WEIGHTS")
    freeze: str = option("none", "with --init: keep the first stages as loaded: stem (stage 1) or stage2 (stages 1 "
                                 "and 2); their backward is not computed", "model", DEFINES,
                         choices=["none", "stem", "stage2"])
    class_weights: bool = option(True, "weight the loss by 1/ln(1.10 + class share) (default on)", "model", DEFINES,
                                 action=argparse.BooleanOptionalAction)
    teacher: str | None = option(
        None, "distil a teacher: a folder of its soft targets for the training list (`cgnet soft-targets`); the "
              "loss adds --distill-weight times the cross-entropy against them (CPU, --loader memory)", "model",
        DEFINES, metavar="DIR")
    distill_weight: float = option(1.0, "with --teacher: the weight of the soft targets' term", "model", DEFINES,
                                   check=not_negative(), type=float)
    ema: float | None = option(
        None, "keep an exponential moving average of the weights (and BatchNorm statistics) with this decay per "
              "iteration, e.g. 0.999; validation, best.pt and OUT/ema.pt use the averaged weights", "model",
        DEFINES, check=fraction, type=float, metavar="DECAY")
    preprocess: str = option("standard", "standard (RGB, /255, mean/std) or original (the release's BGR mean "
                                         "subtraction)", "data", DEFINES, choices=["standard", "original"])
    mean: tuple[float, ...] | None = option(None, "3 values; default: computed on the training list", "data",
                                            DEFINES, check=three_values, type=parse_floats)
    std: tuple[float, ...] | None = option(None, "3 values; default: computed on the training list", "data",
                                           DEFINES, check=three_values, type=parse_floats)
    # how it runs
    device: str | None = option(None, "cpu, cuda, cuda:1 (default: cuda when available)", "speed", SAME_KIND)
    amp: str | None = option(None, "mixed precision (default: bf16 on CUDA and on CPUs that compute in bf16 "
                                         "natively, AVX512-BF16 or AMX; else off)", "speed", MAY_CHANGE,
                             choices=["off", "bf16", "fp16"])
    channels_last: bool | None = option(None, "NHWC memory format (default: on with CUDA; on a CPU, chosen by its "
                                              "vector instructions and printed)", "speed", MAY_CHANGE,
                                        action=argparse.BooleanOptionalAction)
    compile: bool | None = option(None, "torch.compile the model (on CUDA the whole training step; default: off "
                                        "with CUDA; on a CPU, chosen by its vector instructions and printed)",
                                  "speed", MAY_CHANGE, action=argparse.BooleanOptionalAction)
    compile_optimizer: bool = option(
        True, "with --compile on CUDA: compile Adam's update with the step (default); --no-compile-optimizer runs "
              "it eagerly inside the step's CUDA graph", "speed", MAY_CHANGE, action=argparse.BooleanOptionalAction)
    cuda_graph: bool | None = option(None, "replay the training step as one CUDA graph (default on where possible)",
                                     "speed", MAY_CHANGE, action=argparse.BooleanOptionalAction)
    sync_bn: bool = option(False, "synchronised BatchNorm across GPUs", "speed", MAY_CHANGE,
                           action=argparse.BooleanOptionalAction)
    workers: int | None = option(None, "loader workers per process (default: 1 on a CPU; with CUDA the CPU count, at "
                                       "most 8); with --loader memory on the CPU, the background threads that build "
                                       "batches beside the step (0: in the step's thread)",
                                 "speed", MAY_CHANGE, check=at_least(0), type=int)
    loader: str = option("auto", "memory: decode the training images once and keep them (on a GPU: in its memory, "
                                 "augmented there; on the CPU: when they fit in half the available memory); workers: "
                                 "decode each crop in loader workers (auto: memory on CUDA, "
                                 f"{CPU_TRAINING_DEFAULTS['loader']} on the CPU)", "speed", MAY_CHANGE,
                         choices=["auto", "workers", "memory"])
    depthwise_backward: str | None = option(
        None, "the depthwise convolutions' backward: aten, or taps/conv (input gradient by the forward kernel with "
              "flipped taps; weight gradient tap by tap, or as one convolution); default: aten on CUDA, "
              f"{CPU_TRAINING_DEFAULTS['depthwise_backward']} on the CPU", "speed", MAY_CHANGE,
        choices=["aten", "taps", "conv"])
    prelu_backward: str | None = option(
        None, "PReLU's backward: aten, or fused (both gradients in one pass, then one sum per channel); default: "
              f"aten on CUDA, {CPU_TRAINING_DEFAULTS['prelu_backward']} on the CPU", "speed", MAY_CHANGE,
        choices=["aten", "fused"])
    upsample_backward: str | None = option(
        None, "the logits' bilinear up-sampling under --compile: compiler (traced, and its backward decomposed, by "
              "torch.compile) or aten (ATen's kernels kept whole); default: compiler on CUDA, "
              f"{CPU_TRAINING_DEFAULTS['upsample_backward']} on the CPU", "speed", MAY_CHANGE,
        choices=["compiler", "aten"])
    # what it writes
    val_every: int = option(10, "validate every K epochs (and after the last)", "output", MAY_CHANGE,
                            check=at_least(1), type=int, metavar="K")
    save_every: int = option(1, "write last.pt every K epochs and after the last (Ctrl-C and SIGTERM save where "
                                "the run is in any case)", "output", MAY_CHANGE, check=at_least(1), type=int,
                             metavar="K")
    # --snapshot-every: see docs/scaling.md (a run restarted by torchrun's elastic agent loses at most K iterations)
    snapshot_every: int | None = option(None, "also write last.pt every K iterations inside an epoch, so a run that is "
                                              "killed (a torchrun restart, --resume) repeats at most K iterations",
                                        "output", MAY_CHANGE, check=at_least(1), type=int, metavar="K")
    out: str = option("runs/cgnet", "run folder (config, log, checkpoints, curve)", "output", FRESH)
    progress: bool = option(True, "progress bars (default on)", "output", MAY_CHANGE,
                            action=argparse.BooleanOptionalAction)
    # filled in by training: the preprocessing the model was trained with
    resolved_preprocess: dict | None = option(None, None, None, FRESH, flag=None)
    # filled in by resolve_config: which CPU speed settings were chosen for this machine, and why
    speed_choice: str | None = option(None, None, None, FRESH, flag=None)

    def to_dict(self) -> dict:
        """JSON-able (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """The inverse of `to_dict`; unknown keys (from other versions) are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v
                      for k, v in data.items() if k in known})


def policy(name: str) -> str:
    """The --resume policy of a TrainConfig field."""
    return next(f for f in fields(TrainConfig) if f.name == name).metadata["resume"]


def flag_of(f) -> str | None:
    """A field's command-line option, e.g. '--batch-size' (None: set by presets and files only)."""
    flag = f.metadata.get("flag", "")
    return "--" + f.name.replace("_", "-") if flag == "" else flag


def option_name(name: str) -> str:
    """How messages name a setting: its option, or the bare name of one set by presets and files."""
    return flag_of(next(f for f in fields(TrainConfig) if f.name == name)) or name


# not taken from the run on --resume: where it writes, and where this invocation stops
NOT_INHERITED = tuple(f.name for f in fields(TrainConfig) if f.metadata["resume"] == FRESH)


# The recipes: each dataset's entry holds its own (`Dataset.presets` in data/catalog.py): the paper's
# (Wu et al. 2020, section IV; the original release's scripts) and ours (camvid-cpu).
PRESETS: dict[str, dict] = {name: {"dataset": entry.name, **overrides}
                            for entry in DATASETS.values() for name, overrides in entry.presets.items()}

GROUP_TITLES = {"data": "data", "schedule": "schedule", "model": "model and loss",
                "speed": "speed (how it runs; may change on --resume)", "output": "output"}


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The `cgnet train` options, built from `TrainConfig`'s fields, in --help groups; the
    recipe options (--preset, --config, --resume) first."""
    recipe = p.add_argument_group("recipe")
    recipe.add_argument("--preset", choices=sorted(PRESETS), help="one of the paper's recipes")
    recipe.add_argument("--config", metavar="FILE",
                        help="a recipe file, TOML or JSON (a run's own config.json works): its settings "
                             "override the preset's, and command-line options override it")
    recipe.add_argument("--resume", nargs="?", const="auto",
                        help="continue from OUT/last.pt or a given checkpoint, with the run's own settings "
                             "(options that change what the run learns are refused)")
    groups = {name: p.add_argument_group(GROUP_TITLES[name]) for name in GROUPS}
    for f in fields(TrainConfig):
        flag, group = flag_of(f), f.metadata["group"]
        if f.name == "preset" or flag is None or f.metadata["help"] is None:
            continue
        kwargs = dict(f.metadata["parser"])
        if kwargs.get("action") is argparse.BooleanOptionalAction:
            kwargs["default"] = None  # None: not given (the preset, file or default decides)
        dest = "blocks" if flag == "--blocks" else f.name
        groups[group].add_argument(flag, dest=dest, help=f.metadata["help"], **kwargs)


# The kinds of CPU on which channels_last + the compiled model were measured faster than eager NCHW
# with the CPU_TRAINING_DEFAULTS backward passes (AVX-512, and AVX2 kernels); elsewhere the default
# stays eager. The values are what the run's speed line says; the measurements they quote are in
# docs/speed.md (keep the two in step).
MEASURED_COMPILED = {"AVX512": "1.88-2.31x a plain eager loop as run on an AVX-512 Xeon",
                     "AVX2": "1.48x a plain eager loop as run with AVX2 kernels, against 1.10x eager NCHW"}


# Where bf16 autocast is the CPU's default: CPUs that compute in bf16 natively (common.cpu_has_native_bf16).
# The value is what the run's speed line says; the measurements are in docs/speed.md (keep them in step).
MEASURED_CPU_BF16 = ("bf16 autocast where the CPU computes in bf16 natively (measured 2.78x a plain eager loop as run "
                     "against fp32's 2.13x on a 2-core AVX-512 EPYC, with fp32's loss and val mIoU)")


def cpu_speed_defaults(capability: str) -> tuple[bool, bool, str]:
    """(channels_last, compile, why) for a CPU run whose options leave them open.

    Args:
        capability: the kernels ATen picked for this CPU (torch.backends.cpu.get_cpu_capability():
            DEFAULT, AVX2, AVX512, ...; ATEN_CPU_CAPABILITY can lower it). The compiled model is
            checked against eager before use, in either precision (`steps.compile_or_eager`).
    """
    if capability in MEASURED_COMPILED:
        return True, True, f"{capability} CPU: channels_last + compiled model (measured {MEASURED_COMPILED[capability]})"
    return False, False, f"{capability} CPU: eager, NCHW (the compiled model was measured only with AVX2 or AVX-512)"


def cpu_amp_default(native_bf16: bool, capability: str) -> tuple[str, str | None]:
    """(amp, why) for a CPU run that leaves --amp open: bf16 where the CPU computes in bf16
    natively (`common.cpu_has_native_bf16`) and ATen's kernels are AVX-512 (ATEN_CPU_CAPABILITY
    lowered to AVX2, as in the AVX2 emulation, leaves no bf16 instructions to ATen), else off
    (why None)."""
    return ("bf16", MEASURED_CPU_BF16) if native_bf16 and capability == "AVX512" else ("off", None)


def resolve_config(args: argparse.Namespace, resumed: dict | None = None) -> TrainConfig:
    """Defaults <- preset <- --config file <- command line, with the device-dependent defaults
    filled in.

    With `resumed` (the config stored in the checkpoint being resumed) the run's own settings
    replace the defaults, so `cgnet train --out RUN --resume` continues the run as it was."""
    values: dict = {}
    if resumed:
        known = {f.name for f in fields(TrainConfig)}
        values.update({k: tuple(v) if isinstance(v, list) else v for k, v in resumed.items()
                       if k in known and k not in NOT_INHERITED})
    from_file = read_config_file(args.config, TrainConfig, NOT_INHERITED) if getattr(args, "config", None) else {}
    preset = getattr(args, "preset", None) or from_file.get("preset")
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"--config {args.config}: unknown preset {preset!r} ({', '.join(sorted(PRESETS))})")
        values.update(PRESETS[preset], preset=preset)
    values.update(from_file)
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
                  amp=cfg.amp or ("bf16" if on_cuda else None),
                  workers=cfg.workers if cfg.workers is not None else (min(8, os.cpu_count() or 1) if on_cuda else 1),
                  loader=cfg.loader if cfg.loader != "auto" else
                  ("memory" if on_cuda else CPU_TRAINING_DEFAULTS["loader"]),
                  depthwise_backward=cfg.depthwise_backward or
                  ("aten" if on_cuda else CPU_TRAINING_DEFAULTS["depthwise_backward"]),
                  prelu_backward=cfg.prelu_backward or ("aten" if on_cuda else CPU_TRAINING_DEFAULTS["prelu_backward"]),
                  upsample_backward=cfg.upsample_backward or
                  ("compiler" if on_cuda else CPU_TRAINING_DEFAULTS["upsample_backward"]))
    if on_cuda:
        cfg = replace(cfg, channels_last=cfg.channels_last is not False, compile=cfg.compile is True)
    elif cfg.channels_last is None or cfg.compile is None or cfg.amp is None:
        capability = torch.backends.cpu.get_cpu_capability()
        channels_last, compile, why = cpu_speed_defaults(capability)
        amp, why_amp = cpu_amp_default(cpu_has_native_bf16(), capability)
        chosen = {"channels_last": channels_last, "compile": compile, "amp": amp}
        chosen = {name: value for name, value in chosen.items() if getattr(cfg, name) is None}
        if "amp" in chosen and why_amp:
            why = f"{why}; {why_amp}"
        flags = " ".join(f"--amp {value}" if name == "amp" else ("--" if value else "--no-") + name.replace("_", "-")
                         for name, value in chosen.items())
        cfg = replace(cfg, **chosen, speed_choice=f"{why}; by default here: {flags}")
    check_config(cfg)
    return cfg


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
    # every field's own check (`option(check=...)`), in the order of the fields
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.metadata["check"] is not None and value is not None:
            f.metadata["check"](option_name(f.name), value)
    # the rules that involve several settings
    world = int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size}: the global batch does not split over {world} processes")
    if min(cfg.crop) < 8:
        raise ConfigError(f"--crop {show(cfg.crop[0]) if cfg.crop[0] == cfg.crop[1] else ' '.join(map(str, cfg.crop))}"
                          ": each side must be at least 8 pixels (the network works at 1/8 resolution)")
    if cfg.m < 2 or cfg.n < 2:
        raise ConfigError(f"--blocks {cfg.m} {cfg.n}: each stage needs at least 2 blocks "
                          "(one down-sampling block plus M-1 or N-1 CG blocks)")
    if cfg.freeze != "none" and not cfg.init:
        raise ConfigError(f"--freeze {cfg.freeze}: freezes loaded weights; give --init too")
    if cfg.teacher is not None:
        if on_cuda or cfg.loader == "workers":
            raise ConfigError(f"--teacher {cfg.teacher}: distillation runs on the CPU with --loader memory "
                              "(the soft targets are kept beside the decoded images)")
        if not Path(cfg.teacher).is_dir():
            raise ConfigError(f"--teacher {cfg.teacher}: no such folder (write it with `cgnet soft-targets`)")
    if cfg.init and not resolve_weights(cfg.init).is_file():
        raise ConfigError(f"--init {cfg.init}: no such file (give a checkpoint, or 'camvid' for the shipped weights)")
    if cfg.std is not None and cfg.preprocess == "standard" and min(cfg.std) <= 0:
        raise ConfigError(f"--std {show(cfg.std)}: must be positive")
    if cfg.std is not None and cfg.preprocess == "original" and any(v != 1 for v in cfg.std):
        raise ConfigError(f"--std {show(cfg.std)}: the 'original' preprocessing divides by no std; leave --std out")
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
    if known and cfg.ignore_index is not None and cfg.ignore_index != DATASETS[cfg.dataset].info.ignore_index:
        raise ConfigError(f"--ignore-index {cfg.ignore_index}: {cfg.dataset}'s ignore id is fixed at "
                          f"{DATASETS[cfg.dataset].info.ignore_index}; --ignore-index is for custom datasets "
                          "(--classes)")
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
