"""The export formats, in one table.

Each `ExportFormat` says, for one kind of file `cgnet export` writes: its suffix, the writer, the
loader, the precisions, the pip extra it needs, the backend name that runs a checkpoint through
it, and how an export is verified. Every consumer reads `FORMATS`: `cgnet export`, `make_predictor`
and `load_exported`, `bench`, `eval/predict/serve --backend`. A new format is one entry here plus
its writer and loader.

Writers take the model already simplified for inference (`cgnet.deploy.simplify`), the path to
write, the metadata to store, the precision and (for int8) calibration inputs. Loaders return
`run(x)`: a float32 N x 3 x H x W normalised array in, N x C x H x W float32 logits out.
"""
from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..common import InputError
from . import mobile, openvino_int8
from .ncnn_format import ncnn_runner, read_ncnn_meta, write_ncnn
from .openvino_int8 import Validation
from .runners import (exported_program_runner, onnxruntime_runner, openvino_runner, openvino_stream_runner, require,
                      torchscript_runner)

# the input an exported graph is traced with; height and width stay dynamic
TRACE_INPUT = (1, 3, 96, 128)
META_FILE = "cgnet_meta.json"  # the metadata's name inside .pt2 (and legacy .ts) archives


class MissingMetadata(InputError):
    """A model file that cgnet export did not write (no cgnet metadata inside)."""


# ---- writers ----------------------------------------------------------------------------------

def write_onnx(model: nn.Module, path: Path, meta: dict, precision: str = "fp32",
               calibration: list[np.ndarray] | None = None, opset: int = 17) -> None:
    """ONNX with dynamic batch, height and width (the TorchScript-based exporter: see the
    deployment docs for why not the dynamo one), the metadata in `metadata_props['cgnet']`;
    int8: static QDQ quantisation by ONNX Runtime, calibrated on `calibration`."""
    onnx = require("onnx")
    if precision == "int8":
        fp32 = path.with_name(path.name + ".fp32.onnx")
        try:
            write_onnx(model, fp32, meta)
            _quantize_onnx_int8(fp32, path, calibration)
        finally:
            fp32.unlink(missing_ok=True)
        return
    torch.onnx.export(model, (torch.randn(*TRACE_INPUT),), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                    "logits": {0: "batch", 2: "height", 3: "width"}},
                      opset_version=opset, dynamo=False)
    _set_onnx_meta(onnx, path, meta)


def _set_onnx_meta(onnx, path: Path, meta: dict) -> None:
    proto = onnx.load(str(path))
    for prop in list(proto.metadata_props):
        if prop.key == "cgnet":
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "cgnet", json.dumps(meta)
    onnx.save(proto, str(path))


def _quantize_onnx_int8(fp32_path: Path, path: Path, calibration: list[np.ndarray],
                        reduce_range: bool = True) -> None:
    """Static post-training quantisation (QDQ, per channel) calibrated on normalised crops.

    Weights use 7 bits (`reduce_range`): x86 CPUs without VNNI (AVX2, older AVX-512) multiply
    uint8 activations by int8 weights with an instruction that adds pairs of products in int16
    and saturates; with 8-bit weights CGNet's int8 file lost 8 points of CamVid test mIoU on an
    AVX2-only EPYC (85% class-id agreement with fp32); with weights in [-64, 64] a pair's sum
    (at most 2 x 255 x 64 = 32,640 < 32,767) cannot saturate, whatever CPU runs the file.
    `reduce_range=False` (8-bit weights) is for benchmarks/onnxruntime_settings.py's comparison."""
    quantization = require("onnxruntime.quantization")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {"image": x}

    # ONNX Runtime logs advice on the root logger ("consider pre-processing", and a per-channel axis
    # for the BatchNorms after concatenations, which stay per tensor): `export` calls this writer
    # inside `quiet_third_party`, which keeps it from cgnet's users
    quantization.quantize_static(str(fp32_path), str(path), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=True, reduce_range=reduce_range,
                                 activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8)
    # quantize_static keeps metadata_props in the versions tested; set it again in case one drops it
    _set_onnx_meta(require("onnx"), path, json.loads(_onnx_meta(fp32_path)))


