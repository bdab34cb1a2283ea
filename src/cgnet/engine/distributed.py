"""One process or many (torchrun): rank helpers so that only the main process writes.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything here is a one-process
no-op. nccl on GPUs, gloo on CPUs (`backend`; `cgnet train` prints it with the process count).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from ..common import ConfigError

STORE_TIMEOUT = timedelta(minutes=30)  # init_process_group's own default for gloo and nccl
SHARED_STORE_REFUSED = (
    "torchrun with several nodes and --max-restarts shares its rendezvous store with the workers "
    "(TORCHELASTIC_USE_AGENT_STORE=True), and PyTorch does not keep a restarted group's keys apart from the "
    "failed group's, so a restart can hang (pytorch/pytorch#135712): start torchrun on every node with "
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1")


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def backend() -> str | None:
    """The process group's backend ('gloo', 'nccl'); None in one process without a group."""
    return str(dist.get_backend()) if is_dist() else None


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device: str) -> torch.device:
    """Join the process group when started by torchrun; returns this process's device."""
    if "RANK" not in os.environ:
        return torch.device(device)
    local = int(os.environ["LOCAL_RANK"])
    store = elastic_store()
    joined = {} if store is None else {"store": store, "rank": int(os.environ["RANK"]),
                                       "world_size": int(os.environ["WORLD_SIZE"]), "timeout": STORE_TIMEOUT}
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        dist.init_process_group("nccl", device_id=dev, **joined)
        return dev
    dist.init_process_group("gloo", **joined)
    return torch.device("cpu")


def elastic_store() -> dist.Store | None:
    """The store a worker of torchrun's elastic agent joins the process group through; None for
    init_process_group's own (env://, a fresh store for each start of the workers).

    With the c10d and static rendezvous, the agent keeps one TCPStore for every start of the
    workers (TORCHELASTIC_USE_AGENT_STORE=True), and nothing scopes the workers' keys by start:
    a restarted group can read the failed group's addresses and wait on a port nobody listens on
    (gloo's "Connection refused", then a hang; pytorch/pytorch#135712). With one agent, its restart
    count names the start on every worker, so the keys go under `cgnet/attempt-N/`. With several
    agents the counts can differ (an agent counts a restart caused by a failure, not one caused by
    another node re-joining), so restarts are refused there unless the agents were started with
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (rank 0 then hosts a fresh store for each start).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if int(os.environ.get("GROUP_WORLD_SIZE", "1")) > 1:
        if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
            raise ConfigError(SHARED_STORE_REFUSED)
        return None  # no restarts: one start, nothing stale
    shared = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                           timeout=STORE_TIMEOUT)
    return dist.PrefixStore(f"cgnet/attempt-{elastic_attempt()}", shared)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def broadcast_value(value):
    """The main process's `value` on every process."""
    if not is_dist():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def elastic_attempt() -> int | None:
    """Under torchrun's elastic agent, which start of the worker group this is (0 the first, 1
    after the first restart, ...); None outside torchrun's agent."""
    count = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    return int(count) if count is not None and count.isdigit() else None
