"""Choosing what runs a model: `make_predictor` turns a checkpoint or an exported file into a
`Predictor`, exporting (once, verified, cached) when a checkpoint is asked to run in ONNX Runtime
or OpenVINO."""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_model, resolve_weights
from ..common import DEFAULT_WEIGHTS, InputError, MissingFileError, default_device
from ..model import CGNet
from .export import export
from .runners import (BACKENDS, EXPORTED_SUFFIXES, Predictor, available_backends, compiled_torch_runner, load_exported,
                      require, torch_runner)


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where verified exports of checkpoints are kept: path, $CGNET_CACHE or ~/.cache/cgnet."""
    return Path(path or os.environ.get("CGNET_CACHE") or Path.home() / ".cache" / "cgnet")


def cached_export(model: CGNet, source: str | os.PathLike, fmt: str, precision: str,
                  cache: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
                  log=None) -> Path:
    """Export once per (checkpoint content, format, precision) into the cache folder. Only a
    verified export ever gets its final name there (see `export`)."""
    digest = hashlib.sha256(resolve_weights(source).read_bytes()).hexdigest()[:16]
    path = cache_dir(cache) / f"{digest}_{precision}.{'onnx' if fmt == 'onnx' else 'xml'}"
    if not path.exists():
        export(model, path, fmt, precision, data_root=data_root, log=log or (lambda *a: None))
    return path


def resolve_backend(backend: str, precision: str, checkpoint: str | os.PathLike | None, compile: bool = False) -> str:
    """The backend `make_predictor` will use, checked before any model is loaded: a missing
    optional backend or an impossible precision fails here with a one-line message. 'auto' is
    OpenVINO when installed, else torch; it is torch for what only torch does (fp16, --compile)."""
    if checkpoint and Path(checkpoint).suffix in EXPORTED_SUFFIXES:
        if compile:
            raise InputError(f"--compile compiles a checkpoint with torch, not an exported file ({checkpoint})")
        if precision == "fp16":
            raise InputError(f"--precision fp16 runs a checkpoint with torch, not an exported file ({checkpoint})")
    if checkpoint and Path(checkpoint).suffix in (".onnx", ".xml"):
        if not Path(checkpoint).is_file():
            raise MissingFileError(f"{checkpoint}: no such file")
        require("onnxruntime" if Path(checkpoint).suffix == ".onnx" else "openvino")
        return backend
    if backend == "auto":
        torch_only = compile or precision == "fp16"
        backend = "openvino" if "openvino" in available_backends() and not torch_only else "torch"
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    if backend != "torch":
        if compile:
            raise InputError(f"--compile needs the torch backend, not {backend}")
        if precision == "fp16":
            raise InputError(f"--precision fp16 needs the torch backend, not {backend}")
        require(backend)
    elif precision == "int8":
        raise InputError("--precision int8 needs --backend openvino or onnxruntime (torch runs fp32, bf16 or fp16)")
    return backend


def make_predictor(model: str | os.PathLike | None = None, *, backend: str = "auto", precision: str = "fp32",
                   device: str | None = None, cache: str | os.PathLike | None = None,
                   data_root: str | os.PathLike | None = None, log=None, compile: bool = False) -> Predictor:
    """A `Predictor` (image in, class ids or logits out) for a checkpoint or an exported file.

    Args:
        model: a checkpoint (ours or the original release's), the name of shipped weights
            (default 'camvid'), or a file written by `cgnet export` (.onnx, .xml, .ts).
        backend: 'torch', 'onnxruntime', 'openvino', or 'auto' (OpenVINO when installed, else
            torch). A checkpoint run by ONNX Runtime or OpenVINO is exported once into the cache
            folder, verified, and reused.
        precision: 'fp32', 'bf16' (torch autocast or OpenVINO), 'fp16' (torch on CUDA) or
            'int8' (exported backends).
        device: torch backend only (default: CUDA when available).
        cache: the export cache folder (default $CGNET_CACHE or ~/.cache/cgnet).
        data_root: frames to verify a fresh export on (default: the checkpoint's dataset in its
            default location, else synthetic frames).
        compile: torch backend: the compiled path (`runners.compile_for_inference`: BN folded,
            inductor, CUDA graphs on CUDA, the argmax inside the graph); each new image size
            compiles once (tens of seconds).

    Returns:
        A Predictor: `predict(rgb_uint8_HxWx3) -> HxW uint8 class ids`, `logits(...) -> C x H x W`.
    """
    model = str(model or DEFAULT_WEIGHTS)
    if Path(model).suffix in EXPORTED_SUFFIXES:
        return load_exported(model, precision if Path(model).suffix == ".xml" and precision != "fp32" else None)
    backend = resolve_backend(backend, precision, model, compile)
    net = load_model(model)
    if backend == "torch":
        device = device or default_device()
        if compile:
            return Predictor(compiled_torch_runner(net, precision, device), net.meta, "torch-compiled", precision,
                             run_labels=compiled_torch_runner(net, precision, device, labels=True))
        return Predictor(torch_runner(net, precision, device), net.meta, "torch", precision,
                         run_labels=torch_runner(net, precision, device, labels=True))
    fmt = "onnx" if backend == "onnxruntime" else "openvino"
    return load_exported(cached_export(net, model, fmt, precision, cache, data_root, log), precision)


class PredictorModule(torch.nn.Module):
    """An exported model (a Predictor) where code expects a torch module: B x 3 x H x W
    normalised float input -> B x C x H x W float logits, on the CPU."""

    def __init__(self, predictor: Predictor):
        super().__init__()
        self.predictor = predictor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.predictor.run(x.detach().float().cpu().numpy()), dtype=np.float32))


def add_predictor_args(p: argparse.ArgumentParser) -> None:
    """The options that choose what runs the model (`make_predictor`'s arguments), shared by the
    commands that segment images: predict, serve."""
    p.add_argument("--checkpoint", help="checkpoint, or an exported .onnx / .xml / .ts file (default: the shipped "
                                        "camvid weights)")
    p.add_argument("--backend", choices=["auto", *BACKENDS], default="auto",
                   help="what runs the model (default auto: openvino when installed, else torch)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "int8"], default="fp32",
                   help="fp16 needs the torch backend (a GPU), int8 --backend openvino or onnxruntime "
                        "(default fp32)")
    p.add_argument("--device", help="torch backend only: cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--compile", action="store_true",
                   help="torch backend only: BN folded, compiled by inductor, CUDA graphs on CUDA, class ids "
                        "computed on the device; each new image size compiles once")
    p.add_argument("--data-root", help="with --backend onnxruntime/openvino and a checkpoint: frames to verify its "
                                       "one-time export on (default: the checkpoint's dataset if found, else "
                                       "synthetic frames)")