def write_openvino(model: nn.Module, path: Path, meta: dict, precision: str = "fp32",
                   calibration: list[np.ndarray] | None = None, validation: Validation | None = None) -> None:
    """OpenVINO IR (.xml and its weights in the .bin beside it), converted from the ONNX export, fp32
    weights; bf16 is an inference precision the loader applies, stored in the metadata. int8: NNCF's
    post-training quantisation calibrated on `calibration`, with accuracy control on `validation`
    (labelled val frames; None: plain post-training quantisation); the metadata's "int8" entry says
    what was quantised and what was kept in float (`cgnet.deploy.openvino_int8`)."""
    openvino = require("openvino")
    onnx_path = path.with_name(path.name + ".onnx")
    try:
        write_onnx(model, onnx_path, meta)
        converted = openvino.convert_model(str(onnx_path))
    finally:
        onnx_path.unlink(missing_ok=True)
    if precision == "int8":
        converted, int8 = openvino_int8.quantize(converted, calibration, validation)
        meta = dict(meta, int8=int8)
    converted.set_rt_info(json.dumps(meta), ["cgnet"])
    openvino.save_model(converted, str(path), compress_to_fp16=False)


def write_pt2(model: nn.Module, path: Path, meta: dict, precision: str = "fp32",
              calibration: list[np.ndarray] | None = None) -> None:
    """A `torch.export` ExportedProgram (.pt2) with dynamic batch, height and width (from 9
    pixels: the network's 1/8 feature map must be larger than one pixel; traced at batch 2, since
    export specialises a traced size of 1), the metadata as an extra file in the archive."""
    size = dict(min=9, max=16384)
    dims = {0: torch.export.Dim("batch", min=1, max=1024), 2: torch.export.Dim("height", **size),
            3: torch.export.Dim("width", **size)}
    program = torch.export.export(model.eval(), (torch.randn(2, *TRACE_INPUT[1:]),), dynamic_shapes=(dims,),
                                  strict=False)
    torch.export.save(program, str(path), extra_files={META_FILE: json.dumps(meta)})


# ---- metadata readers --------------------------------------------------------------------------

def _onnx_meta(path: Path) -> str | None:
    onnx = require("onnx")
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return props.get("cgnet")


def _openvino_meta(path: Path) -> str | None:
    model = require("openvino").Core().read_model(str(path))
    return model.get_rt_info(["cgnet"]).astype(str) if model.has_rt_info(["cgnet"]) else None


def _pt2_meta(path: Path) -> str | None:
    extra = {META_FILE: ""}
    torch.export.load(str(path), extra_files=extra)
    return extra[META_FILE] or None


