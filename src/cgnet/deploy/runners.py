"""Inference behind one interface, whatever runs it: eager PyTorch, an exported ONNX file in
ONNX Runtime, an OpenVINO model or a TorchScript file. The bottom of `cgnet.deploy`: it imports
nothing else of it (`cgnet.deploy.predictor.make_predictor` picks and loads a runner).
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

    `run` maps a float32 N x 3 x H x W array (already normalised) to N x C x H x W logits."""

    def __init__(self, run, meta: dict, backend: str, precision: str = "fp32"):
        self.run, self.meta, self.backend, self.precision = run, meta, backend, precision
        self.spec = check_spec(meta["preprocess"])

    def input(self, image_rgb: np.ndarray) -> np.ndarray:
        return to_tensor(image_rgb, self.spec)[None].numpy()

    def logits(self, image_rgb: np.ndarray) -> np.ndarray:
        """C x H x W float32 class scores."""
        return np.asarray(self.run(self.input(image_rgb)), dtype=np.float32)[0]

    def predict(self, image_rgb: np.ndarray) -> np.ndarray:
        """H x W uint8 class ids."""
        return self.logits(image_rgb).argmax(0).astype(np.uint8)


def torch_runner(model, precision: str = "fp32", device: str | torch.device = "cpu", channels_last: bool = True):
    device = torch.device(device)
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if precision not in ("fp32", *AUTOCAST_DTYPES):
        raise InputError(f"the torch backend runs fp32, bf16 or fp16, not {precision}")

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(device)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            return model(t).float().cpu().numpy()
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
