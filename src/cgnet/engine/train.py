"""`cgnet train`: the paper's recipes, one process or many (torchrun), resumable.

Read top to bottom, each helper before its callers: the schedule (`poly_lr`) and the training
state -> one epoch (`train_one_epoch`, around a step from `cgnet.engine.steps`) -> the pieces `run`
puts together: the data (`build_data`), the model (from --init weights when given:
`cgnet.engine.init`) and the optimiser, a checkpoint restored (--resume), the step (compiled, CUDA graph, DDP: `choose_step`),
the epochs (`run_epochs`) -> `run`, and last `main`, which resolves the settings
(`cgnet.engine.config`) and claims the run folder first. The same command runs under `torchrun
--nproc_per_node=K cgnet train ...` with DistributedDataParallel (nccl on GPUs, gloo on CPUs); the
global batch is split across processes and only the main process writes (`save_on_master`).

The run folder is locked for the run's life (OUT/train.lock, main process only); every setting is
checked before anything is written; `--resume` refuses changes to what the run learns
(`compare_for_resume`). Ctrl-C or SIGTERM during the epochs finishes the iteration, writes last.pt
there (mid-epoch if need be) and stops with the resume command and exit status 130 (143 for
SIGTERM); a second Ctrl-C stops at once, from the last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from ..checkpoint import load_checkpoint, load_state_into, make_meta, save_checkpoint
from ..common import CGNetError, ConfigError
from ..fileio import FolderLock, remove_leftover_temp_files, write_atomic
from ..data.catalog import DatasetInfo, resolve_dataset
from ..data.listset import MemoryTrainSet, SegDataset, available_memory, memory_estimate, seed_worker, worker_context
from ..data.stats import dataset_stats
from ..model import CGNet
from ..plot import plot_history
from ..preprocess import check_spec, make_spec
from .config import TrainConfig, resolve_config
from .distributed import (backend, barrier, broadcast_value, cleanup, elastic_attempt, get_rank, get_world_size,
                          init_distributed, is_dist, is_main_process)
from .grads import use_training_kernels
from .inference import evaluate, make_eval_loader
from .init import InitWeights, read_init, start_from
from .resume import PROGRESS_FILE, compare_for_resume, elastic_fresh_start, restart_line, write_progress
from .stopping import GracefulStop, StopRequested
from .teacher import DistillLoss, read_manifest, read_soft
from .steps import (compile_or_eager, configure_optimizer, make_compiled_step, make_eager_step, make_graphed_step,
                    set_lr, single_program)


class NonFiniteLoss(CGNetError, RuntimeError):
    """The loss became NaN or infinite; nothing non-finite is saved."""


# ---- the schedule and the state --------------------------------------------------------------

def poly_lr(iteration: int, max_iters: int, base_lr: float, power: float) -> float:
    """The paper's learning rate at an iteration (set before every step)."""
    # no warm-up: the first step uses the base rate
    # poly decay: base * (1 - it / max)^power, reaching 0 at the end of the schedule
    return base_lr * (1 - iteration / max_iters) ** power


@dataclass
class TrainState:
    """Training progress, stored in every checkpoint as `train_state`."""
    epoch: int = 0                  # epochs completed
    iteration: int = 0              # optimiser steps taken
    max_iters: int = 0              # the length of the poly schedule
    stop_at: int = 0                # where this process stops (--max-iters); not stored
    best_miou: float = -1.0
    history: list = field(default_factory=list)  # one record per epoch, as in log.jsonl
    planned_epochs: int | None = None  # set once a --time-budget has fixed the schedule
    # an epoch cut short by --max-iters or a stop signal: its batches so far and their summed loss
    partial_batches: int = 0
    partial_loss: float = 0.0
    saved: dict | None = None       # what OUT/last.pt holds (its train_state); not stored

    def to_dict(self) -> dict:
        out = {"epoch": self.epoch, "iteration": self.iteration, "max_iters": self.max_iters,
               "best_miou": self.best_miou, "history": self.history}
        if self.planned_epochs is not None:
            out["planned_epochs"] = self.planned_epochs
        if self.partial_batches:
            out["partial_batches"], out["partial_loss"] = self.partial_batches, self.partial_loss
        return out


def save_on_master(path: Path, model: nn.Module, meta: dict, **extra) -> None:
    """Write a checkpoint from the main process only (atomically: see `save_checkpoint`)."""
    if is_main_process():
        save_checkpoint(path, model, meta, **extra)


# ---- one epoch -------------------------------------------------------------------------------

def finite_mean(total: torch.Tensor, count: int, state: TrainState) -> float:
    mean = float(total) / count
    if not math.isfinite(mean):
        raise NonFiniteLoss(f"the loss became {mean} by iteration {state.iteration} "
                            f"(epoch {state.epoch + 1}); stopped without saving")
    return mean