def _torchscript_meta(path: Path) -> str | None:
    extra = {META_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return extra[META_FILE] or None


# ---- the table ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportFormat:
    """One kind of file `cgnet export` writes (or, with `write=None`, only reads)."""
    name: str                      # --format
    suffix: str                    # the file's suffix
    title: str                     # the runtime, for messages and the docs
    precisions: tuple[str, ...]    # what --precision may be; the first is the default
    extra: str | None              # pip install 'cgnet[EXTRA]' brings what it needs
    modules: tuple[str, ...]       # what must be importable to write and to run it
    write: Callable | None         # write(simple_model, path, meta, precision, calibration)
    load: Callable                 # load(path, precision) -> run(x) -> logits
    read_meta: Callable            # read_meta(path) -> the metadata JSON, or None
    checked: str                   # how an export is run to verify it (`verified` adds the thresholds)
    backend: str | None = None     # --backend NAME runs a checkpoint through this format
    companions: tuple[str, ...] = ()  # suffixes of files written beside it
    calibrated: tuple[str, ...] = ()  # precisions that need calibration frames
    precision_at_load: bool = False   # the runtime applies the precision when it loads the file
    fixed_size: bool = False          # one input size, chosen at export (--size); runners resize to it
    load_app: Callable | None = None  # load_app(path) -> run_image(H x W x 3 uint8) -> H x W class ids,
    #                                   for files written app-ready (--app-io)
    precision_notes: tuple[tuple[str, str], ...] = ()  # (precision, how it is made) for `verified`
    load_stream: Callable | None = None  # load_stream(path, precision) -> stream(inputs, finish) -> results in
    #                                      order, several frames in flight (Predictor.predict_stream)
    verified_at: tuple[str, ...] = ()  # precisions every export is verified at, whichever was asked (the
    #                                    file is the same; apps choose at load time)
    in_file: tuple[str, ...] = ()  # with precision_at_load: the precisions written into the file, which no
    #                                load changes (the others are applied at load time to a float file)
    validated: tuple[str, ...] = ()  # precisions whose writer takes `validation=` (labelled val frames:
    #                                  accuracy control, `cgnet.deploy.openvino_int8.Validation`)
    precision_extras: tuple[tuple[str, str, str], ...] = ()  # (precision, module, extra): what writing that
    #                                                          precision needs beyond `modules`

    @property
    def verified(self) -> str:
        """How an export is checked before it gets its name: `checked`, then each precision's
        bar from `AGREEMENT`, `MAX_ABS_FP32` and `agreement_bar` (what `cgnet.deploy.export.verify` applies)."""
        if self.write is None:
            return self.checked
        notes = dict(self.precision_notes)
        bars = []
        for precision in self.precisions:
            note = f" ({notes[precision]})" if precision in notes else ""
            diff = f"max |logit diff| <= {MAX_ABS_FP32:g} and " if precision == "fp32" else ""
            bar = f"{100 * AGREEMENT[precision]:g}%"
            if precision in EMULATED:
                bar = (f"the lower of {bar} and 1 - 2x the disagreement of {precision} emulated in PyTorch on the "
                       f"same frames, at least {100 * AGREEMENT_FLOOR:g}%")
            bars.append(f"{precision}{note}: {diff}argmax agreement >= {bar}")
        return f"{VERIFIED}{self.checked}; " + "; ".join(bars)

    def files(self, path: Path) -> list[Path]:
        """The file and its companions."""
        return [path] + [path.with_suffix(s) for s in self.companions]

    def installed(self) -> bool:
        return all(_importable(m) for m in self.modules)

    def installed_for(self, precision: str) -> bool:
        """`installed`, and what writing `precision` needs besides (`precision_extras`)."""
        return self.installed() and all(_importable(m) for p, m, _ in self.precision_extras if p == precision)

    def require(self) -> None:
        """Fail with the one line that says how to install what this format needs."""
        for module in self.modules:
            require(module, self.extra)

    def require_writer(self, precision: str) -> None:
        """`require`, and what writing `precision` needs besides (`precision_extras`)."""
        self.require()
        for needed, module, extra in self.precision_extras:
            if needed == precision:
                require(module, extra)

    def writer_options(self, size: tuple[int, int] | None, app_io: bool) -> dict:
        """The keyword arguments of this format's writer for --size and --app-io."""
        if app_io and self.load_app is None:
            apps = [f.name for f in FORMATS.values() if f.load_app is not None]
            raise InputError(f"--app-io: --format {self.name} has no app-ready form ({', '.join(apps)} have)")
        if size is not None and not self.fixed_size:
            raise InputError(f"--size: --format {self.name} keeps height and width dynamic; --size is for "
                             f"{', '.join(f.name for f in FORMATS.values() if f.fixed_size)}")
        return {**({"size": size} if size is not None else {}), **({"app_io": True} if app_io else {})}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


# argmax agreement (fraction of pixels) an export must reach against eager fp32 PyTorch, per
# precision, and the largest logit difference an fp32 export may have: `cgnet.deploy.export.verify`
# applies them (through `agreement_bar`), `ExportFormat.verified` states them. bf16 (the default
# path where the CPU runs bf16 natively) and fp16 (ncnn's default options, what an app gets) start
# from fp32's agreement; `agreement_bar` relaxes it only as far as their own rounding flips pixels.
AGREEMENT = {"fp32": 0.999, "bf16": 0.999, "fp16": 0.999, "int8": 0.97}
MAX_ABS_FP32 = 1e-2
# the reduced-precision float formats whose rounding `cgnet.deploy.export.emulated_runner` emulates
EMULATED = {"bf16": torch.bfloat16, "fp16": torch.float16}
# the lowest bar `agreement_bar` relaxes to: rounding that flips more than 0.5% of the pixels means
# frames (or weights) so full of near ties that they no longer tell a correct export from a subtly
# wrong one, and a default path must not change more than 1 pixel in 100 of what the model predicts
AGREEMENT_FLOOR = 0.99


def agreement_bar(precision: str, emulated: float | None = None) -> tuple[float, str]:
    """The argmax agreement an export at `precision` must reach on the verifying frames, and the
    words that say why (for `cgnet.deploy.export.verification_line`).

    fp32 and int8: `AGREEMENT`. bf16 and fp16, given `emulated` (the agreement with eager fp32 of
    the same model with the precision's rounding emulated in PyTorch, on the same frames):
    min(AGREEMENT, 1 - 2 * (1 - emulated)), never below `AGREEMENT_FLOOR`. Why 2: a rounding error
    of size e moves a pixel's class only where its top-2 logit gap is below about e, and near 0
    the fraction of pixels with a gap below g grows in proportion to g (a smooth density of gaps),
    so the pixels flipped grow in proportion to the error. The export's error is the emulation's
    plus the difference between its kernels and the emulation (other summation orders and rounding
    points), itself a rounding of at most the same size: at most twice the error, so about twice
    the flips. Where the frames have few near ties, the table's bar stays.

    Args:
        precision: the export's precision.
        emulated: the emulation's agreement (0..1), or None where it was not measured.
    """
    table = AGREEMENT[precision]
    if precision not in EMULATED or emulated is None:
        return table, f"needs >= {100 * table:.1f}%"
    what = f"{precision} emulated in PyTorch on the same frames"
    derived = round(1 - 2 * (1 - emulated), 9)  # to 1e-9, far below one pixel: no float residue at the edge
    if derived >= table:
        return table, f"needs >= {100 * table:.1f}%; {what}: {100 * emulated:.3f}%"
    if derived < AGREEMENT_FLOOR:
        return AGREEMENT_FLOOR, (f"needs >= {100 * AGREEMENT_FLOOR:.1f}%, the floor: {what} only "
                                 f"{100 * emulated:.3f}%")
    return derived, f"needs >= {100 * derived:.3f}%: 2x the disagreement of {what}, {100 * emulated:.3f}%"

VERIFIED = ("run through its own runtime on real frames of the checkpoint's dataset (synthetic frames when "
            "none are found) against eager fp32 PyTorch")

FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("onnx", ".onnx", "ONNX Runtime", ("fp32", "int8"), "onnx", ("onnx", "onnxruntime"),
                 write_onnx, lambda path, precision: onnxruntime_runner(path), _onnx_meta, "",
                 backend="onnxruntime", calibrated=("int8",),
                 precision_notes=(("int8", "static QDQ, calibrated on 200 training crops"),)),
    ExportFormat("openvino", ".xml", "OpenVINO", ("fp32", "bf16", "int8"), "openvino", ("openvino", "onnx"),
                 write_openvino, openvino_runner, _openvino_meta, "",
                 backend="openvino", companions=(".bin",), precision_at_load=True, load_stream=openvino_stream_runner,
                 calibrated=("int8",), in_file=("int8",), validated=("int8",),
                 precision_extras=(("int8", "nncf", "openvino-int8"),),
                 precision_notes=(("bf16", "an inference precision"),
                                  ("int8", "NNCF, calibrated on 200 training crops, with accuracy control: at most "
                                           f"{100 * openvino_int8.MAX_DROP:g} val mIoU lost, the costliest "
                                           "operations kept in float"))),
    ExportFormat("pt2", ".pt2", "PyTorch (torch.export)", ("fp32",), None, (),
                 write_pt2, lambda path, precision: exported_program_runner(path), _pt2_meta, ""),
    ExportFormat("executorch", ".pte", "ExecuTorch (XNNPACK delegate; Android, iOS, Linux)", ("fp32", "int8"),
                 "executorch", ("executorch", "torchao"), mobile.write_executorch, mobile.executorch_runner,
                 lambda path: json.dumps(mobile.read_mobile_meta(path)),
                 ", through ExecuTorch's own runtime at the file's fixed size",
                 backend="executorch", calibrated=("int8",), fixed_size=True, load_app=mobile.executorch_app_runner,
                 precision_notes=(("int8", "PT2E, XNNPACK quantizer, min/max calibration on 200 training crops"),)),
    ExportFormat("litert", ".tflite", "LiteRT, formerly TensorFlow Lite (Android, iOS)", ("fp32",), "litert",
                 ("litert_torch", "ai_edge_litert"), mobile.write_litert, mobile.litert_runner,
                 lambda path: json.dumps(mobile.read_mobile_meta(path)),
                 ", through LiteRT's own interpreter at the file's fixed size",
                 backend="litert", fixed_size=True, load_app=mobile.litert_app_runner),
    ExportFormat("ncnn", ".param", "NCNN (ARM boards, Android, embedded Linux; the weights in the .bin beside it)",
                 ("fp32", "fp16"), "ncnn", ("ncnn", "pnnx"), write_ncnn, ncnn_runner, read_ncnn_meta,
                 ", through ncnn's own runtime at both precisions whichever is asked",
                 backend="ncnn", companions=(".bin", ".json"), precision_at_load=True, verified_at=("fp32", "fp16"),
                 precision_notes=(("fp32", "fp16 and bf16 off"),
                                  ("fp16", "ncnn's default options, the layers that lose accuracy in fp16 kept "
                                           "in fp32 by the file's per-layer feature mask"))),
    ExportFormat("torchscript", ".ts", "TorchScript (read only: torch 2.13 deprecates it; export pt2)", ("fp32",),
                 None, (), None, lambda path, precision: torchscript_runner(path), _torchscript_meta,
                 "files written by earlier cgnet versions, verified when they were written"),
)}


