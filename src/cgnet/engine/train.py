"""`cgnet train`: the paper's recipes, one process or many (torchrun), resumable.

Read top to bottom: the schedule (`poly_lr`) and the training state -> the training step ->
one epoch -> `main`, which runs the named steps: build the data, build the model and optimiser,
restore a checkpoint, run the epochs, finish. The same command runs under `torchrun
--nproc_per_node=K cgnet train ...` with DistributedDataParallel (nccl on GPUs, gloo on CPUs); the
global batch is split across processes and only the main process writes (`save_on_master`).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..checkpoint import load_checkpoint, load_state_into, make_meta, save_checkpoint
from ..common import CGNetError
from ..data.catalog import DatasetInfo, resolve_dataset
from ..data.listset import MemoryTrainSet, SegDataset, seed_worker
from ..data.stats import dataset_stats
from ..model import CGNet
from ..plot import plot_history
from ..preprocess import make_spec
from .config import TrainConfig, resolve_config
from .distributed import (barrier, broadcast_value, cleanup, get_rank, get_world_size, init_distributed,
                          is_main_process)
from .evaluate import evaluate, make_eval_loader
from .steps import compile_or_eager, make_eager_step, make_graphed_step, set_lr


class NonFiniteLoss(CGNetError, RuntimeError):
    """The loss became NaN or infinite; nothing non-finite is saved."""


# ---- the schedule and the state ------------------------------------------------------------

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

    def to_dict(self) -> dict:
        out = {"epoch": self.epoch, "iteration": self.iteration, "max_iters": self.max_iters,
               "best_miou": self.best_miou, "history": self.history}
        if self.planned_epochs is not None:
            out["planned_epochs"] = self.planned_epochs
        return out


def save_on_master(path: Path, model: nn.Module, meta: dict, **extra) -> None:
    """Write a checkpoint from the main process only (atomically: see `save_checkpoint`)."""
    if is_main_process():
        save_checkpoint(path, model, meta, **extra)


# ---- one epoch -----------------------------------------------------------------------------

def train_one_epoch(step, optimizer, batches, n_batches: int, device, cfg: TrainConfig, state: TrainState) -> float:
    """One pass over `batches`; poly learning rate set every iteration. Returns the mean loss."""
    total, count = torch.zeros((), device=device), 0
    bar = tqdm(batches, total=n_batches, desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
               disable=not is_main_process() or not cfg.progress, leave=False, dynamic_ncols=True)
    check_every = 25 if device.type == "cuda" else 1  # a finiteness check syncs the GPU
    for images, labels in bar:
        if state.iteration >= state.stop_at:
            break
        lr = poly_lr(state.iteration, state.max_iters, cfg.lr, cfg.poly_power)
        set_lr(optimizer, lr)
        total += step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
        state.iteration += 1
        count += 1
        if count % check_every == 0 or count == n_batches:
            bar.set_postfix(loss=f"{finite_mean(total, count, state):.4f}", lr=f"{lr:.2e}")
    return finite_mean(total, max(1, count), state)


def finite_mean(total: torch.Tensor, count: int, state: TrainState) -> float:
    mean = float(total) / count
    if not math.isfinite(mean):
        raise NonFiniteLoss(f"the loss became {mean} by iteration {state.iteration} "
                            f"(epoch {state.epoch + 1}); stopped without saving")
    return mean


def fit_schedule_to_budget(cfg: TrainConfig, state: TrainState, n_batches: int) -> TrainConfig:
    """Cut the epochs to what fits in cfg.time_budget minutes: the time left divided by the
    latest epoch's time (the first one carries compilation and warm-up) plus 15% for validation,
    checkpoints and later epochs running slower (on an H200 the first epochs took 1.2 s, the
    average over 300 epochs 1.39 s). Returns the config with the new epoch count."""
    last = state.history[-1]
    per_epoch = 1.15 * last["epoch_s"]
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


# ---- the steps of main ---------------------------------------------------------------------

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
    memset: MemoryTrainSet | None   # GPU: images decoded once into device memory
    val_loader: DataLoader | None

    def batches(self, epoch: int):
        """The epoch's (images, labels) batches; the draws depend only on (seed, epoch, index)."""
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        if self.memset is not None:
            indices = list(self.sampler)
            for b in range(len(indices) // self.per_rank):
                yield self.memset.batch(indices[b * self.per_rank:(b + 1) * self.per_rank], epoch)
        else:
            for images, labels, _ in self.loader:
                yield images, labels


def build_data(cfg: TrainConfig, device: torch.device, out: Path) -> TrainData:
    """Datasets and loaders; the training list's statistics (cached in the run folder) give the
    mean/std and the class weights."""
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
    if cfg.preprocess == "original":
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
    loader = memset = None
    if cfg.loader == "memory":
        memset = MemoryTrainSet(train_set, device, progress=cfg.progress and is_main_process())
    else:
        loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, num_workers=cfg.workers,
                            drop_last=True, pin_memory=device.type == "cuda", worker_init_fn=seed_worker,
                            generator=torch.Generator().manual_seed(cfg.seed))
    val_loader = None
    if cfg.val_split and cfg.val_split != "none":
        val_set = SegDataset(root, info.split_path(root, cfg.val_split), info, spec, train=False)
        val_loader = make_eval_loader(val_set, rank, world, workers=min(cfg.workers, 2))
    return TrainData(info, spec, stats["class_weights"], train_set, sampler, per_rank, n_batches, loader, memset,
                     val_loader)


