"""cgnet train across nodes under torchrun's elastic agent: two agents on 127.0.0.1 meeting through
the c10d rendezvous train exactly as one agent with two processes, and a worker killed with
SIGKILL mid-epoch is restarted by the agents and resumed from the last snapshot, ending with
the same weights, iteration count and log as the uninterrupted run.

Why equal and not merely close: both layouts are the same two ranks (rank r trains the same
shard of every batch: the sampler depends only on the rank, the world size, the seed and the
epoch), each with one thread, and DDP averages the two ranks' gradients with gloo's allreduce.
The only reduction whose order could differ between the layouts is that allreduce, and a sum of
two float32 addends is one correctly rounded IEEE 754 addition, commutative: fl(a + b) ==
fl(b + a). The fp32 reduction-order bound is therefore zero, and the test asserts equality."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cgnet.common import ConfigError
from cgnet.engine.distributed import SHARED_STORE_REFUSED, elastic_store
from cgnet.engine.resume import elastic_fresh_start, restart_line, write_progress
from cgnet.fileio import FolderLock, FolderLocked
from helpers.camvid_like import make_camvid_like

EPOCHS, PER_EPOCH = 5, 4  # 16 training images, global batch 4: 4 iterations an epoch, 20 in all
ARGS = ["--dataset", "camvid", "--train-split", "train", "--val-split", "none", "--blocks", "2", "2",
        "--crop", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--no-progress", "--no-compile",
        "--amp", "off", "--epochs", str(EPOCHS), "--seed", "5"]
RUN_LIMIT_S = 1500  # each torchrun job, set-up included, on a loaded 2-core machine


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_camvid_like(tmp_path_factory.mktemp("elastic") / "CamVid", counts={"train": 16, "val": 2})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(shared_store: bool = False) -> dict:
    """The agents' environment; the several-agent runs use a fresh store for each start of the
    workers (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1), as docs/scaling.md tells users to."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "CGNET_NO_REEXEC": "1", "GLOO_SOCKET_IFNAME": "lo",
            "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "0" if shared_store else "1"}


def agent(data, out, port: int, *extra, nproc: int = 1, nnodes: int = 2) -> subprocess.Popen:
    """One torchrun agent (a process group of its own, so that it and its workers can be ended)."""
    if nnodes == 1:
        launch = ["--nnodes", "1", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
                  "--master-port", str(port)]
    else:
        launch = ["--nnodes", str(nnodes), "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"cgnet-{port}", "--local-addr", "127.0.0.1",
                  "--max-restarts", "3"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "cgnet", "train",
           "--data-root", str(data), "--out", str(out), *ARGS, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(),
                            start_new_session=True)


def finish(agents: list[subprocess.Popen], deadline: float) -> list[str]:
    """Every agent's output once it exits (each killed with its workers on the deadline)."""
    outputs = []
    try:
        for a in agents:
            out, _ = a.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out)
    finally:
        for a in agents:
            if a.poll() is None:
                os.killpg(a.pid, signal.SIGKILL)
                a.communicate(timeout=60)
    return outputs