def writable_formats() -> list[str]:
    return [name for name, f in FORMATS.items() if f.write is not None]


def backends() -> tuple[str, ...]:
    """The --backend names: torch, then every format that runs checkpoints."""
    return ("torch",) + tuple(f.backend for f in FORMATS.values() if f.backend)


def format_for_backend(backend: str) -> ExportFormat:
    for f in FORMATS.values():
        if f.backend == backend:
            return f
    raise InputError(f"unknown backend {backend!r}; choose from {', '.join(backends())}")


def format_of(path: str | os.PathLike) -> ExportFormat | None:
    """The format of an exported file, by its suffix (None: not an exported file)."""
    suffix = Path(path).suffix
    return next((f for f in FORMATS.values() if f.suffix == suffix), None)


def exported_suffixes() -> tuple[str, ...]:
    return tuple(f.suffix for f in FORMATS.values())


def available_backends() -> list[str]:
    """The backends whose runtime is installed (torch always)."""
    return ["torch"] + [f.backend for f in FORMATS.values() if f.backend and f.installed()]


def read_exported_meta(path: str | os.PathLike, fmt: ExportFormat | None = None) -> dict:
    """The cgnet metadata stored in a file written by `cgnet export` (classes, palette,
    preprocessing, export format and precision).

    Args:
        path: the exported file.
        fmt: its format, when the caller has already looked it up (default: by its suffix).
    """
    path = Path(path)
    fmt = fmt or format_of(path)
    if fmt is None:
        raise InputError(f"{path}: not an exported model ({', '.join(exported_suffixes())})")
    fmt.require()
    text = fmt.read_meta(path)
    if not text:
        raise MissingMetadata(f"{path}: a {fmt.title} file without cgnet metadata (not written by cgnet export)")
    return json.loads(text)
