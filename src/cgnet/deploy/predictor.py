"""What runs a model, as one object: a `Predictor` (image in, class ids or logits out) for a
checkpoint or an exported file. `make_predictor` chooses the backend and, when a checkpoint is asked
to run through an exported format (ONNX Runtime, OpenVINO, ...), exports it once (verified,
cached); `load_exported` opens a file `cgnet export` wrote, through the formats table
(`cgnet.deploy.formats`).
"""
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
from ..preprocess import check_spec, to_tensor
from .export import export
from .formats import (FORMATS, available_backends, backends, exported_suffixes, format_for_backend, format_of,
                      read_exported_meta)
from .runners import compiled_torch_runner, torch_runner


class Predictor:
    """Runs a segmentation model on H x W x 3 uint8 RGB images.

    `run` maps a float32 N x 3 x H x W array (already normalised) to N x C x H x W logits;
    `run_labels`, when the runner has one, maps it to N x H x W uint8 class ids computed where the
    model runs (on a GPU only the class ids come back, not the logits). An app-ready export has
    only `run_image`: H x W x 3 uint8 RGB in, H x W uint8 class ids out (no logits)."""

    def __init__(self, run, meta: dict, backend: str, precision: str = "fp32", run_labels=None,
                 run_image=None):
        self.run, self.meta, self.backend, self.precision = run, meta, backend, precision
        self.run_labels, self.run_image = run_labels, run_image
        self.spec = check_spec(meta["preprocess"])

    def input(self, image_rgb: np.ndarray) -> np.ndarray:
        return to_tensor(image_rgb, self.spec)[None].numpy()

    def logits(self, image_rgb: np.ndarray) -> np.ndarray:
        """C x H x W float32 class scores."""
        return np.asarray(self.run(self.input(image_rgb)), dtype=np.float32)[0]

    def predict(self, image_rgb: np.ndarray) -> np.ndarray:
        """H x W uint8 class ids."""
        if self.run_image is not None:  # an app-ready file: the image in, the class ids out
            return np.asarray(self.run_image(image_rgb), dtype=np.uint8)
        if self.run_labels is not None:
            return np.asarray(self.run_labels(self.input(image_rgb)), dtype=np.uint8)[0]
        return self.logits(image_rgb).argmax(0).astype(np.uint8)


def load_exported(path: str | os.PathLike, precision: str | None = None) -> Predictor:
    """A Predictor for a file written by `cgnet export` (any format of `FORMATS`), from its own
    metadata.

    Args:
        path: the exported file.
        precision: where the runtime applies it at load time (OpenVINO), the inference precision
            (default: the one it was exported for); other formats run as exported.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    meta = read_exported_meta(path)
    fmt = format_of(path)
    chosen = meta.get("export_precision", "fp32")
    if precision and fmt.precision_at_load:
        chosen = precision
    if meta.get("app_io"):
        return Predictor(_app_file_run(path), meta, fmt.backend or fmt.name, chosen, run_image=fmt.load_app(path))
    return Predictor(fmt.load(path, chosen), meta, fmt.backend or fmt.name, chosen)


def _app_file_run(path: Path):
    def run(x):
        raise InputError(f"{path}: an app-ready file (--app-io) gives class ids from images, not logits: use "
                         "predict, or export it without --app-io for eval and bench")
    return run


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where verified exports of checkpoints are kept: path, $CGNET_CACHE or ~/.cache/cgnet."""
    return Path(path or os.environ.get("CGNET_CACHE") or Path.home() / ".cache" / "cgnet")


def cached_export(model: CGNet, source: str | os.PathLike, fmt: str, precision: str,
                  cache: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
                  log=None) -> Path:
    """Export once per (checkpoint content, format, precision) into the cache folder. Only a
    verified export ever gets its final name there (see `export`)."""
    digest = hashlib.sha256(resolve_weights(source).read_bytes()).hexdigest()[:16]
    path = cache_dir(cache) / f"{digest}_{precision}{FORMATS[fmt].suffix}"
    if not path.exists():
        export(model, path, fmt, precision, data_root=data_root, log=log or (lambda *a: None))
    return path


TORCH_PRECISIONS = ("fp32", "bf16", "fp16")  # autocast; fp16 on CUDA


def backends_for(precision: str) -> list[str]:
    """The exported backends that run `precision`."""
    return [f.backend for f in FORMATS.values() if f.backend and precision in f.precisions]


