"""ExecuTorch (`.pte`): the model lowered to XNNPACK (one delegate call for the whole network),
fp32 or int8 (PT2E post-training quantisation with the XNNPACK quantizer), its metadata in the
constant method `cgnet_meta`; the runners through ExecuTorch's Python runtime."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ...common import InputError
from ...fileio import write_atomic
from ..runners import require
from .shared import DEFAULT_SIZE, app_runner, check_args, example_input, file_meta as file_meta_of, plain_runner, prepare

META_METHOD = "cgnet_meta"   # the .pte's constant method holding the metadata


def _calibration_shapes(calibration: list[np.ndarray]) -> None:
    for i, x in enumerate(calibration):
        if x.ndim != 4 or x.shape[:2] != (1, 3) or x.dtype != np.float32:
            raise InputError(f"calibration frame {i}: expected a float32 1 x 3 x H x W array, got "
                             f"{x.dtype} {tuple(x.shape)}")


FLOAT_MODULES = ("stem",)   # left float by quantize_xnnpack


def _outside(modules: tuple[str, ...]):
    """A node filter: true for nodes of no module named in `modules` (nor one of their children)."""
    def keep(node) -> bool:
        paths = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
        return not any(p == m or p.startswith(m + ".") for p in paths for m in modules)
    return keep


def quantize_xnnpack(simple: nn.Module, calibration: list[np.ndarray], progress: bool = True) -> nn.Module:
    """PT2E int8 quantisation with the XNNPACK quantizer: weights symmetric per channel, activations
    per tensor, ranges from min/max observers over `calibration` (frames of any size: the graph is
    exported with dynamic height and width for calibrating).

    The stem (`FLOAT_MODULES`: the first three convolutions and their PReLUs, at half resolution)
    stays float, as OpenVINO's accuracy control also chose for its int8 file. Quantised, it cost the
    shipped CamVid weights 0.61 test mIoU (64.72 against 65.33 in fp32, the q/dq graph in PyTorch);
    float, 0.11 (65.22); the first two alone float, 0.28 (docs/deployment.md).

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
    quantizer = xq.XNNPACKQuantizer().set_global(config).set_filter_function(_outside(FLOAT_MODULES))
    first = torch.from_numpy(calibration[0])
    dims = {"x": {2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}}
    graph = torch.export.export(simple.eval(), (first,), dynamic_shapes=dims).module()
    prepared = pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in tqdm(calibration, desc="int8 calibration", unit="frame", disable=not progress, leave=False):
            prepared(torch.from_numpy(np.ascontiguousarray(x)))
    return pt2e.convert_pt2e(prepared)


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
    size = check_args(precision, calibration, size)
    file_meta = file_meta_of(meta, "executorch", precision, size, app_io)
    exir = require("executorch.exir", "executorch")
    xnnpack = require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "executorch")
    model = quantize_xnnpack(simple.eval(), calibration) if precision == "int8" else simple.eval()
    program = torch.export.export(prepare(model, meta, app_io), (example_input(size, app_io),))
    lowered = exir.to_edge_transform_and_lower(program, partitioner=[xnnpack.XnnpackPartitioner()],
                                               constant_methods={META_METHOD: json.dumps(file_meta)})
    write_atomic(path, bytes(lowered.to_executorch().buffer))


def _executorch_program(path: Path):
    runtime = require("executorch.runtime", "executorch")
    return runtime.Runtime.get().load_program(Path(path))


def _executorch_call(path: Path):
    method = _executorch_program(path).load_method("forward")
    return lambda x: method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0].numpy()


def executorch_runner(path: Path, precision: str | None = None):
    """A plain .pte file: run(float32 N x 3 x H x W normalised) -> N x C x H x W float32 logits.

    Args:
        path: the .pte file (written with app_io=False).
        precision: 'fp32' or 'int8' to check the file is that, or None.
    """
    return plain_runner(path, ".pte", _executorch_call, read_meta, precision)


def executorch_app_runner(path: Path):
    """An app-ready .pte file: run_image(H x W x 3 uint8 RGB) -> H x W uint8 class ids."""
    return app_runner(path, ".pte", _executorch_call, read_meta)




def read_meta(path: Path) -> dict:
    """The cgnet metadata of a .pte file: its constant method `cgnet_meta` (a JSON string)."""
    program = _executorch_program(path)
    if META_METHOD not in program.method_names:
        raise InputError(f"{path}: an ExecuTorch program without cgnet metadata (not written by cgnet export)")
    return json.loads(program.load_method(META_METHOD).execute([])[0])
