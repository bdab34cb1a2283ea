"""Phone formats: ExecuTorch (`.pte`, lowered to XNNPACK, fp32 or int8) and LiteRT (`.tflite`,
fp32), each either with cgnet's usual interface or "app-ready".

The model is exported at one fixed input size (default 360 x 480, CamVid's frames; batch 1): a
fixed size lets ExecuTorch plan all memory ahead and LiteRT run without resizing its tensors.
The runners here accept other sizes: they resize the normalised input to the model's size
(bilinear) and the logits back (bilinear), as `cgnet.engine.inference.predict_logits` does for
scales. The size is recorded in the metadata (`input_size`, [H, W]).

Interfaces:
- plain: 1 x 3 x H x W float32 input, normalised as `meta["preprocess"]` says; 1 x C x H x W
  float32 logits out.
- app-ready (`app_io=True`, `AppIOModel`): H x W x 3 uint8 RGB in (the camera frame as it is,
  at the model's size), H x W uint8 class ids out; the normalisation and argmax are in the file.

The cgnet metadata (the writer's `meta`, plus `export_format`, `export_precision`,
`input_size`, `app_io`) is inside the file: in a `.pte` as the constant method `cgnet_meta`
(a JSON string), in a `.tflite` as the flatbuffer metadata entry `cgnet` (JSON bytes). No file is
written beside either.

int8 (ExecuTorch): PT2E post-training quantisation with the XNNPACK quantizer, int8 weights
symmetric per output channel, int8 activations per tensor, calibrated with min/max observers on
the given frames (the default histogram observer took minutes).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional
from tqdm import tqdm

from ..common import InputError, MissingFileError
from ..preprocess import check_spec
from .runners import require

__all__ = ["AppIOModel", "write_executorch", "executorch_runner", "executorch_app_runner", "write_litert",
           "litert_runner", "litert_app_runner", "read_mobile_meta", "DEFAULT_SIZE"]

DEFAULT_SIZE = (360, 480)
PRECISIONS = ("fp32", "int8")
META_METHOD = "cgnet_meta"   # the .pte's constant method holding the metadata
META_NAME = "cgnet"          # the .tflite's metadata entry
class AppIOModel(nn.Module):
    """`simple` with cgnet's preprocessing in front and the argmax behind it, for apps.

    The normalisation is the one of `cgnet.preprocess.to_tensor`, operation for operation in
    float32: ((image in the spec's channel order) * value_scale - mean) / std.

    Args:
        simple: the inference model (B x 3 x H x W normalised float -> B x C x H x W logits).
        spec: the preprocessing spec (`meta["preprocess"]`).

    Shapes: H x W x 3 uint8 RGB -> H x W uint8 class ids.
    """

    def __init__(self, simple: nn.Module, spec: dict):
        super().__init__()
        spec = check_spec(spec)
        self.simple = simple
        self.bgr = spec["channel_order"] == "BGR"
        self.register_buffer("scale", torch.tensor(spec["value_scale"], dtype=torch.float32))
        self.register_buffer("mean", torch.tensor(spec["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec["std"], dtype=torch.float32).view(1, 3, 1, 1))

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """H x W x 3 uint8 RGB -> 1 x 3 x H x W float32 network input."""
        x = image.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
        if self.bgr:
            x = x.flip(1)
        return (x * self.scale - self.mean) / self.std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.simple(self.normalise(image)).argmax(1)[0].to(torch.uint8)


# ---- shared ---------------------------------------------------------------------------------

def _check_args(precision: str, calibration, size) -> tuple[int, int]:
    if precision not in PRECISIONS:
        raise InputError(f"phone formats are fp32 or int8, not {precision!r}")
    if precision == "int8" and not calibration:
        raise InputError("int8 needs calibration frames (normalised 1 x 3 x H x W arrays)")
    size = tuple(int(v) for v in size)
    if len(size) != 2 or min(size) < 8:
        raise InputError(f"the export size must be (height, width), each >= 8; got {size}")
    return size


def _file_meta(meta: dict, fmt: str, precision: str, size: tuple[int, int], app_io: bool) -> dict:
    if app_io and meta.get("preprocess") is None:
        raise InputError("an app-ready export needs the checkpoint's preprocessing (meta['preprocess'])")
    return dict(meta, export_format=fmt, export_precision=precision, input_size=list(size), app_io=app_io)


def _example(size: tuple[int, int], app_io: bool) -> torch.Tensor:
    if app_io:
        return torch.zeros(*size, 3, dtype=torch.uint8)
    return torch.zeros(1, 3, *size)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def _write_bytes(path: Path, data: bytes) -> None:
    """Write under a temporary name beside `path`, renamed when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _calibration_shapes(calibration: list[np.ndarray]) -> None:
    for i, x in enumerate(calibration):
        if x.ndim != 4 or x.shape[:2] != (1, 3) or x.dtype != np.float32:
            raise InputError(f"calibration frame {i}: expected a float32 1 x 3 x H x W array, got "
                             f"{x.dtype} {tuple(x.shape)}")


def quantize_xnnpack(simple: nn.Module, calibration: list[np.ndarray], progress: bool = True) -> nn.Module:
    """PT2E int8 quantisation with the XNNPACK quantizer: weights symmetric per channel, activations
    per tensor, ranges from min/max observers over `calibration` (frames of any size: the graph is
    exported with dynamic height and width for calibrating).

    Args:
        simple: the inference model.
        calibration: normalised float32 1 x 3 x H x W frames (the training augmentation's crops).
        progress: a progress bar over the frames.

    Returns:
        The converted (quantize/dequantize) graph module, B x 3 x H x W -> logits.
    """
    _calibration_shapes(calibration)
    require("executorch", "executorch")
    xq = require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "executorch")
    pt2e = require("torchao.quantization.pt2e.quantize_pt2e", "executorch")
    observers = require("torchao.quantization.pt2e", "executorch")
    config = xq.get_symmetric_quantization_config(is_per_channel=True)
    act = dataclasses.replace(config.input_activation,
                              observer_or_fake_quant_ctr=observers.MinMaxObserver.with_args(eps=2 ** -12))
    config = dataclasses.replace(config, input_activation=act, output_activation=act)
    quantizer = xq.XNNPACKQuantizer().set_global(config)
    first = torch.from_numpy(calibration[0])
    dims = {"x": {2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}}
    graph = torch.export.export(simple.eval(), (first,), dynamic_shapes=dims).module()
    prepared = pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in tqdm(calibration, desc="int8 calibration", unit="frame", disable=not progress, leave=False):
            prepared(torch.from_numpy(np.ascontiguousarray(x)))
    return pt2e.convert_pt2e(prepared)


def _prepare(simple: nn.Module, meta: dict, precision: str, calibration, app_io: bool) -> nn.Module:
    model = simple.eval()
    if precision == "int8":
        model = quantize_xnnpack(model, calibration)
    if app_io:
        model = AppIOModel(model, meta["preprocess"]).eval()
    return model


def _resizing_runner(call, size: tuple[int, int]):
    """run(N x 3 x H x W float32) -> N x C x H x W float32 from `call`, which runs one
    1 x 3 x size float32 C-contiguous array; other sizes are resized (bilinear) both ways."""
    size = tuple(size)

    def run(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"expected an N x 3 x H x W array, got shape {x.shape}")
        outs = []
        for i in range(x.shape[0]):
            # a non-contiguous array (a slice, a transposed view) is copied: the ExecuTorch
            # runtime reads the buffer as if it were contiguous
            one = np.ascontiguousarray(x[i:i + 1], dtype=np.float32)
            if one.shape[2:] != size:
                one = functional.interpolate(torch.from_numpy(one), size=size, mode="bilinear",
                                             align_corners=False).numpy()
            out = np.asarray(call(np.ascontiguousarray(one)), dtype=np.float32).copy()
            if out.shape[2:] != x.shape[2:]:
                out = functional.interpolate(torch.from_numpy(out), size=x.shape[2:], mode="bilinear",
                                             align_corners=False).numpy()
            outs.append(out)
        return np.concatenate(outs, 0)
    return run


def _app_image_runner(call, size: tuple[int, int]):
    """run_image(H x W x 3 uint8 RGB) -> H x W uint8 from `call` at the model's size; another
    size is resized to it (bilinear, cv2) and the class ids back (nearest)."""
    size = tuple(size)

    def run_image(image_rgb: np.ndarray) -> np.ndarray:
        image = np.asarray(image_rgb)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"expected an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        if (height, width) != size:
            image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        ids = np.asarray(call(np.ascontiguousarray(image)), dtype=np.uint8).copy()
        if ids.shape != (height, width):
            ids = cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST)
        return ids
    return run_image


