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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..checkpoint import load_model, resolve_weights
from ..common import DEFAULT_WEIGHTS, InputError, MissingFileError, cache_dir, default_device, quiet_third_party
from ..model import CGNet
from ..options import add_backend_arg, add_checkpoint_arg, add_data_root_arg, add_device_arg, add_precision_arg
from ..preprocess import check_spec, to_tensor
from .export import ExportError, export
from .fastest import FastPath, fastest_paths, path_line
from .formats import (FORMATS, ExportFormat, available_backends, backends, exported_suffixes, format_for_backend,
                      format_of, read_exported_meta)
from .runners import compiled_torch_runner, torch_runner


class Predictor:
    """Runs a segmentation model on H x W x 3 uint8 RGB images.

    `run` maps a float32 N x 3 x H x W array (already normalised) to N x C x H x W logits;
    `run_labels`, when the runner has one, maps it to N x H x W uint8 class ids computed where the
    model runs (on a GPU only the class ids come back, not the logits). An app-ready export has
    only `run_image`: H x W x 3 uint8 RGB in, H x W uint8 class ids out (no logits).

    `open_stream`, where the runtime keeps several frames in flight (OpenVINO), makes the runner of
    `predict_stream` (`runners.openvino_stream_runner`), on its first use only."""

    def __init__(self, run, meta: dict, backend: str, precision: str = "fp32", run_labels=None,
                 run_image=None, open_stream=None):
        self.run, self.meta, self.backend, self.precision = run, meta, backend, precision
        self.run_labels, self.run_image = run_labels, run_image
        self.open_stream, self._stream = open_stream, None
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

    def predict_stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """`predict` of each H x W x 3 uint8 RGB frame, as H x W uint8 class ids in input order;
        with a stream runner, several frames are in flight at once. An error at frame k is raised
        after the class ids of the frames before it. Without one: `predict`, one frame at a time."""
        if self.open_stream is None or self.run_image is not None:
            return map(self.predict, frames)
        if self._stream is None:
            self._stream = self.open_stream(labels=True)  # the argmax inside the graph: 1 x H x W uint8
        return self._stream(map(self.input, frames), finish=_first)

    def close(self) -> None:
        """Free what `predict_stream` compiled (the stream model, its requests and OpenVINO's
        stream threads); a later `predict_stream` compiles it again. Call it before the process
        forks (a loader's workers, then a subprocess): with those threads alive that crashed it."""
        self._stream = None


def _first(ids: np.ndarray) -> np.ndarray:
    """The class ids of a request's 1 x H x W output, copied (the output is reused by the next frame)."""
    return ids[0].copy()


def load_exported(path: str | os.PathLike, precision: str | None = None) -> Predictor:
    """A Predictor for a file written by `cgnet export` (any format of `FORMATS`), from its own
    metadata.

    Args:
        path: the exported file.
        precision: where the runtime applies it at load time (OpenVINO), the inference precision
            (default: the one it was exported for); for other formats, a precision other than the
            file's is refused.
    """
    fmt = format_of(path)
    if fmt is None:
        raise InputError(f"{path}: not an exported model ({', '.join(exported_suffixes())})")
    return _open_exported(Path(path), fmt, precision)


def _open_exported(path: Path, fmt: ExportFormat, precision: str | None) -> Predictor:
    """`load_exported` once the file's format is known."""
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    with quiet_third_party():  # runtimes print their own start-up lines; --debug shows them
        meta = read_exported_meta(path, fmt)
    chosen = meta.get("export_precision", "fp32")
    if precision and precision != chosen:
        if not fmt.precision_at_load or {precision, chosen} & set(fmt.in_file):
            raise InputError(f"{path} was exported as {chosen}, not {precision}: give --precision {chosen} (or "
                             f"auto), or export it again with --precision {precision}")
        chosen = precision
    label = fmt.backend or fmt.name
    with quiet_third_party():
        if meta.get("app_io"):
            return Predictor(_app_file_run(path), meta, label, chosen, run_image=fmt.load_app(path))
        stream = (lambda **kw: fmt.load_stream(path, chosen, **kw)) if fmt.load_stream is not None else None
        return Predictor(fmt.load(path, chosen), meta, label, chosen, open_stream=stream)


def _app_file_run(path: Path):
    def run(x):
        raise InputError(f"{path}: an app-ready file (--app-io) gives class ids from images, not logits: use "
                         "predict, or export it without --app-io for eval and bench")
    return run


# what an export from a given checkpoint holds beyond its bytes: "-flushed", the weights' subnormal
# values set to zero by `load_model` (files cached before that hold them and run up to 14x slower)
EXPORT_CACHE_TAG = "-flushed"


