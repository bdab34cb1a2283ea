"""Runners: what runs a model, behind one calling convention. Each `*_runner` returns
`run(x)`: a float32 N x 3 x H x W normalised array in, N x C x H x W float32 logits out (or, where
`labels=True` is offered, N x H x W uint8 class ids computed where the model runs). Eager and
compiled PyTorch, ONNX Runtime, OpenVINO, torch.export programs and legacy TorchScript files. Near
the bottom of `cgnet.deploy`: it imports only `simplify` of it (the formats table in
`cgnet.deploy.formats` maps files to runners; `cgnet.deploy.predictor` wraps them as Predictors).
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import itertools
import os
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

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


# ORT's graph optimisation levels by name. On x86 "layout" and "all" add the NCHWc layout
# transformer (convolutions in blocked channels, reorders at the ops it does not cover); "extended"
# stops before it.
ORT_OPTIMIZATION = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                    "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}


@dataclass(frozen=True)
class OrtSettings:
    """ONNX Runtime CPU session settings (`onnxruntime_runner`); the defaults are ORT's own.

    Args:
        intra_op_threads: threads of one operator (0: ORT's choice, one per physical core).
        inter_op_threads: threads running independent operators at once (with `parallel`; 0: ORT's choice).
        parallel: ORT_PARALLEL execution (independent branches at once) instead of ORT_SEQUENTIAL.
        spinning: the pool threads spin between operators (`session.intra_op.allow_spinning`):
            less wake-up latency, but they hold the cores that other threads (decoding, encoding) want.
        optimization: graph optimisation level, a key of `ORT_OPTIMIZATION`.
        denormal_as_zero: flush denormal floats to zero (`session.set_denormal_as_zero`).
        profile: a file prefix: ORT writes its per-node profile (JSON) there, `end_profiling` names it.
    """
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    parallel: bool = False
    spinning: bool = True
    optimization: str = "all"
    denormal_as_zero: bool = False
    profile: str | None = None


# the settings `benchmarks/onnxruntime_settings.py` times against eager PyTorch; DEFAULT_ORT is what
# cgnet runs: "extended", without the NCHWc layout transformer, which measured faster than ORT's own
# defaults (figures: results/onnxruntime_settings.txt, docs/speed.md): the transformer puts ~150
# layout reorders around the 54 PReLUs (written as Max), which it does not cover
ORT_PRESETS = {
    "default": OrtSettings(),
    "threads-1": OrtSettings(intra_op_threads=1),
    "threads-2": OrtSettings(intra_op_threads=2),
    "no-spinning": OrtSettings(spinning=False),
    "extended": OrtSettings(optimization="extended"),  # no NCHWc layout transformer
    "basic": OrtSettings(optimization="basic"),
    "parallel": OrtSettings(parallel=True, intra_op_threads=1, inter_op_threads=2),
    "denormal-as-zero": OrtSettings(denormal_as_zero=True),
}
DEFAULT_ORT = ORT_PRESETS["extended"]


def ort_session_options(settings: OrtSettings):
    """`onnxruntime.SessionOptions` for `settings`."""
    onnxruntime = require("onnxruntime")
    if settings.optimization not in ORT_OPTIMIZATION:
        raise InputError(f"ONNX Runtime optimisation level {settings.optimization!r} is not one of "
                         f"{', '.join(ORT_OPTIMIZATION)}")
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = settings.inter_op_threads
    opts.execution_mode = (onnxruntime.ExecutionMode.ORT_PARALLEL if settings.parallel
                           else onnxruntime.ExecutionMode.ORT_SEQUENTIAL)
    opts.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel,
                                            ORT_OPTIMIZATION[settings.optimization])
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.spinning else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if settings.spinning else "0")
    if settings.denormal_as_zero:
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    if settings.profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = settings.profile
    return opts


def onnxruntime_session(path: Path, settings: OrtSettings | None = None):
    """An ONNX Runtime CPU session of the file at `path` with `settings` (default `DEFAULT_ORT`)."""
    onnxruntime = require("onnxruntime")
    return onnxruntime.InferenceSession(str(path), ort_session_options(settings or DEFAULT_ORT),
                                        providers=["CPUExecutionProvider"])


def onnxruntime_runner(path: Path, settings: OrtSettings | None = None):
    """ONNX Runtime on the CPU: run(float32 N x 3 x H x W array) -> N x C x H x W float32 logits."""
    session = onnxruntime_session(path, settings)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


# cgnet's name -> OpenVINO's inference precision; an int8 file (FakeQuantize operations, written by NNCF)
# runs its int8 parts in int8 and what accuracy control kept in float in fp32
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_LIBC = ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None


@contextlib.contextmanager
def signal_stack_kept():
    """Give the calling thread its alternate signal stack back after an OpenVINO call.

    OpenVINO's CPU plugin (2025-2026 releases) gives a thread that runs inference an alternate
    signal stack of its own, and a compiled model put back the one it found when it is destroyed.
    Destroyed in another order than created, the thread is left with a freed stack, and the next
    signal delivered to it with a Python handler (Python installs them all with SA_ONSTACK) ended the
    process with a segmentation fault the kernel raises (si_code SI_KERNEL), no faulthandler output:
    found in the test suite (an OpenVINO test file, then a SIGTERM test). With the thread's own stack
    put back after every call, whatever a compiled model restores later is a stack that lives."""
    if _LIBC is None:
        yield
        return
    before = _SignalStack()
    _LIBC.sigaltstack(None, ctypes.byref(before))
    try:
        yield
    finally:
        _LIBC.sigaltstack(ctypes.byref(before), None)


def openvino_runner(path: Path, precision: str = "fp32"):
    """An OpenVINO IR on the CPU at an inference precision (fp32, or bf16: OpenVINO casts where the
    CPU runs bf16 natively and emulates it elsewhere), or an int8 IR at int8. int8 is refused for a
    float IR (the precision hint alone would run the fp32 graph while calling it int8), and fp32 and
    bf16 for an int8 one."""
    compiled = _compiled_openvino(path, precision, {})
    with signal_stack_kept():
        request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        with signal_stack_kept():
            return request.infer({0: x})[compiled.output(0)].copy()
    return run


def _compiled_openvino(path: Path, precision: str, config: dict, change: Callable | None = None):
    """The IR at `path` (changed by change(model) when given) compiled for the CPU at `precision`
    with `config` added (OpenVINO properties)."""
    if precision not in OPENVINO_PRECISIONS:
        raise InputError(f"{path}: OpenVINO runs {', '.join(OPENVINO_PRECISIONS)} here, not {precision}")
    core = require("openvino").Core()
    model = core.read_model(str(path))
    quantised = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    if quantised != (precision == "int8"):
        raise InputError(f"{path}: an {'int8' if quantised else 'unquantised'} OpenVINO file runs at "
                         f"{'int8' if quantised else 'fp32 or bf16'}, not {precision}")
    with signal_stack_kept():
        return core.compile_model(change(model) if change else model, "CPU",
                                  {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision], **config})


def with_argmax(model):
    """An OpenVINO model of N x C x H x W logits made to output N x H x W uint8 class ids: TopK
    with k=1 over the classes, `stable` so that of equal maxima the lowest class index wins, as
    numpy's and torch's argmax take it."""
    openvino = require("openvino")
    ops = openvino.opset13
    logits = model.get_results()[0].input_value(0)
    best = openvino.opset11.topk(logits, 1, axis=1, mode="max", sort="value", index_element_type="i32", stable=True)
    ids = ops.convert(ops.squeeze(best.output(1), ops.constant(np.array([1], np.int64))), "u8")
    return openvino.Model([ops.result(ids)], model.get_parameters(), "cgnet-class-ids")


def in_order(submit: Callable[[np.ndarray], Future], inputs: Iterable, limit: int) -> Iterator:
    """submit(x).result() for each x of `inputs`, in input order whatever order they finish in, with
    at most `limit` submitted and not yet yielded. An error (taking the next input, submitting it, or
    its result) is raised at its item's turn, after the results before it; nothing is submitted after
    it. Leaving early (an error, `close`) waits for the submitted ones to finish."""
    pending: deque[Future] = deque()
    items = iter(inputs)
    try:
        while True:
            try:
                pending.append(submit(next(items)))
            except StopIteration:
                break
            except Exception as error:  # noqa: BLE001 - raised at its turn, after the results before it
                pending.append(_failed(error))
                break
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:  # what is still running holds requests and buffers: let it finish
            future.exception()


def _failed(error: BaseException) -> Future:
    failed: Future = Future()
    failed.set_exception(error)
    return failed


STREAMS = 2  # OpenVINO CPU streams of `openvino_stream_runner`: two frames run at once, one per stream


def openvino_stream_runner(path: Path, precision: str = "fp32", streams: int = STREAMS, labels: bool = False):
    """OpenVINO for a stream of frames: the IR compiled with the THROUGHPUT hint and `streams`
    streams, run by an `AsyncInferQueue` of the compiled model's OPTIMAL_NUMBER_OF_INFER_REQUESTS
    requests (at least 2), so several frames are in flight. Returns
    stream(inputs, finish=copy) -> iterator of finish(logits) in input order, where `inputs` are
    float32 1 x 3 x H x W arrays and `logits` the request's 1 x C x H x W float32 output, valid only
    during the call (finish runs in OpenVINO's callback thread as soon as a frame is done). With
    labels=True the graph ends in the argmax over classes (`with_argmax`) and the output is
    1 x H x W uint8 class ids: the argmax runs inside OpenVINO's streams (numpy's took about 7 ms a
    480x360 frame, a fifth of the model's time, in the thread that finishes each frame). The
    synchronous `openvino_runner` (LATENCY) stays the one for single images."""
    openvino = require("openvino")
    config = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": str(streams)}
    compiled = _compiled_openvino(path, precision, config, with_argmax if labels else None)
    jobs = max(2, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    with signal_stack_kept():
        requests = openvino.AsyncInferQueue(compiled, jobs)
    # A request's userdata stays in the queue (C++, out of reach of Python's garbage collector) until
    # the request is reused, so it is only a key into `in_flight`, which `done` empties: a future
    # there, once it held a frame's error, held through the error's traceback the frames that called
    # the stream, the Predictor among them, and so this queue, its model and OpenVINO's stream threads,
    # which then lived as long as the process (a later fork and subprocess crashed it).
    in_flight: dict[int, tuple[Future, Callable]] = {}
    keys = itertools.count()

    def done(request, key: int) -> None:
        future, finish = in_flight.pop(key)
        try:
            future.set_result(finish(request.get_output_tensor(0).data))
        except BaseException as error:  # noqa: BLE001 - raised in the consumer, at this frame's turn
            future.set_exception(error)
    requests.set_callback(done)

    def stream(inputs: Iterable[np.ndarray], finish: Callable = np.copy) -> Iterator:
        def submit(x: np.ndarray) -> Future:
            future: Future = Future()
            key = next(keys)
            in_flight[key] = (future, finish)
            try:
                # share_inputs=True (no copy) gave wrong logits for cgnet's inputs: OpenVINO copies each frame
                with signal_stack_kept():
                    requests.start_async({0: x}, key)
            except BaseException:
                in_flight.pop(key, None)
                raise
            return future
        try:
            yield from in_order(submit, inputs, jobs)
        finally:
            with signal_stack_kept():
                requests.wait_all()
    stream.jobs, stream.compiled = jobs, compiled
    return stream


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
