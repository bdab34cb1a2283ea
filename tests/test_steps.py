"""The training steps of cgnet.engine.steps on the CPU: the whole step compiled by inductor against
the eager step, the learning rate reaching the compiled step, the fallbacks, the check against
eager that guards the compiled (and on CUDA captured) step, and `cgnet bench`'s CUDA-only path."""
import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

import cgnet.engine.steps as steps
from cgnet.cli import main, make_parser
import cgnet.deploy.bench as bench
from cgnet.deploy.bench import argmax_agreement, select_paths
from cgnet.engine.config import TrainConfig
from cgnet.engine.resume import compare_for_resume
from cgnet.engine.steps import check_against_eager, configure_optimizer, make_compiled_step, make_eager_step, set_lr
from cgnet.engine.train import whole_step_compile
from helpers.steps import CLASSES, build, no_scaler

CPU = torch.device("cpu")
CFG = TrainConfig(crop=(32, 32), amp="off", channels_last=True, batch_size=2)
BATCH = 2


def batches(count, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, 3, 32, 32, generator=gen),
             torch.randint(0, CLASSES + 1, (BATCH, 32, 32), generator=gen)) for _ in range(count)]


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.fixture(scope="module", params=[True, False], ids=["whole-step", "fwdbwd"])
def compiled(request):
    """One compiled step per variant for the module (inductor on two CPU cores takes tens of
    seconds): the whole step, and forward + loss + backward with Adam run eagerly after them.
    Dynamo's caches are cleared first: graphs compiled by other test modules in this process (with
    other inductor options) must not be reused here."""
    torch._dynamo.reset()
    model, criterion, optimizer = build(prelu_slope=SMOOTH_SLOPE)
    step = make_compiled_step(model, criterion, optimizer, no_scaler(), CPU, CFG, BATCH, CLASSES,
                              compile_optimizer=request.param)
    assert step.kind == ("compiled" if request.param else "compiled-fwdbwd"), \
        "the compiled step fell back (see the warning above)"
    return model, criterion, optimizer, step


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def optimizer_moments(optimizer) -> torch.Tensor:
    return torch.cat([torch.cat([st["exp_avg"].flatten(), st["exp_avg_sq"].flatten()])
                      for st in optimizer.state.values()])


# Tolerances of the compiled-vs-eager step comparison, from the arithmetic they bound.
# Both steps compute the same function; inductor's fused kernels only sum in another order. A
# reassociated fp32 sum of n terms differs by about sqrt(n) * eps (eps = 2**-24 = 6e-8) relative to
# its terms, at worst n * eps. The largest sums here: the loss over 2 x 32 x 32 = 2048 pixels, and
# each weight gradient over 2 x 16 x 16 = 512 positions, propagated back through ~30 layers whose
# input gradients sum over up to 64 x 9 = 576 terms: sqrt(30 x 576) x eps = 8e-6, with 10x margin
# 1e-4 (the loss, each gradient relative to its tensor's scale, and Adam's moments).
# Each step starts both from the same weights and optimiser state, so the differences cannot
# compound over steps.
LOSS_RTOL, GRAD_RTOL, MOMENTS_RTOL = 1e-4, 1e-4, 1e-4
# These bound rounding, and rounding is all there is only where the step is smooth. A PReLU with
# slope a has a kink at 0: an input within rounding of zero takes the derivative 1 on one side and a
# on the other, which moves every gradient behind it by a whole term, (1 - a) x its share, not by
# rounding (at the default slope 0.25, one such activation moved Adam's moments by 9e-4 at one of 24
# steps on an AVX-512 CPU). The compared model therefore starts with every slope at 1 (linear, no
# kink); Adam moves a slope by at most about lr per step, so over 24 steps 1 - a <= 0.024, 3% of the
# default's jump. The graph compiled and compared is the same; only the starting weights differ.
SMOOTH_SLOPE = 1.0
# The update is not compared with eager's weight by weight, nor as one norm: Adam divides each
# gradient by its running RMS, so a weight whose gradient is within rounding of zero moves by about
# +-lr either way, and how many such weights a CPU's summation order flips is not a bound (one flip
# among 0.26M weights moved the norm of the difference by 6e-4). Instead:
# - the gradients are compared through Adam's moments (a norm: well conditioned, no division);
# - the compiled run's update must be Adam's formula applied to its own moments and learning rate,
#   weight by weight (well conditioned too: the same moments on both sides). That is where a stale
#   or wrong learning rate, bias correction or update shows. Its tolerance is the formula's own
#   rounding: about 6 roundings in the chain (bias corrections, sqrt, eps, division, step size),
#   16 u with margin (u = 2**-24); the bias corrections 1 - beta**t, computed in fp32 from a tensor
#   step by the compiled Adam, cancel: their relative error is the power's (a few u, taken as 4 u)
#   times beta**t / (1 - beta**t), 999 for beta2 at t = 1; and the stored weight p - update is
#   rounded to fp32, half an ulp of the weight (u |p| at most; 2 u |p| with margin);
# - the weights whose update changed direction are only counted: a flip needs a gradient within its
#   rounding (GRAD_RTOL x the RMS of its tensor) of zero, a share of at most 2 x GRAD_RTOL x the
#   density at zero of the gradients in units of 1/RMS (0.40 Gaussian, 0.71 Laplace: at most 1).
#   A PReLU input within rounding of zero (slope 1 on one side, its learnt slope on the other)
#   moves the gradients it feeds by one term: 7 flips (3e-5 of the weights) were seen at one such
#   step, inside the share. The share depends on the model and data, not on the CPU.
FORMULA_ROUNDINGS, POWER_ROUNDINGS, FLIP_SHARE = 16, 4, 2 * GRAD_RTOL
U32 = 2.0 ** -24