def result(out: Path):
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return log, torch.load(out / "last.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """One agent, two processes: the layout every other run is compared with."""
    out = tmp_path_factory.mktemp("ref") / "run"
    (text,) = finish([agent(data, out, free_port(), nproc=2, nnodes=1)], time.monotonic() + RUN_LIMIT_S)
    assert "torchrun: 2 processes joined (gloo); batch 2 per process, 4 in all" in text, text[-3000:]
    return result(out)


def same_run(a, b) -> bool:
    (log_a, state_a), (log_b, state_b) = a, b
    return ([r["loss"] for r in log_a] == [r["loss"] for r in log_b]
            and state_a["train_state"]["iteration"] == state_b["train_state"]["iteration"]
            and all(torch.equal(state_a["model"][k], state_b["model"][k]) for k in state_a["model"]))


@pytest.mark.slow
def test_two_agents_through_c10d_train_as_one_agent_with_two_processes(data, tmp_path, reference):
    out, port = tmp_path / "run", free_port()
    texts = finish([agent(data, out, port, "--resume"), agent(data, out, port, "--resume")],
                   time.monotonic() + RUN_LIMIT_S)
    joined = "\n".join(texts)
    assert joined.count("torchrun: 2 processes joined (gloo)") == 1, joined[-3000:]
    assert "--resume: no " in joined and "starting the run" in joined  # --resume with nothing yet: a fresh start
    log, state = result(out)
    assert [r["epoch"] for r in log] == list(range(1, EPOCHS + 1))
    assert state["train_state"]["iteration"] == EPOCHS * PER_EPOCH
    assert same_run((log, state), reference)


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def wait_for_iteration(out: Path, at_least: int, deadline: float, agents) -> int:
    """Poll OUT/progress.json (written by the main process after each iteration) until the run
    reaches `at_least` iterations."""
    while time.monotonic() < deadline:
        try:
            reached = json.loads((out / "progress.json").read_text())["iteration"]
        except (OSError, ValueError, KeyError):
            reached = 0
        if reached >= at_least:
            return reached
        assert all(a.poll() is None for a in agents), "a torchrun agent ended before the kill"
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach iteration {at_least} in time")


@pytest.mark.slow
def test_a_worker_killed_mid_epoch_is_restarted_and_resumed_from_the_snapshot(data, tmp_path, reference):
    out, port = tmp_path / "run", free_port()
    deadline = time.monotonic() + RUN_LIMIT_S
    agents = [agent(data, out, port, "--resume", "--snapshot-every", "3"),
              agent(data, out, port, "--resume", "--snapshot-every", "3")]
    try:
        reached = wait_for_iteration(out, 7, deadline, agents)  # snapshots at 3, 4 (epoch end), 6, 8, 9, ...
        workers = children(agents[1].pid)
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
    finally:
        texts = finish(agents, deadline)
    joined = "\n".join(texts)
    assert reached < EPOCHS * PER_EPOCH
    assert "torchrun restart: resuming at iteration" in joined, joined[-4000:]
    line = next(t for t in joined.splitlines() if "torchrun restart: resuming at iteration" in t)
    resumed_at = int(line.split("resuming at iteration ")[1].split()[0])
    lost = int(line.split(": ")[-1].split()[0])
    assert resumed_at % 3 == 0 or resumed_at % PER_EPOCH == 0  # a snapshot: every 3rd iteration or an epoch end
    assert 0 <= lost < 3  # at most K - 1 = 2 iterations are run again
    log, state = result(out)
    assert [r["epoch"] for r in log] == list(range(1, EPOCHS + 1))  # one record per epoch: a continuous log
    assert state["train_state"]["iteration"] == EPOCHS * PER_EPOCH
    assert same_run((log, state), reference)  # same weights: no step applied twice, none skipped
    assert not (out / "progress.json").exists()


@pytest.mark.slow
def test_a_restarted_group_on_the_agents_shared_store_never_meets_the_failed_groups_keys():
    """One agent keeps one store for every start of its workers. The worker (helpers/elastic_worker.py)
    fails rank 1 on the first start, and on the restart holds rank 0 back 3 s, so that rank 1 looks
    up rank 0's address first: without the per-start prefix it would find the dead rank 0's address
    and wait on it (gloo's own timeout is 30 min)."""
    worker = Path(__file__).resolve().parent / "helpers" / "elastic_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "1", str(worker)]
    agent_process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env(shared_store=True), start_new_session=True)
    (text,) = finish([agent_process], time.monotonic() + RUN_LIMIT_S)
    assert agent_process.returncode == 0, text[-3000:]
    assert "start 0 rank 0: sum 2" in text and "start 1 rank 0: sum 2" in text and "start 1 rank 1: sum 2" in text


# ---- the pieces that need no torchrun (fast) ---------------------------------------------------------

AGENT_ENV = {"TORCHELASTIC_USE_AGENT_STORE": "True", "GROUP_WORLD_SIZE": "1", "TORCHELASTIC_MAX_RESTARTS": "3",
             "TORCHELASTIC_RESTART_COUNT": "2"}


def test_the_workers_keys_are_scoped_by_the_start_on_one_agents_store(monkeypatch):
    server = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    for name, value in {**AGENT_ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(server.port)}.items():
        monkeypatch.setenv(name, value)
    store = elastic_store()
    store.set("rank_0", "here")
    assert server.check(["cgnet/attempt-2/rank_0"]) and not server.check(["rank_0"])
    assert server.get("cgnet/attempt-2/rank_0") == b"here"


def test_several_agents_sharing_their_store_with_restarts_are_refused(monkeypatch):
    for name, value in {**AGENT_ENV, "GROUP_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        elastic_store()
    assert str(caught.value) == SHARED_STORE_REFUSED
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")
    assert elastic_store() is None  # one start only: nothing stale to meet
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    assert elastic_store() is None  # init_process_group's env:// store, new for each start
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE")
    assert elastic_store() is None  # not under torchrun's agent


def test_cgnet_train_under_several_agents_sharing_their_store_stops_with_one_line(data, tmp_path):
    """As every worker of such a group would start: the line, exit 2, nothing written."""
    out = tmp_path / "run"
    worker_env = {**env(), **AGENT_ENV, "GROUP_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2",
                  "TORCHELASTIC_RESTART_COUNT": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    done = subprocess.run([sys.executable, "-m", "cgnet", "train", "--data-root", str(data), "--out", str(out),
                           "--resume", *ARGS], capture_output=True, text=True, env=worker_env, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == f"cgnet train: error: {SHARED_STORE_REFUSED}"
    assert not out.exists()

def test_resume_starts_the_run_only_under_the_agent_and_without_last_pt(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert not elastic_fresh_start("auto", tmp_path)  # plain --resume with nothing there: its own error
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert elastic_fresh_start("auto", tmp_path) and not elastic_fresh_start(None, tmp_path)
    assert not elastic_fresh_start(str(tmp_path / "other.pt"), tmp_path)  # a named checkpoint is read as given
    (tmp_path / "last.pt").write_bytes(b"")
    assert not elastic_fresh_start("auto", tmp_path)


def test_a_restart_says_what_it_runs_again(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert restart_line(tmp_path, 6) is None  # no attempt failed: no progress.json
    write_progress(tmp_path, 8)
    assert restart_line(tmp_path, 6) == ("torchrun restart: resuming at iteration 6 (last.pt); the failed attempt had "
                                         "reached iteration 8: 2 iterations lost, run again")
    write_progress(tmp_path, 7)
    assert restart_line(tmp_path, 6).endswith("1 iteration lost, run again")
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
    assert restart_line(tmp_path, 6) is None


def test_a_restarted_group_takes_over_its_jobs_lock_from_another_host(tmp_path, monkeypatch):
    """The lock file of another host is refused, unless a process of this torchrun job wrote it."""
    out = tmp_path / "run"
    out.mkdir()
    lock_file = out / "train.lock"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    lock_file.write_text(json.dumps({"pid": 4242, "host": "elsewhere", "torchrun_job": "job-2"}))
    with pytest.raises(FolderLocked):
        FolderLock(out, what="cgnet train").acquire()
    lock_file.write_text(json.dumps({"pid": 4242, "host": "elsewhere", "torchrun_job": "job-1"}))
    FolderLock(out).check()
    lock = FolderLock(out, what="cgnet train").acquire()
    try:
        assert lock.taken_over["host"] == "elsewhere"
        record = json.loads(lock_file.read_text())
        assert record["torchrun_job"] == "job-1" and record["host"] == socket.gethostname()
    finally:
        lock.release()
    assert not lock_file.exists()


def test_snapshot_every_writes_last_pt_inside_the_epoch(camvid, tmp_path, monkeypatch):
    """8 training images, batch 2: 4 iterations an epoch. --snapshot-every 3 over 2 epochs writes
    last.pt at iterations 3 and 6 inside the epochs (with the batches done), besides the epoch ends."""
    import cgnet.engine.train as train_module
    from helpers.training import train

    saves = []
    real = train_module.save_last
    monkeypatch.setattr(train_module, "save_last", lambda out, parts, data, cfg, state, device: (
        saves.append((state.iteration, state.partial_batches)), real(out, parts, data, cfg, state, device)))
    _, state = train(camvid, tmp_path / "run", "--epochs", "2", "--batch-size", "2", "--val-split", "none",
                     "--snapshot-every", "3")
    assert saves == [(3, 3), (4, 0), (6, 2), (8, 0)]
    assert state["train_state"]["iteration"] == 8 and not (tmp_path / "run" / "progress.json").exists()
