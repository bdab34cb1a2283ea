"""Small helpers and constants that several layers share: one home for each.

Nothing here imports from the rest of cgnet, so every module may import it.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import logging
import math
import os
import sys
import warnings
from pathlib import Path

import torch

# the weights shipped inside the package, used when no --checkpoint is given
DEFAULT_WEIGHTS = "camvid"

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")

# torch dtype of each autocast precision; "fp32"/"off" run without autocast
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class CGNetError(Exception):
    """Base class of the errors cgnet raises for bad input or a bad environment; the CLI prints
    them as one line (exit 2, or `exit_code`). Anything else is a bug and keeps its traceback."""

    exit_code = 2

    def __init__(self, message: str = ""):
        # a DataLoader worker re-raises our error as type(error)(header + worker traceback):
        # keep only the original one-line message, which is the traceback's last line
        if isinstance(message, str) and "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)


class InputError(CGNetError, ValueError):
    """A value, setting or file content that cannot work; the message names file, line and value."""


class MissingFileError(CGNetError, FileNotFoundError):
    """A file or folder that a command needs does not exist."""


class ConfigError(CGNetError, ValueError):
    """A training setting that cannot work; the message names the option and the value."""


def default_device() -> str:
    """'cuda' when a GPU is available, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of x86 CPUs that compute in bf16


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags);
    False where that file is missing (not Linux) or unreadable.

    Args:
        cpuinfo: the text of /proc/cpuinfo (default: read it).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """cgnet's cache folder (verified exports, downloaded weights, compiled kernels): path, else
    $CGNET_CACHE, else ~/.cache/cgnet."""
    return Path(path or os.environ.get("CGNET_CACHE") or Path.home() / ".cache" / "cgnet")


def inductor_cache() -> str | None:
    """Keep torch.compile's cache (inductor's compiled kernels and FX graphs) in cgnet's cache folder,
    unless TORCHINDUCTOR_CACHE_DIR is set; returns the folder it set.

    Inductor's own default is under /tmp, which many systems empty at boot, so the first training
    after a reboot compiled again for minutes. The folder is `cache_dir()/inductor`, or
    `inductor_<capability>` when ATEN_CPU_CAPABILITY lowers the kernels (the AVX2 kind emulated on
    an AVX-512 CPU): inductor generates code for that capability, but torch 2.13's cache does not
    tell the two apart (a training step compiled under ATEN_CPU_CAPABILITY=avx2 with the cache of
    AVX-512 runs gave non-finite gradients at its first iteration, and the tests under avx2 crashed
    with a segmentation fault on a shared cache). Call it before anything imports inductor (an
    optimiser's first step does): that import sets TORCHINDUCTOR_CACHE_DIR itself."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return None
    capability = os.environ.get("ATEN_CPU_CAPABILITY")
    folder = str(cache_dir() / (f"inductor_{capability.lower()}" if capability else "inductor"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return folder


def autocast(device: torch.device | str, precision: str, cache: bool = True):
    """torch.autocast for a precision name ('off'/'fp32', 'bf16', 'fp16').

    Args:
        device: where the model runs.
        precision: 'bf16' or 'fp16' turn autocast on; anything else leaves it off.
        cache: autocast's cache of cast weights; it must be off inside a CUDA graph capture.
    """
    dtype = AUTOCAST_DTYPES.get(precision)
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None, cache_enabled=cache)


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W); an argparse type (bad values raise ArgumentTypeError)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HEIGHTxWIDTH (e.g. 512x1024), got {text!r}") from None
    if height < 8 or width < 8:
        raise argparse.ArgumentTypeError(f"height and width must be at least 8, got {text!r}")
    return height, width


def number_type(kind=int, *, minimum=None, maximum=None, positive: bool = False):
    """An argparse type for one number: `kind` (int or float), finite, at least `minimum`, at
    most `maximum`, more than 0 when `positive`. A bad value is one error line naming the option
    and the value (`argument --workers: must be at least 0, got '-1'`)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if positive and not value > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
        if minimum is not None and maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be between {minimum} and {maximum}, got {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text!r}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {text!r}")
        return value
    parse.__name__ = kind.__name__
    return parse


def parse_floats(text: str) -> list[float]:
    """'1,2,3' or '1 2 3' -> [1.0, 2.0, 3.0]; an argparse type with a clear error."""
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    return values


# ---- third-party output ------------------------------------------------------------------------

def showing_debug_output() -> bool:
    """Whether `--debug` (or CGNET_DEBUG=1) asked for the third-party libraries' own output."""
    return os.environ.get("CGNET_DEBUG") == "1"


def _flush_all() -> None:
    """Flush Python's streams and the C library's, so that what was written so far lands where
    the file descriptors point now."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def quiet_third_party():
    """Hide what third-party libraries print while cgnet calls them (converters, runtimes and
    their imports): torchao's "Failed to load ... .so" lines, the LiteRT converter's progress log,
    absl / glog lines from C++ (`I0000 ... flatbuffer_export.cc`), ExecuTorch's cpuinfo lines, ONNX
    Runtime's advice, Python warnings. `--debug` (CGNET_DEBUG=1) shows all of it.

    C and C++ code writes to file descriptors 1 and 2 directly, so those point at the null device
    for the block; Python's `sys.stdout` and `sys.stderr` (where pybind11 modules send their logs)
    go to discarded buffers; log records and warnings are switched off. So nothing cgnet prints
    itself belongs inside the block, and it is not for code that runs while other threads print.
    """
    if showing_debug_output():
        yield
        return
    _flush_all()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    sink = os.open(os.devnull, os.O_WRONLY)
    logging_disabled = logging.root.manager.disable
    try:
        for fd in (1, 2):
            os.dup2(sink, fd)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            logging.disable(logging.CRITICAL)
            yield
    finally:
        logging.disable(logging_disabled)
        _flush_all()
        for fd in (1, 2):
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
        os.close(sink)
