"""`cgnet export`: ONNX, OpenVINO and TorchScript files for CPU and mobile runtimes.

Every export is inference-only and simplified first (`cgnet.deploy.simplify`: BatchNorm folded
into the convolutions, PReLU as max(x, a*x) where that is exact). Height and width are dynamic.
The file carries the checkpoint's metadata (classes, palette, preprocessing) and is verified
against eager PyTorch before it is kept: on real frames of the checkpoint's dataset when they are
found, else on deterministic synthetic frames.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn

from ..checkpoint import load_model
from ..common import DEFAULT_WEIGHTS, IMAGE_EXTS, CGNetError, InputError, MissingFileError
from ..data.catalog import dataset_from_meta, find_data_root
from ..data.listset import SegDataset, read_image, read_list
from ..fileio import check_writable
from ..model import CGNet
from .runners import Predictor, load_exported, require, torch_runner
from .simplify import MaxPReLU, simplify_for_inference

class ExportError(CGNetError, ValueError):
    """An export that cannot be made or that failed its verification."""


# argmax agreement (fraction of pixels) an export must reach against eager fp32 PyTorch
AGREEMENT = {"fp32": 0.999, "bf16": 0.99, "int8": 0.97}
MAX_ABS_FP32 = 1e-2


# ---- writers -------------------------------------------------------------------------------

def export_onnx(model: nn.Module, path: Path, meta: dict, opset: int = 17) -> Path:
    onnx = require("onnx")
    x = torch.randn(1, 3, 96, 128)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.onnx.export(model, (x,), str(tmp), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                    "logits": {0: "batch", 2: "height", 3: "width"}},
                      opset_version=opset, dynamo=False)
    proto = onnx.load(str(tmp))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "cgnet", json.dumps(meta)
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path


def export_openvino(model: nn.Module, path: Path, meta: dict) -> Path:
    ov = require("openvino")
    onnx_path = export_onnx(model, path.with_suffix(".onnx.tmp"), meta)
    try:
        ov_model = ov.convert_model(str(onnx_path))
    finally:
        onnx_path.unlink(missing_ok=True)
    ov_model.set_rt_info(json.dumps(meta), ["cgnet"])
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return path


def export_torchscript(model: nn.Module, path: Path, meta: dict) -> Path:
    traced = torch.jit.trace(model, torch.randn(1, 3, 96, 128), check_trace=False)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.jit.save(traced, str(tmp), _extra_files={"cgnet_meta.json": json.dumps(meta)})
    os.replace(tmp, path)
    return path


def quantize_onnx_int8(fp32_path: Path, path: Path, calibration: list[np.ndarray]) -> Path:
    """Static post-training quantisation (QDQ, per channel) calibrated on normalised crops."""
    q = require("onnxruntime.quantization")

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {"image": x}

    q.quantize_static(str(fp32_path), str(path), Reader(), quant_format=q.QuantFormat.QDQ,
                      per_channel=True, activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
    onnx = require("onnx")  # quantize_static drops nothing we need, but keep the metadata explicit
    proto = onnx.load(str(path))
    if not any(p.key == "cgnet" for p in proto.metadata_props):
        src = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
        entry = proto.metadata_props.add()
        entry.key, entry.value = "cgnet", src["cgnet"]
        onnx.save(proto, str(path))
    return path


# ---- verification --------------------------------------------------------------------------

def verify(predictor: Predictor, reference: CGNet, images: list[np.ndarray], precision: str) -> dict:
    """Max |logit difference| and argmax agreement of an export against eager fp32 PyTorch."""
    ref = Predictor(torch_runner(reference, "fp32", "cpu", channels_last=False), reference.meta, "torch")
    max_abs, agree, total = 0.0, 0, 0
    for image in images:
        a, b = ref.logits(image), predictor.logits(image)
        max_abs = max(max_abs, float(np.abs(a - b).max()))
        agree += int((a.argmax(0) == b.argmax(0)).sum())
        total += a.shape[1] * a.shape[2]
    report = {"images": len(images), "max_abs_diff": max_abs, "argmax_agreement": agree / total}
    ok = report["argmax_agreement"] >= AGREEMENT[precision] and (precision != "fp32" or max_abs <= MAX_ABS_FP32)
    report["ok"] = ok
    return report


def _dataset_images(meta: dict, root: Path, split: str) -> list[Path]:
    """Images of `split` of the checkpoint's dataset under root (its list file), or the images
    in the folder root itself."""
    try:
        list_file = dataset_from_meta(meta).split_path(root, split)
    except ValueError:  # a checkpoint without a dataset, or one without list files
        list_file = None
    if list_file is not None and list_file.is_file():
        return [s.image for s in read_list(list_file, root, labels=False)]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _data_root(meta: dict, data_root: str | os.PathLike | None) -> Path | None:
    if data_root is not None:
        root = Path(data_root)
        if not root.is_dir():
            raise MissingFileError(f"--data-root {root}: no such folder")
        return root
    return find_data_root(meta["dataset"]) if meta.get("dataset") else None


def synthetic_frames(count: int = 8, size: tuple[int, int] = (256, 320), seed: int = 0) -> list[np.ndarray]:
    """Deterministic street-sized RGB frames with smooth regions and texture, for verifying an
    export when no real frame of the checkpoint's dataset is at hand."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        smooth = cv2.resize(coarse, (size[1], size[0]), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        frames.append(np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8))
    return frames


