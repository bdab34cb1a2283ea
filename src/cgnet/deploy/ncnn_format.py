"""NCNN (Tencent's inference runtime for ARM boards, Android and embedded Linux): the writer, the
runner and the metadata reader of the formats table's `ncnn` entry.

The simplified model is traced and converted by pnnx (PyPI `pnnx`) at two input sizes, so that
height and width stay dynamic in the written `.param` (the final up-sampling takes its size from
the input blob). The weights are stored in fp32 in the `.bin`; ncnn converts them to fp16 at load
time where its options ask for it.

ncnn's default options store blobs and weights in fp16 and, on CPUs with fp16 arithmetic (ARMv8.2
and later), compute in it. Layers that lose the model's accuracy in fp16 are kept in fp32 in the
written `.param` by ncnn's per-layer feature mask (layer parameter 31; bits 0, 1 and 2 switch off
fp16 arithmetic, fp16 storage and bf16 storage for that layer), so an app that keeps ncnn's
defaults gets the verified accuracy. The cgnet metadata (classes, palette, preprocessing) is
written beside them as `.json`, which apps may ignore. Imports only `runners` of `cgnet.deploy`.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..common import InputError, MissingFileError
from ..fileio import write_atomic
from .runners import require

# two trace sizes: pnnx keeps the dimensions that differ between them dynamic
TRACE_SIZES = ((96, 128), (120, 160))
INPUT, OUTPUT = "in0", "out0"  # pnnx's names for the graph's input and output blobs
FEATMASK_FP32 = 7  # parameter 31: no fp16 arithmetic (bit 0), no fp16 storage (bit 1), no bf16 storage (bit 2)
# the layer types kept in fp32 under ncnn's default options (see docs/deployment.md#ncnn for the
# per-layer measurements that chose them)
FP32_LAYER_TYPES: tuple[str, ...] = ()


def _files(path: Path) -> tuple[Path, Path]:
    """The .bin and the metadata .json written beside a .param."""
    return path.with_suffix(".bin"), path.with_suffix(".json")


def keep_fp32(param_text: str, types: tuple[str, ...] = FP32_LAYER_TYPES) -> tuple[str, int]:
    """The .param text with the feature mask `31=7` on every layer of `types`, and how many
    layers it marked.

    Args:
        param_text: an ncnn .param file (magic line, "layers blobs" line, one line per layer:
            type, name, bottom count, top count, bottoms, tops, then key=value parameters).
    """
    lines = param_text.splitlines()
    marked = 0
    for i, line in enumerate(lines[2:], start=2):
        fields = line.split()
        if fields and fields[0] in types and not any(f.startswith("31=") for f in fields):
            lines[i] = f"{line.rstrip()} 31={FEATMASK_FP32}"
            marked += 1
    return "\n".join(lines) + "\n", marked


def write_ncnn(model: nn.Module, path: Path, meta: dict, precision: str = "fp32",
               calibration: list[np.ndarray] | None = None) -> None:
    """`path` (.param), the fp32 weights beside it (.bin) and the metadata (.json).

    Args:
        model: the simplified model (`cgnet.deploy.simplify`).
        path: the .param to write.
        meta: the cgnet metadata.
        precision: 'fp32' (a runner turns fp16 off) or 'fp16' (ncnn's default options); the file
            is the same, the precision is recorded in the metadata.
    """
    pnnx = require("pnnx", "ncnn")
    bin_path, meta_path = _files(path)
    with tempfile.TemporaryDirectory(prefix="cgnet-pnnx-") as work:
        work = Path(work)
        traced = work / "model.pt"
        with warnings.catch_warnings():  # torch.jit.trace is deprecated; pnnx reads its output
            warnings.simplefilter("ignore")
            torch.jit.trace(model.eval(), torch.randn(1, 3, *TRACE_SIZES[0]), check_trace=False).save(str(traced))
        shapes = [f"[1,3,{h},{w}]f32" for h, w in TRACE_SIZES]
        command = [pnnx.EXEC_PATH, str(traced), f"inputshape={shapes[0]}", f"inputshape2={shapes[1]}",
                   "device=cpu", "fp16=0", f"ncnnparam={work / 'model.param'}", f"ncnnbin={work / 'model.bin'}",
                   *(f"{key}={work / name}" for key, name in (("pnnxparam", "p.param"), ("pnnxbin", "p.bin"),
                                                            ("pnnxpy", "p.py"), ("pnnxonnx", "p.onnx"),
                                                            ("ncnnpy", "n.py")))]
        done = subprocess.run(command, capture_output=True, text=True, cwd=work)
        if done.returncode != 0 or not (work / "model.param").is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise InputError(f"pnnx could not convert the model (exit {done.returncode}): {tail[0]}")
        text, _ = keep_fp32((work / "model.param").read_text())
        write_atomic(bin_path, (work / "model.bin").read_bytes())
    write_atomic(meta_path, json.dumps(meta))
    write_atomic(path, text)


def read_ncnn_meta(path: Path) -> str | None:
    """The metadata JSON written beside a .param (None when there is none)."""
    meta_path = _files(Path(path))[1]
    return meta_path.read_text() if meta_path.is_file() else None


def ncnn_net(path: Path, precision: str = "fp16", threads: int | None = None):
    """An `ncnn.Net` loaded from `path` (.param) and its .bin: precision 'fp16' keeps ncnn's default
    options (what an app gets: fp16 storage, fp16 arithmetic where the CPU has it, except the
    layers the file keeps in fp32), 'fp32' switches fp16 and bf16 off everywhere."""
    ncnn = require("ncnn", "ncnn")
    path = Path(path)
    bin_path = _files(path)[0]
    for needed in (path, bin_path):
        if not needed.is_file():
            raise MissingFileError(f"{needed}: no such file (an ncnn model is a .param and its .bin)")
    net = ncnn.Net()
    if precision == "fp32":
        net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
        net.opt.use_bf16_storage = False
    elif precision != "fp16":
        raise InputError(f"ncnn runs fp32 or fp16 (its default options), not {precision}")
    if threads:
        net.opt.num_threads = threads
    if net.load_param(str(path)) != 0 or net.load_model(str(bin_path)) != 0:
        raise InputError(f"{path}: ncnn could not load it (or its {bin_path.name})")
    return net


def ncnn_runner(path: Path, precision: str = "fp16"):
    """run(float32 N x 3 x H x W normalised array) -> N x C x H x W float32 logits through ncnn's own
    runtime (one extractor per image; `ncnn_net` for the precisions)."""
    ncnn = require("ncnn", "ncnn")
    net = ncnn_net(path, precision, torch.get_num_threads())

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)  # the binding reads the buffer, not its strides
        outputs = []
        for i in range(x.shape[0]):
            extractor = net.create_extractor()
            extractor.input(INPUT, ncnn.Mat(x, batch_index=i).clone())
            ret, out = extractor.extract(OUTPUT)
            if ret != 0:
                raise InputError(f"{path}: ncnn failed on a {x.shape[2]}x{x.shape[3]} input (code {ret})")
            outputs.append(np.array(out, dtype=np.float32, copy=True))
        return np.stack(outputs)
    return run
