"""LiteRT (`.tflite`): the model converted by litert-torch (fp32 only), its metadata in the
flatbuffer's metadata entry `cgnet`; the runners through ai-edge-litert's interpreter."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch.nn as nn

from ...common import InputError
from ...fileio import write_atomic
from ..runners import require
from .shared import DEFAULT_SIZE, app_runner, check_args, example_input, file_meta as file_meta_of, plain_runner, prepare

META_NAME = "cgnet"          # the .tflite's metadata entry


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
    size = check_args(precision, calibration, size)
    if precision != "fp32":
        raise InputError("LiteRT export is fp32 only (int8: use ExecuTorch, --format executorch)")
    file_meta = file_meta_of(meta, "litert", precision, size, app_io)
    litert_torch = require("litert_torch", "litert")
    edge = litert_torch.convert(prepare(simple.eval(), meta, app_io), (example_input(size, app_io),))
    content = edge.model_content
    content = content() if callable(content) else content
    write_atomic(path, _with_tflite_metadata(bytes(content), file_meta))


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
    return plain_runner(path, ".tflite", _litert_call, read_meta, precision)


def litert_app_runner(path: Path):
    """An app-ready .tflite file: run_image(H x W x 3 uint8 RGB) -> H x W uint8 class ids."""
    return app_runner(path, ".tflite", _litert_call, read_meta)




def read_meta(path: Path) -> dict:
    """The cgnet metadata of a .tflite file: its flatbuffer metadata entry `cgnet` (JSON bytes)."""
    utils = require("ai_edge_litert.tools.flatbuffer_utils", "litert")
    model = utils.read_model_from_bytearray(bytearray(Path(path).read_bytes()))
    for entry in model.metadata or []:
        if _name(entry.name) == META_NAME:
            return json.loads(bytes(np.asarray(model.buffers[entry.buffer].data, dtype=np.uint8)).decode())
    raise InputError(f"{path}: a LiteRT model without cgnet metadata (not written by cgnet export)")
