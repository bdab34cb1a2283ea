"""Inference behind one interface, whatever runs it: eager PyTorch, an exported ONNX file in
ONNX Runtime, an OpenVINO model or a TorchScript file, and the compiled torch path. Near the bottom
of `cgnet.deploy`: it imports only `simplify` of it (`cgnet.deploy.predictor.make_predictor` picks
and loads a runner).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..common import AUTOCAST_DTYPES, CGNetError, InputError, MissingFileError, autocast
from ..preprocess import check_spec, to_tensor
from .simplify import simplify_for_inference

BACKENDS = ("torch", "onnxruntime", "openvino")
EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino", "onnx": "onnx"}


class MissingBackend(CGNetError, RuntimeError):
    """An optional backend (ONNX Runtime, OpenVINO) is not installed."""


def require(module: str):
    """Import an optional backend, or fail with the one line that says how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0], module)
        raise MissingBackend(f"{module} is not installed: pip install 'cgnet[{extra}]'") from None


def available_backends() -> list[str]:
    return ["torch"] + [b for b in ("onnxruntime", "openvino") if importlib.util.find_spec(b) is not None]


class Predictor:
    """Runs a segmentation model on H x W x 3 uint8 RGB images.

    `run` maps a float32 N x 3 x H x W array (already normalised) to N x C x H x W logits;
    `run_labels`, when the runner has one, maps it to N x H x W uint8 class ids computed where the
    model runs (on a GPU only the class ids come back, not the logits)."""

    def __init__(self, run, meta: dict, backend: str, precision: str = "fp32", run_labels=None):
        self.run, self.meta, self.backend, self.precision = run, meta, backend, precision
        self.run_labels = run_labels
        self.spec = check_spec(meta["preprocess"])

    def input(self, image_rgb: np.ndarray) -> np.ndarray:
        return to_tensor(image_rgb, self.spec)[None].numpy()

    def logits(self, image_rgb: np.ndarray) -> np.ndarray:
        """C x H x W float32 class scores."""
        return np.asarray(self.run(self.input(image_rgb)), dtype=np.float32)[0]

    def predict(self, image_rgb: np.ndarray) -> np.ndarray:
        """H x W uint8 class ids."""
        if self.run_labels is not None:
            return np.asarray(self.run_labels(self.input(image_rgb)), dtype=np.uint8)[0]
        return self.logits(image_rgb).argmax(0).astype(np.uint8)


def _check_torch_precision(precision: str) -> None:
    if precision not in ("fp32", *AUTOCAST_DTYPES):
        raise InputError(f"the torch backend runs fp32, bf16 or fp16, not {precision}")


def _head(out: torch.Tensor, labels: bool) -> torch.Tensor:
    """What a torch runner returns: float32 logits, or uint8 class ids (argmax over classes)."""
    return out.argmax(1).to(torch.uint8) if labels else out.float()


def torch_runner(model, precision: str = "fp32", device: str | torch.device = "cpu", channels_last: bool = True,
                 labels: bool = False):
    """Eager PyTorch: run(float32 N x 3 x H x W array) -> N x C x H x W float32 logits, or with
    labels=True N x H x W uint8 class ids (the argmax taken on `device`)."""
    device = torch.device(device)
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    _check_torch_precision(precision)

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(device)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            return _head(model(t), labels).cpu().numpy()
    return run


class InferenceGraph(torch.nn.Module):
    """What the compiled path compiles: channels_last input, the simplified model and, with
    labels=True, the argmax, in one function, so that inductor fuses the final bilinear
    upsampling into the argmax and the full-size logits are never written. Autocast, when wanted,
    is entered around the call (dynamo compiles under it).

    Shapes: B x 3 x H x W float -> B x C x H x W float32 logits, or B x H x W uint8 class ids."""

    def __init__(self, simple: torch.nn.Module, labels: bool):
        super().__init__()
        self.simple, self.labels = simple, labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _head(self.simple(x.contiguous(memory_format=torch.channels_last)), self.labels)


