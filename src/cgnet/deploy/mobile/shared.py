"""What the phone formats share (`cgnet.deploy.mobile`): the app-ready model (`AppIOModel`), the
writers' argument checks and metadata, and the runners that resize other input sizes to the
file's fixed one."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional

from ...common import InputError, MissingFileError
from ...preprocess import check_spec

DEFAULT_SIZE = (360, 480)
PRECISIONS = ("fp32", "int8")


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


def check_args(precision: str, calibration, size) -> tuple[int, int]:
    if precision not in PRECISIONS:
        raise InputError(f"phone formats are fp32 or int8, not {precision!r}")
    if precision == "int8" and not calibration:
        raise InputError("int8 needs calibration frames (normalised 1 x 3 x H x W arrays)")
    size = tuple(int(v) for v in size)
    if len(size) != 2 or min(size) < 8:
        raise InputError(f"the export size must be (height, width), each >= 8; got {size}")
    return size


def file_meta(meta: dict, fmt: str, precision: str, size: tuple[int, int], app_io: bool) -> dict:
    if app_io and meta.get("preprocess") is None:
        raise InputError("an app-ready export needs the checkpoint's preprocessing (meta['preprocess'])")
    return dict(meta, export_format=fmt, export_precision=precision, input_size=list(size), app_io=app_io)


def example_input(size: tuple[int, int], app_io: bool) -> torch.Tensor:
    if app_io:
        return torch.zeros(*size, 3, dtype=torch.uint8)
    return torch.zeros(1, 3, *size)


def prepare(model: nn.Module, meta: dict, app_io: bool) -> nn.Module:
    """The model a writer exports: `model` (in eval mode already, or quantised: an exported
    program refuses .eval()), inside `AppIOModel` when app-ready."""
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


def _runner_meta(path: Path, precision: str | None, app_io: bool, read_meta) -> dict:
    meta = read_meta(path)
    if precision is not None and precision != meta["export_precision"]:
        raise InputError(f"{path} was exported as {meta['export_precision']}, not {precision}")
    if bool(meta.get("app_io")) != app_io:
        kind = "an app-ready (uint8 image in, class ids out)" if meta.get("app_io") else "a plain (logits)"
        other = "executorch_app_runner / litert_app_runner" if meta.get("app_io") else "executorch_runner / litert_runner"
        raise InputError(f"{path} is {kind} model: run it with {other}")
    return meta


def plain_runner(path: Path, suffix: str, make_call, read_meta, precision: str | None):
    """run(normalised N x 3 x H x W) -> logits for a plain file: checked, its metadata read
    (`read_meta(path)`), the runtime's `make_call(path)` wrapped to resize other sizes to the file's."""
    path = _check_file(path, suffix)
    meta = _runner_meta(path, precision, False, read_meta)
    return _resizing_runner(make_call(path), meta["input_size"])


def app_runner(path: Path, suffix: str, make_call, read_meta):
    """run_image(H x W x 3 uint8 RGB) -> H x W class ids for an app-ready file."""
    path = _check_file(path, suffix)
    meta = _runner_meta(path, None, True, read_meta)
    return _app_image_runner(make_call(path), meta["input_size"])


