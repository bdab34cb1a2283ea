"""cgnet train when things go wrong: settings that cannot train, a run folder in use
or holding a run, --resume with other settings, Ctrl-C, a time budget or --max-iters that cut a
run short, leftovers of killed writes, and statistics that must not change a seeded run."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import cgnet.engine.train as train_module
from cgnet.cli import main, make_parser
from cgnet.data.catalog import CAMVID
from cgnet.data.listset import SegDataset
from cgnet.data.stats import dataset_stats
from cgnet.engine.config import ConfigError, TrainConfig, resolve_config
from cgnet.engine.resume import compare_for_resume
from cgnet.preprocess import make_spec
from helpers.training import TINY, same_weights, train

# the run the interrupted and cut-short runs must equal (dropout: the global RNG matters too)
RUN = ("--epochs", "3", "--dropout", "0.1", "--seed", "3")


def run_cli(camvid, out, *extra) -> int:
    return main(["train", "--data-root", str(camvid), "--out", str(out), *TINY, *extra])


def snapshot(folder):
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(camvid, tmp_path_factory):
    """An uninterrupted run of RUN: (log, last.pt)."""
    return train(camvid, tmp_path_factory.mktemp("reference") / "run", *RUN)


def assert_equals_reference(out, reference):
    log_ref, ref = reference
    state = torch.load(out / "last.pt", weights_only=True)
    assert [r["loss"] for r in read_log(out)] == [r["loss"] for r in log_ref]
    assert same_weights(ref, state)
    assert all(torch.equal(ref["optimizer"]["state"][k]["exp_avg"], state["optimizer"]["state"][k]["exp_avg"])
               for k in ref["optimizer"]["state"])


def lock_holder(out) -> subprocess.Popen:
    """Another process holding `out`'s run-folder lock, as a second `cgnet train` there would."""
    code = ("import sys, time; from cgnet.fileio import FolderLock; "
            "FolderLock(sys.argv[1], what='cgnet train').acquire(); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert holder.stdout.readline() == "held\n"
    return holder


# ---- 1, 8: settings that cannot train are refused before anything is written ----------------

@pytest.mark.parametrize("extra, message", [
    (["--epochs", "0"], "--epochs 0: must be at least 1"),
    (["--epochs", "-3"], "--epochs -3: must be at least 1"),
    (["--max-iters", "0"], "--max-iters 0: must be at least 1 (leave it out to train all --epochs)"),
    (["--lr", "0"], "--lr 0: must be a positive number"),
    (["--lr", "nan"], "--lr nan: must be a positive number"),
    (["--time-budget", "-5"], "--time-budget -5: must be a positive number of minutes"),
    (["--poly-power", "-1"], "--poly-power -1: must be 0 or more (a negative power makes the learning rate rise)"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--val-every", "0"], "--val-every 0: must be at least 1"),
    (["--save-every", "0"], "--save-every 0: must be at least 1"),
    (["--crop", "0"], "--crop 0: each side must be at least 8 pixels (the network works at 1/8 resolution)"),
    (["--crop", "32", "4"], "--crop 32 4: each side must be at least 8 pixels (the network works at 1/8 resolution)"),
    (["--workers", "-1"], "--workers -1: must be at least 0"),
    (["--dropout", "1.5"], "--dropout 1.5: must be in [0, 1)"),
    (["--weight-decay", "-1"], "--weight-decay -1: must be 0 or more"),
    (["--mean", "0.5,0.5"], "--mean 0.5,0.5: needs 3 values (one per channel), got 2"),
    (["--std", "0.2,0.2,0.2,0.2"], "--std 0.2,0.2,0.2,0.2: needs 3 values (one per channel), got 4"),
    (["--std", "0.2,0,0.2"], "--std 0.2,0,0.2: must be positive"),
    (["--seed", "-1"], "--seed -1: must be at least 0"),
    (["--blocks", "1", "5"], "--blocks 1 5: each stage needs at least 2 blocks (one down-sampling block plus "
                             "M-1 or N-1 CG blocks)"),
    (["--batch-size", "16"], "--batch-size 16: the training list {root}/camvid_train_list.txt has 8 images, "
                             "fewer than one batch"),
    (["--ignore-index", "300"], "--ignore-index 300: camvid's ignore id is fixed at 11; --ignore-index is for "
                                "custom datasets (--classes)"),
    (["--data-root", "{root}/missing"], "--data-root {root}/missing: no such folder"),
    (["--train-split", "nolist.txt"], "--train-split nolist.txt: list file {root}/nolist.txt does not exist"),
    (["--val-split", "{root}/none.txt"], "--val-split {root}/none.txt: list file {root}/none.txt does not exist"),
])
def test_a_setting_that_cannot_train_is_one_line_and_writes_nothing(camvid, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    extra = [a.format(root=camvid) for a in extra]
    assert run_cli(camvid, out, *extra) == 2
    captured = capsys.readouterr()
    assert captured.err == f"cgnet train: error: {message.format(root=camvid)}\n"
    assert captured.out == ""
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_one_line(camvid, tmp_path, capsys):
    assert run_cli(camvid, tmp_path / "run", "--device", "cuda", "--amp", "off") == 2
    assert capsys.readouterr().err == ("cgnet train: error: --device cuda: this machine has no CUDA device (PyTorch "
                                       "sees none); use --device cpu\n")
    assert list(tmp_path.iterdir()) == []


def test_an_out_that_is_a_file_is_one_line(camvid, tmp_path, capsys):
    (tmp_path / "run").write_text("notes")
    assert run_cli(camvid, tmp_path / "run", "--epochs", "1") == 2
    assert capsys.readouterr().err == f"cgnet train: error: --out {tmp_path}/run: is a file, not a folder\n"
    assert (tmp_path / "run").read_text() == "notes" and len(list(tmp_path.iterdir())) == 1


def test_the_ignore_id_of_a_known_dataset_may_be_given_as_it_is(camvid):
    args = make_parser().parse_args(["train", "--data-root", str(camvid), *TINY, "--ignore-index", "11"])
    assert resolve_config(args).ignore_index == 11


# ---- 2, 7: the run folder: a lock for the run's life, no second run, leftovers removed ---------

def test_a_folder_in_use_by_a_live_run_is_refused(camvid, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    other = lock_holder(out)
    try:
        before = snapshot(out)
        assert run_cli(camvid, out, "--epochs", "1") == 2
        assert capsys.readouterr().err == (f"cgnet train: error: {out} is in use by cgnet train of pid {other.pid} "
                                           f"({out}/train.lock); wait for it to end, or give another --out\n")
        assert snapshot(out) == before
    finally:
        other.kill()
        other.communicate()


def test_a_lock_from_another_host_is_refused(camvid, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.lock").write_text(json.dumps({"pid": 4242, "host": "elsewhere"}))
    before = snapshot(out)
    assert run_cli(camvid, out, "--epochs", "1") == 2
    assert capsys.readouterr().err == (f"cgnet train: error: {out} is locked by cgnet train of pid 4242 on host "
                                       f"elsewhere ({out}/train.lock); if that run has ended, delete the lock file\n")
    assert snapshot(out) == before


@pytest.mark.slow
def test_a_stale_lock_and_leftover_temporary_files_are_cleared(camvid, tmp_path, capsys):
    out = tmp_path / "run"
    killed = lock_holder(out)
    killed.kill()  # kill -9: the OS lock goes with the process, its lock file stays
    killed.communicate()
    pid = killed.pid
    assert json.loads((out / "train.lock").read_text())["pid"] == pid
    leftovers = [out / f".last.pt.{pid}.0badc0de.tmp", out / f".best.pt.{pid + 1}.12345678.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a checkpoint")
    assert run_cli(camvid, out, "--epochs", "1") == 0
    printed = capsys.readouterr().out
    assert f"note: took over {out}/train.lock from pid {pid}, which no longer runs\n" in printed
    assert (f"note: removed 2 temporary file(s) left by interrupted writes: {leftovers[1].name}, "
            f"{leftovers[0].name}\n") in printed
    assert not any(path.exists() for path in leftovers)
    assert not (out / "train.lock").exists()  # released at the end
    assert (out / "last.pt").is_file()


@pytest.mark.slow
def test_a_folder_holding_a_run_needs_resume(camvid, tmp_path, capsys):
    out = tmp_path / "run"
    train(camvid, out, "--epochs", "1")
    before = snapshot(out)
    capsys.readouterr()
    assert run_cli(camvid, out, "--epochs", "1") == 2
    assert capsys.readouterr().err == (f"cgnet train: error: --out {out} already holds a run (last.pt, log.jsonl, "
                                       "config.json); continue it with --resume, or start a new run with another "
                                       "--out\n")
    assert snapshot(out) == before


# ---- 3: --resume keeps what the run learns -----------------------------------------------

@pytest.fixture(scope="module")
def one_epoch_run(camvid, tmp_path_factory):
    """A run stopped after epoch 1 of 2, and its files' bytes."""
    out = tmp_path_factory.mktemp("resume") / "run"
    train(camvid, out, "--epochs", "2", "--max-iters", "2")
    return out, snapshot(out)


@pytest.mark.slow
@pytest.mark.parametrize("extra, change", [
    (["--lr", "0.002"], "the run was trained with --lr 0.001, this command says 0.002; keep it"),
    (["--blocks", "3", "15"], "the run was trained with --blocks 2 2, this command says 3 15; keep it"),
    (["--no-class-weights"], "the run was trained with --class-weights, this command says --no-class-weights; "
                             "keep it"),
    (["--time-budget", "5"], "the run was trained with no --time-budget, this command says --time-budget 5; "
                             "keep it"),
    (["--lr", "0.002", "--crop", "64", "--seed", "1"],
     "the run was trained with --crop 32 32 --lr 0.001 --seed 0, this command says --crop 64 64 --lr 0.002 "
     "--seed 1; keep them"),
])
def test_resume_refuses_what_changes_the_run_and_writes_nothing(camvid, one_epoch_run, capsys, extra, change):
    out, before = one_epoch_run
    assert run_cli(camvid, out, "--epochs", "2", *extra, "--resume") == 2
    assert capsys.readouterr().err == (f"cgnet train: error: --resume: {change}, or start a new run with "
                                       "another --out\n")
    assert snapshot(out) == before  # config.json, last.pt, log.jsonl as they were; no lock left


def test_resume_without_a_checkpoint_is_one_line(camvid, tmp_path, capsys):
    assert run_cli(camvid, tmp_path / "none", "--resume") == 2
    assert capsys.readouterr().err == (f"cgnet train: error: --resume: {tmp_path}/none/last.pt does not exist (no run "
                                       f"to continue in {tmp_path}/none); leave --resume out to start one\n")
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_resume_accepts_how_the_run_runs_and_says_so(camvid, one_epoch_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(one_epoch_run[0], out)
    assert run_cli(camvid, out, "--epochs", "2", "--workers", "1", "--val-every", "2", "--resume") == 0
    printed = capsys.readouterr().out
    assert f"resuming from epoch 1 of 2 ({out}/last.pt)\n" in printed
    assert "--resume: changed --workers 0 -> 1, --val-every 1 -> 2 (they do not change what the run learns)\n" in printed
    assert json.loads((out / "config.json").read_text())["workers"] == 1
    assert [r["epoch"] for r in read_log(out)] == [1, 2]


def test_which_settings_resume_refuses():
    saved = TrainConfig(device="cuda:0", amp="bf16", workers=8).to_dict()
    # another GPU, precision, loader workers: accepted
    assert compare_for_resume(saved, TrainConfig(device="cuda:1", amp="off", workers=2)) == [
        "--device cuda:0 -> cuda:1", "--amp bf16 -> off", "--workers 8 -> 2"]
    with pytest.raises(ConfigError, match=r"^--resume: the run was trained with --device cuda:0, this command says "
                                          r"cpu; keep it"):
        compare_for_resume(saved, TrainConfig(device="cpu", amp="bf16", workers=8))
    # once a --time-budget has cut the schedule, the stored epochs are the cut ones
    cut = TrainConfig(device="cpu", epochs=7, time_budget=5.0).to_dict()
    assert compare_for_resume(cut, TrainConfig(device="cpu", epochs=100, time_budget=5.0),
                              schedule_fixed=True) == []


# ---- 4: Ctrl-C ------------------------------------------------------------------------------

def interrupt_on_call(monkeypatch, call: int):
    real, calls = train_module.train_one_epoch, []

    def train_one_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", train_one_epoch)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resume_continues(camvid, tmp_path, capsys, monkeypatch, reference):
    out = tmp_path / "run"
    interrupt_on_call(monkeypatch, 3)
    assert run_cli(camvid, out, *RUN) == 130
    assert capsys.readouterr().err == (f"cgnet train: interrupted; {out}/last.pt holds epoch 2; continue with: "
                                       f"cgnet train --out {out} --resume\n")
    assert not (out / "train.lock").exists()
    assert torch.load(out / "last.pt", weights_only=True)["train_state"]["epoch"] == 2
    monkeypatch.undo()
    # the printed command as it stands: the run's own settings come from last.pt
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert_equals_reference(out, reference)


def test_ctrl_c_before_the_first_checkpoint_leaves_no_run(camvid, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    interrupt_on_call(monkeypatch, 1)
    assert run_cli(camvid, out, *RUN) == 130
    assert capsys.readouterr().err == ("cgnet train: interrupted; no checkpoint yet: run the same command again to "
                                       "start over\n")
    assert not any((out / name).exists() for name in ("last.pt", "log.jsonl", "config.json", "train.lock"))


def signal_at_step(monkeypatch, at: int, *signums):
    """Send `signums` to this process during training step number `at` (1-based)."""
    real, calls = train_module.wrap_for_training, []

    def wrap_for_training(*args, **kwargs):
        step = real(*args, **kwargs)

        def signalling_step(images, labels):
            loss = step(images, labels)
            calls.append(1)
            if len(calls) == at:
                for signum in signums:
                    signal.raise_signal(signum)
            return loss
        return signalling_step

    monkeypatch.setattr(train_module, "wrap_for_training", wrap_for_training)


@pytest.mark.slow
def test_sigterm_saves_inside_the_epoch_and_resume_equals_uninterrupted(camvid, tmp_path, capsys, monkeypatch,
                                                                         reference):
    out = tmp_path / "run"
    signal_at_step(monkeypatch, 3, signal.SIGTERM)  # epoch 1 is 2 steps: 1 step into epoch 2
    assert run_cli(camvid, out, *RUN) == 143
    assert capsys.readouterr().err == (
        "cgnet train: SIGTERM: stopping after this iteration to save the run where it is (once more to stop at once)\n"
        f"cgnet train: stopped by SIGTERM; {out}/last.pt holds epoch 1 and 1 batches of epoch 2; continue with: "
        f"cgnet train --out {out} --resume\n")
    saved = torch.load(out / "last.pt", weights_only=True)["train_state"]
    assert (saved["epoch"], saved["iteration"], saved["partial_batches"]) == (1, 3, 1)
    assert [r["epoch"] for r in read_log(out)] == [1]
    assert not (out / "train.lock").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert_equals_reference(out, reference)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_from_the_last_checkpoint(camvid, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    signal_at_step(monkeypatch, 3, signal.SIGINT, signal.SIGINT)
    assert run_cli(camvid, out, *RUN) == 130
    assert capsys.readouterr().err == (
        "cgnet train: SIGINT: stopping after this iteration to save the run where it is (once more to stop at once)\n"
        f"cgnet train: interrupted; {out}/last.pt holds epoch 1; continue with: cgnet train --out {out} --resume\n")
    assert torch.load(out / "last.pt", weights_only=True)["train_state"]["iteration"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_a_signal_to_the_process_group_saves_where_the_run_is(camvid, tmp_path, signum, code, said):
    """A real Ctrl-C, or SIGTERM as `pkill -f`, systemd or a scheduler send it: the signal goes to the
    whole process group, the persistent validation worker included (it used to die of SIGTERM, and
    the run stopped with a traceback instead of saving)."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "cgnet", "train", "--data-root", str(camvid), "--out", str(out), *TINY,
               "--workers", "1", "--epochs", "200", "--val-every", "1"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    try:
        for line in child.stdout:
            if line.startswith("epoch 2:"):
                break
        os.killpg(child.pid, signum)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert child.returncode == code, err
    saved = torch.load(out / "last.pt", weights_only=True)["train_state"]
    holds = f"epoch {saved['epoch']}" + (f" and {saved['partial_batches']} batches of epoch {saved['epoch'] + 1}"
                                         if saved.get("partial_batches") else "")
    assert err.endswith(f"cgnet train: {said}; {out}/last.pt holds {holds}; continue with: "
                        f"cgnet train --out {out} --resume\n"), err
    assert saved["epoch"] >= 2 and "Traceback" not in err
    assert len(read_log(out)) == saved["epoch"]


@pytest.mark.slow
def test_save_every_k_epochs_and_the_log_never_runs_ahead(camvid, tmp_path, capsys, monkeypatch, reference):
    out = tmp_path / "run"
    interrupt_on_call(monkeypatch, 2)  # a hard stop in epoch 2: epoch 1 was not saved
    assert run_cli(camvid, out, *RUN, "--save-every", "2") == 130
    assert capsys.readouterr().err.endswith("no checkpoint yet: run the same command again to start over\n")
    assert not any((out / name).exists() for name in ("last.pt", "log.jsonl"))
    monkeypatch.undo()
    interrupt_on_call(monkeypatch, 3)  # in epoch 3: epoch 2 was saved
    assert run_cli(camvid, out, *RUN, "--save-every", "2") == 130
    assert torch.load(out / "last.pt", weights_only=True)["train_state"]["epoch"] == 2
    assert [r["epoch"] for r in read_log(out)] == [1, 2]
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume"]) == 0  # epoch 3 is the last: saved
    assert_equals_reference(out, reference)


@pytest.mark.slow
def test_the_time_budget_counts_setup_and_the_time_between_epochs(camvid, tmp_path, monkeypatch):
    real = train_module.build_data
    monkeypatch.setattr(train_module, "build_data", lambda *a, **k: (time.sleep(1.0), real(*a, **k))[1])
    out = tmp_path / "run"
    assert run_cli(camvid, out, "--epochs", "1", "--val-split", "none") == 0
    first = read_log(out)[0]
    assert first["elapsed_s"] >= first["epoch_s"] + 1.0
    # 60 s budget, 12 s gone after epoch 2, epochs of 1 s but 2 s apart: 48 / (1.15 * 2) -> 20 more
    state = train_module.TrainState(history=[{"epoch_s": 1.0, "elapsed_s": 10.0}, {"epoch_s": 1.0, "elapsed_s": 12.0}],
                                    epoch=2)
    cfg = train_module.fit_schedule_to_budget(TrainConfig(epochs=100, time_budget=1.0), state, n_batches=5)
    assert (cfg.epochs, state.max_iters, state.planned_epochs) == (22, 110, 22)


# ---- 5, 9: a run cut short by the time budget or --max-iters -------------------------------

@pytest.mark.slow
def test_a_time_budget_cut_validates_the_last_epoch(camvid, tmp_path, capsys):
    out = tmp_path / "run"
    # the budget cuts 4 epochs to 2 after epoch 2, which --val-every 3 would not validate
    assert run_cli(camvid, out, "--epochs", "4", "--time-budget", "0.0001", "--val-every", "3") == 0
    log = read_log(out)
    assert [r["epoch"] for r in log] == [1, 2] and "val_miou" in log[-1]
    assert (out / "best.pt").is_file()
    assert f"run folder {out} (last.pt, best.pt, log.jsonl, curve.png)\n" in capsys.readouterr().out


def test_the_closing_line_lists_only_files_that_exist(camvid, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(camvid, out, "--epochs", "1", "--val-split", "none") == 0
    assert f"run folder {out} (last.pt, log.jsonl, curve.png)\n" in capsys.readouterr().out
    assert not (out / "best.pt").exists()


@pytest.mark.slow
def test_max_iters_inside_the_first_epoch_writes_last_pt_and_resumes_exactly(camvid, tmp_path, capsys, reference):
    out = tmp_path / "run"
    assert run_cli(camvid, out, *RUN, "--max-iters", "1") == 0  # 1 of the 2 batches of epoch 1
    assert (f"stopped at iteration 1 (--max-iters), 1 of 2 batches into epoch 1; {out}/last.pt holds it\n"
            in capsys.readouterr().out)
    saved = torch.load(out / "last.pt", weights_only=True)["train_state"]
    assert (saved["epoch"], saved["iteration"], saved["partial_batches"]) == (0, 1, 1)
    assert run_cli(camvid, out, *RUN, "--resume") == 0
    assert_equals_reference(out, reference)


@pytest.mark.slow
def test_max_iters_inside_an_epoch_resumes_exactly_with_the_in_memory_loader(camvid, tmp_path):
    args = ("--epochs", "2", "--dropout", "0.1", "--seed", "4", "--loader", "memory")
    reference = train(camvid, tmp_path / "full", *args)
    assert run_cli(camvid, tmp_path / "part", *args, "--max-iters", "3") == 0  # 1 batch into epoch 2
    assert main(["train", "--out", str(tmp_path / "part"), "--resume"]) == 0
    assert_equals_reference(tmp_path / "part", reference)


# ---- 6: same seed, same run, whether the statistics were cached or not ----------------------

@pytest.mark.slow
def test_same_seed_same_run_with_or_without_cached_statistics(camvid, tmp_path):
    log_a, a = train(camvid, tmp_path / "a", "--epochs", "1", "--dropout", "0.1", "--seed", "5")
    (tmp_path / "b").mkdir()
    for cache in (tmp_path / "a").glob("stats_*.json"):
        shutil.copy(cache, tmp_path / "b" / cache.name)
    assert list((tmp_path / "b").iterdir())
    log_b, b = train(camvid, tmp_path / "b", "--epochs", "1", "--dropout", "0.1", "--seed", "5")
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert same_weights(a, b)


def test_statistics_leave_the_global_random_state_alone(camvid):
    ds = SegDataset(camvid, camvid / "camvid_train_list.txt", CAMVID, make_spec("standard"))
    before = torch.get_rng_state()
    dataset_stats(ds, workers=0, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
