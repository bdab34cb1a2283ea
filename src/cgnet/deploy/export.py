"""Inference files for the runtimes of the formats table (`cgnet.deploy.formats`); `cgnet export`'s
command line is in `export_command.py`.

Every export is inference-only and simplified first (`cgnet.deploy.simplify`: BatchNorm folded
into the convolutions, PReLU as max(x, a*x) where that is exact). The file carries the
checkpoint's metadata (classes, palette, preprocessing) and is verified against eager PyTorch,
through its own runtime, before it gets its name: on real frames of the checkpoint's dataset when
they are found, else on deterministic synthetic frames.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn

from ..common import (IMAGE_EXTS, CGNetError, InputError, MissingFileError,
                      quiet_third_party)
from ..data.catalog import dataset_from_meta, find_data_root
from ..data.listset import SegDataset, read_list
from ..fileio import partial_name
from ..images import read_rgb
from ..model import CGNet
from ..preprocess import check_spec, to_tensor
from . import mobile
from .formats import EMULATED, FORMATS, MAX_ABS_FP32, ExportFormat, agreement_bar, writable_formats
from .openvino_int8 import Validation
from .runners import torch_runner
from .simplify import MaxPReLU, simplify_for_inference

# labelled val frames int8 accuracy control scores mIoU on (each reverted group is one run over them)
VALIDATION_FRAMES = 24


class ExportError(CGNetError, ValueError):
    """An export that cannot be made or that failed its verification."""


# ---- verification --------------------------------------------------------------------------

def emulated_runner(model: CGNet, precision: str):
    """run(normalised N x 3 x H x W float32 array) -> N x C x H x W logits of `model` as a runtime
    computes it in `precision` (bf16 or fp16), emulated in fp32 PyTorch: the precision's own
    rounding on the frames being verified, the reference `agreement_bar` measures near ties with.

    The model is the one the export sees, BN-folded (`simplify_for_inference`): a runtime rounds the
    folded weights, not the trained ones. Every convolution and linear layer gets its weights and
    its input rounded to the precision and its output rounded again (a runtime at that inference
    precision keeps activations in it between layers: OpenVINO's bf16, ncnn's fp16 storage), with
    the sums of products in fp32. Rounding explicitly rather than under torch's CPU autocast:
    autocast would leave the depthwise convolutions in fp32 (`cgnet.model.depthwise`, a training
    workaround) and its result would depend on the CPU's bf16 kernels; explicit rounding is the
    same on every CPU (only the fp32 sums' order differs), and fp16 overflow (to inf) shows as it
    does in a runtime."""
    simple = rounded_like(simplify_for_inference(model), precision)

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return simple(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    return run


def rounded_like(module: nn.Module, precision: str) -> nn.Module:
    """`module` (changed in place, returned) with every convolution's and linear layer's weights,
    input and output rounded to `precision` (bf16 or fp16) and its sums in fp32; see `emulated_runner`."""
    dtype = EMULATED[precision]

    def rounded(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(dtype).float()

    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                layer.weight.copy_(rounded(layer.weight))
                layer.register_forward_pre_hook(lambda _, args: (rounded(args[0]), *args[1:]))
                layer.register_forward_hook(lambda _, args, out: rounded(out))
    return module


def verify(run, reference: CGNet, images: list[np.ndarray], precision: str) -> dict:
    """Max |logit difference| and argmax agreement of `run` (a runner: normalised N x 3 x H x W in,
    logits out) against eager fp32 PyTorch on `images` (H x W x 3 uint8 RGB), held to
    `agreement_bar`; for bf16 and fp16 with the precision emulated in PyTorch on the same images
    (`emulated_runner`)."""
    eager = torch_runner(reference, "fp32", "cpu", channels_last=False)
    emulated = emulated_runner(reference, precision) if precision in EMULATED else None
    spec = check_spec(reference.meta["preprocess"])
    references, exported, emulations = [], [], []
    for image in images:
        x = to_tensor(image, spec)[None].numpy()
        references.append(eager(x)[0])
        exported.append(np.asarray(run(x), dtype=np.float32)[0])
        if emulated is not None:
            emulations.append(emulated(x)[0])
    return compare(references, exported, emulations if emulated is not None else None, precision)


def compare(references: list[np.ndarray], exported: list[np.ndarray], emulated: list[np.ndarray] | None,
            precision: str) -> dict:
    """`verify`'s report from the logits (each C x H x W) of eager fp32 PyTorch, of the export and,
    for bf16 / fp16, of the precision emulated (None: not measured): images, max_abs_diff,
    argmax_agreement, emulated_agreement (or None), bar, needs (the bar's words) and ok."""
    total = sum(a.shape[1] * a.shape[2] for a in references)
    max_abs = max(float(np.abs(a - b).max()) for a, b in zip(references, exported))
    agreement = sum(int((a.argmax(0) == b.argmax(0)).sum()) for a, b in zip(references, exported)) / total
    emulated_agreement = (None if emulated is None else
                          sum(int((a.argmax(0) == e.argmax(0)).sum()) for a, e in zip(references, emulated)) / total)
    bar, needs = agreement_bar(precision, emulated_agreement)
    ok = round(agreement, 9) >= bar and (precision != "fp32" or max_abs <= MAX_ABS_FP32)  # as agreement_bar rounds
    return {"images": len(references), "max_abs_diff": max_abs, "argmax_agreement": agreement,
            "emulated_agreement": emulated_agreement, "bar": bar, "needs": needs, "ok": ok}


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


def verification_images(meta: dict, data_root: str | os.PathLike | None = None, count: int = 8,
                        inputs: Callable[[int], tuple[list[np.ndarray], str]] | None = None
                        ) -> tuple[list[np.ndarray], str]:
    """Frames to verify an export on, and where they came from.

    Real frames (the val list of the checkpoint's dataset under `data_root` or its default
    location, or the images in the folder `data_root`) when found; else the frames the export is
    made for (`inputs`: the images or video frames being predicted); otherwise deterministic
    synthetic frames. A `data_root` without images is an error.

    Args:
        inputs: inputs(count) -> (up to count H x W x 3 uint8 RGB frames, what they are); called
            only when no dataset frames are found.
    """
    root = _data_root(meta, data_root)
    paths = _dataset_images(meta, root, "val") if root is not None else []
    if paths:
        picks = np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)
        return [read_rgb(paths[i]) for i in picks], f"{len(picks)} real frames from {root}"
    if data_root is not None:
        raise MissingFileError(f"no images in {data_root} to verify the export on")
    frames, source = inputs(count) if inputs is not None else ([], "")
    if frames:
        return frames, source
    return synthetic_frames(count), f"{count} synthetic frames (no {meta.get('dataset') or 'dataset'} data found)"


def _split_list(meta: dict, data_root: str | os.PathLike | None, split: str, needs: str):
    """(root, list file, dataset info) of `split` of the checkpoint's dataset; refused with one line
    starting with `needs` when the list is not there."""
    root = _data_root(meta, data_root)
    info = list_file = None
    try:
        info = dataset_from_meta(meta)
        list_file = info.split_path(root, split) if root is not None else None
    except ValueError:
        pass
    if list_file is None or not list_file.is_file():
        where = f"in {root}" if root is not None else "(none found in the default locations)"
        raise ExportError(f"{needs} of the checkpoint's dataset ({meta.get('dataset') or 'unknown'}) {where}: "
                          "give --data-root with its list files")
    return root, list_file, info


def calibration_inputs(model: CGNet, data_root: str | os.PathLike | None, count: int = 200,
                       crop: int = 360) -> list[np.ndarray]:
    """Normalised training crops (the training augmentation) of the checkpoint's own dataset, for
    int8 calibration; without training data this refuses, since synthetic frames would
    calibrate the wrong value ranges."""
    root, list_file, info = _split_list(model.meta, data_root, "train",
                                        "int8 calibration needs the training images")
    ds = SegDataset(root, list_file, info, model.meta["preprocess"], train=True, crop=(crop, crop), seed=1234)
    return [ds[i % len(ds)][0][None].numpy() for i in range(count)]


def validation_set(model: CGNet, data_root: str | os.PathLike | None, count: int = VALIDATION_FRAMES) -> Validation:
    """Up to `count` labelled frames of the val list of the checkpoint's dataset, evenly spread, at
    full size, for int8 accuracy control (`cgnet.deploy.openvino_int8`); without them this refuses,
    since accuracy control needs the metric's ground truth."""
    root, list_file, info = _split_list(model.meta, data_root, "val",
                                        "int8 accuracy control needs the labelled val images")
    ds = SegDataset(root, list_file, info, model.meta["preprocess"])
    picks = np.linspace(0, len(ds) - 1, min(count, len(ds))).round().astype(int)
    items = [(ds[i][0][None].numpy(), ds[i][1].numpy()) for i in picks]
    return Validation(items, info.num_classes, info.ignore_index,
                      f"{len(items)} of the {len(ds)} frames of {list_file.name} in {root}")


def check_request(fmt: str, precision: str, out: str | os.PathLike | None = None) -> ExportFormat:
    """The format entry for `fmt`, once it is known to write `precision` (to `out`, when given,
    with the format's suffix) and to be installed: the request's own mistakes are named first, so
    the same command gets the same answer on every machine."""
    if fmt not in FORMATS or FORMATS[fmt].write is None:
        raise InputError(f"unknown format {fmt!r}: {', '.join(writable_formats())}")
    entry = FORMATS[fmt]
    if precision not in entry.precisions:
        others = [name for name in writable_formats() if precision in FORMATS[name].precisions]
        raise InputError(f"--format {fmt} writes {' or '.join(entry.precisions)}, not {precision}"
                         + (f": use --format {' or '.join(others)}" if others else ""))
    if out is not None and Path(out).suffix != entry.suffix:
        raise InputError(f"--out {out}: --format {fmt} files end in {entry.suffix}")
    entry.require_writer(precision)
    return entry


def verify_app(run_image, reference: CGNet, images: list[np.ndarray], precision: str) -> dict:
    """Class-id agreement of an app-ready file (`run_image`: H x W x 3 uint8 -> H x W class ids)
    with eager fp32 PyTorch's argmax on `images`."""
    eager = torch_runner(reference, "fp32", "cpu", channels_last=False, labels=True)
    spec = check_spec(reference.meta["preprocess"])
    agree = total = 0
    for image in images:
        expected = eager(to_tensor(image, spec)[None].numpy())[0]
        got = np.asarray(run_image(image))
        agree += int((got == expected).sum())
        total += expected.size
    bar, needs = agreement_bar(precision)
    return {"images": len(images), "max_abs_diff": None, "argmax_agreement": agree / total,
            "emulated_agreement": None, "bar": bar, "needs": needs, "ok": agree / total >= bar}


def verification_line(report: dict, source: str, precision: str) -> str:
    """The line `export` prints about its verification (`verify` or `verify_app`'s report): the
    frames, the export's agreement and the bar it was held to (for bf16 / fp16 with the agreement of
    the precision emulated on the same frames, `agreement_bar`)."""
    needs = report["needs"]
    if report["max_abs_diff"] is None:  # an app-ready file gives class ids only
        return (f"verified on {source} against eager fp32: class-id agreement "
                f"{100 * report['argmax_agreement']:.3f}% ({needs})")
    return (f"verified on {source} against eager fp32: max |logit diff| {report['max_abs_diff']:.3g}, argmax "
            f"agreement {100 * report['argmax_agreement']:.3f}% ({needs}"
            + (f", diff <= {MAX_ABS_FP32}" if precision == "fp32" else "") + ")")


def int8_line(meta_text: str) -> str:
    """The line `export` prints about an accuracy-controlled int8 file, from its metadata."""
    int8 = json.loads(meta_text)["int8"]
    control = int8["accuracy_control"]
    reverted = ", ".join(control["reverted_to_float"]) or "none"
    return (f"int8 ({int8['tool']}): {int8['int8_ops']} convolutions and matrix products in int8, "
            f"{len(int8['float_ops'])} in float; accuracy control returned {len(control['reverted_to_float'])} "
            f"quantised activations to float ({reverted}); val mIoU on {control['frames']}: "
            f"fp32 {100 * control['miou_fp32']:.2f}, plain "
            f"quantisation {100 * control['miou_plain_int8']:.2f}, kept int8 {100 * control['miou_int8']:.2f} (at most "
            f"{100 * control['max_drop']:g} lost: {'held' if control['held'] else 'NOT held'})")


def export(model: CGNet, out: Path, fmt: str, precision: str = "fp32", *, data_root: str | None = None,
           prelu_as_max: bool | None = None, verify_count: int = 8, size: tuple[int, int] | None = None,
           app_io: bool = False, inputs=None, log=print) -> Path:
    """Write `model` as an inference file, verified against eager fp32 PyTorch.

    BatchNorm is folded into the convolutions and PReLU written as max(x, a*x) where exact; the
    file carries the checkpoint's metadata. It is run through its own runtime on real frames of
    the checkpoint's dataset (else on `inputs`, else on deterministic synthetic frames) and removed
    again if its argmax agreement or largest logit difference misses the tolerance
    (`agreement_bar`, `MAX_ABS_FP32` of the formats table; bf16 and fp16 measured against their rounding
    emulated in PyTorch on the same frames).

    Args:
        model: a CGNet with `meta` (from `load_model`).
        out: the file to write; its suffix is set to the format's (.xml for OpenVINO, whose
            weights go to the .bin beside it).
        fmt: a writable format of `cgnet.deploy.formats.FORMATS` ('onnx', 'openvino', 'pt2', ...).
        precision: one of the format's precisions ('fp32'; 'bf16': OpenVINO's inference
            precision; 'int8': static quantisation calibrated on training crops).
        data_root: frames to verify on (and, for int8, the training list to calibrate on);
            default: the checkpoint's dataset in its default location.
        prelu_as_max: force (True) or forbid (False) PReLU as max; None: where it is exact.
        verify_count: frames used for the verification.
        size: (height, width) of a fixed-size format's input (ExecuTorch, LiteRT; default 360 x
            480); the verification frames are resized to it.
        app_io: the app-ready form (H x W x 3 uint8 RGB in, H x W uint8 class ids out, the
            preprocessing and the argmax inside), where the format has one; verified on class ids.
        inputs: the frames the export is made for, verified on when no dataset frames are found
            (`verification_images`).
        log: where progress lines go.

    Returns:
        The path written.
    """
    entry = check_request(fmt, precision)
    options = entry.writer_options(size, app_io)
    if model.meta.get("preprocess") is None:
        raise InputError("the checkpoint stores no preprocessing; exports need it (train with cgnet, "
                         "or save the original weights with cgnet.save_checkpoint and a preprocessing spec)")
    out = Path(out).with_suffix(entry.suffix)
    # everything that can refuse is checked before a file is written
    frames, source = verification_images(model.meta, data_root, verify_count, inputs)
    if entry.fixed_size:  # a fixed-size file is checked at its own size, where it is exact
        height, width = size or mobile.DEFAULT_SIZE
        frames = [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in frames]
        source += f", resized to the file's {height}x{width}"
    calibration = calibration_inputs(model, data_root) if precision in entry.calibrated else None
    if precision in entry.validated:
        options["validation"] = validation_set(model, data_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    simple = simplify_for_inference(model, prelu_as_max)
    uses_max = any(isinstance(m, MaxPReLU) for m in simple.modules())
    meta = dict(model.meta, export_format=fmt, export_precision=precision, prelu_as_max=uses_max)
    log(f"folded BatchNorm into convolutions; PReLU as max(x, a*x): {'yes' if uses_max else 'no (a slope exceeds 1)'}")
    # written under a temporary name and renamed only once verified: an interrupted or failed
    # export never leaves a file that looks finished (cached exports rely on this)
    tmp = partial_name(out)
    if calibration is not None:  # the calibration's progress bar is inside the quiet block
        log(f"{precision}: calibrating on {len(calibration)} training crops"
            + (f"; accuracy control on {options['validation'].source}" if "validation" in options else ""))
    try:
        with quiet_third_party():  # converters and runtimes print their own logs; --debug shows them
            entry.write(simple, tmp, meta, precision, calibration, **options)
            if app_io:
                reports = {precision: verify_app(entry.load_app(tmp), model, frames, precision)}
            else:  # a format whose runtime picks the precision at load time is checked at each it lists
                reports = {p: verify(entry.load(tmp, p), model, frames, p)
                           for p in (precision, *(p for p in entry.verified_at if p != precision))}
        for checked, report in reports.items():
            log(verification_line(report, source, checked) + (f" [{checked}]" if len(reports) > 1 else ""))
        if "validation" in options:
            log(int8_line(entry.read_meta(tmp)))
        for checked, report in reports.items():
            if not report["ok"]:
                diff = f", max |diff| {report['max_abs_diff']:.3g}" if report["max_abs_diff"] is not None else ""
                raise ExportError(f"the {fmt} {precision} export disagrees with PyTorch beyond the tolerance "
                                  f"{'' if checked == precision else f'when run at {checked} '}"
                                  f"(argmax agreement {100 * report['argmax_agreement']:.2f}%{diff}); not kept")
        for final, partial in zip(entry.files(out)[1:], entry.files(tmp)[1:]):
            os.replace(partial, final)
        os.replace(tmp, out)
    finally:
        for partial in entry.files(tmp):
            partial.unlink(missing_ok=True)
    return out