def cached_export(model: CGNet, source: str | os.PathLike, fmt: str, precision: str,
                  cache: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
                  log=None, inputs=None) -> Path:
    """Export once per (checkpoint content, format, precision) into the cache folder. Only a
    verified export ever gets its final name there (see `export`); one that failed its verification
    leaves a `.refused` note with the reason, so later calls fail at once (delete it to retry)."""
    digest = hashlib.sha256(resolve_weights(source).read_bytes()).hexdigest()[:16]
    entry = FORMATS[fmt]
    # a format whose companion files an earlier entry also writes (.bin: OpenVINO and NCNN) adds its name
    shared = any(set(entry.companions) & set(other.companions) for other in list(FORMATS.values())[
        :list(FORMATS).index(fmt)])
    path = cache_dir(cache) / f"{digest}_{precision}{EXPORT_CACHE_TAG}{'.' + fmt if shared else ''}{entry.suffix}"
    refused = path.with_name(path.name + ".refused")
    if refused.is_file():
        raise ExportError(refused.read_text().strip())
    if not path.exists():
        try:
            export(model, path, fmt, precision, data_root=data_root, inputs=inputs, log=log or (lambda *a: None))
        except ExportError as e:
            refused.write_text(f"{e}\n")
            raise
    return path


TORCH_PRECISIONS = ("fp32", "bf16", "fp16")  # autocast; fp16 on CUDA


def backends_for(precision: str) -> list[str]:
    """The exported backends that run `precision`."""
    return [f.backend for f in FORMATS.values() if f.backend and precision in f.precisions]


@dataclass(frozen=True)
class InferencePlan:
    """What `make_predictor` runs, decided once, before any model is loaded (`plan_inference`)."""
    model: str                          # a checkpoint, the name of shipped weights, or an exported file
    backend: str                        # 'torch' or a backend of the formats table
    precision: str                      # for an exported file: 'auto' keeps the file's own
    exported: ExportFormat | None = None  # the file's format, when `model` is an exported file
    compile: bool = False
    why: str | None = None              # the line saying which path was chosen for this CPU, and why
    fallbacks: tuple[FastPath, ...] = ()  # the next fastest paths, should this one's export be refused


def plan_inference(model: str | os.PathLike | None = None, backend: str = "auto", precision: str = "auto",
                   compile: bool = False, device: str | None = None) -> InferencePlan:
    """The backend, precision and (for an exported file) format `make_predictor` will use,
    checked before any model is loaded: a missing optional backend, an impossible precision or a
    backend that does not run the file fails here with one line. 'auto' is the fastest accurate
    path for this CPU (`cgnet.deploy.fastest`); torch for what only torch does (fp16, --compile,
    a CUDA device). The file's format is looked up once, here."""
    model = str(model or DEFAULT_WEIGHTS)
    exported = format_of(model)
    if exported is not None:
        return _plan_exported(model, exported, backend, precision, compile)
    if backend == "auto" and (compile or precision == "fp16" or torch.device(device or default_device()).type != "cpu"):
        backend = "torch"  # what only torch does
    why, fallbacks = None, ()
    if "auto" in (backend, precision):
        paths, description = fastest_paths(backend, precision, available_backends())
        if paths:
            why = path_line(description, paths[0]) if backend == "auto" else None
            backend, precision, fallbacks = paths[0].backend, paths[0].precision, tuple(paths[1:])
        elif backend == "auto":  # a precision no measured path of this CPU runs (int8, ...)
            installed = [b for b in backends_for(precision) if b in available_backends()]
            backend = (installed or (["torch"] if precision in TORCH_PRECISIONS else backends_for(precision)))[0]
        precision = "fp32" if precision == "auto" else precision
    if backend == "torch":
        if precision not in TORCH_PRECISIONS:
            raise InputError(f"--precision {precision} needs --backend {' or '.join(backends_for(precision))} "
                             f"(torch runs {', '.join(TORCH_PRECISIONS)})")
        return InferencePlan(model, backend, precision, compile=compile, why=why)
    fmt = format_for_backend(backend)
    if compile:
        raise InputError(f"--compile needs the torch backend, not {backend}")
    if precision not in fmt.precisions:
        others = ["torch"] * (precision in TORCH_PRECISIONS) + backends_for(precision)
        raise InputError(f"--precision {precision} needs " + (f"--backend {' or '.join(others)}" if others != ["torch"]
                                                              else "the torch backend") + f", not {backend}")
    fmt.require()
    return InferencePlan(model, backend, precision, why=why, fallbacks=fallbacks)


def _plan_exported(model: str, fmt: ExportFormat, backend: str, precision: str, compile: bool) -> InferencePlan:
    """`plan_inference` for a file written by cgnet export: its format decides the backend."""
    runs_in = fmt.backend or "torch"  # pt2 and TorchScript files run in PyTorch
    if compile:
        raise InputError(f"--compile compiles a checkpoint with torch, not an exported file ({model})")
    if backend not in ("auto", runs_in):
        raise InputError(f"--backend {backend} does not run {model} ({fmt.title}: --backend {runs_in} or auto)")
    if precision not in ("auto", *fmt.precisions):
        raise InputError(f"--precision {precision} does not fit {model} ({fmt.title} runs "
                         f"{' or '.join(fmt.precisions)})")
    if not Path(model).is_file():
        raise MissingFileError(f"{model}: no such file")
    fmt.require()
    return InferencePlan(model, runs_in, precision, exported=fmt)


def resolve_backend(backend: str, precision: str, checkpoint: str | os.PathLike | None, compile: bool = False) -> str:
    """The backend `make_predictor` will use (`plan_inference`'s), checked before any model is loaded."""
    return plan_inference(checkpoint, backend, precision, compile).backend


