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

The package: `shared` (the app-ready model, argument checks, resizing runners), `executorch`,
`litert`; here, the metadata reader that takes either file.
"""
from __future__ import annotations

from pathlib import Path

from ...common import InputError, MissingFileError
from . import executorch, litert
from .executorch import executorch_app_runner, executorch_runner, quantize_xnnpack, write_executorch
from .litert import litert_app_runner, litert_runner, write_litert
from .shared import DEFAULT_SIZE, AppIOModel

__all__ = ["AppIOModel", "write_executorch", "executorch_runner", "executorch_app_runner", "write_litert",
           "litert_runner", "litert_app_runner", "read_mobile_meta", "quantize_xnnpack", "DEFAULT_SIZE"]


def read_mobile_meta(path: Path) -> dict:
    """The cgnet metadata inside a .pte (constant method `cgnet_meta`) or .tflite (metadata entry
    `cgnet`): the writer's `meta` plus export_format, export_precision, input_size [H, W], app_io.

    Args:
        path: a file written by `write_executorch` or `write_litert`.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    readers = {".pte": executorch.read_meta, ".tflite": litert.read_meta}
    if path.suffix not in readers:
        raise InputError(f"{path}: not a phone model (.pte or .tflite)")
    return readers[path.suffix](path)