def verification_images(meta: dict, data_root: str | os.PathLike | None = None,
                        count: int = 8) -> tuple[list[np.ndarray], str]:
    """Frames to verify an export on, and where they came from.

    Real frames (the val list of the checkpoint's dataset under `data_root` or its default
    location, or the images in the folder `data_root`) when found; otherwise deterministic
    synthetic frames. A `data_root` without images is an error.
    """
    root = _data_root(meta, data_root)
    paths = _dataset_images(meta, root, "val") if root is not None else []
    if paths:
        picks = np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)
        return [read_image(paths[i]) for i in picks], f"{len(picks)} real frames from {root}"
    if data_root is not None:
        raise MissingFileError(f"no images in {data_root} to verify the export on")
    return synthetic_frames(count), f"{count} synthetic frames (no {meta.get('dataset') or 'dataset'} data found)"


def calibration_inputs(model: CGNet, data_root: str | os.PathLike | None, count: int = 200,
                       crop: int = 360) -> list[np.ndarray]:
    """Normalised training crops (the training augmentation) of the checkpoint's own dataset, for
    int8 calibration; without training data this refuses, since synthetic frames would
    calibrate the wrong value ranges."""
    meta = model.meta
    root = _data_root(meta, data_root)
    info = None
    try:
        info = dataset_from_meta(meta)
        list_file = info.split_path(root, "train") if root is not None else None
    except ValueError:
        list_file = None
    if list_file is None or not list_file.is_file():
        where = f"in {root}" if root is not None else "(none found in the default locations)"
        raise ExportError(f"int8 calibration needs the training images of the checkpoint's dataset "
                         f"({meta.get('dataset') or 'unknown'}) {where}: give --data-root with its list files")
    ds = SegDataset(root, list_file, info, meta["preprocess"], train=True, crop=(crop, crop), seed=1234)
    return [ds[i % len(ds)][0][None].numpy() for i in range(count)]