def _check_file(path: Path, suffix: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    if path.suffix != suffix:
        raise InputError(f"{path}: expected a {suffix} file")
    return path


def _runner_meta(path: Path, precision: str | None, app_io: bool) -> dict:
    meta = read_mobile_meta(path)
    if precision is not None and precision != meta["export_precision"]:
        raise InputError(f"{path} was exported as {meta['export_precision']}, not {precision}")
    if bool(meta.get("app_io")) != app_io:
        kind = "an app-ready (uint8 image in, class ids out)" if meta.get("app_io") else "a plain (logits)"
        other = "executorch_app_runner / litert_app_runner" if meta.get("app_io") else "executorch_runner / litert_runner"
        raise InputError(f"{path} is {kind} model: run it with {other}")
    return meta


# ---- ExecuTorch ---------------------------------------------------------------------------------

def write_executorch(simple: nn.Module, path: Path, meta: dict, precision: str,
                     calibration: list[np.ndarray] | None, size: tuple[int, int] = DEFAULT_SIZE, *,
                     app_io: bool = False) -> None:
    """Write an ExecuTorch program lowered to XNNPACK (one delegate call for the whole network).

    Args:
        simple: the model simplified for inference (`cgnet.deploy.simplify.simplify_for_inference`).
        path: the .pte file to write (only this file; the metadata is inside it).
        meta: the cgnet metadata (classes, palette, preprocess, ...), stored in the file.
        precision: 'fp32' or 'int8' (PT2E, XNNPACK quantizer, calibrated on `calibration`).
        calibration: normalised float32 1 x 3 x H x W frames for int8; ignored for fp32.
        size: the fixed input (height, width).
        app_io: H x W x 3 uint8 RGB in, H x W uint8 class ids out (`AppIOModel`).
    """
    size = _check_args(precision, calibration, size)
    file_meta = _file_meta(meta, "executorch", precision, size, app_io)
    exir = require("executorch.exir", "executorch")
    xnnpack = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "executorch")
    model = _prepare(simple, meta, precision, calibration, app_io)
    program = torch.export.export(model, (_example(size, app_io),))
    lowered = exir.to_edge_transform_and_lower(program, partitioner=[xnnpack.XnnpackPartitioner()],
                                               constant_methods={META_METHOD: json.dumps(file_meta)})
    _write_bytes(Path(path), lowered.to_executorch().buffer)