def adam_formula_misses(before: torch.Tensor, model, optimizer) -> int:
    """How many weights moved by other than Adam's formula on the optimiser's own moments, lr and
    step count (computed in float64), beyond the formula's fp32 rounding (the comment above)."""
    group = optimizer.param_groups[0]
    (beta1, beta2), lr, eps = group["betas"], float(group["lr"]), group["eps"]
    after, before = flat(model).double(), before.double()
    misses = start = 0
    for p in model.parameters():
        n, state = p.numel(), optimizer.state[p]
        t = float(state["step"])
        m, v = state["exp_avg"].flatten().double(), state["exp_avg_sq"].flatten().double()
        update = -(lr / (1 - beta1 ** t)) * m / (v.sqrt() / (1 - beta2 ** t) ** 0.5 + eps)
        relative = FORMULA_ROUNDINGS + POWER_ROUNDINGS * (beta1 ** t / (1 - beta1 ** t) + beta2 ** t / (1 - beta2 ** t))
        weight = after[start:start + n]
        tolerance = relative * U32 * update.abs() + 2 * U32 * weight.abs()
        misses += int(((weight - before[start:start + n]) - update).abs().gt(tolerance).sum())
        start += n
    return misses


@pytest.mark.compile
def test_compiled_step_matches_eager_step_by_step_over_24_poly_steps(compiled):
    model, _, optimizer, step = compiled
    twin, criterion, twin_opt = build(prelu_slope=SMOOTH_SLOPE)
    assert torch.equal(flat(twin), flat(model))  # the check against eager left the weights as built
    eager = make_eager_step(twin, criterion, twin_opt, no_scaler(), CPU, CFG)
    for i, (x, y) in enumerate(batches(24)):
        # the eager twin starts from the compiled run's weights, BN statistics and Adam state
        twin.load_state_dict(model.state_dict())
        twin_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        # the compiled-fwdbwd step runs the eager Adam with the lr as an fp32 tensor (as the twin
        # then does); the whole compiled step's Adam against the twin's Python-float lr differs by
        # ~1e-7 relative per update, inside the tolerances
        configure_optimizer(twin_opt, CPU, tensor_lr=step.kind == "compiled-fwdbwd")
        lr = 1e-3 * (1 - i / 24) ** 0.9
        set_lr(optimizer, lr)
        set_lr(twin_opt, lr)
        before = flat(model).clone()
        expected, got = float(eager(x, y)), float(step(x, y))
        assert got == pytest.approx(expected, rel=LOSS_RTOL), f"step {i}: loss"
        assert adam_formula_misses(before, model, optimizer) == 0, f"step {i}: the update is not Adam's"
        ours, eager_update = flat(model) - before, flat(twin) - before
        flips = int(((ours > 0) != (eager_update > 0)).sum())
        assert flips <= FLIP_SHARE * ours.numel(), f"step {i}: {flips} updates changed direction"
        moments = relative_difference(optimizer_moments(optimizer), optimizer_moments(twin_opt))
        assert moments < MOMENTS_RTOL, f"step {i}: Adam's moments differ by {moments:.3g}"
        for (name, a), b in zip(twin.state_dict().items(), model.state_dict().values()):
            if not a.is_floating_point():
                assert torch.equal(a, b), f"step {i}: {name}"  # BN's batch counters
    assert all(float(st["step"]) == 24 for st in optimizer.state.values())