def compile_for_inference(model, device: str | torch.device = "cpu", *, labels: bool = False,
                          cuda_graphs: bool | None = None) -> torch.nn.Module:
    """The fast torch inference path as a module: `model` simplified (BN folded, PReLU as max;
    cgnet.deploy.simplify), channels_last, compiled by inductor with static shapes (one compile
    per input size and autocast setting) and, on CUDA, replayed as CUDA graphs
    (mode="reduce-overhead"). Call it under `cgnet.common.autocast` for bf16 / fp16.

    Args:
        model: a CGNet.
        device: where it runs.
        labels: return uint8 class ids instead of float32 logits.
        cuda_graphs: replay as CUDA graphs (default: on CUDA; CUDA only).

    On CUDA the output of a call is overwritten by the next call of the same shape (CUDA graph
    memory is reused): copy it (`.cpu()`, `.clone()`) before calling again.
    """
    device = torch.device(device)
    simple = simplify_for_inference(model).to(device, memory_format=torch.channels_last)
    graph = InferenceGraph(simple, labels).eval()
    if cuda_graphs is None:
        cuda_graphs = device.type == "cuda"
    if cuda_graphs and device.type != "cuda":
        raise InputError(f"CUDA graphs need a CUDA device, not {device}")
    return torch.compile(graph, mode="reduce-overhead" if cuda_graphs else None, dynamic=False)


def compiled_torch_runner(model, precision: str = "fp32", device: str | torch.device = "cpu", *,
                          labels: bool = False, cuda_graphs: bool | None = None):
    """`compile_for_inference` behind the runner interface, under autocast for bf16 / fp16:
    run(float32 N x 3 x H x W array) -> logits, or uint8 class ids with labels=True (only they
    leave the device)."""
    device = torch.device(device)
    _check_torch_precision(precision)
    compiled = compile_for_inference(model, device, labels=labels, cuda_graphs=cuda_graphs)

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        with autocast(device, precision):
            out = compiled(torch.from_numpy(x).to(device))
        return out.cpu().numpy()
    return run


def onnxruntime_runner(path: Path, threads: int | None = None):
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def openvino_runner(path: Path, precision: str = "fp32"):
    ov = require("openvino")
    core = ov.Core()
    model = core.read_model(str(path))
    config = {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}.get(precision, "f32")}
    if precision == "int8":  # the int8 graph itself decides; the rest runs in f32
        config = {}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[compiled.output(0)].copy()


def read_exported_meta(path: Path) -> dict:
    """The cgnet metadata stored in an exported file (see cgnet.export)."""
    path = Path(path)
    if path.suffix == ".onnx":
        onnx = require("onnx")
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if "cgnet" not in props:
            raise InputError(f"{path}: an ONNX file without cgnet metadata (not written by cgnet export)")
        return json.loads(props["cgnet"])
    if path.suffix == ".xml":
        ov = require("openvino")
        model = ov.Core().read_model(str(path))
        if not model.has_rt_info(["cgnet"]):
            raise InputError(f"{path}: an OpenVINO model without cgnet metadata (not written by cgnet export)")
        return json.loads(model.get_rt_info(["cgnet"]).astype(str))
    raise InputError(f"{path}: not an exported model (.onnx or .xml)")


def load_exported(path: str | os.PathLike, precision: str | None = None) -> Predictor:
    """A Predictor for a file written by `cgnet export` (.onnx, .xml or .ts), from its own metadata.

    Args:
        path: the exported file.
        precision: for OpenVINO, the inference precision (default: the one it was exported for).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    if path.suffix == ".onnx":
        meta = read_exported_meta(path)
        return Predictor(onnxruntime_runner(path), meta, "onnxruntime", meta.get("export_precision", "fp32"))
    if path.suffix == ".xml":
        meta = read_exported_meta(path)
        chosen = precision or meta.get("export_precision", "fp32")
        return Predictor(openvino_runner(path, chosen), meta, "openvino", chosen)
    if path.suffix == ".ts":
        extra = {"cgnet_meta.json": ""}
        scripted = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        if not extra["cgnet_meta.json"]:
            raise InputError(f"{path}: a TorchScript file without cgnet metadata (not written by cgnet export)")
        return Predictor(torch_runner(scripted, "fp32", "cpu", channels_last=False),
                         json.loads(extra["cgnet_meta.json"]), "torchscript")
    raise InputError(f"{path}: not an exported model (.onnx, .xml or .ts)")


EXPORTED_SUFFIXES = (".onnx", ".xml", ".ts")
