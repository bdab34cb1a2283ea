"""Runners: what runs a model, behind one calling convention. Each `*_runner` returns
`run(x)`: a float32 N x 3 x H x W normalised array in, N x C x H x W float32 logits out (or, where
`labels=True` is offered, N x H x W uint8 class ids computed where the model runs). Eager and
compiled PyTorch, ONNX Runtime, OpenVINO, torch.export programs and legacy TorchScript files. Near
the bottom of `cgnet.deploy`: it imports only `simplify` of it (the formats table in
`cgnet.deploy.formats` maps files to runners; `cgnet.deploy.predictor` wraps them as Predictors).
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from ..common import AUTOCAST_DTYPES, CGNetError, InputError, autocast, quiet_third_party
from .simplify import simplify_for_inference

class MissingBackend(CGNetError, RuntimeError):
    """An optional backend (ONNX Runtime, OpenVINO, ...) is not installed."""


def require(module: str, extra: str | None = None):
    """Import an optional backend, or fail with the one line that says how to get it (`extra`:
    the pip extra of cgnet that brings it; the formats table in `cgnet.deploy.formats` names it)."""
    try:
        with quiet_third_party():  # torchao, LiteRT, ... print load warnings when imported
            return importlib.import_module(module)
    except ImportError:
        how = f"pip install 'cgnet[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        raise MissingBackend(f"{module} is not installed: {how}") from None


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
    onnxruntime = require("onnxruntime")
    opts = onnxruntime.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # cgnet's name -> OpenVINO's inference precision


def openvino_runner(path: Path, precision: str = "fp32"):
    """An OpenVINO IR on the CPU at an inference precision (fp32, or bf16: OpenVINO casts where the
    CPU runs bf16 natively and emulates it elsewhere). int8 is refused: cgnet writes no quantised
    OpenVINO graph, and the precision hint alone would run the fp32 graph while calling it int8."""
    if precision not in OPENVINO_PRECISIONS:
        raise InputError(f"{path}: OpenVINO runs fp32 or bf16 here, not {precision} (cgnet writes no quantised "
                         "OpenVINO file)")
    openvino = require("openvino")
    core = openvino.Core()
    model = core.read_model(str(path))
    config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision]}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[compiled.output(0)].copy()


def exported_program_runner(path: Path):
    """A `torch.export` program (.pt2) run eagerly on the CPU: run(float32 N x 3 x H x W array) ->
    N x C x H x W float32 logits."""
    module = torch.export.load(str(path)).module()

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()
    return run


def torchscript_runner(path: Path):
    """A TorchScript file written by earlier cgnet versions (torch 2.13 deprecates TorchScript;
    new exports are .pt2)."""
    return torch_runner(torch.jit.load(str(path), map_location="cpu"), "fp32", "cpu", channels_last=False)
