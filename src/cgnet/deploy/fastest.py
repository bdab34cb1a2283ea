"""The fastest accurate inference path for this CPU: what `cgnet predict` and `cgnet serve` run
when `--backend` and `--precision` are left at auto. It is chosen from what the CPU can do, as
`cgnet.engine.config.cpu_speed_defaults` chooses the training speed settings, in the order of the
measured tables in docs/speed.md (each entry names its measurement). `cgnet eval` does not use it:
it scores the exact fp32 model unless asked otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..common import cpu_has_native_bf16


@dataclass(frozen=True)
class FastPath:
    """One way to run a checkpoint, and what was measured of it."""
    backend: str     # 'torch' or a backend of the formats table
    precision: str
    measured: str    # its speed and accuracy as measured, and where that is written down


REFERENCE = FastPath("torch", "fp32", "eager PyTorch, the exact reference")
OPENVINO_FP32_AVX512 = FastPath("openvino", "fp32", "measured 1.49x eager fp32 at 360x480 on a 2-core AVX-512 "
                                                    "CPU; docs/speed.md")

# per kind of CPU, the paths fastest first (a path is only listed where it was measured to beat
# eager fp32 without losing accuracy); the first one whose runtime is installed, and that fits
# what the user fixed (--backend or --precision), runs
FASTEST: dict[str, tuple[FastPath, ...]] = {
    "native-bf16": (FastPath("openvino", "bf16", "measured 2.14x eager fp32 at 360x480 and 64.04 CamVid test mIoU "
                                                 "against fp32's 64.05 on a 2-core AVX-512 CPU with bf16; "
                                                 "docs/speed.md"),
                    OPENVINO_FP32_AVX512, REFERENCE),
    "AVX512": (OPENVINO_FP32_AVX512, REFERENCE),
    "AVX2": (FastPath("onnxruntime", "fp32", "measured 1.52x eager fp32 at 360x480 on a 2-core AVX2 CPU, "
                                             "OpenVINO fp32 1.44x; docs/speed.md"),
             FastPath("openvino", "fp32", "measured 1.44x eager fp32 at 360x480 on a 2-core AVX2 CPU; "
                                          "docs/speed.md"),
             REFERENCE),
    "other": (FastPath("openvino", "fp32", "not measured on this kind of CPU; 1.44-1.49x eager fp32 on x86 CPUs"),
              REFERENCE),
}


def cpu_kind(capability: str | None = None, native_bf16: bool | None = None) -> tuple[str, str]:
    """The key of `FASTEST` for this CPU, and its description for the printed line.

    Args:
        capability: the kernels ATen picked (torch.backends.cpu.get_cpu_capability(): DEFAULT,
            AVX2, AVX512, ...; default: ask torch).
        native_bf16: whether the CPU computes in bf16 natively (default: /proc/cpuinfo's flags,
            `cgnet.common.cpu_has_native_bf16`).
    """
    capability = capability or torch.backends.cpu.get_cpu_capability()
    native_bf16 = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    if native_bf16:
        return "native-bf16", f"{capability} CPU with native bf16"
    if capability in ("AVX512", "AVX2"):
        return capability, f"{capability} CPU without native bf16"
    return "other", f"{capability} CPU"


def fastest_paths(backend: str, precision: str, installed: list[str], capability: str | None = None,
                  native_bf16: bool | None = None) -> tuple[list[FastPath], str]:
    """The measured paths for this CPU that fit the request, fastest first, and the CPU's description.

    Args:
        backend: --backend ('auto' leaves it open).
        precision: --precision ('auto' leaves it open).
        installed: the backends whose runtime is installed (`formats.available_backends()`).
        capability, native_bf16: the CPU (see `cpu_kind`).

    Returns:
        ([] when no measured path fits, e.g. --precision int8), the description.
    """
    kind, description = cpu_kind(capability, native_bf16)
    paths = [p for p in FASTEST[kind] if backend in ("auto", p.backend) and precision in ("auto", p.precision)
             and p.backend in installed]
    return paths, description


def path_line(description: str, path: FastPath) -> str:
    """The one line `cgnet predict` and `cgnet serve` print about the path they chose."""
    return (f"inference path: {description}: {path.backend} {path.precision} ({path.measured}); "
            "override with --backend/--precision")