def test_the_step_comparison_catches_a_stale_learning_rate():
    # the smallest defect the comparison above must see: an update made with the previous lr
    # (consecutive poly steps differ by at least 1 - (1 - 1/24) ** 0.9 = 3.8% here), after a few
    # steps so that Adam's moments are no longer those of a single gradient
    model, criterion, optimizer = build()
    eager = make_eager_step(model, criterion, optimizer, no_scaler(), CPU, CFG)
    for x, y in batches(4, seed=3):
        eager(x, y)
    before = flat(model).clone()
    set_lr(optimizer, 1e-3)
    eager(*batches(1)[0])
    assert adam_formula_misses(before, model, optimizer) == 0  # the right lr: every weight within rounding
    set_lr(optimizer, 1e-3 * (1 - 1 / 24) ** 0.9)  # the lr the step should have used
    assert adam_formula_misses(before, model, optimizer) > 0.9 * before.numel()


@pytest.mark.compile
def test_poly_lr_reaches_the_compiled_step_without_recompiling(compiled):
    model, _, optimizer, step = compiled
    assert torch.is_tensor(optimizer.param_groups[0]["lr"])  # what the compiled Adam reads each call
    (x, y), = batches(1, seed=7)
    snapshot = steps._Snapshot(model, optimizer)
    before = flat(model).clone()
    graphs = dict(torch._dynamo.utils.counters["stats"])
    updates = {}
    for lr in (1e-3, 2.5e-4):
        snapshot.restore()
        set_lr(optimizer, lr)
        step(x, y)
        updates[lr] = flat(model) - before
    snapshot.restore()
    assert dict(torch._dynamo.utils.counters["stats"]) == graphs, "a new learning rate recompiled the step"
    assert not torch.allclose(updates[1e-3], updates[2.5e-4])
    # Adam's update is lr times a function of the gradients only: a quarter of the lr, a quarter of the step
    torch.testing.assert_close(updates[2.5e-4], updates[1e-3] / 4, rtol=1e-3, atol=2e-7)


def test_a_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here\nsecond line")
    monkeypatch.setattr(torch, "compile", broken)
    model, criterion, optimizer = build()
    before = flat(model).clone()
    step = make_compiled_step(model, criterion, optimizer, no_scaler(), CPU, CFG, BATCH, CLASSES)
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert step is None  # the caller takes the next step of its chain (train.choose_step)
    assert lines == ["warning: compiling the training step failed (RuntimeError: no compiler here); using the "
                     "next step of the chain"]
    assert torch.equal(before, flat(model))


def test_a_disagreement_with_eager_is_refused_and_the_weights_left_as_they_were(monkeypatch, capsys):
    monkeypatch.setattr(steps, "check_against_eager", lambda *a, **k: "loss 9.0 vs eager 1.0")
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # no inductor: the check is what fails
    model, criterion, optimizer = build()
    before = flat(model).clone()
    assert make_compiled_step(model, criterion, optimizer, no_scaler(), CPU, CFG, BATCH, CLASSES) is None
    assert "disagrees with eager: loss 9.0 vs eager 1.0" in capsys.readouterr().out
    assert torch.equal(before, flat(model))


