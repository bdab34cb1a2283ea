"""What the benchmark scripts share: waiting for the device, torch.profiler's table, and
alternating-round timing of CPU runners."""
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile


def sync(device: torch.device) -> None:
    """Wait for the work queued on a CUDA device (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_table(fn, device: torch.device, calls: int, rows: int = 25, by_shape: bool = False) -> str:
    """torch.profiler's table of `calls` calls of fn(), by self time on the device (CPU: self CPU
    time); `by_shape`: one row per operator and input shapes. Kernels replayed inside a CUDA graph
    may show as the graph launch only."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=by_shape) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages(group_by_input_shape=by_shape).table(
        sort_by=key, row_limit=rows, max_name_column_width=70, max_shapes_column_width=90)


def alternating_times(runners: dict, x, rounds: int, runs: int, warmup: int = 3) -> dict:
    """Milliseconds of every call of each CPU runner `run(x)`, timed in alternating rounds (each
    round: `warmup` untimed calls, then `runs` timed ones) so that a machine's drift hits all alike."""
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            for _ in range(warmup):
                run(x)
            for _ in range(runs):
                start = time.perf_counter()
                run(x)
                times[name].append(1000 * (time.perf_counter() - start))
    return times


def alternating_medians(runners: dict, x, rounds: int, runs: int, warmup: int = 3) -> dict:
    """The median of each runner's `alternating_times`."""
    return {name: statistics.median(t) for name, t in alternating_times(runners, x, rounds, runs, warmup).items()}