def _executorch_program(path: Path):
    runtime = require("executorch.runtime", "executorch")
    return runtime.Runtime.get().load_program(Path(path))


def _plain_runner(path: Path, suffix: str, make_call, precision: str | None):
    """run(normalised N x 3 x H x W) -> logits for a plain file: checked, its metadata read, the
    runtime's `make_call(path)` wrapped to resize other sizes to the file's."""
    path = _check_file(path, suffix)
    meta = _runner_meta(path, precision, app_io=False)
    return _resizing_runner(make_call(path), meta["input_size"])


def _app_runner(path: Path, suffix: str, make_call):
    """run_image(H x W x 3 uint8 RGB) -> H x W class ids for an app-ready file."""
    path = _check_file(path, suffix)
    meta = _runner_meta(path, None, app_io=True)
    return _app_image_runner(make_call(path), meta["input_size"])


def _executorch_call(path: Path):
    method = _executorch_program(path).load_method("forward")
    return lambda x: method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0].numpy()


def executorch_runner(path: Path, precision: str | None = None):
    """A plain .pte file: run(float32 N x 3 x H x W normalised) -> N x C x H x W float32 logits.

    Args:
        path: the .pte file (written with app_io=False).
        precision: 'fp32' or 'int8' to check the file is that, or None.
    """
    return _plain_runner(path, ".pte", _executorch_call, precision)