@dataclass
class TrainParts:
    model: nn.Module                # what the step runs: DDP-wrapped under torchrun
    bare: CGNet                     # the CGNet inside, what checkpoints hold
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_graph: bool                 # the step will be captured as a CUDA graph


def build_model_and_optimizer(cfg: TrainConfig, data: TrainData, device: torch.device) -> TrainParts:
    """CGNet, class-weighted cross-entropy, Adam (a tensor learning rate when the step is a CUDA graph)."""
    model = CGNet(data.info.num_classes, m=cfg.m, n=cfg.n, dropout=cfg.dropout).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    weight = torch.tensor(data.class_weights, dtype=torch.float32, device=device) if cfg.class_weights else None
    criterion = nn.CrossEntropyLoss(weight=weight, ignore_index=data.info.ignore_index)
    use_graph = (cfg.cuda_graph is not False and device.type == "cuda" and get_world_size() == 1
                 and not cfg.compile and cfg.amp != "fp16" and cfg.dropout == 0)
    if cfg.cuda_graph is True and not use_graph and is_main_process():
        print("note: --cuda-graph needs CUDA, one process, no --compile, no fp16 and no dropout; training eagerly")
    if use_graph:  # a tensor learning rate lets the captured step see each new value
        optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(cfg.lr, device=device),
                                     betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                                     capturable=True, foreach=True)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                     weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    return TrainParts(model, model, criterion, optimizer, scaler, use_graph)


def restore(path: Path, parts: TrainParts, cfg: TrainConfig, state: TrainState, n_batches: int,
            device: torch.device) -> TrainConfig:
    """Load model, optimiser, scaler, progress and RNG state from a checkpoint of this run."""
    _, _, ckpt = load_checkpoint(path)
    load_state_into(parts.bare, ckpt["model"], where=str(path))
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scaler.load_state_dict(ckpt["scaler"])
    saved = ckpt["train_state"]
    state.epoch, state.iteration = saved["epoch"], saved["iteration"]
    state.best_miou, state.history = saved["best_miou"], saved["history"]
    if "planned_epochs" in saved:  # a time-budgeted run already cut its schedule
        cfg = replace(cfg, epochs=saved["planned_epochs"])
        state.planned_epochs = saved["planned_epochs"]
        state.max_iters = cfg.epochs * n_batches
    if saved["max_iters"] != state.max_iters:
        raise CGNetError(f"{path} was trained with a schedule of {saved['max_iters']} iterations, this run "
                         f"has {state.max_iters}: keep --epochs/--batch-size as they were")
    torch.set_rng_state(ckpt["rng"]["torch"])
    if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    return cfg


def wrap_for_training(parts: TrainParts, cfg: TrainConfig, data: TrainData, device: torch.device):
    """DDP (and SyncBatchNorm) under torchrun, torch.compile or a CUDA graph; returns the step."""
    if get_world_size() > 1:
        if cfg.sync_bn:
            parts.bare = parts.model = nn.SyncBatchNorm.convert_sync_batchnorm(parts.model)
        parts.model = nn.parallel.DistributedDataParallel(
            parts.model, device_ids=[device.index] if device.type == "cuda" else None)
    train_model = compile_or_eager(parts.model, cfg, device, data.per_rank) if cfg.compile else parts.model
    train_model.train()
    step = None
    if parts.use_graph:
        step = make_graphed_step(parts.model, parts.criterion, parts.optimizer, device, cfg, data.per_rank,
                                 data.info.num_classes)
        if step is not None and is_main_process():
            print("training step captured as a CUDA graph")
    return step or make_eager_step(train_model, parts.criterion, parts.optimizer, parts.scaler, device, cfg)


