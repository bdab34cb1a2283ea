"""The training step in its forms: eager (with autocast and a GradScaler), with a torch.compile'd
model, captured once as a CUDA graph, and the whole step (forward, loss, backward, Adam) compiled
with inductor and, on CUDA, captured as one CUDA graph. Each is a function (images, labels) ->
loss tensor that also takes the optimiser step; `set_lr` updates the learning rate it will use.
The steps need only a `StepSpec` of the run's settings; which one a run takes, and what it falls
back to, is train.py's `choose_step`."""
from __future__ import annotations

import time

import torch

from dataclasses import dataclass

from ..common import autocast
from .distributed import is_main_process


@dataclass(frozen=True)
class StepSpec:
    """What a training step needs of the run's settings (a `TrainConfig` has these fields too)."""
    amp: str = "off"                    # autocast precision: off, bf16, fp16
    channels_last: bool = True          # NHWC inputs
    crop: tuple[int, int] = (360, 360)  # the batch's H x W (static buffers, checks, warm-ups)


def single_program(amp: str, dropout: float, world_size: int) -> bool:
    """Whether the training step may run as one captured or compiled program (the eager step as a
    CUDA graph, or the whole step compiled): one process (DDP's gradient hooks do not capture),
    no fp16 (the GradScaler syncs with the host each step) and no dropout (compiled random masks
    differ from eager ones, so no check against eager could pass)."""
    return world_size == 1 and amp != "fp16" and dropout == 0


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):  # captured in a CUDA graph: update in place
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def make_eager_step(model, criterion, optimizer, scaler, device, spec: StepSpec):
    """forward (autocast), loss in fp32, backward, optimiser step; returns the loss tensor. Tensors
    after the labels (a distillation teacher's soft targets) go to the criterion too."""
    def step(images, labels, *extra):
        if spec.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, spec.amp):
            logits = model(images)
        loss = criterion(logits.float(), labels, *extra)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()
    return step


def step_body(model, criterion, optimizer, device, spec: StepSpec):
    """forward (autocast without its weight cache, which a capture cannot hold), loss in fp32,
    backward, optimiser step (none when `optimizer` is None): the function that CUDA graphs
    capture and inductor compiles. The caller clears the gradients between calls."""
    def body(images, labels):
        with autocast(device, spec.amp, cache=False):
            logits = model(images)
        loss = criterion(logits.float(), labels)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        return loss.detach()
    return body


