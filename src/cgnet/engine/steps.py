"""The training step in its three forms: eager (with autocast and a GradScaler), torch.compile'd,
and captured once as a CUDA graph. Each is a function (images, labels) -> loss tensor that also
takes the optimiser step; `set_lr` updates the learning rate the step will use."""
from __future__ import annotations

import torch

from ..common import autocast
from .config import TrainConfig
from .distributed import is_main_process


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):  # captured in a CUDA graph: update in place
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def make_eager_step(model, criterion, optimizer, scaler, device, cfg: TrainConfig):
    """forward (autocast), loss in fp32, backward, optimiser step; returns the loss tensor."""
    def step(images, labels):
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, cfg.amp):
            logits = model(images)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()
    return step


def make_graphed_step(model, criterion, optimizer, device, cfg: TrainConfig, per_rank: int, num_classes: int):
    """The whole training step captured once as a CUDA graph and replayed each iteration (it is
    hundreds of small kernels, so launching them costs more than running them). The capture is
    checked against an eager step on the same data; on any failure this returns None and training
    runs eagerly. Model and optimiser state are restored after the warm-up steps the capture needs."""
    x = torch.zeros(per_rank, 3, *cfg.crop, device=device)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.zeros(per_rank, *cfg.crop, dtype=torch.long, device=device)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
                 for p, st in optimizer.state.items()}

    def body():
        with autocast(device, cfg.amp, cache=False):
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
        with torch.no_grad(), autocast(device, cfg.amp):
            expected = criterion(model(x).float(), y)
        probe = model.classifier.weight.detach().clone()
        graph.replay()
        torch.cuda.synchronize(device)
        tol = 1e-3 if cfg.amp == "off" else 3e-2
        if not torch.allclose(loss, expected, rtol=tol, atol=tol) or torch.equal(probe, model.classifier.weight):
            raise RuntimeError(f"replayed step disagrees with eager (loss {float(loss):.5f} vs "
                               f"{float(expected):.5f}, or no weight update)")
    except Exception as e:  # CUDA graphs fail in many ways; training must not
        if is_main_process():
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


def compile_or_eager(model, cfg: TrainConfig, device, per_rank: int):
    """torch.compile, tried on one dummy step first; eager (with a warning) if it fails."""
    compiled = torch.compile(model)
    try:
        x = torch.zeros(per_rank, 3, *cfg.crop, device=device)
        with autocast(device, cfg.amp):
            compiled(x).float().mean().backward()
        model.zero_grad(set_to_none=True)
        return compiled
    except Exception as e:  # compilers fail in many ways; training must not
        if is_main_process():
            print(f"warning: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                  "training eagerly")
        model.zero_grad(set_to_none=True)
        return model