def run_epochs(step, cfg: TrainConfig, data: TrainData, parts: TrainParts, state: TrainState,
               device: torch.device, out: Path) -> TrainConfig:
    """The epoch loop: train, validate every cfg.val_every epochs and after the last, write
    last.pt every epoch and best.pt on a new best, append to log.jsonl."""
    writer = tensorboard_writer(out) if is_main_process() else None
    # wall-clock time continues across resumes, for time-to-accuracy curves and the time budget
    start = time.time() - (state.history[-1]["elapsed_s"] if state.history else 0.0)
    while state.epoch < cfg.epochs and state.iteration < state.stop_at:
        t0 = time.time()
        try:
            loss = train_one_epoch(step, parts.optimizer, data.batches(state.epoch), data.n_batches, device, cfg,
                                   state)
        except NonFiniteLoss as e:
            last = out / "last.pt"
            where = f"the last good checkpoint is {last} (epoch {state.epoch}); --resume continues from it" \
                if last.exists() and state.epoch > 0 else "no checkpoint was written yet"
            hint = " (try --amp off)" if cfg.amp != "off" else " (try a lower --lr)"
            raise NonFiniteLoss(f"{e}; {where}{hint}") from None
        state.epoch += 1
        record = {"epoch": state.epoch, "iteration": state.iteration, "loss": loss,
                  "lr": float(parts.optimizer.param_groups[0]["lr"]), "epoch_s": time.time() - t0,
                  "elapsed_s": time.time() - start}
        meta = run_meta(parts.bare, data, cfg)
        last_epoch = state.epoch == cfg.epochs or state.iteration >= state.stop_at
        if data.val_loader is not None and (state.epoch % cfg.val_every == 0 or last_epoch):
            scores = evaluate(parts.bare, data.val_loader, data.info, device, precision=cfg.amp,
                              channels_last=cfg.channels_last, progress=cfg.progress and is_main_process())
            record.update(val_miou=scores["miou"], val_pixel_acc=scores["pixel_acc"])
            if is_main_process():
                print(f"epoch {state.epoch}: loss {loss:.4f}  val mIoU {100 * scores['miou']:.2f}")
            if scores["miou"] > state.best_miou:
                state.best_miou = scores["miou"]
                save_on_master(out / "best.pt", parts.bare, meta, scores=scores, train_state=state.to_dict())
        elif is_main_process():
            print(f"epoch {state.epoch}: loss {loss:.4f}")
        state.history.append(record)
        if cfg.time_budget and state.epoch == 2 and state.planned_epochs is None:
            cfg = fit_schedule_to_budget(cfg, state, data.n_batches)
            meta = run_meta(parts.bare, data, cfg)
        save_on_master(out / "last.pt", parts.bare, meta, optimizer=parts.optimizer.state_dict(),
                       scaler=parts.scaler.state_dict(), train_state=state.to_dict(), rng=rng_state(device))
        if is_main_process():
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if writer is not None:
                for k, v in record.items():
                    writer.add_scalar(k, v, state.epoch)
    if writer is not None:
        writer.close()
    return cfg


def run_meta(model: CGNet, data: TrainData, cfg: TrainConfig) -> dict:
    return make_meta(model, preprocess=data.spec, classes=list(data.info.classes),
                     palette=[list(c) for c in data.info.palette], ignore_index=data.info.ignore_index,
                     dataset=data.info.name, config=cfg.to_dict())


def rng_state(device: torch.device) -> dict:
    # the augmentation and the shuffling are functions of (seed, epoch, index); only dropout
    # draws from the global generators
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tb"))


# ---- main ----------------------------------------------------------------------------------

def main(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    device = init_distributed(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest kernels
    out = Path(cfg.out)
    resume_path = None
    if args.resume:
        resume_path = out / "last.pt" if args.resume == "auto" else Path(args.resume)
        if not resume_path.is_file():
            raise FileNotFoundError(f"--resume: {resume_path} does not exist")
    torch.manual_seed(cfg.seed)

    data = build_data(cfg, device, out)
    cfg = replace(cfg, resolved_preprocess=data.spec)
    parts = build_model_and_optimizer(cfg, data, device)
    state = TrainState(max_iters=cfg.epochs * data.n_batches)
    if resume_path is not None:
        cfg = restore(resume_path, parts, cfg, state, data.n_batches, device)
    state.stop_at = min(state.max_iters, cfg.max_iters or state.max_iters)
    step = wrap_for_training(parts, cfg, data, device)

    if is_main_process():
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        print(json.dumps(cfg.to_dict(), indent=1))
        print(f"{len(data.train_set)} training images, {data.n_batches} iterations per epoch, "
              f"{state.max_iters} in all" + (f", stopping at {state.stop_at}" if state.stop_at < state.max_iters else ""))
    cfg = run_epochs(step, cfg, data, parts, state, device, out)

    if is_main_process():
        plot_history(state.history, out / "curve.png")
        elapsed = state.history[-1]["elapsed_s"] if state.history else 0.0
        print(f"done in {elapsed:.0f} s; run folder {out} (last.pt, best.pt, log.jsonl, curve.png)")
    cleanup()
    return 0