def test_a_compiled_model_that_fails_to_run_trains_eagerly_with_one_warning(monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("no compiler here\nsecond line")
    monkeypatch.setattr(steps.torch, "compile", lambda module: broken)
    model, criterion, optimizer = build()
    assert steps.compile_or_eager(model, CFG, CPU, BATCH, criterion, optimizer, CLASSES) is model
    assert capsys.readouterr().out.splitlines() == [
        "warning: torch.compile failed (RuntimeError: no compiler here); training eagerly"]
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("settings, verdict, chosen", [
    (dict(compile=False), None, "eager"),
    (dict(compile=True), None, "compile"),  # the compiled model agrees with eager: it trains
    (dict(compile=True), "forced disagreement", "eager"),  # it disagrees: one warning, then eager
])
def test_the_fallback_chain_ends_in_an_eager_step(monkeypatch, capsys, settings, verdict, chosen):
    from types import SimpleNamespace

    import cgnet.engine.train as train
    checked = []
    monkeypatch.setattr(steps, "check_against_eager", lambda *a, **k: checked.append(a) or verdict)
    monkeypatch.setattr(steps.torch, "compile", lambda fn, **kw: copy.copy(fn) if isinstance(fn, nn.Module) else fn)
    model, criterion, optimizer = build()
    parts = SimpleNamespace(model=model, bare=model, criterion=criterion, optimizer=optimizer, scaler=no_scaler())
    data = SimpleNamespace(per_rank=BATCH, info=SimpleNamespace(num_classes=CLASSES))
    step = train.choose_step(parts, TrainConfig(crop=(32, 32), amp="off", batch_size=2, **settings), data, CPU)
    assert step.kind == chosen
    assert len(checked) == (1 if settings["compile"] else 0)  # the compiled model is checked once, before use
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning")]
    assert warnings == ([] if verdict is None else
                        ["warning: the compiled model disagrees with eager: forced disagreement; training eagerly"])
    assert not torch.is_tensor(optimizer.param_groups[0]["lr"])  # the eager steps take a float lr
    (x, y), = batches(1)
    before = flat(model).clone()
    assert torch.isfinite(step(x, y)) and not torch.equal(before, flat(model))


def test_fp16_scaler_is_not_compiled(capsys):
    model, criterion, optimizer = build()
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    assert make_compiled_step(model, criterion, optimizer, scaler, CPU, CFG, BATCH, CLASSES) is None
    assert "GradScaler" in capsys.readouterr().out


def test_check_against_eager_passes_eager_and_catches_wrong_steps():
    model, criterion, optimizer = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eager = make_eager_step(model, criterion, optimizer, no_scaler(), CPU, CFG)
    assert check_against_eager(eager, model, criterion, optimizer, CPU, CFG, BATCH, CLASSES) is None

    def no_update(images, labels):
        with torch.no_grad():
            return criterion(model(images.contiguous(memory_format=torch.channels_last)), labels)
    assert check_against_eager(no_update, model, criterion, optimizer, CPU, CFG, BATCH, CLASSES) == "no weight update"

    unweighted = make_eager_step(model, nn.CrossEntropyLoss(), optimizer, no_scaler(), CPU, CFG)
    assert check_against_eager(unweighted, model, criterion, optimizer, CPU, CFG, BATCH, CLASSES).startswith("loss")

    def double_lr(images, labels):  # the right loss, twice the update
        set_lr(optimizer, 2e-3)
        try:
            return eager(images, labels)
        finally:
            set_lr(optimizer, 1e-3)
    assert "weight update differs" in check_against_eager(double_lr, model, criterion, optimizer, CPU, CFG,
                                                          BATCH, CLASSES)
    def tripled_gradient(images, labels):  # the right loss and (Adam being scale-free) update
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(images.contiguous(memory_format=torch.channels_last)), labels)
        (3 * loss).backward()
        optimizer.step()
        return loss.detach()
    assert check_against_eager(tripled_gradient, model, criterion, optimizer, CPU, CFG, BATCH,
                               CLASSES).startswith("gradient differs from eager by 2.0")
    # every check restores the weights, the BN statistics and the optimiser state
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(float(st["step"]) == 0 for st in optimizer.state.values())