def train_one_epoch(step, optimizer, batches, n_batches: int, device, cfg: TrainConfig, state: TrainState,
                    stop: GracefulStop | None = None, ema: AveragedModel | None = None,
                    ema_source: nn.Module | None = None, after_step=None) -> float:
    """One pass over `batches`; poly learning rate set every iteration, the weights' moving
    average (`ema`, of `ema_source`) updated after every step. Returns the mean loss.

    An epoch that --max-iters or a stop signal (`stop.requested`, checked after every
    iteration) cuts short leaves its batch count and loss sum in `state.partial_*`; an epoch
    resumed from there continues them (`batches` then skips the batches already done).
    `after_step(count, total)`, when given, runs after every iteration (`snapshot_hook`)."""
    total = torch.tensor(state.partial_loss, dtype=torch.float32, device=device)
    count = state.partial_batches
    bar = tqdm(batches, total=n_batches, initial=count, desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
               disable=not is_main_process() or not cfg.progress, leave=False, dynamic_ncols=True)
    check_every = 25 if device.type == "cuda" else 1  # a finiteness check syncs the GPU
    for images, labels, *extra in bar:
        if state.iteration >= state.stop_at:
            break
        lr = poly_lr(state.iteration, state.max_iters, cfg.lr, cfg.poly_power)
        set_lr(optimizer, lr)
        total += step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True),
                      *(t.to(device, non_blocking=True) for t in extra))
        if ema is not None:
            ema.update_parameters(ema_source)
        state.iteration += 1
        count += 1
        if after_step is not None:
            after_step(count, total)
        if count % check_every == 0 or count == n_batches:
            bar.set_postfix(loss=f"{finite_mean(total, count, state):.4f}", lr=f"{lr:.2e}")
        if stop is not None and stop.requested:
            break
    mean = finite_mean(total, max(1, count), state)
    complete = count >= n_batches
    state.partial_batches, state.partial_loss = (0, 0.0) if complete else (count, float(total))
    return mean


def fit_schedule_to_budget(cfg: TrainConfig, state: TrainState, n_batches: int) -> TrainConfig:
    """Cut the epochs to what fits in cfg.time_budget minutes: the time left (the run's elapsed
    wall-clock counts set-up and compiling) divided by the latest epoch's wall-clock (from the
    previous record, so checkpoint writing counts; at least its training time) plus 15% for
    validation and later epochs running slower than the first ones (an H200 run's epochs:
    results/camvid_gpu_log.jsonl). Returns the config with the new epoch count."""
    last = state.history[-1]
    # wall-clock from the previous record: the epoch plus its logging and checkpoint writing
    gap = last["elapsed_s"] - state.history[-2]["elapsed_s"] if len(state.history) > 1 else 0.0
    per_epoch = 1.15 * max(last["epoch_s"], gap)
    left = cfg.time_budget * 60 - last["elapsed_s"]
    fit = broadcast_value(state.epoch + max(0, int(left / per_epoch)))  # every rank runs the same schedule
    if fit < cfg.epochs:
        if is_main_process():
            print(f"time budget {cfg.time_budget} min at {per_epoch:.1f} s/epoch: {fit} of "
                  f"{cfg.epochs} epochs fit; the poly schedule now spans {fit} epochs")
        cfg = replace(cfg, epochs=fit)
        state.max_iters = fit * n_batches
        state.stop_at = min(state.max_iters, cfg.max_iters or state.max_iters)
    state.planned_epochs = cfg.epochs
    return cfg


# ---- the data --------------------------------------------------------------------------------

class SkipBatches(Sampler):
    """A sampler's order without its first `skip` batches of `per_rank` items."""

    def __init__(self, sampler: Sampler, per_rank: int):
        self.sampler, self.per_rank, self.skip = sampler, per_rank, 0

    def __iter__(self):
        return iter(list(self.sampler)[self.skip * self.per_rank:])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip * self.per_rank)


