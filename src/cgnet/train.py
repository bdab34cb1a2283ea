"""`cgnet train`: the paper's recipes, one process or many (torchrun), resumable.

Read top to bottom: presets -> config -> data -> model -> optimiser -> loop -> checkpoints.
The same command runs under `torchrun --nproc_per_node=K cgnet train ...` with
DistributedDataParallel (nccl on GPUs, gloo on CPUs); the global batch is split across ranks and
only rank 0 writes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from . import data as D
from .checkpoint import load_checkpoint, load_state_into, make_meta, save_checkpoint
from .datasets import read_class_names, resolve_dataset
from .evaluate import evaluate, make_eval_loader
from .model import CGNet
from .preprocess import make_spec

# The paper's recipes (Wu et al. 2020, section IV; the original release's scripts).
PRESETS = {
    "cityscapes": dict(dataset="cityscapes", train_split="train", val_split="val", crop=[680, 680],
                       batch_size=16, epochs=300),
    "cityscapes-trainval": dict(dataset="cityscapes", train_split="trainval", val_split="val",
                                crop=[680, 680], batch_size=16, epochs=350),
    "camvid": dict(dataset="camvid", train_split="trainval", val_split="val", crop=[360, 360],
                   batch_size=8, epochs=800),
    # ours: the camvid recipe fitted to 2.5 hours of a 2-core CPU (fp32, channels_last, compiled)
    "camvid-cpu": dict(dataset="camvid", train_split="trainval", val_split="val", crop=[360, 360],
                       batch_size=8, epochs=800, time_budget=150, compile=True, amp="off", val_every=5,
                       workers=1),
}
DEFAULTS = dict(preset=None, dataset="camvid", classes=None, ignore_index=None, data_root=None, train_split="train", val_split="val",
                epochs=800, batch_size=8, crop=[360, 360], lr=1e-3, betas=[0.9, 0.999], eps=1e-8,
                weight_decay=5e-4, poly_power=0.9, m=3, n=21, dropout=0.0, class_weights=True,
                preprocess="standard", mean=None, std=None, seed=0, device=None, amp=None,
                channels_last=True, compile=False, cuda_graph=None, sync_bn=False, workers=None, loader="auto",
                val_every=10, out="runs/cgnet", max_iters=None, time_budget=None, progress=True)


class NonFiniteLoss(RuntimeError):
    pass


# ---- configuration -------------------------------------------------------------------------

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
    p.add_argument("--mean", type=_floats, help="3 values; default: computed on the training list")
    p.add_argument("--std", type=_floats)
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


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def resolve_config(args: argparse.Namespace) -> dict:
    """Defaults <- preset <- command line. The result is JSON-able and stored everywhere."""
    cfg = dict(DEFAULTS)
    if args.preset:
        cfg.update(PRESETS[args.preset], preset=args.preset)
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    if getattr(args, "blocks", None):
        cfg["m"], cfg["n"] = args.blocks
    crop = cfg["crop"]
    cfg["crop"] = [crop[0], crop[0]] if len(crop) == 1 else list(crop)
    if len(cfg["crop"]) != 2:
        raise ValueError(f"--crop takes one or two sizes, got {crop}")
    if cfg["device"] is None:
        cfg["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    on_cuda = cfg["device"].startswith("cuda")
    if cfg["amp"] is None:
        cfg["amp"] = "bf16" if on_cuda else "off"
    if cfg["amp"] == "fp16" and not on_cuda:
        raise ValueError("--amp fp16 needs CUDA; use --amp bf16 or off on the CPU")
    if cfg["sync_bn"] and not on_cuda:
        raise ValueError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only")
    if cfg["workers"] is None:
        cfg["workers"] = min(8, os.cpu_count() or 1) if on_cuda else 1
    if cfg["loader"] == "auto":
        cfg["loader"] = "memory" if on_cuda else "workers"
    if cfg["data_root"] is None:
        raise ValueError("--data-root is required (the folder with the dataset's list files)")
    return cfg


# ---- distributed ---------------------------------------------------------------------------

def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them this is one process."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device(device)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        dist.init_process_group("nccl", device_id=dev)
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo")
    return rank, world, dev


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ---- one epoch -----------------------------------------------------------------------------

def autocast(device: torch.device, amp: str, cache: bool = True):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    # inside a CUDA graph capture autocast's cache of cast weights must be off
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=cache)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):  # captured in a CUDA graph: update in place
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def make_eager_step(model, criterion, optimizer, scaler, device, cfg: dict):
    """forward (autocast), loss in fp32, backward, optimiser step; returns the loss tensor."""
    def step(images, labels):
        if cfg["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, cfg["amp"]):
            logits = model(images)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()
    return step


def make_graphed_step(model, criterion, optimizer, device, cfg: dict, per_rank: int, num_classes: int,
                      rank: int = 0):
    """The whole training step captured once as a CUDA graph and replayed each iteration (it is
    hundreds of small kernels, so launching them costs more than running them). The capture is
    checked against an eager step on the same data; on any failure this returns None and training
    runs eagerly. Model and optimiser state are restored after the warm-up steps the capture needs."""
    x = torch.zeros(per_rank, 3, *cfg["crop"], device=device)
    if cfg["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.zeros(per_rank, *cfg["crop"], dtype=torch.long, device=device)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
                 for p, st in optimizer.state.items()}

    def body():
        with autocast(device, cfg["amp"], cache=False):
            logits = model(x)
        loss = criterion(logits.float(), y)
        loss.backward()
        optimizer.step()
        return loss

    graph, loss = None, None
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        x.normal_(generator=gen)
        y.random_(0, num_classes, generator=gen)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                optimizer.zero_grad(set_to_none=True)
                body()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            loss = body()
        with torch.no_grad(), autocast(device, cfg["amp"]):
            expected = criterion(model(x).float(), y)
        probe = model.classifier.weight.detach().clone()
        graph.replay()
        torch.cuda.synchronize(device)
        tol = 1e-3 if cfg["amp"] == "off" else 3e-2
        if not torch.allclose(loss, expected, rtol=tol, atol=tol) or torch.equal(probe, model.classifier.weight):
            raise RuntimeError(f"replayed step disagrees with eager (loss {float(loss):.5f} vs "
                               f"{float(expected):.5f}, or no weight update)")
    except Exception as e:  # CUDA graphs fail in many ways; training must not
        if rank == 0:
            print(f"warning: CUDA graph capture failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                  "training eagerly")
        graph = None
    finally:
        with torch.no_grad():
            model.load_state_dict(saved_model)  # copies in place: the graph keeps its addresses
            for p, st in optimizer.state.items():
                for k, v in st.items():
                    if torch.is_tensor(v):
                        v.copy_(saved_opt[p][k]) if p in saved_opt else v.zero_()
    if graph is None:
        optimizer.zero_grad(set_to_none=True)
        return None

    def step(images, labels):
        x.copy_(images, non_blocking=True)
        y.copy_(labels, non_blocking=True)
        graph.replay()
        return loss.detach()
    return step


def train_one_epoch(step, optimizer, batches, n_batches: int, device, cfg: dict, state: dict,
                    rank: int) -> float:
    """One pass over `batches`; poly learning rate set every iteration. Returns the mean loss."""
    from tqdm import tqdm
    total, count = torch.zeros((), device=device), 0
    bar = tqdm(batches, total=n_batches, desc=f"epoch {state['epoch'] + 1}/{cfg['epochs']}",
               disable=rank != 0 or not cfg["progress"], leave=False, dynamic_ncols=True)
    check_every = 25 if device.type == "cuda" else 1  # a finiteness check syncs the GPU
    for images, labels in bar:
        if state["iteration"] >= state["stop_at"]:
            break
        lr = cfg["lr"] * (1 - state["iteration"] / state["max_iters"]) ** cfg["poly_power"]
        set_lr(optimizer, lr)
        total += step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
        state["iteration"] += 1
        count += 1
        if count % check_every == 0 or count == n_batches:
            bar.set_postfix(loss=f"{_finite_mean(total, count, state):.4f}", lr=f"{lr:.2e}")
    return _finite_mean(total, max(1, count), state)


def _finite_mean(total: torch.Tensor, count: int, state: dict) -> float:
    mean = float(total) / count
    if not math.isfinite(mean):
        raise NonFiniteLoss(f"the loss became {mean} by iteration {state['iteration']} "
                            f"(epoch {state['epoch'] + 1}); stopped without saving")
    return mean


def memory_batches(memset: D.MemoryTrainSet, sampler, per_rank: int, epoch: int):
    indices = list(sampler)
    for b in range(len(indices) // per_rank):
        yield memset.batch(indices[b * per_rank:(b + 1) * per_rank], epoch)


def loader_batches(loader):
    for images, labels, _ in loader:
        yield images, labels


# ---- main ----------------------------------------------------------------------------------

def main(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    rank, world, device = init_distributed(cfg["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest kernels
    out = Path(cfg["out"])
    info = resolve_dataset(cfg["dataset"], cfg["classes"], cfg["ignore_index"])
    torch.manual_seed(cfg["seed"])
    if cfg["batch_size"] % world:
        raise ValueError(f"--batch-size {cfg['batch_size']} does not split over {world} processes")
    per_rank = cfg["batch_size"] // world

    resume_path = None
    if args.resume:
        resume_path = out / "last.pt" if args.resume == "auto" else Path(args.resume)
        if not resume_path.is_file():
            raise FileNotFoundError(f"--resume: {resume_path} does not exist")

    # data: statistics of the training list (cached next to the run) give the mean/std and weights
    root = Path(cfg["data_root"])
    train_list = info.split_path(root, cfg["train_split"])
    plain = D.SegDataset(root, train_list, info, make_spec("standard"), train=False)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        stats = D.dataset_stats(plain, cache_dir=out, workers=min(2, cfg["workers"] or 0),
                                progress=cfg["progress"])
    barrier()
    if rank != 0:
        stats = D.dataset_stats(plain, cache_dir=out, workers=0, progress=False)
    if cfg["preprocess"] == "original":
        mean = cfg["mean"] or [255 * v for v in reversed(stats["mean_rgb"])]  # BGR order, 0-255
        spec = make_spec("original", mean=mean)
    else:
        spec = make_spec("standard", mean=cfg["mean"] or stats["mean_rgb"], std=cfg["std"] or stats["std_rgb"])
    cfg["resolved_preprocess"] = spec
    train_set = D.SegDataset(root, train_list, info, spec, train=True, crop=cfg["crop"], seed=cfg["seed"])
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                 seed=cfg["seed"], drop_last=True)
    n_batches = len(sampler) // per_rank
    if n_batches == 0:
        raise ValueError(f"{len(train_set)} training images give no full batch of {per_rank} per process")
    if cfg["loader"] == "memory":
        memset = D.MemoryTrainSet(train_set, device, progress=cfg["progress"] and rank == 0)
    else:
        g = torch.Generator().manual_seed(cfg["seed"])
        loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, num_workers=cfg["workers"],
                            drop_last=True, pin_memory=device.type == "cuda",
                            worker_init_fn=D.seed_worker, generator=g)
    val_loader = None
    if cfg["val_split"] and cfg["val_split"] != "none":
        val_set = D.SegDataset(root, info.split_path(root, cfg["val_split"]), info, spec, train=False)
        val_loader = make_eval_loader(val_set, rank, world, workers=min(cfg["workers"], 2))

    # model, loss, optimiser
    model = CGNet(info.num_classes, m=cfg["m"], n=cfg["n"], dropout=cfg["dropout"]).to(device)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    weight = torch.tensor(stats["class_weights"], dtype=torch.float32, device=device) if cfg["class_weights"] else None
    criterion = nn.CrossEntropyLoss(weight=weight, ignore_index=info.ignore_index)
    use_graph = cfg["cuda_graph"] is not False and device.type == "cuda" and world == 1 and not cfg["compile"] \
        and cfg["amp"] != "fp16" and cfg["dropout"] == 0
    if cfg["cuda_graph"] is True and not use_graph and rank == 0:
        print("note: --cuda-graph needs CUDA, one process, no --compile, no fp16 and no dropout; training eagerly")
    if use_graph:  # a tensor learning rate lets the captured step see each new value
        optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(cfg["lr"], device=device),
                                     betas=tuple(cfg["betas"]), eps=cfg["eps"],
                                     weight_decay=cfg["weight_decay"], capturable=True, foreach=True)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"],
                                     weight_decay=cfg["weight_decay"], fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=cfg["amp"] == "fp16")
    max_iters = cfg["epochs"] * n_batches
    state = {"epoch": 0, "iteration": 0, "max_iters": max_iters, "best_miou": -1.0, "history": []}

    if resume_path is not None:
        _, _, ckpt = load_checkpoint(resume_path)
        load_state_into(model, ckpt["model"], where=str(resume_path))
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        state.update({k: ckpt["train_state"][k] for k in ("epoch", "iteration", "best_miou", "history")})
        if "planned_epochs" in ckpt["train_state"]:  # a time-budgeted run already cut its schedule
            state["planned_epochs"] = cfg["epochs"] = ckpt["train_state"]["planned_epochs"]
            max_iters = cfg["epochs"] * n_batches
            state["max_iters"] = max_iters
        if ckpt["train_state"]["max_iters"] != max_iters:
            raise ValueError(f"{resume_path} was trained with a schedule of {ckpt['train_state']['max_iters']} "
                             f"iterations, this run has {max_iters}: keep --epochs/--batch-size as they were")
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    state["stop_at"] = min(max_iters, cfg["max_iters"] or max_iters)

    model_without_ddp = model
    if world > 1:
        if cfg["sync_bn"]:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model_without_ddp = model
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train_model = compile_or_eager(model, cfg, device, per_rank, rank) if cfg["compile"] else model
    train_model.train()
    step = make_graphed_step(model, criterion, optimizer, device, cfg, per_rank, info.num_classes, rank) \
        if use_graph else None
    if step is None:
        step = make_eager_step(train_model, criterion, optimizer, scaler, device, cfg)
    elif rank == 0:
        print("training step captured as a CUDA graph")

    if rank == 0:
        (out / "config.json").write_text(json.dumps(cfg, indent=1))
        print(json.dumps(cfg, indent=1))
        print(f"{len(train_set)} training images, {n_batches} iterations per epoch, {max_iters} in all"
              + (f", stopping at {state['stop_at']}" if state["stop_at"] < max_iters else ""))
    writer = _tensorboard(out) if rank == 0 else None

    meta = make_meta(model_without_ddp, preprocess=spec, classes=list(info.classes),
                     palette=[list(c) for c in info.palette], ignore_index=info.ignore_index,
                     dataset=info.name, config=cfg)
    # wall-clock time continues across resumes, for time-to-accuracy curves and the time budget
    start = time.time() - (state["history"][-1]["elapsed_s"] if state["history"] else 0.0)
    while state["epoch"] < cfg["epochs"] and state["iteration"] < state["stop_at"]:
        epoch = state["epoch"]
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        batches = memory_batches(memset, sampler, per_rank, epoch) if cfg["loader"] == "memory" \
            else loader_batches(loader)
        t0 = time.time()
        try:
            loss = train_one_epoch(step, optimizer, batches, n_batches, device, cfg, state, rank)
        except NonFiniteLoss as e:
            last = out / "last.pt"
            where = f"the last good checkpoint is {last} (epoch {epoch}); --resume continues from it" \
                if last.exists() and epoch > 0 else "no checkpoint was written yet"
            hint = " (try --amp off)" if cfg["amp"] != "off" else " (try a lower --lr)"
            raise NonFiniteLoss(f"{e}; {where}{hint}") from None
        state["epoch"] += 1
        record = {"epoch": state["epoch"], "iteration": state["iteration"], "loss": loss,
                  "lr": float(optimizer.param_groups[0]["lr"]), "epoch_s": time.time() - t0,
                  "elapsed_s": time.time() - start}
        last_epoch = state["epoch"] == cfg["epochs"] or state["iteration"] >= state["stop_at"]
        if val_loader is not None and (state["epoch"] % cfg["val_every"] == 0 or last_epoch):
            scores = evaluate(model_without_ddp, val_loader, info, device, amp=cfg["amp"],
                              channels_last=cfg["channels_last"], progress=cfg["progress"] and rank == 0)
            record.update(val_miou=scores["miou"], val_pixel_acc=scores["pixel_acc"])
            if rank == 0:
                print(f"epoch {state['epoch']}: loss {loss:.4f}  val mIoU {100 * scores['miou']:.2f}")
            if scores["miou"] > state["best_miou"]:
                state["best_miou"] = scores["miou"]
                if rank == 0:
                    save_checkpoint(out / "best.pt", model_without_ddp, meta, scores=scores,
                                    train_state=_train_state(state))
        elif rank == 0:
            print(f"epoch {state['epoch']}: loss {loss:.4f}")
        state["history"].append(record)
        if cfg["time_budget"] and state["epoch"] == 2 and "planned_epochs" not in state:
            fit_schedule_to_budget(cfg, state, n_batches, rank)
        if rank == 0:
            save_checkpoint(out / "last.pt", model_without_ddp, meta, optimizer=optimizer.state_dict(),
                            scaler=scaler.state_dict(), train_state=_train_state(state), rng=_rng_state(device))
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if writer is not None:
                for k, v in record.items():
                    writer.add_scalar(k, v, state["epoch"])
    if rank == 0:
        from .plot import plot_history
        plot_history(state["history"], out / "curve.png")
        print(f"done in {time.time() - start:.0f} s; run folder {out} (last.pt, best.pt, log.jsonl, curve.png)")
        if writer is not None:
            writer.close()
    if world > 1:
        dist.destroy_process_group()
    return 0


def fit_schedule_to_budget(cfg: dict, state: dict, n_batches: int, rank: int) -> None:
    """Cut the epochs to what fits in cfg['time_budget'] minutes: the time left divided by the
    latest epoch's time (the first one carries compilation and warm-up) plus 15% for validation,
    checkpoints and later epochs running slower (on an H200 the first epochs took 1.2 s, the
    average over 300 epochs 1.39 s)."""
    last = state["history"][-1]
    per_epoch = 1.15 * last["epoch_s"]
    left = cfg["time_budget"] * 60 - last["elapsed_s"]
    fit = [state["epoch"] + max(0, int(left / per_epoch))]
    if dist.is_available() and dist.is_initialized():  # every rank must run the same schedule
        dist.broadcast_object_list(fit, src=0)
    fit = fit[0]
    if fit < cfg["epochs"]:
        if rank == 0:
            print(f"time budget {cfg['time_budget']} min at {per_epoch:.1f} s/epoch: {fit} of "
                  f"{cfg['epochs']} epochs fit; the poly schedule now spans {fit} epochs")
        cfg["epochs"] = fit
        state["max_iters"] = fit * n_batches
        state["stop_at"] = min(state["max_iters"], cfg["max_iters"] or state["max_iters"])
    state["planned_epochs"] = cfg["epochs"]


def compile_or_eager(model, cfg: dict, device, per_rank: int, rank: int):
    """torch.compile, tried on one dummy step first; eager (with a warning) if it fails."""
    compiled = torch.compile(model)
    try:
        x = torch.zeros(per_rank, 3, *cfg["crop"], device=device)
        with autocast(device, cfg["amp"]):
            compiled(x).float().mean().backward()
        model.zero_grad(set_to_none=True)
        return compiled
    except Exception as e:  # compilers fail in many ways; training must not
        if rank == 0:
            print(f"warning: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                  "training eagerly")
        model.zero_grad(set_to_none=True)
        return model


def _train_state(state: dict) -> dict:
    return {k: state[k] for k in ("epoch", "iteration", "max_iters", "best_miou", "history", "planned_epochs")
            if k in state}


def _rng_state(device: torch.device) -> dict:
    # the augmentation and the shuffling are functions of (seed, epoch, index); only dropout
    # draws from the global generators
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tb"))
