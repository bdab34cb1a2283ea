"""Inference behind one interface, whatever runs it: eager PyTorch, an exported ONNX file in
ONNX Runtime, or an OpenVINO model. `make_predictor` picks and loads one."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .preprocess import check_spec, to_tensor

BACKENDS = ("torch", "onnxruntime", "openvino")
EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino", "onnx": "onnx"}


class MissingBackend(RuntimeError):
    pass


def require(module: str):
    """Import an optional backend, or fail with the one line that says how to get it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0], module)
        raise MissingBackend(f"{module} is not installed: pip install 'cgnet[{extra}]'") from None


def available_backends() -> list[str]:
    import importlib.util
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
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(device)
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
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
            raise ValueError(f"{path}: an ONNX file without cgnet metadata (not written by cgnet export)")
        return json.loads(props["cgnet"])
    if path.suffix == ".xml":
        ov = require("openvino")
        model = ov.Core().read_model(str(path))
        if not model.has_rt_info(["cgnet"]):
            raise ValueError(f"{path}: an OpenVINO model without cgnet metadata (not written by cgnet export)")
        return json.loads(model.get_rt_info(["cgnet"]).astype(str))
    raise ValueError(f"{path}: not an exported model (.onnx or .xml)")


def make_predictor(model: str | os.PathLike | None = None, *, backend: str = "auto", precision: str = "fp32",
                   device: str | None = None, cache_dir: str | os.PathLike | None = None) -> Predictor:
    """A Predictor for a checkpoint (ours, the original's, or 'camvid' for the shipped weights) or
    an exported .onnx / .xml / TorchScript file.

    With a checkpoint and backend 'onnxruntime' or 'openvino' the model is exported once into
    cache_dir (default ~/.cache/cgnet) and verified; 'auto' takes the fastest installed backend."""
    from .checkpoint import load_model
    model = str(model or "camvid")
    suffix = Path(model).suffix
    if suffix == ".onnx":
        meta = read_exported_meta(Path(model))
        return Predictor(onnxruntime_runner(Path(model)), meta, "onnxruntime", meta.get("export_precision", "fp32"))
    if suffix == ".xml":
        meta = read_exported_meta(Path(model))
        p = meta.get("export_precision", precision)
        return Predictor(openvino_runner(Path(model), p), meta, "openvino", p)
    if suffix == ".ts":
        extra = {"cgnet_meta.json": ""}
        scripted = torch.jit.load(model, map_location="cpu", _extra_files=extra)
        if not extra["cgnet_meta.json"]:
            raise ValueError(f"{model}: a TorchScript file without cgnet metadata (not written by cgnet export)")
        return Predictor(torch_runner(scripted, "fp32", "cpu", channels_last=False),
                         json.loads(extra["cgnet_meta.json"]), "torchscript")
    if backend == "auto":
        backend = "openvino" if "openvino" in available_backends() else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    net = load_model(model)
    if backend == "torch":
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return Predictor(torch_runner(net, precision, dev), net.meta, "torch", precision)
    from .export import cached_export
    fmt = "onnx" if backend == "onnxruntime" else "openvino"
    path = cached_export(net, model, fmt, precision, cache_dir)
    return make_predictor(path, precision=precision)