@dataclass
class TrainData:
    info: DatasetInfo
    spec: dict                      # the preprocessing the model trains with
    class_weights: list[float]
    train_set: SegDataset
    sampler: DistributedSampler
    per_rank: int                   # images per process and step
    n_batches: int                  # steps per epoch
    loader: DataLoader | None       # CPU: loader workers
    memset: MemoryTrainSet | None   # --loader memory: images decoded once (on the CPU, or into GPU memory)
    val_loader: DataLoader | None
    skipper: "SkipBatches | None" = None  # the loader's sampler
    threads: int = 0                # --loader memory on the CPU: background threads building batches

    def batches(self, epoch: int, skip: int = 0):
        """The epoch's (images, labels) batches, without the first `skip` (an epoch resumed in
        its middle); the draws depend only on (seed, epoch, index)."""
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        if self.memset is not None:
            indices = list(self.sampler)
            groups = [indices[b * self.per_rank:(b + 1) * self.per_rank]
                      for b in range(skip, len(indices) // self.per_rank)]
            yield from self.memset.batches(groups, epoch, self.threads)
        else:
            self.skipper.skip = skip
            for images, labels, _ in self.loader:
                yield images, labels


def use_memory_loader(cfg: TrainConfig, train_set: SegDataset, device: torch.device) -> bool:
    """Whether the run decodes its training images once and keeps them (--loader memory). On the
    CPU they must fit in half the memory available now; where they do not, the run says so in one
    line and loads with workers."""
    if cfg.loader != "memory":
        return False
    if device.type != "cpu":
        return True
    need, have = memory_estimate(train_set), available_memory()
    if have is not None and need > have // 2:
        if is_main_process():
            print(f"note: --loader memory: the {len(train_set)} training images need about {need / 2**20:.0f} MB "
                  f"decoded, more than half of the {have / 2**20:.0f} MB available; loading with "
                  f"{cfg.workers} worker(s) instead")
        return False
    return True


def loader_line(data: TrainData, cfg: TrainConfig) -> str:
    """How the training batches are made, as the run's settings line says it."""
    if data.memset is None:
        return f"workers ({cfg.workers} loader worker{'s' if cfg.workers != 1 else ''}, decoding every crop)"
    if data.memset.device.type != "cpu":
        return f"memory ({data.memset.device.type}, decoded once, augmented there)"
    return f"memory (decoded once, {data.threads} background thread{'s' if data.threads != 1 else ''})"


def build_data(cfg: TrainConfig, device: torch.device, out: Path, preprocess: dict | None = None) -> TrainData:
    """Datasets and loaders; the training list's statistics (cached in the run folder) give the
    mean/std and the class weights. `preprocess`: the spec to keep (a fine-tuned run keeps its
    --init weights' preprocessing), unless --mean/--std are given."""
    rank, world = get_rank(), get_world_size()
    info = resolve_dataset(cfg.dataset, list(cfg.classes) if cfg.classes else None, cfg.ignore_index)
    if cfg.batch_size % world:
        raise CGNetError(f"--batch-size {cfg.batch_size} does not split over {world} processes")
    per_rank = cfg.batch_size // world
    root = Path(cfg.data_root)
    train_list = info.split_path(root, cfg.train_split)
    plain = SegDataset(root, train_list, info, make_spec("standard"), train=False)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        stats = dataset_stats(plain, cache_dir=out, workers=min(2, cfg.workers or 0), progress=cfg.progress)
    barrier()
    if not is_main_process():
        stats = dataset_stats(plain, cache_dir=out, workers=0, progress=False)
    if preprocess is not None and cfg.mean is None and cfg.std is None:
        spec = check_spec(preprocess)
    elif cfg.preprocess == "original":
        mean = cfg.mean or [255 * v for v in reversed(stats["mean_rgb"])]  # BGR order, 0-255
        spec = make_spec("original", mean=mean)
    else:
        spec = make_spec("standard", mean=cfg.mean or stats["mean_rgb"], std=cfg.std or stats["std_rgb"])

    train_set = SegDataset(root, train_list, info, spec, train=True, crop=cfg.crop, seed=cfg.seed)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    n_batches = len(sampler) // per_rank
    if n_batches == 0:
        raise CGNetError(f"{len(train_set)} training images give no full batch of {per_rank} per process")
    loader = memset = skipper = None
    soft_reader = None
    if cfg.teacher:
        read_manifest(Path(cfg.teacher), list(info.classes))
        soft_reader = lambda image, shape: read_soft(Path(cfg.teacher), image, shape, info.num_classes)  # noqa: E731
    if use_memory_loader(cfg, train_set, device):
        memset = MemoryTrainSet(train_set, device, progress=cfg.progress and is_main_process(), soft_reader=soft_reader)
    elif cfg.teacher:
        raise ConfigError(f"--teacher {cfg.teacher}: the soft targets need --loader memory, which does not fit here")
    else:
        skipper = SkipBatches(sampler, per_rank)
        loader = DataLoader(train_set, batch_size=per_rank, sampler=skipper, num_workers=cfg.workers,
                            drop_last=True, pin_memory=device.type == "cuda", worker_init_fn=seed_worker,
                            generator=torch.Generator().manual_seed(cfg.seed),
                            multiprocessing_context=worker_context(cfg.workers))
    val_loader = None
    if cfg.val_split and cfg.val_split != "none":
        val_set = SegDataset(root, info.split_path(root, cfg.val_split), info, spec, train=False)
        val_loader = make_eval_loader(val_set, rank, world, workers=min(cfg.workers, 2), persistent=True)
    return TrainData(info, spec, stats["class_weights"], train_set, sampler, per_rank, n_batches, loader, memset,
                     val_loader, skipper, threads=cfg.workers if device.type == "cpu" else 0)


# ---- the model and the optimiser (from --init weights when given) ----------------------------

@dataclass
class TrainParts:
    model: nn.Module                # what the step runs: DDP-wrapped under torchrun
    bare: CGNet                     # the CGNet inside, what checkpoints hold
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None = None  # --ema: the moving average of `bare` (weights and BatchNorm statistics)


def whole_step_compile(cfg: TrainConfig, device, world_size: int) -> bool:
    """Whether --compile compiles the whole step (forward, loss, backward, Adam): on CUDA, where
    the step may be one program (`steps.single_program`). On the CPU the whole step trains
    correctly with `steps.CPU_INDUCTOR_OPTIONS` but measured slower than eager after minutes of
    compiling (`benchmarks.train_throughput` mode `fp32+channels_last+compiled-step`; figures in
    docs/speed.md and results/), so --compile there compiles the model only."""
    return bool(cfg.compile) and torch.device(device).type == "cuda" and \
        single_program(cfg.amp, cfg.dropout, world_size)


def graphed_step_wanted(cfg: TrainConfig, device, world_size: int) -> bool:
    """Whether the eager step may be captured as a CUDA graph: on CUDA, where the step may be one
    program, unless --no-cuda-graph."""
    return cfg.cuda_graph is not False and torch.device(device).type == "cuda" and \
        single_program(cfg.amp, cfg.dropout, world_size)


def build_model_and_optimizer(cfg: TrainConfig, data: TrainData, device: torch.device,
                              init: InitWeights | None = None, classifier_bias: bool = False) -> TrainParts:
    """CGNet (from the --init weights when given; with a classifier bias when they have one, as
    mmsegmentation's do, or `classifier_bias`), class-weighted cross-entropy, Adam over the
    trainable weights (a tensor learning rate when the step is a CUDA graph)."""
    model = CGNet(data.info.num_classes, m=cfg.m, n=cfg.n, dropout=cfg.dropout,
                  classifier_bias=classifier_bias or (init is not None and "classifier.bias" in init.state_dict))
    if init is not None:
        start_from(model, init, cfg, list(data.info.classes))
    # training-only backward passes: the same Parameters under the same names (checkpoints unchanged)
    use_training_kernels(model, depthwise=cfg.depthwise_backward or "aten", prelu=cfg.prelu_backward or "aten",
                         upsample=cfg.upsample_backward or "compiler")
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    weight = torch.tensor(data.class_weights, dtype=torch.float32, device=device) if cfg.class_weights else None
    criterion = nn.CrossEntropyLoss(weight=weight, ignore_index=data.info.ignore_index)
    if cfg.teacher:
        criterion = DistillLoss(criterion, cfg.distill_weight)
    use_graph = graphed_step_wanted(cfg, device, get_world_size()) and not cfg.compile
    if cfg.cuda_graph is True and not use_graph and is_main_process():
        print("note: --cuda-graph needs CUDA, one process, no fp16 and no dropout; training eagerly "
              "(with --compile on CUDA the compiled step is captured instead)")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if use_graph:  # a tensor learning rate lets the captured step see each new value
        optimizer = torch.optim.Adam(trainable, lr=torch.tensor(cfg.lr, device=device),
                                     betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                                     capturable=True, foreach=True)
    else:
        optimizer = torch.optim.Adam(trainable, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                     weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    ema = None
    if cfg.ema is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    return TrainParts(model, model, criterion, optimizer, scaler, ema)


# ---- --resume --------------------------------------------------------------------------------

def read_resumable(path: Path, out: Path, auto: bool) -> dict:
    """The checkpoint --resume names, read before anything else happens; refused when it is
    missing or not a checkpoint of `cgnet train` (one without optimizer and schedule state)."""
    if not path.is_file():
        if not auto:
            raise ConfigError(f"--resume {path}: no such file")
        if (out / "config.json").exists():
            raise ConfigError(f"--resume: {path} does not exist: the run in {out} ended before its first "
                              "checkpoint; start a new run with another --out")
        raise ConfigError(f"--resume: {path} does not exist (no run to continue in {out}); leave --resume out "
                          "to start one")
    _, _, ckpt = load_checkpoint(path)
    if not (ckpt.get("format") == "cgnet" and "optimizer" in ckpt and "train_state" in ckpt
            and isinstance(ckpt["meta"].get("config"), dict)):
        raise ConfigError(f"--resume: {path} is not a checkpoint of cgnet train (it holds no optimizer "
                          "and schedule state)")
    return ckpt


def restore(ckpt: dict, path: Path, parts: TrainParts, cfg: TrainConfig, state: TrainState, n_batches: int,
            device: torch.device) -> TrainConfig:
    """Load model, optimiser, scaler, progress and RNG state from a checkpoint of this run."""
    load_state_into(parts.bare, ckpt["model"], where=str(path))
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    if parts.ema is not None:
        parts.ema.load_state_dict(ckpt["ema"])
    if parts.scaler.is_enabled() and ckpt.get("scaler"):  # a run that switched --amp starts a fresh scaler
        parts.scaler.load_state_dict(ckpt["scaler"])
    saved = ckpt["train_state"]
    state.epoch, state.iteration = saved["epoch"], saved["iteration"]
    state.best_miou, state.history = saved["best_miou"], saved["history"]
    state.partial_batches, state.partial_loss = saved.get("partial_batches", 0), saved.get("partial_loss", 0.0)
    if "planned_epochs" in saved:  # a time-budgeted run already cut its schedule
        cfg = replace(cfg, epochs=saved["planned_epochs"])
        state.planned_epochs = saved["planned_epochs"]
        state.max_iters = cfg.epochs * n_batches
    if saved["max_iters"] != state.max_iters:
        raise ConfigError(f"--resume: {path} has a schedule of {saved['max_iters']} iterations, this run "
                          f"{state.max_iters} ({n_batches} per epoch): the training list changed since the run "
                          "began; resume with the list it was trained on")
    torch.set_rng_state(ckpt["rng"]["torch"])
    if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    return cfg


# ---- the step --------------------------------------------------------------------------------

def choose_step(parts: TrainParts, cfg: TrainConfig, data: TrainData, device: torch.device):
    """The training step: the first of this chain that the run allows and that builds (and passes
    its check against eager), each failure one warning line:

    1. --compile, one program allowed: the whole step compiled by inductor (on CUDA captured as one
       CUDA graph, on the CPU with `steps.CPU_INDUCTOR_OPTIONS`);
    2. on CUDA, one program allowed: the eager step captured as a CUDA graph;
    3. --compile: the eager step around the torch.compile'd model (torchrun; the CPU's measured
       `camvid-cpu` step);
    4. the eager step."""
    world = get_world_size()
    if whole_step_compile(cfg, device, world) and not cfg.teacher:
        parts.model.train()
        step = make_compiled_step(parts.model, parts.criterion, parts.optimizer, parts.scaler, device, cfg,
                                  data.per_rank, data.info.num_classes, cuda_graph=cfg.cuda_graph is not False,
                                  compile_optimizer=cfg.compile_optimizer)
        if step is not None:
            if is_main_process():
                print(f"training step compiled by inductor ({step.kind}; compiled, captured and checked "
                      f"against eager in {step.compile_s:.0f} s)")
            return step
    if graphed_step_wanted(cfg, device, world) and not cfg.teacher:
        configure_optimizer(parts.optimizer, device, tensor_lr=True)  # the captured step reads a tensor lr
        step = make_graphed_step(parts.model, parts.criterion, parts.optimizer, device, cfg, data.per_rank,
                                 data.info.num_classes)
        if step is not None:
            step.kind = "cudagraph"
            if is_main_process():
                print("training step captured as a CUDA graph")
            return step
    # a resumed optimiser (or a failed capture) may carry a tensor lr: the eager steps want a float
    configure_optimizer(parts.optimizer, device, tensor_lr=False)
    model = compile_or_eager(parts.model, cfg, device, data.per_rank, parts.criterion, parts.optimizer,
                             data.info.num_classes) if cfg.compile else parts.model
    step = make_eager_step(model.train(), parts.criterion, parts.optimizer, parts.scaler, device, cfg)
    step.kind = "compile" if model is not parts.model else "eager"
    return step


def wrap_for_training(parts: TrainParts, cfg: TrainConfig, data: TrainData, device: torch.device):
    """DDP (and SyncBatchNorm) under torchrun, then the step (`choose_step`)."""
    if get_world_size() > 1:
        if cfg.sync_bn:
            parts.bare = parts.model = nn.SyncBatchNorm.convert_sync_batchnorm(parts.model)
        parts.model = nn.parallel.DistributedDataParallel(
            parts.model, device_ids=[device.index] if device.type == "cuda" else None)
    return choose_step(parts, cfg, data, device)


# ---- the epochs ------------------------------------------------------------------------------

def run_meta(model: CGNet, data: TrainData, cfg: TrainConfig) -> dict:
    return make_meta(model, preprocess=data.spec, classes=list(data.info.classes),
                     palette=[list(c) for c in data.info.palette], ignore_index=data.info.ignore_index,
                     dataset=data.info.name, config=cfg.to_dict())


def rng_state(device: torch.device) -> dict:
    # the augmentation and the shuffling are functions of (seed, epoch, index); only dropout
    # draws from the global generators
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def save_last(out: Path, parts: TrainParts, data: TrainData, cfg: TrainConfig, state: TrainState,
              device: torch.device) -> None:
    """OUT/last.pt: everything --resume needs (written atomically, by the main process)."""
    saved = state.to_dict()
    extra = {} if parts.ema is None else {"ema": parts.ema.state_dict()}
    save_on_master(out / "last.pt", parts.bare, run_meta(parts.bare, data, cfg), optimizer=parts.optimizer.state_dict(),
                   scaler=parts.scaler.state_dict(), train_state=saved, rng=rng_state(device), **extra)
    if parts.ema is not None:  # the averaged weights as a plain checkpoint (predict, eval, export)
        save_on_master(out / "ema.pt", parts.ema.module, run_meta(parts.ema.module, data, cfg), train_state=saved)
    state.saved = saved


def validate(parts: TrainParts, data: TrainData, device: torch.device, cfg: TrainConfig, state: TrainState,
             out: Path, record: dict) -> None:
    """Score the val list (the averaged weights with --ema), add it to the epoch's record, write
    best.pt on a new best."""
    scored = parts.bare if parts.ema is None else parts.ema.module
    scores = evaluate(scored, data.val_loader, data.info, device, precision=cfg.amp,
                      channels_last=cfg.channels_last, progress=cfg.progress and is_main_process())
    record.update(val_miou=scores["miou"], val_pixel_acc=scores["pixel_acc"])
    if is_main_process():
        print(f"epoch {state.epoch}: loss {record['loss']:.4f}  val mIoU {100 * scores['miou']:.2f}")
    if scores["miou"] > state.best_miou:
        state.best_miou = scores["miou"]
        save_on_master(out / "best.pt", scored, run_meta(scored, data, cfg), scores=scores,
                       train_state=state.to_dict())


def train_or_explain(step, parts: TrainParts, data: TrainData, device: torch.device, cfg: TrainConfig,
                     state: TrainState, out: Path, stop: GracefulStop, after_step=None) -> float:
    """`train_one_epoch` of the next epoch; a non-finite loss names the checkpoint to go back to."""
    try:
        batches = data.batches(state.epoch, skip=state.partial_batches)
        return train_one_epoch(step, parts.optimizer, batches, data.n_batches, device, cfg, state, stop,
                               parts.ema, parts.bare, after_step)
    except NonFiniteLoss as e:
        last = out / "last.pt"
        where = f"the last good checkpoint is {last} (epoch {state.saved['epoch']})" \
            if last.exists() and state.saved is not None else "no checkpoint was written yet"
        hint = "; try --resume --amp off" if cfg.amp != "off" else "; try a lower --lr in a new run (another --out)"
        raise NonFiniteLoss(f"{e}; {where}{hint}") from None


def tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tb"))


# ---- snapshots inside the epoch, and restarts by torchrun's elastic agent -------------------------

def snapshot_hook(out: Path, parts: TrainParts, data: TrainData, cfg: TrainConfig, state: TrainState,
                  device: torch.device):
    """What runs after every iteration (None: nothing): with --snapshot-every K, last.pt written
    inside the epoch at every K-th iteration (the epoch's batches so far and loss sum in it, as a
    stop signal writes them; epoch ends are written by `run_epochs`); under torchrun's elastic agent,
    OUT/progress.json with the iteration reached, so that a restart can say what it repeats."""
    elastic = elastic_attempt() is not None
    if not cfg.snapshot_every and not elastic:
        return None

    def after_step(count: int, total: torch.Tensor) -> None:
        if cfg.snapshot_every and state.iteration % cfg.snapshot_every == 0 and count < data.n_batches:
            state.partial_batches, state.partial_loss = count, float(total)
            save_last(out, parts, data, cfg, state, device)
        if elastic and is_main_process():
            write_progress(out, state.iteration)
    return after_step


def run_epochs(step, cfg: TrainConfig, data: TrainData, parts: TrainParts, state: TrainState,
               device: torch.device, out: Path, setup_start: float | None = None) -> TrainConfig:
    """The epoch loop: train, validate every cfg.val_every epochs and after the last, write
    last.pt every cfg.save_every epochs and after the last (log.jsonl then gets the epochs since
    the previous write, so the log never runs ahead of last.pt), best.pt on a new best. A stop
    signal (`GracefulStop`) writes last.pt where the run is, mid-epoch if need be, and raises
    StopRequested.

    Each record's `elapsed_s` is the run's wall-clock time: this process's since `setup_start`
    (data loading and compilation included), plus what earlier processes of a resumed run spent
    (the latest record's elapsed_s). So --time-budget is the whole run's time, setup included."""
    writer = tensorboard_writer(out) if is_main_process() else None
    start = (time.time() if setup_start is None else setup_start) - \
        (state.history[-1]["elapsed_s"] if state.history else 0.0)
    if is_main_process() and state.history:  # a resumed run: the log holds what last.pt holds
        write_atomic(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in state.history))
    logged = len(state.history)  # records already in log.jsonl

    def save(cfg: TrainConfig) -> None:
        nonlocal logged
        save_last(out, parts, data, cfg, state, device)
        if is_main_process() and logged < len(state.history):
            with open(out / "log.jsonl", "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in state.history[logged:])
        logged = len(state.history)

    after_step = snapshot_hook(out, parts, data, cfg, state, device)
    with GracefulStop(enabled=get_world_size() == 1) as stop:
        while state.epoch < cfg.epochs and state.iteration < state.stop_at:
            t0 = time.time()
            loss = train_or_explain(step, parts, data, device, cfg, state, out, stop, after_step)
            if state.partial_batches:  # --max-iters or a stop signal ended the epoch early: keep the place
                save(cfg)
                if stop.requested:
                    raise StopRequested(stop.signum)
                if is_main_process():
                    print(f"stopped at iteration {state.iteration} (--max-iters), {state.partial_batches} of "
                          f"{data.n_batches} batches into epoch {state.epoch + 1}; {out / 'last.pt'} holds it")
                break
            state.epoch += 1
            record = {"epoch": state.epoch, "iteration": state.iteration, "loss": loss,
                      "lr": float(parts.optimizer.param_groups[0]["lr"]), "epoch_s": time.time() - t0,
                      "elapsed_s": time.time() - start}
            state.history.append(record)  # validation scores are added to it below
            if cfg.time_budget and state.epoch == 2 and state.planned_epochs is None:
                cfg = fit_schedule_to_budget(cfg, state, data.n_batches)  # may make this the last epoch
            last_epoch = state.epoch >= cfg.epochs or state.iteration >= state.stop_at
            if data.val_loader is not None and (state.epoch % cfg.val_every == 0 or last_epoch):
                validate(parts, data, device, cfg, state, out, record)
            elif is_main_process():
                print(f"epoch {state.epoch}: loss {loss:.4f}")
            if state.epoch % cfg.save_every == 0 or last_epoch or stop.requested:
                save(cfg)
            if writer is not None:
                for k, v in record.items():
                    writer.add_scalar(k, v, state.epoch)
            if stop.requested:
                raise StopRequested(stop.signum)
    if writer is not None:
        writer.close()
    return cfg


# ---- the run ---------------------------------------------------------------------------------

RUN_FILES = ("last.pt", "log.jsonl", "config.json")  # a folder with one of these holds a run


def on_main_process(action) -> None:
    """Run `action` on the main process only; a CGNetError it raises is raised on every process."""
    error = None
    if is_main_process():
        try:
            action()
        except CGNetError as e:
            error = e
    message = broadcast_value(None if error is None else str(error))
    if error is not None:
        raise error
    if message is not None:
        raise CGNetError(message)


def claim_run_folder(lock: FolderLock, out: Path, resuming: bool) -> None:
    """Refuse a folder another run is using, or one that holds a run when not resuming; then
    lock it and remove the temporary files of writes that were killed there."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    lock.check()
    if not resuming:
        found = [name for name in RUN_FILES if (out / name).exists()]
        if found:
            raise ConfigError(f"--out {out} already holds a run ({', '.join(found)}); continue it with --resume, "
                              "or start a new run with another --out")
    try:
        lock.acquire()
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create the run folder or its lock ({e.strerror or e})") from None
    if lock.taken_over:
        print(f"note: took over {lock.path} from pid {lock.taken_over.get('pid')}, which no longer runs")
    removed = remove_leftover_temp_files(out, any_pid=True)
    if removed:
        print(f"note: removed {len(removed)} temporary file(s) left by interrupted writes: "
              + ", ".join(p.name for p in removed))


def interrupted_line(out: Path, state: TrainState, resume_path: Path | None, signum: int = signal.SIGINT) -> str:
    """What Ctrl-C (or SIGTERM) prints: the checkpoint to continue from and the command that does."""
    last = out / "last.pt"
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    if state.saved is None or not (last.exists() or resume_path is not None):
        return f"cgnet train: {what}; no checkpoint yet: run the same command again to start over"
    where, resume = (last, "--resume") if last.exists() else \
        (resume_path, f"--resume {shlex.quote(str(resume_path))}")
    holds = f"epoch {state.saved['epoch']}"
    if state.saved.get("partial_batches"):
        holds += f" and {state.saved['partial_batches']} batches of epoch {state.saved['epoch'] + 1}"
    return (f"cgnet train: {what}; {where} holds {holds}; continue with: "
            f"cgnet train --out {shlex.quote(str(out))} {resume}")


def processes_line(per_rank: int, batch: int) -> str:
    """Under torchrun: how many processes joined, the backend, and each process's share of the batch."""
    world = get_world_size()
    return (f"torchrun: {world} process{'es' * (world != 1)} joined ({backend()}); batch {per_rank} per process, "
            f"{batch} in all")


def run(cfg: TrainConfig, device: torch.device, out: Path, state: TrainState, resumed: dict | None,
        resume_path: Path | None, changes: list[str], init: InitWeights | None = None) -> None:
    """The run in a claimed folder: data, model, restore, the epochs, the closing line."""
    setup_start = time.time()  # elapsed_s counts setup (data, compile) too: see run_epochs
    torch.manual_seed(cfg.seed)
    keep = None  # the preprocessing a fine-tuned run keeps: its --init weights', then its own
    if cfg.init:
        keep = resumed["meta"]["preprocess"] if resumed else init.meta.get("preprocess")
    data = build_data(cfg, device, out, keep)
    torch.manual_seed(cfg.seed)  # the model's initial weights do not depend on cached statistics
    cfg = replace(cfg, resolved_preprocess=data.spec)
    parts = build_model_and_optimizer(cfg, data, device, init,
                                      classifier_bias=bool(resumed) and "classifier.bias" in resumed["model"])
    state.max_iters = cfg.epochs * data.n_batches
    if resumed is not None:
        cfg = restore(resumed, resume_path, parts, cfg, state, data.n_batches, device)
    state.stop_at = min(state.max_iters, cfg.max_iters or state.max_iters)
    step = wrap_for_training(parts, cfg, data, device)

    if is_main_process():
        write_atomic(out / "config.json", json.dumps(cfg.to_dict(), indent=1))
        print(json.dumps(cfg.to_dict(), indent=1))
        if cfg.speed_choice:
            print(f"speed settings: {cfg.speed_choice}")
        if is_dist():
            print(processes_line(data.per_rank, cfg.batch_size))
        print(f"training loader: {loader_line(data, cfg)}; backward: depthwise {cfg.depthwise_backward}, "
              f"PReLU {cfg.prelu_backward}, up-sampling {cfg.upsample_backward}")
        print(f"{len(data.train_set)} training images, {data.n_batches} iterations per epoch, "
              f"{state.max_iters} in all" + (f", stopping at {state.stop_at}" if state.stop_at < state.max_iters else ""))
        if resumed is not None:
            print(f"resuming from epoch {state.epoch} of {cfg.epochs} ({resume_path})")
            if (restarted := restart_line(out, state.iteration)) is not None:
                print(restarted)
            if changes:
                print("--resume: changed " + ", ".join(changes) + " (they do not change what the run learns)")
    cfg = run_epochs(step, cfg, data, parts, state, device, out, setup_start)

    if is_main_process():
        if state.history:
            plot_history(state.history, out / "curve.png")
        # this process's wall-clock, setup and the last save included (an epoch record's elapsed_s
        # misses what follows it, and a --max-iters stop mid-epoch writes no record at all)
        elapsed = time.time() - setup_start
        (out / PROGRESS_FILE).unlink(missing_ok=True)  # finished: no attempt failed any more
        files = [name for name in ("last.pt", "best.pt", "log.jsonl", "curve.png") if (out / name).exists()]
        print(f"done in {elapsed:.0f} s; run folder {out} ({', '.join(files)})")


def cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out or TrainConfig.out)
    resume_path = resumed = None
    fresh = elastic_fresh_start(args.resume, out)  # torchrun's agent: --resume with nothing yet starts the run
    if args.resume and not fresh:
        resume_path = out / "last.pt" if args.resume == "auto" else Path(args.resume)
        resumed = read_resumable(resume_path, out, auto=args.resume == "auto")
    cfg = resolve_config(args, resumed["meta"]["config"] if resumed else None)
    out = Path(cfg.out)
    # a resumed run's weights and preprocessing come from its checkpoint, not from --init again
    init = read_init(cfg) if cfg.init and not resumed else None
    changes = []
    if resumed:
        changes = compare_for_resume(resumed["meta"]["config"], cfg,
                                     schedule_fixed="planned_epochs" in resumed["train_state"])
    device = init_distributed(cfg.device)
    if fresh and is_main_process():
        print(f"--resume: no {out / 'last.pt'} yet (torchrun start {elastic_attempt()}): starting the run")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest kernels
    state = TrainState(saved=resumed["train_state"] if resumed else None)
    lock = FolderLock(out, what="cgnet train") if is_main_process() else None
    try:
        on_main_process(lambda: claim_run_folder(lock, out, resuming=resumed is not None or fresh))
        run(cfg, device, out, state, resumed, resume_path, changes, init)
        barrier()  # the ranks leave together: a rank tearing down gloo while another still writes can abort
        return 0
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, StopRequested) else signal.SIGINT
        if is_main_process():
            print(interrupted_line(out, state, resume_path, signum), file=sys.stderr)
        return 128 + signum
    finally:
        if lock is not None and lock.held:
            if resumed is None and not (out / "last.pt").exists():
                (out / "config.json").unlink(missing_ok=True)  # no checkpoint: the folder holds no run
            lock.release()
        cleanup()
