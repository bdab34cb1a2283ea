"""One process or many (torchrun): rank helpers so that only the main process writes.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything here is a one-process
no-op. nccl on GPUs, gloo on CPUs (`backend`; `cgnet train` prints it with the process count).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


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
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        dist.init_process_group("nccl", device_id=dev)
        return dev
    dist.init_process_group("gloo")
    return torch.device("cpu")


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
