"""What the benchmark scripts share: waiting for the device, and torch.profiler's table."""
import torch
from torch.profiler import ProfilerActivity, profile


def sync(device: torch.device) -> None:
    """Wait for the work queued on a CUDA device (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_table(fn, device: torch.device, calls: int, rows: int = 25) -> str:
    """torch.profiler's table of `calls` calls of fn(), by self time on the device (CPU: self CPU
    time). Kernels replayed inside a CUDA graph may show as the graph launch only."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)