def export(model: CGNet, out: Path, fmt: str, precision: str = "fp32", *, data_root: str | None = None,
           prelu_as_max: bool | None = None, verify_count: int = 8, log=print) -> Path:
    """Write `model` as an inference file, verified against eager fp32 PyTorch.

    BatchNorm is folded into the convolutions and PReLU written as max(x, a*x) where exact; the
    file carries the checkpoint's metadata. It is run on real frames of the checkpoint's dataset
    (or deterministic synthetic frames when none are found) and removed again if its argmax
    agreement or largest logit difference misses the tolerance (`AGREEMENT`, `MAX_ABS_FP32`).

    Args:
        model: a CGNet with `meta` (from `load_model`).
        out: the file to write (.xml for OpenVINO, whose weights go to the .bin beside it).
        fmt: 'onnx', 'openvino' or 'torchscript'.
        precision: 'fp32'; 'bf16' (OpenVINO inference precision); 'int8' (ONNX, static QDQ).
        data_root: frames to verify on (and, for int8, the training list to calibrate on);
            default: the checkpoint's dataset in its default location.
        prelu_as_max: force (True) or forbid (False) PReLU as max; None: where it is exact.
        verify_count: frames used for the verification.
        log: where progress lines go.

    Returns:
        The path written.
    """
    if fmt not in ("onnx", "openvino", "torchscript"):
        raise InputError(f"unknown format {fmt!r}: onnx, openvino or torchscript")
    if precision == "bf16" and fmt != "openvino":
        raise InputError("bf16 export is an OpenVINO inference precision: use --format openvino")
    if precision == "int8" and fmt != "onnx":
        raise InputError("int8 export is ONNX Runtime static quantisation: use --format onnx")
    if model.meta.get("preprocess") is None:
        raise InputError("the checkpoint stores no preprocessing; exports need it (train with cgnet, "
                         "or save the original weights with cgnet.save_checkpoint and a preprocessing spec)")
    out = Path(out)
    if fmt == "openvino":
        out = out.with_suffix(".xml")
    # everything that can refuse is checked before a file is written
    frames, source = verification_images(model.meta, data_root, verify_count)
    calibration = calibration_inputs(model, data_root) if precision == "int8" else None
    out.parent.mkdir(parents=True, exist_ok=True)
    simple = simplify_for_inference(model, prelu_as_max)
    uses_max = any(isinstance(m, MaxPReLU) for m in simple.modules())
    meta = dict(model.meta, export_format=fmt, export_precision=precision, prelu_as_max=uses_max)
    log(f"folded BatchNorm into convolutions; PReLU as max(x, a*x): {'yes' if uses_max else 'no (a slope exceeds 1)'}")
    # written under a temporary name and renamed only once verified: an interrupted or failed
    # export never leaves a file that looks finished (cached exports rely on this)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.partial{out.suffix}")
    try:
        if fmt == "onnx" and precision == "int8":
            fp32 = export_onnx(simple, tmp.with_name(tmp.stem + ".fp32.onnx"), meta)
            try:
                quantize_onnx_int8(fp32, tmp, calibration)
            finally:
                fp32.unlink(missing_ok=True)
        elif fmt == "onnx":
            export_onnx(simple, tmp, meta)
        elif fmt == "openvino":
            export_openvino(simple, tmp, meta)
        else:
            export_torchscript(simple, tmp, meta)
        report = verify(load_exported(tmp, precision), model, frames, precision)
        log(f"verified on {source} against eager fp32: max |logit diff| "
            f"{report['max_abs_diff']:.3g}, argmax agreement {100 * report['argmax_agreement']:.3f}% "
            f"(needs >= {100 * AGREEMENT[precision]:.1f}%"
            + (f", diff <= {MAX_ABS_FP32}" if precision == "fp32" else "") + ")")
        if not report["ok"]:
            raise ExportError(f"the {fmt} {precision} export disagrees with PyTorch beyond the tolerance "
                             f"(argmax agreement {100 * report['argmax_agreement']:.2f}%, max |diff| "
                             f"{report['max_abs_diff']:.3g}); not kept")
        if fmt == "openvino":
            os.replace(tmp.with_suffix(".bin"), out.with_suffix(".bin"))
        os.replace(tmp, out)
    finally:
        _remove_export(tmp)
    return out


def _remove_export(path: Path) -> None:
    path.unlink(missing_ok=True)
    if path.suffix == ".xml":
        path.with_suffix(".bin").unlink(missing_ok=True)


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="default: the shipped camvid weights")
    p.add_argument("--format", required=True, choices=["onnx", "openvino", "torchscript", "web"],
                   help="web: a static folder (--out) whose page runs the model in the browser")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"],
                   help="bf16: OpenVINO inference precision; int8: ONNX Runtime static quantisation")
    p.add_argument("--out", help="output file (default: cgnet_<dataset>_<precision>.<ext>)")
    p.add_argument("--data-root", help="frames to verify (and calibrate int8) on: the checkpoint's dataset folder or a "
                                       "folder of images (default: the dataset's default location, else synthetic "
                                       "frames; int8 needs real training data)")
    p.add_argument("--prelu-as-max", action=argparse.BooleanOptionalAction, default=None,
                   help="write PReLU as max(x, a*x) (default: when every slope is <= 1, where it is exact)")


def cmd_export(args: argparse.Namespace) -> int:
    model = load_model(args.checkpoint or DEFAULT_WEIGHTS)
    ext = {"onnx": "onnx", "openvino": "xml", "torchscript": "ts"}[args.format]
    out = Path(args.out or f"cgnet_{model.meta.get('dataset') or 'model'}_{args.precision}.{ext}")
    check_writable(out, "--out", folder=False)
    path = export(model, out, args.format, args.precision, data_root=args.data_root, prelu_as_max=args.prelu_as_max)
    print(f"wrote {path}" + (f" and {path.with_suffix('.bin')}" if path.suffix == ".xml" else ""))
    return 0