def test_configure_optimizer_switches_lr_kind_and_keeps_the_state():
    model, criterion, optimizer = build()
    (x, y), = batches(1)
    make_eager_step(model, criterion, optimizer, no_scaler(), CPU, CFG)(x, y)
    configure_optimizer(optimizer, CPU, tensor_lr=True)
    lr = optimizer.param_groups[0]["lr"]
    assert torch.is_tensor(lr) and lr.dtype == torch.float32 and float(lr) == pytest.approx(1e-3)
    set_lr(optimizer, 5e-4)
    # a checkpoint written by a compiled run, restored into an eager run
    fresh_model, _, fresh = build()
    fresh.load_state_dict(optimizer.state_dict())
    configure_optimizer(fresh, CPU, tensor_lr=False)
    assert fresh.param_groups[0]["lr"] == pytest.approx(5e-4) and not fresh.param_groups[0]["capturable"]
    assert all(st["step"].device.type == "cpu" and float(st["step"]) == 1 for st in fresh.state.values())
    make_eager_step(fresh_model, criterion, fresh, no_scaler(), CPU, CFG)(x, y)


def test_only_cuda_single_process_runs_compile_the_whole_step():
    on = TrainConfig(compile=True, amp="bf16")
    assert whole_step_compile(on, "cuda", 1)
    assert not whole_step_compile(on, "cpu", 1)  # correct there, but measured slower than eager
    assert not whole_step_compile(on, "cuda", 2)
    assert not whole_step_compile(TrainConfig(compile=True, amp="fp16"), "cuda", 1)
    assert not whole_step_compile(TrainConfig(compile=True, amp="bf16", dropout=0.1), "cuda", 1)
    assert not whole_step_compile(TrainConfig(compile=False, amp="bf16"), "cuda", 1)



def test_no_compile_optimizer_is_a_setting_that_may_change_on_resume():
    assert make_parser().parse_args(["train", "--no-compile-optimizer"]).compile_optimizer is False
    assert make_parser().parse_args(["train"]).compile_optimizer is None  # None: TrainConfig's default, on
    assert TrainConfig().compile_optimizer is True
    # how the step runs, not what the run learns: a resume may switch it
    saved = TrainConfig(device="cpu").to_dict()
    assert compare_for_resume(saved, TrainConfig(device="cpu", compile_optimizer=False)) == \
        ["--compile-optimizer on -> off"]


# ---- cgnet bench: the compiled CUDA graph path ---------------------------------------------

def test_bench_path_selection():
    have = ["torch", "onnxruntime"]
    cpu_paths, cpu_notes = select_paths(None, torch.device("cpu"), have)
    assert "torch-compiled-cudagraph-bf16" not in cpu_paths and "onnxruntime-fp32" in cpu_paths
    assert "torch-eager-bf16" not in cpu_paths  # the autocast-only paths run when asked for
    assert len(cpu_notes) == 1 and "needs --device cuda" in cpu_notes[0]
    cuda_paths, cuda_notes = select_paths(None, torch.device("cuda"), have)
    assert {"torch-compiled-cudagraph-bf16", "torch-compiled-cudagraph-fp16"} <= set(cuda_paths)
    assert all(p.startswith("torch") for p in cuda_paths) and cuda_notes == []
    asked, notes = select_paths(["torch-eager-fp32", "torch-compiled-cudagraph-fp16"], torch.device("cpu"), have)
    assert asked == ["torch-eager-fp32"] and len(notes) == 1