def capture_graph(run, device, spec: StepSpec, per_rank: int, num_classes: int):
    """Static input buffers filled with a seeded random batch, three warm-up calls of
    `run(x, y)` on a side stream (they compile whatever needs compiling), then one call captured
    as a CUDA graph. Returns (graph, the captured call's output, x, y); replaying the graph after
    copying a batch into x and y runs the step again. The warm-up steps change model and
    optimiser state: callers restore it. `run.zero_grad()` clears the gradients between calls."""
    x = torch.zeros(per_rank, 3, *spec.crop, device=device)
    if spec.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.zeros(per_rank, *spec.crop, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    x.normal_(generator=gen)
    y.random_(0, num_classes, generator=gen)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            run.zero_grad()
            run(x, y)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    run.zero_grad()
    with torch.cuda.graph(graph):
        output = run(x, y)
    return graph, output, x, y


def make_graphed_step(model, criterion, optimizer, device, spec: StepSpec, per_rank: int, num_classes: int):
    """The whole training step captured once as a CUDA graph and replayed each iteration (it is
    hundreds of small kernels, so launching them costs more than running them). The capture is
    checked against an eager step on the same data; on any failure this returns None and training
    runs eagerly. Model and optimiser state are restored after the warm-up steps the capture needs
    (`_Snapshot`)."""
    snapshot = _Snapshot(model, optimizer)
    body = step_body(model, criterion, optimizer, device, spec)
    body.zero_grad = lambda: optimizer.zero_grad(set_to_none=True)

    graph = None
    try:
        graph, loss, x, y = capture_graph(body, device, spec, per_rank, num_classes)
        with torch.no_grad(), autocast(device, spec.amp):
            expected = criterion(model(x).float(), y)
        probe = model.classifier.weight.detach().clone()
        graph.replay()
        torch.cuda.synchronize(device)
        tol = 1e-3 if spec.amp == "off" else 3e-2
        if not torch.allclose(loss, expected, rtol=tol, atol=tol) or torch.equal(probe, model.classifier.weight):
            raise RuntimeError(f"replayed step disagrees with eager (loss {float(loss):.5f} vs "
                               f"{float(expected):.5f}, or no weight update)")
    except Exception as e:  # CUDA graphs fail in many ways; training must not
        if is_main_process():
            first = (str(e).splitlines() or [""])[0][:200]
            print(f"warning: CUDA graph capture failed ({type(e).__name__}: {first}); training eagerly")
        graph = None
    finally:
        snapshot.restore()  # in place: the graph keeps its addresses
    if graph is None:
        return None

    def step(images, labels):
        x.copy_(images, non_blocking=True)
        y.copy_(labels, non_blocking=True)
        graph.replay()
        return loss.detach()
    return step


def compile_or_eager(model, spec: StepSpec, device, per_rank: int, criterion=None, optimizer=None,
                     num_classes: int = 0):
    """torch.compile, tried on one dummy step first and, given the criterion and optimiser, checked
    against an eager step (`check_against_eager`: loss, gradient, update); eager (with a warning)
    if it fails or disagrees."""
    compiled = torch.compile(model)
    try:
        x = torch.zeros(per_rank, 3, *spec.crop, device=device)
        with autocast(device, spec.amp):
            compiled(x).float().mean().backward()
        model.zero_grad(set_to_none=True)
        problem = None
        if criterion is not None:
            device = torch.device(device)
            step = make_eager_step(compiled, criterion, optimizer, torch.amp.GradScaler(device.type, enabled=False),
                                   device, spec)
            disagreement = check_against_eager(step, model, criterion, optimizer, device, spec, per_rank, num_classes)
            if disagreement:
                problem = f"the compiled model disagrees with eager: {disagreement}"
    except Exception as e:  # compilers fail in many ways; training must not
        problem = f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    model.zero_grad(set_to_none=True)
    if problem is None:
        return compiled
    if is_main_process():
        print(f"warning: {problem}; training eagerly")
    return model


# ---- the whole step compiled -----------------------------------------------------------------

# Inductor options of the compiled step on the CPU. With torch 2.13's C++ backend, CGNet's forward,
# cross-entropy and backward in one graph (batch 8, crop 64 and up) came out with ALL gradients
# zero: the generated backward ran the bilinear up-sampling's gradient (scatter-adds of the
# log-softmax gradient into zero-filled buffers) in its LAST kernel, after the FIRST kernel had
# summed those (still zero) buffers into the classifier's gradient. The node order comes from
# inductor's peak-memory reordering, which runs after fusion; without it the same kernels run
# in dependency order and the gradients agree with eager (M3N21, crop 360, batch 8: 1.0e-3 of
# the gradient's norm, as eager fp32 against fp64: 9.3e-4). Horizontal fusion off
# (cpp.max_horizontal_fusion_size=1) also avoided it, with more, smaller kernels.
# The check against eager stays the guard. See scripts/compiled_gradient_check.py.
CPU_INDUCTOR_OPTIONS = {"reorder_for_peak_memory": False}


def configure_optimizer(optimizer, device, tensor_lr: bool) -> None:
    """Make the optimiser's learning rate (and Adam's implementation flags) fit how the step runs.

    tensor_lr: a 0-d float32 tensor on `device`, which a compiled or captured step reads each
    call, so `set_lr` reaches it without recompiling; on CUDA with `capturable` steps (no host
    sync). Otherwise a float, and on CUDA the fused kernel (what train.py builds for eager steps).
    Also repairs an optimiser restored from a checkpoint of the other kind of run: its groups
    carry that run's lr and flags, and checkpoints load onto the CPU (a CPU lr tensor would be
    read once at capture and frozen into a CUDA graph)."""
    cuda = torch.device(device).type == "cuda"
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        if tensor_lr:
            group["lr"] = torch.tensor(lr, dtype=torch.float32, device=device)
            flags = {"capturable": cuda, "foreach": True if cuda else None, "fused": False}
        else:
            group["lr"] = lr
            flags = {"capturable": False, "foreach": None, "fused": cuda}
        for key, value in flags.items():
            if key in group:
                group[key] = value
        on_device = group.get("capturable") or group.get("fused")
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if torch.is_tensor(state.get("step")):  # Adam keeps its step count where the flags want it
                state["step"] = state["step"].to(p.device if on_device else "cpu", torch.float32)


class _Snapshot:
    """Model (parameters and BN buffers) and optimiser state, restored in place: a captured
    CUDA graph keeps the addresses it was captured with."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.state = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
                      for p, st in optimizer.state.items()}

    def restore(self) -> None:
        with torch.no_grad():
            self.model.load_state_dict(self.weights)
            for p, st in self.optimizer.state.items():
                for k, v in st.items():
                    if torch.is_tensor(v):  # state created since the snapshot: zero = fresh for Adam
                        v.copy_(self.state[p][k]) if p in self.state else v.zero_()
        self.optimizer.zero_grad(set_to_none=True)

    def saved_moments(self, params) -> torch.Tensor:
        """beta1 * the saved exp_avg of each parameter (zeros where it had none): the part of the
        next first moment that does not come from the new gradient."""
        parts = []
        for p in params:
            saved = self.state.get(p, {}).get("exp_avg")
            beta1 = next(g["betas"][0] for g in self.optimizer.param_groups if any(q is p for q in g["params"]))
            parts.append((float(beta1) * saved).flatten().float() if saved is not None
                         else torch.zeros(p.numel(), device=p.device))
        return torch.cat(parts)


def check_against_eager(step, model, criterion, optimizer, device, spec: StepSpec, per_rank: int,
                        num_classes: int) -> str | None:
    """One step of `step` and one eager step from the same state on the same (seeded random)
    batch. Returns None when they agree, else why not: the losses differ by more than `loss_tol`;
    `step` did not update the weights; its gradient differs from the eager one by more than
    `grad_tol` of the eager gradient's norm (read from Adam's first moment, which holds
    (1 - beta1) * gradient on top of the saved moment, wherever the step keeps its .grad); or its
    weight update points elsewhere (cosine < 0.5) or is another size (norm ratio outside 0.8-1.25).
    The update itself is compared loosely: Adam's first update is about lr * sign(gradient) per
    weight, so every weight whose gradient is ~0 may flip sign with rounding (bf16 against fp32
    gives a cosine of ~0.9 for CGNet). Model and optimiser state are restored afterwards."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(per_rank, 3, *spec.crop, device=device, generator=gen)
    y = torch.randint(0, num_classes, (per_rank, *spec.crop), device=device, generator=gen)
    params = [p for p in model.parameters() if p.requires_grad]
    snapshot = _Snapshot(model, optimizer)
    before = _flat(params)
    try:
        eager = make_eager_step(model, criterion, optimizer, torch.amp.GradScaler(device.type, enabled=False),
                                device, spec)
        expected = float(eager(x, y))
        eager_update, eager_moment = _flat(params) - before, _first_moments(optimizer, params)
        snapshot.restore()
        got = float(step(x, y))
        update, moment = _flat(params) - before, _first_moments(optimizer, params)
    finally:
        snapshot.restore()
    # fp32: the same sums in another order (~1e-5 of the gradient's norm). bf16/fp16: eager
    # rounds after every op, inductor after each fused kernel; for CGNet bf16 against fp32
    # gradients differ by ~0.2 of their norm. A broken gradient differs by ~1 (zero) or more.
    loss_tol, grad_tol = (1e-3, 2e-2) if spec.amp == "off" else (3e-2, 0.5)
    if not abs(got - expected) <= loss_tol * (1 + abs(expected)):
        return f"loss {got:.5f} vs eager {expected:.5f}"
    if not bool(update.abs().max() > 0):
        return "no weight update"
    if moment is not None and eager_moment is not None:
        saved = snapshot.saved_moments(params)
        eager_grad = eager_moment - saved  # both (1 - beta1) * gradient: the ratio is what counts
        rel = float((moment - eager_moment).norm() / eager_grad.norm().clamp_min(1e-12))
        if not rel <= grad_tol:
            return f"gradient differs from eager by {rel:.3f} of its norm"
    cos = float(torch.nn.functional.cosine_similarity(update, eager_update, dim=0))
    ratio = float(update.norm() / eager_update.norm().clamp_min(1e-12))
    if not (cos >= 0.5 and 0.8 <= ratio <= 1.25):
        return f"weight update differs from eager (cosine {cos:.3f}, norm ratio {ratio:.3f})"
    return None


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().flatten().float() for t in tensors])