def resolve_backend(backend: str, precision: str, checkpoint: str | os.PathLike | None, compile: bool = False) -> str:
    """The backend `make_predictor` will use, checked before any model is loaded: a missing
    optional backend or an impossible precision fails here with a one-line message. 'auto' is
    OpenVINO when installed, else torch; it is torch for what only torch does (fp16, --compile)."""
    exported = format_of(checkpoint) if checkpoint else None
    if exported is not None:
        if compile:
            raise InputError(f"--compile compiles a checkpoint with torch, not an exported file ({checkpoint})")
        if precision == "fp16":
            raise InputError(f"--precision fp16 runs a checkpoint with torch, not an exported file ({checkpoint})")
        if not Path(checkpoint).is_file():
            raise MissingFileError(f"{checkpoint}: no such file")
        exported.require()
        return backend
    if backend == "auto":
        torch_only = compile or precision in TORCH_PRECISIONS[2:]
        backend = "openvino" if "openvino" in available_backends() and not torch_only else "torch"
    if backend == "torch":
        if precision not in TORCH_PRECISIONS:
            raise InputError(f"--precision {precision} needs --backend {' or '.join(backends_for(precision))} "
                             f"(torch runs {', '.join(TORCH_PRECISIONS)})")
        return backend
    fmt = format_for_backend(backend)
    if compile:
        raise InputError(f"--compile needs the torch backend, not {backend}")
    if precision not in fmt.precisions:
        others = backends_for(precision)
        raise InputError(f"--precision {precision} needs " + (f"--backend {' or '.join(others)}" if others else
                                                              "the torch backend") + f", not {backend}")
    fmt.require()
    return backend


def make_predictor(model: str | os.PathLike | None = None, *, backend: str = "auto", precision: str = "fp32",
                   device: str | None = None, cache: str | os.PathLike | None = None,
                   data_root: str | os.PathLike | None = None, log=None, compile: bool = False) -> Predictor:
    """A `Predictor` (image in, class ids or logits out) for a checkpoint or an exported file.

    Args:
        model: a checkpoint (ours or the original release's), the name of shipped weights
            (default 'camvid'), or a file written by `cgnet export` (any suffix of `FORMATS`).
        backend: 'torch', a backend of the formats table ('onnxruntime', 'openvino', ...), or
            'auto' (OpenVINO when installed, else torch). A checkpoint run by another backend
            than torch is exported once into the cache folder, verified, and reused.
        precision: 'fp32', 'bf16' (torch autocast or OpenVINO), 'fp16' (torch on CUDA) or
            'int8' (the exported backends that list it).
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
    if format_of(model) is not None:
        return load_exported(model, precision if precision != "fp32" else None)
    backend = resolve_backend(backend, precision, model, compile)
    net = load_model(model)
    if backend == "torch":
        device = device or default_device()
        if compile:
            return Predictor(compiled_torch_runner(net, precision, device), net.meta, "torch-compiled", precision,
                             run_labels=compiled_torch_runner(net, precision, device, labels=True))
        return Predictor(torch_runner(net, precision, device), net.meta, "torch", precision,
                         run_labels=torch_runner(net, precision, device, labels=True))
    fmt = format_for_backend(backend).name
    return load_exported(cached_export(net, model, fmt, precision, cache, data_root, log), precision)


def all_precisions() -> list[str]:
    """Every precision some backend runs, torch's first."""
    seen = list(TORCH_PRECISIONS)
    for f in FORMATS.values():
        seen += [p for p in f.precisions if p not in seen]
    return seen


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
    p.add_argument("--checkpoint", help="checkpoint, or a file written by cgnet export "
                                        f"({' / '.join(exported_suffixes())}) (default: the shipped camvid weights)")
    p.add_argument("--backend", choices=["auto", *backends()], default="auto",
                   help="what runs the model (default auto: openvino when installed, else torch)")
    p.add_argument("--precision", choices=all_precisions(), default="fp32",
                   help="fp16 needs the torch backend (a GPU); int8 --backend "
                        f"{' or '.join(backends_for('int8'))} (default fp32)")
    p.add_argument("--device", help="torch backend only: cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--compile", action="store_true",
                   help="torch backend only: BN folded, compiled by inductor, CUDA graphs on CUDA, class ids "
                        "computed on the device; each new image size compiles once")
    p.add_argument("--data-root", help="with --backend onnxruntime/openvino and a checkpoint: frames to verify its "
                                       "one-time export on (default: the checkpoint's dataset if found, else "
                                       "synthetic frames)")