def executorch_app_runner(path: Path):
    """An app-ready .pte file: run_image(H x W x 3 uint8 RGB) -> H x W uint8 class ids."""
    return _app_runner(path, ".pte", _executorch_call)


# ---- LiteRT ---------------------------------------------------------------------------------------

def _with_tflite_metadata(model_bytes: bytes, file_meta: dict) -> bytes:
    """The .tflite flatbuffer with a metadata entry `cgnet` holding the JSON."""
    utils = require("ai_edge_litert.tools.flatbuffer_utils", "litert")
    schema = require("ai_edge_litert.schema_py_generated", "litert")
    model = utils.convert_bytearray_to_object(bytearray(model_bytes))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(file_meta).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = META_NAME, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) != META_NAME] + [entry]
    return bytes(utils.convert_object_to_bytearray(model))


def _name(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def write_litert(simple: nn.Module, path: Path, meta: dict, precision: str,
                 calibration: list[np.ndarray] | None, size: tuple[int, int] = DEFAULT_SIZE, *,
                 app_io: bool = False) -> None:
    """Write a LiteRT (.tflite) model converted by litert-torch (fp32 only, see module docstring).

    Args:
        simple: the model simplified for inference.
        path: the .tflite file to write (only this file; the metadata is inside it).
        meta: the cgnet metadata, stored in the file.
        precision: 'fp32' (int8 is refused).
        calibration: unused (fp32).
        size: the fixed input (height, width).
        app_io: H x W x 3 uint8 RGB in, H x W uint8 class ids out (`AppIOModel`).
    """
    size = _check_args(precision, calibration, size)
    if precision != "fp32":
        raise InputError("LiteRT export is fp32 only (int8: use ExecuTorch, --format executorch)")
    file_meta = _file_meta(meta, "litert", precision, size, app_io)
    litert_torch = require("litert_torch", "litert")
    model = _prepare(simple, meta, precision, calibration, app_io)
    edge = litert_torch.convert(model, (_example(size, app_io),))
    content = edge.model_content
    content = content() if callable(content) else content
    _write_bytes(Path(path), _with_tflite_metadata(bytes(content), file_meta))


def _litert_call(path: Path):
    interpreter_lib = require("ai_edge_litert.interpreter", "litert")
    interpreter = interpreter_lib.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]

    def call(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp, np.ascontiguousarray(x))
        interpreter.invoke()
        return interpreter.get_tensor(out).copy()
    return call


def litert_runner(path: Path, precision: str | None = None):
    """A plain .tflite file: run(float32 N x 3 x H x W normalised) -> N x C x H x W float32 logits.

    Args:
        path: the .tflite file (written with app_io=False).
        precision: 'fp32' to check the file is that, or None.
    """
    return _plain_runner(path, ".tflite", _litert_call, precision)


def litert_app_runner(path: Path):
    """An app-ready .tflite file: run_image(H x W x 3 uint8 RGB) -> H x W uint8 class ids."""
    return _app_runner(path, ".tflite", _litert_call)


# ---- metadata ----------------------------------------------------------------------------------

def read_mobile_meta(path: Path) -> dict:
    """The cgnet metadata inside a .pte (constant method `cgnet_meta`) or .tflite (metadata entry
    `cgnet`): the writer's `meta` plus export_format, export_precision, input_size [H, W], app_io.

    Args:
        path: a file written by `write_executorch` or `write_litert`.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    if path.suffix == ".pte":
        program = _executorch_program(path)
        if META_METHOD not in program.method_names:
            raise InputError(f"{path}: an ExecuTorch program without cgnet metadata (not written by cgnet export)")
        return json.loads(program.load_method(META_METHOD).execute([])[0])
    if path.suffix == ".tflite":
        utils = require("ai_edge_litert.tools.flatbuffer_utils", "litert")
        model = utils.read_model_from_bytearray(bytearray(path.read_bytes()))
        for entry in model.metadata or []:
            if _name(entry.name) == META_NAME:
                return json.loads(bytes(np.asarray(model.buffers[entry.buffer].data, dtype=np.uint8)).decode())
        raise InputError(f"{path}: a LiteRT model without cgnet metadata (not written by cgnet export)")
    raise InputError(f"{path}: not a phone model (.pte or .tflite)")