def make_predictor(model: str | os.PathLike | None = None, *, backend: str = "auto", precision: str = "auto",
                   device: str | None = None, cache: str | os.PathLike | None = None,
                   data_root: str | os.PathLike | None = None, log=None, compile: bool = False,
                   inputs=None) -> Predictor:
    """A `Predictor` (image in, class ids or logits out) for a checkpoint or an exported file.

    Args:
        model: a checkpoint (ours or the original release's), the name of shipped weights
            (default 'camvid'), or a file written by `cgnet export` (any suffix of `FORMATS`).
        backend: 'torch', a backend of the formats table ('onnxruntime', 'openvino', ...), or
            'auto': the fastest accurate path for this CPU (`cgnet.deploy.fastest`; torch on a GPU).
            A checkpoint run by another backend than torch is exported once into the cache
            folder, verified, and reused. For an exported file: auto or the backend that runs it.
        precision: 'auto' (with backend: the fastest accurate one; an exported file's own), 'fp32',
            'bf16' (torch autocast or OpenVINO), 'fp16' (torch on CUDA) or 'int8' (the exported
            backends that list it).
        device: torch backend only (default: CUDA when available).
        cache: the export cache folder (default $CGNET_CACHE or ~/.cache/cgnet).
        data_root: frames to verify a fresh export on (default: the checkpoint's dataset in its
            default location, else `inputs`, else synthetic frames).
        log: where the line on the chosen path and the export's progress go (default: nowhere).
        compile: torch backend: the compiled path (`runners.compile_for_inference`: BN folded,
            inductor, CUDA graphs on CUDA, the argmax inside the graph); each new image size
            compiles once (tens of seconds).
        inputs: inputs(count) -> (up to count H x W x 3 uint8 RGB frames of what will be predicted,
            what they are), to verify a fresh export on when the checkpoint's dataset is not found
            (`cgnet.deploy.predict.input_frames`); called only when an export is made.

    Returns:
        A Predictor: `predict(rgb_uint8_HxWx3) -> HxW uint8 class ids`, `logits(...) -> C x H x W`.
    """
    plan = plan_inference(model, backend, precision, compile, device)
    if plan.exported is not None:
        return _open_exported(Path(plan.model), plan.exported, None if plan.precision == "auto" else plan.precision)
    log = log or (lambda *a: None)
    if plan.why:
        log(plan.why)
    return _checkpoint_predictor(plan, load_model(plan.model), device, cache, data_root, log, inputs)


def _checkpoint_predictor(plan: InferencePlan, net: CGNet, device, cache, data_root, log, inputs=None) -> Predictor:
    """`make_predictor` for a checkpoint; an automatic choice whose export is refused gives way to
    the next fastest path, with a line saying so."""
    if plan.backend == "torch":
        device = device or default_device()
        precision = plan.precision
        if plan.compile:
            return Predictor(compiled_torch_runner(net, precision, device), net.meta, "torch-compiled", precision,
                             run_labels=compiled_torch_runner(net, precision, device, labels=True))
        return Predictor(torch_runner(net, precision, device), net.meta, "torch", precision,
                         run_labels=torch_runner(net, precision, device, labels=True))
    fmt = format_for_backend(plan.backend)
    try:
        path = cached_export(net, plan.model, fmt.name, plan.precision, cache, data_root, log, inputs)
    except ExportError as e:
        if not plan.fallbacks:
            raise
        following = plan.fallbacks[0]
        log(f"inference path: {plan.backend} {plan.precision} refused ({e}); "
            f"{following.backend} {following.precision} instead ({following.measured})")
        plan = replace(plan, backend=following.backend, precision=following.precision, fallbacks=plan.fallbacks[1:])
        return _checkpoint_predictor(plan, net, device, cache, data_root, log, inputs)
    return _open_exported(path, fmt, plan.precision)


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
    add_checkpoint_arg(p, note=f"or a file written by cgnet export ({' / '.join(exported_suffixes())})")
    add_backend_arg(p, ["auto", *backends()], default="auto",
                    why="the fastest accurate path for this CPU, printed in one line, see docs/speed.md; torch "
                        "on a GPU (eval defaults to torch: it scores the checkpoint itself)")
    add_precision_arg(p, ["auto", *all_precisions()], default="auto",
                      why="with --backend auto the fastest accurate one for this CPU, else fp32; an exported "
                          "file's own",
                      note="fp16: the torch backend (a GPU) or ncnn (its default options); int8 --backend "
                           f"{' or '.join(backends_for('int8'))}")
    add_device_arg(p, note="the torch backend only")
    p.add_argument("--compile", action="store_true",
                   help="torch backend only: BN folded, compiled by inductor, CUDA graphs on CUDA, class ids "
                        "computed on the device; each new image size compiles once")
    add_data_root_arg(p, use="with --backend onnxruntime/openvino and a checkpoint: frames to verify its one-time "
                             "export on",
                      default="the checkpoint's dataset if found, else the images or video being predicted, "
                              "else synthetic frames")