def _first_moments(optimizer, params) -> torch.Tensor | None:
    """Adam's exp_avg of every parameter, flattened; None for other optimisers."""
    states = [optimizer.state.get(p, {}) for p in params]
    if not all(torch.is_tensor(st.get("exp_avg")) for st in states):
        return None
    return _flat([st["exp_avg"] for st in states])


def make_compiled_step(model, criterion, optimizer, scaler, device, spec: StepSpec, per_rank: int,
                       num_classes: int, *, cuda_graph: bool | None = None, mode: str | None = None,
                       check: bool = True, compile_optimizer: bool = True, options: dict | None = None):
    """Forward (autocast), fp32 loss, backward and the Adam step as one torch.compile'd function:
    inductor fuses the BN/PReLU/gating/concat/add kernels of the forward and the backward and the
    optimiser's per-parameter updates. Dynamo splits it at `backward()` and around the optimiser
    step; on CUDA (cuda_graph, default on) the compiled pieces are warmed up and then captured
    together as one CUDA graph, replayed each step (no kernel launches, no guard checks from
    Python). `mode` goes to torch.compile; "reduce-overhead" lets inductor capture its own graphs
    instead (then no capture here). The learning rate becomes a device tensor (see
    `configure_optimizer`), so the poly schedule's `set_lr` does not recompile.

    The step is checked against an eager step (`check_against_eager`); a compile or capture
    failure or a disagreement prints one warning and returns None, with model and optimiser as
    they were (the caller takes the next step of its fallback chain: train.py's `choose_step`).
    GradScaler (fp16) needs a host sync each step, so fp16 returns None too. The returned
    function has `.kind` (what runs) and `.compile_s` (seconds spent compiling, capturing and
    checking).

    `compile_optimizer=False` compiles forward, loss and backward only and runs Adam's update
    eagerly after them (inside the same CUDA graph on CUDA, as the CUDA-graph step does), so
    inductor compiles no optimiser graphs; its compile time and speed on a GPU are still to be
    measured (`benchmarks/train_throughput.py` mode `compiled-fwdbwd`, column `setup s`). Its
    kind then reads `compiled-fwdbwd`.

    `options`: inductor options for torch.compile (not together with `mode`). None: on the CPU
    `CPU_INDUCTOR_OPTIONS` (the work-around for zero gradients described there), elsewhere none;
    `{}` compiles with inductor's defaults."""
    t0 = time.perf_counter()
    graph_wanted = device.type == "cuda" and cuda_graph is not False and mode != "reduce-overhead"

    def fall_back(reason: str):
        if is_main_process():
            print(f"warning: compiling the training step failed ({reason}); using the next step of the chain")
        return None

    if scaler is not None and scaler.is_enabled():
        return fall_back("fp16 needs GradScaler, which syncs with the host every step")
    configure_optimizer(optimizer, device, tensor_lr=True)

    name = "compiled" if compile_optimizer else "compiled-fwdbwd"
    if options is None and device.type == "cpu" and mode is None:
        options = CPU_INDUCTOR_OPTIONS
    how = {"mode": mode, "options": dict(options) if options else None}  # both: torch.compile refuses
    snapshot = _Snapshot(model, optimizer)
    try:
        if compile_optimizer:
            compiled = torch.compile(step_body(model, criterion, optimizer, device, spec), **how)
        else:
            compiled_grads = torch.compile(step_body(model, criterion, None, device, spec), **how)

            def compiled(images, labels):
                loss = compiled_grads(images, labels)
                optimizer.step()
                return loss
        if graph_wanted:
            step = _capture(compiled, model, optimizer, device, spec, per_rank, num_classes)
            step.kind = name + "+cudagraph"
        else:
            def step(images, labels):
                if spec.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                optimizer.zero_grad(set_to_none=True)
                if mode == "reduce-overhead":  # a new iteration: inductor's graphs may reuse their outputs
                    torch.compiler.cudagraph_mark_step_begin()
                    return compiled(images, labels).clone()
                return compiled(images, labels)
            step.kind = name + ("+inductor-cudagraphs" if mode == "reduce-overhead" else "")
        snapshot.restore()
        problem = check_against_eager(step, model, criterion, optimizer, device, spec, per_rank,
                                      num_classes) if check else None
        if problem is not None:
            raise RuntimeError(f"the compiled step disagrees with eager: {problem}")
    except Exception as e:  # compilers and captures fail in many ways; training must not
        snapshot.restore()
        return fall_back(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    step.compile_s = time.perf_counter() - t0
    return step


def _capture(compiled, model, optimizer, device, spec: StepSpec, per_rank: int, num_classes: int):
    """Warm the compiled step up on a side stream (compiling it), then capture one call of it as
    a CUDA graph with static input buffers; returns the replaying step (state to be restored)."""
    def run(x, y):
        return compiled(x, y)
    run.zero_grad = lambda: optimizer.zero_grad(set_to_none=True)
    graph, loss, x, y = capture_graph(run, device, spec, per_rank, num_classes)

    def step(images, labels):
        x.copy_(images, non_blocking=True)
        y.copy_(labels, non_blocking=True)
        graph.replay()
        return loss
    step.graph = graph  # keeps the graph (and its memory pool) alive with the step
    return step