def test_bench_on_cpu_skips_the_cuda_graph_path_with_a_note(camvid, capsys):
    # --data-root: agreement frames come from the generated dataset, found or not the real one
    assert main(["bench", "--paths", "torch-eager-fp32", "torch-compiled-cudagraph-bf16", "--sizes", "32x48",
                 "--runs", "1", "--warmup", "0", "--agreement-frames", "1", "--data-root", str(camvid)]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "torch-compiled-cudagraph-bf16" in notes[0]
    assert "torch-eager-fp32" in out


def test_bench_says_which_paths_are_slower_than_eager(camvid, tmp_path, capsys, monkeypatch):
    # runners that take a known time on bench's clock: eager 40 ms, torch-fp32 10 ms (4x), onnxruntime-fp32
    # 120 ms (1/3x); a clock that only they advance, as sleeps on a busy machine last longer than asked
    delays = {"torch-eager-fp32": 0.04, "torch-fp32": 0.01, "onnxruntime-fp32": 0.12}
    clock = [0.0]

    def fake_runner(path, model, workdir, device, data_root, labels=False):
        def run(x):
            clock[0] += delays[path]
            return np.zeros((1, CLASSES, *x.shape[2:]), np.float32)
        return run

    monkeypatch.setattr(bench, "build_runner", fake_runner)
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    assert main(["bench", "--paths", *delays, "--sizes", "32x48", "--runs", "3", "--warmup", "0",
                 "--json", str(tmp_path / "bench.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {r["path"]: r for r in json.loads((tmp_path / "bench.json").read_text())["rows"]}
    assert [rows[p]["slower_than_eager"] for p in delays] == [False, False, True]
    assert rows["torch-fp32"]["ratio_to_eager_fp32"] == pytest.approx(4, rel=1e-9)
    assert rows["onnxruntime-fp32"]["ratio_to_eager_fp32"] == pytest.approx(1 / 3, rel=1e-9)
    table = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in delays
             and line.split()[1] == "32x48"}
    assert table["onnxruntime-fp32"].endswith("  slower than eager")
    assert not table["torch-fp32"].endswith("slower than eager")
    assert not table["torch-eager-fp32"].endswith("slower than eager")
    assert any(line.strip().startswith("onnxruntime-fp32") and "x eager fp32: slower than eager)" in line
               for line in lines)  # the progress line, printed as soon as the path is timed


def test_argmax_agreement_counts_pixels():
    inputs = [np.zeros((1, 3, 2, 4), np.float32)]
    reference = lambda x: np.stack([np.ones((1, 2, 4)), np.zeros((1, 2, 4))], 1)  # noqa: E731  class 0 everywhere
    half = lambda x: np.stack([np.tile([1.0, 0.0], (1, 2, 2)), np.tile([0.0, 1.0], (1, 2, 2))], 1)  # noqa: E731
    assert argmax_agreement(reference, reference, inputs) == 1.0
    assert argmax_agreement(half, reference, inputs) == 0.5


def test_a_failed_cuda_graph_capture_leaves_model_and_optimizer_as_they_were(monkeypatch, capsys):
    """make_graphed_step's warm-up steps change the weights, BN statistics and Adam's moments
    before a capture can fail; the snapshot puts every one of them back, bit for bit."""
    model, criterion, optimizer = build()
    (x, y), = batches(1)
    make_eager_step(model, criterion, optimizer, no_scaler(), CPU, CFG)(x, y)  # Adam has moments now
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = optimizer_moments(optimizer).clone()

    def warm_up_then_fail(run, device, spec, per_rank, num_classes):
        for _ in range(3):
            run.zero_grad()
            run(x, y)
        raise RuntimeError("operation not permitted when stream is capturing\nsecond line")
    monkeypatch.setattr(steps, "capture_graph", warm_up_then_fail)
    assert steps.make_graphed_step(model, criterion, optimizer, CPU, CFG, BATCH, CLASSES) is None
    assert capsys.readouterr().out == ("warning: CUDA graph capture failed (RuntimeError: operation not permitted "
                                       "when stream is capturing); training eagerly\n")
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert torch.equal(optimizer_moments(optimizer), moments)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.compile
def test_the_compiled_model_trains_in_bf16_on_the_cpu(capsys):
    """The model compiled under CPU bf16 autocast, with the CPU's training kernels and at the batch
    and crop where torch 2.13's compiled whole step once lost every gradient, passes the check
    against an eager bf16 step and gives every parameter a gradient."""
    from cgnet.engine.config import CPU_TRAINING_DEFAULTS
    from cgnet.engine.grads import use_training_kernels
    model, criterion, optimizer = build()
    use_training_kernels(model, depthwise=CPU_TRAINING_DEFAULTS["depthwise_backward"],
                         prelu=CPU_TRAINING_DEFAULTS["prelu_backward"],
                         upsample=CPU_TRAINING_DEFAULTS["upsample_backward"])
    spec = TrainConfig(crop=(64, 64), amp="bf16", channels_last=True, batch_size=8)
    run = steps.compile_or_eager(model, spec, CPU, 8, criterion, optimizer, CLASSES)
    assert "warning" not in capsys.readouterr().out
    assert run is not model  # compiled, and kept
    (x, y), = batches(1)
    step = make_eager_step(run, criterion, optimizer, no_scaler(), CPU, spec)
    assert torch.isfinite(step(x.repeat(4, 1, 2, 2), y.repeat(4, 2, 2)))
    # the step leaves the loss's gradient in .grad (Adam adds the weight decay to a copy)
    assert [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []
