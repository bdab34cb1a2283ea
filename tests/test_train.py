"""cgnet train: the run folder, seeds, resume, the schedule, DDP and custom datasets, end to end
on small generated datasets."""
import json
import os
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import cv2
import pytest
import torch

from cgnet import load_model
from cgnet.cli import main
from cgnet.engine.config import TrainConfig
from cgnet.engine.train import TrainState, fit_schedule_to_budget
from cgnet.model import Resize
from helpers.training import TINY, same_weights, train


@pytest.mark.slow
def test_train_writes_run_folder_and_checkpoints_are_usable(camvid, tmp_path, capsys):
    log, state = train(camvid, tmp_path / "run", "--epochs", "2")
    assert [r["epoch"] for r in log] == [1, 2] and all("val_miou" in r for r in log)
    for f in ("config.json", "log.jsonl", "curve.png", "last.pt", "best.pt"):
        assert (tmp_path / "run" / f).is_file(), f
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["epochs"] == 2 and cfg["crop"] == [32, 32] and cfg["lr"] == 1e-3
    assert state["meta"]["config"]["batch_size"] == 4 and state["meta"]["dataset"] == "camvid"
    assert state["train_state"]["iteration"] == 4  # 8 images, batch 4, 2 epochs
    # poly schedule: the lr of the last iteration, lr * (1 - 3/4)^0.9
    assert log[-1]["lr"] == pytest.approx(1e-3 * 0.25 ** 0.9)
    assert cv2.imread(str(tmp_path / "run" / "curve.png")).shape[1] > 600
    model = load_model(tmp_path / "run" / "best.pt")
    assert model.meta["classes"][0] == "Sky" and model.meta["preprocess"]["mode"] == "standard"


@pytest.mark.slow
def test_same_seed_same_run_other_seed_other_run(camvid, tmp_path):
    log_a, a = train(camvid, tmp_path / "a", "--epochs", "2", "--seed", "7")
    log_b, b = train(camvid, tmp_path / "b", "--epochs", "2", "--seed", "7")
    log_c, c = train(camvid, tmp_path / "c", "--epochs", "2", "--seed", "8")
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert same_weights(a, b)
    assert not same_weights(a, c)


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(camvid, tmp_path):
    args = ("--epochs", "4", "--dropout", "0.1", "--seed", "3")
    log_full, full = train(camvid, tmp_path / "full", *args)
    train(camvid, tmp_path / "part", *args, "--max-iters", "4")  # stops after epoch 2 of 4
    log_res, res = train(camvid, tmp_path / "part", *args, "--resume")
    assert [r["loss"] for r in log_res] == [r["loss"] for r in log_full]
    assert same_weights(full, res)
    assert all(torch.equal(full["optimizer"]["state"][k]["exp_avg"], res["optimizer"]["state"][k]["exp_avg"])
               for k in full["optimizer"]["state"])


@pytest.mark.slow
def test_resume_with_another_schedule_is_refused(camvid, tmp_path, capsys):
    train(camvid, tmp_path / "r", "--epochs", "2")
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--data-root", str(camvid), "--out", str(tmp_path / "r"), *TINY,
                 "--epochs", "5", "--resume"]) == 2
    assert capsys.readouterr().err == ("cgnet train: error: --resume: the run was trained with --epochs 2, this "
                                       "command says 5; keep it, or start a new run with another --out\n")
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_message(camvid, tmp_path, capsys):
    out = tmp_path / "nan"
    assert main(["train", "--data-root", str(camvid), "--out", str(out), *TINY, "--epochs", "3",
                 "--lr", "1e25"]) == 2
    err = capsys.readouterr().err
    assert "the loss became nan" in err.lower() or "the loss became inf" in err.lower()
    assert "stopped without saving" in err and ("no checkpoint was written yet" in err or "last good checkpoint" in err)
    if (out / "last.pt").exists():  # whatever was saved before is finite
        state = torch.load(out / "last.pt", weights_only=True)
        assert all(torch.isfinite(v.float()).all() for v in state["model"].values())


def test_sync_bn_on_cpu_is_refused(camvid, tmp_path, capsys):
    assert main(["train", "--data-root", str(camvid), "--out", str(tmp_path / "s"), *TINY, "--sync-bn"]) == 2
    assert "--sync-bn needs CUDA" in capsys.readouterr().err


def test_time_budget_cuts_the_schedule():
    cfg = TrainConfig(time_budget=1.0, epochs=100)
    state = TrainState(epoch=2, history=[{"elapsed_s": 30.0, "epoch_s": 30.0}, {"elapsed_s": 40.0, "epoch_s": 10.0}])
    cfg = fit_schedule_to_budget(cfg, state, n_batches=5)
    # a slow first epoch (compilation) does not count: 20 s left / (10 s + 15%) -> 1 more epoch
    assert cfg.epochs == 3 and state.max_iters == 15 and state.planned_epochs == 3


@pytest.mark.slow
def test_torchrun_two_cpu_processes(camvid, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CGNET_NO_REEXEC": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "cgnet", "train", "--data-root", str(camvid), "--out", str(out), *TINY, "--epochs", "4",
           "--time-budget", "0.0001"]  # the budget cuts 4 epochs to 2, on both ranks alike
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (out / "log.jsonl").read_text().splitlines()
    assert len(log) == 2  # rank 0 alone writes
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["train_state"]["iteration"] == 4  # global batch 4 = 2 per process
    assert done.stdout.count("epoch 2:") == 1 and "2 of 4 epochs fit" in done.stdout
    assert done.stdout.splitlines().count("torchrun: 2 processes joined (gloo); batch 2 per process, 4 in all") == 1


def test_the_processes_line_names_the_count_the_backend_and_the_batch(tmp_path):
    """What a run under torchrun prints, here in a one-process gloo group joined in this process."""
    import torch.distributed as dist
    from cgnet.engine.train import processes_line
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert processes_line(3, 3) == "torchrun: 1 process joined (gloo); batch 3 per process, 3 in all"
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_custom_dataset_trains_and_evaluates_from_its_checkpoint(camvid, tmp_path, capsys):
    names = tmp_path / "classes.txt"
    names.write_text("".join(f"thing{i}\n" for i in range(11)))
    out = tmp_path / "custom"
    args = [a for a in TINY if a not in ("camvid",)]
    args[args.index("--dataset") + 1:args.index("--dataset") + 1] = ["streets"]
    args[args.index("--train-split") + 1] = "camvid_train_list.txt"
    args[args.index("--val-split") + 1] = "camvid_val_list.txt"
    assert main(["train", "--data-root", str(camvid), "--out", str(out), *args, "--epochs", "1",
                 "--classes", str(names), "--ignore-index", "11"]) == 0
    model = load_model(out / "last.pt")
    assert model.meta["dataset"] == "streets" and model.meta["classes"][10] == "thing10"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data-root", str(camvid),
                 "--split", "camvid_val_list.txt", "--workers", "0"]) == 0
    assert "thing10" in capsys.readouterr().out
    assert main(["train", "--data-root", str(camvid), "--out", str(out / "x"), *args, "--classes", "a,b"]) == 2
    assert "needs --ignore-index" in capsys.readouterr().err


@pytest.mark.slow
def test_loader_workers_start_from_a_forkserver_once_jax_is_imported(camvid, tmp_path, monkeypatch):
    """JAX (which LiteRT's converter imports) runs threads, and forking it can deadlock: once it is
    imported, the training, validation and statistics loaders start their workers from a forkserver,
    and yield the same batches, bit for bit, as workers forked without JAX."""
    import types

    from cgnet.data.listset import worker_context
    from cgnet.engine.train import build_data
    cfg = TrainConfig(dataset="camvid", data_root=str(camvid), train_split="train", val_split="val", crop=(32, 32),
                      batch_size=4, device="cpu", progress=False, workers=2, loader="workers")
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    assert worker_context(2) is None  # without JAX: the platform's default (fork on Linux)
    forked = build_data(cfg, torch.device("cpu"), tmp_path / "fork")
    assert forked.loader.multiprocessing_context is None
    monkeypatch.setitem(sys.modules, "jax", types.ModuleType("jax"))
    assert worker_context(0) is None  # no workers: DataLoader takes no context
    data = build_data(cfg, torch.device("cpu"), tmp_path / "forkserver")
    assert data.loader.multiprocessing_context.get_start_method() == "forkserver"
    assert data.val_loader.multiprocessing_context.get_start_method() == "forkserver"
    assert json.loads(next((tmp_path / "forkserver").glob("stats_*.json")).read_text()) == \
        json.loads(next((tmp_path / "fork").glob("stats_*.json")).read_text())
    for epoch in (0, 1):
        got, expected = list(data.batches(epoch)), list(forked.batches(epoch))
        assert len(got) == len(expected) == 2  # 8 images, batch 4
        for (images, labels), (images0, labels0) in zip(got, expected):
            assert torch.equal(images, images0) and torch.equal(labels, labels0)
    got, expected = [image for image, _, _ in data.val_loader], [image for image, _, _ in forked.val_loader]
    assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, expected))

def test_the_in_memory_loader_gives_the_workers_loaders_run(camvid, tmp_path, capsys):
    """--loader memory on the CPU (decoded once, batches built in 2 background threads) makes the
    same batches as loader workers decoding every crop: the same run, bit for bit."""
    log_w, w = train(camvid, tmp_path / "w", "--epochs", "2", "--loader", "workers", "--workers", "0")
    assert "training loader: workers (0 loader workers, decoding every crop); backward: depthwise taps, " \
           "PReLU fused, up-sampling aten" in capsys.readouterr().out  # the CPU's defaults (CPU_TRAINING_DEFAULTS)
    log_m, m = train(camvid, tmp_path / "m", "--epochs", "2", "--loader", "memory", "--workers", "2")
    assert "training loader: memory (decoded once, 2 background threads)" in capsys.readouterr().out
    assert [r["loss"] for r in log_w] == [r["loss"] for r in log_m] and same_weights(w, m)


@pytest.mark.slow
def test_the_training_kernels_train_and_leave_plain_checkpoints(camvid, tmp_path, capsys):
    log_a, a = train(camvid, tmp_path / "a", "--epochs", "2", "--depthwise-backward", "aten", "--prelu-backward",
                     "aten", "--upsample-backward", "compiler")
    capsys.readouterr()
    log_k, k = train(camvid, tmp_path / "k", "--epochs", "2", "--depthwise-backward", "taps",
                     "--prelu-backward", "fused", "--upsample-backward", "aten")
    assert "backward: depthwise taps, PReLU fused, up-sampling aten" in capsys.readouterr().out
    assert (k["meta"]["config"]["depthwise_backward"], k["meta"]["config"]["prelu_backward"],
            k["meta"]["config"]["upsample_backward"]) == ("taps", "fused", "aten")
    assert list(k["model"]) == list(a["model"])  # a plain CGNet's state_dict
    # the same steps up to rounding: the first epoch's mean loss (two steps) agrees closely
    assert log_k[0]["loss"] == pytest.approx(log_a[0]["loss"], rel=1e-4)
    model = load_model(tmp_path / "k" / "last.pt")
    assert type(model.down2.loc) is torch.nn.Conv2d and type(model.down2.bn_act.act) is torch.nn.PReLU
    assert type(model.resize) is Resize


@pytest.mark.slow
@pytest.mark.parametrize("schedule", [["--epochs", "1", "--max-iters", "1"], ["--epochs", "1"]],
                         ids=["stopped-mid-epoch", "whole-epoch"])
def test_the_closing_line_gives_the_runs_wall_clock_time(camvid, tmp_path, capsys, monkeypatch, schedule):
    """A clock that jumps 1000 s during each epoch's training: the closing line's seconds are
    between 1000 and 1000 plus the real time the command took (rounded to whole seconds), whether
    the run stopped mid-epoch (--max-iters: no epoch record) or finished its epochs."""
    from cgnet.engine import train as train_module
    offset = [0.0]
    monkeypatch.setattr(train_module, "time", SimpleNamespace(time=lambda: time.time() + offset[0]))
    real_train = train_module.train_or_explain

    def train_slowly(*args, **kwargs):
        offset[0] += 1000
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_or_explain", train_slowly)
    start = time.time()
    assert main(["train", "--data-root", str(camvid), "--out", str(tmp_path / "run"), *TINY, *schedule]) == 0
    took = time.time() - start
    line = capsys.readouterr().out.splitlines()[-1]
    seconds = int(re.fullmatch(rf"done in (\d+) s; run folder {re.escape(str(tmp_path / 'run'))} \(.*\)", line)[1])
    assert 1000 <= seconds <= 1000 + took + 0.5, line
