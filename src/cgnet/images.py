"""Reading images the way people see them: one decoder for every path that reads a photo; and
the one image writer (`write_image`, checked and atomic), and the video streams predict and serve
read and write (`VideoStreams`).

A phone stores a portrait photo as a landscape JPEG plus an EXIF orientation tag (1-8); every
viewer, browser and annotation tool (labelme, CVAT) turns the pixels by that tag before showing
them, and annotations are drawn in that displayed frame. OpenCV's ``IMREAD_UNCHANGED`` ignores the
tag, so everything that reads an image in cgnet (the training and evaluation loaders, ``cgnet data
import``, ``cgnet predict`` and ``cgnet serve``) goes through :func:`read_rgb` / :func:`decode_rgb`
here, which apply it.

The tag is read with Pillow from the file's header (no pixels are decoded for that); the pixels are
decoded by OpenCV and turned with numpy views, so an image without a tag costs one header read more.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cgnet.common import CGNetError, InputError
from cgnet.fileio import write_atomic

ORIENTATION_TAG = 0x0112  # EXIF "Orientation"


def _orientation_of(im: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image, from its header; 1 when it has none."""
    if im.format == "PNG":  # Pillow's getexif() on a PNG would decode the pixels to look past them
        raw = im.info.get("exif")
        exif = Image.Exif()
        if raw:
            exif.load(raw)
    else:
        exif = im.getexif()
    value = exif.get(ORIENTATION_TAG, 1)
    return int(value) if value in range(1, 9) else 1


def exif_orientation(source: bytes | str | os.PathLike) -> int:
    """The EXIF orientation (1-8) of an encoded image, 1 when it has none or it cannot be read.

    Reads the header only: JPEG's APP1, TIFF's IFD, WebP's EXIF chunk, and PNG's eXIf chunk when it
    stands before the pixel data (where the PNG specification puts it)."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source) as im:
            return _orientation_of(im)
    except Exception:  # not an image Pillow knows, or a damaged header: the decoder reports it
        return 1


def displayed_size(path: str | os.PathLike, where: str = "") -> tuple[int, int]:
    """An image file's (height, width) as displayed (EXIF orientation 5-8 swap them), from its
    header alone (Pillow's lazy open: no pixels are decoded). Raises InputError naming ``where``
    (default: the path) when it is not an image Pillow knows, or not 8-bit."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            (width, height), mode, orientation = im.size, im.mode, _orientation_of(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InputError(f"{where or path}: cannot read the image {path} (corrupt or not an image)") from None
    if mode.startswith(("I", "F")):
        raise InputError(f"{where or path}: the image {path} is {mode}, expected 8-bit")
    return (width, height) if orientation >= 5 else (height, width)


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels (H x W or H x W x C) as displayed under an EXIF orientation (the standard's
    eight cases; 5-8 swap height and width). Returns a contiguous array."""
    turned = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],                      # mirrored left-right
        3: lambda a: a[::-1, ::-1],                   # turned 180 degrees
        4: lambda a: a[::-1],                         # mirrored top-bottom
        5: lambda a: a.swapaxes(0, 1),                # mirrored over the main diagonal
        6: lambda a: np.rot90(a, -1),                 # turned 90 degrees clockwise
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),    # mirrored over the other diagonal
        8: lambda a: np.rot90(a, 1),                  # turned 90 degrees counter-clockwise
    }[orientation if orientation in range(1, 9) else 1](pixels)
    return np.ascontiguousarray(turned)


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """OpenCV's decoded pixels (gray, BGR or BGRA) as H x W x 3 RGB; alpha is dropped."""
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    if pixels.shape[2] == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def decode_pixels(data: bytes, what: str = "image", where: str = "") -> np.ndarray:
    """Encoded bytes as 8-bit pixels in OpenCV's channel order, in the displayed frame.
    Raises InputError naming ``where`` when they are not an 8-bit image OpenCV decodes."""
    prefix = f"{where}: " if where else ""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.size == 0:
        raise InputError(f"{prefix}cannot decode the {what} (corrupt, truncated or not an image)")
    if pixels.dtype != np.uint8:
        raise InputError(f"{prefix}the {what} is {pixels.dtype}, expected 8-bit")
    return orient(pixels, exif_orientation(data))


def read_pixels(path: str | os.PathLike, what: str = "image", where: str = "") -> np.ndarray:
    """A file as 8-bit pixels in OpenCV's channel order, in the displayed frame.
    Raises InputError naming ``where`` (default: the path) when it cannot be read."""
    path = Path(path)
    prefix = f"{where or path}: "
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.size == 0:
        raise InputError(f"{prefix}cannot read the {what} {path} (corrupt or not an image)")
    if pixels.dtype != np.uint8:
        raise InputError(f"{prefix}the {what} {path} is {pixels.dtype}, expected 8-bit")
    return orient(pixels, exif_orientation(path))


def read_rgb(path: str | os.PathLike, where: str = "") -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB in the frame every viewer shows (EXIF orientation
    applied; grayscale and RGBA converted)."""
    return to_rgb(read_pixels(path, "image", where))


def decode_rgb(data: bytes, where: str = "") -> np.ndarray:
    """Encoded image bytes as H x W x 3 uint8 RGB, displayed frame (as :func:`read_rgb`)."""
    return to_rgb(decode_pixels(data, "image", where))


# ---- writing -----------------------------------------------------------------------------------

def write_image(path: str | os.PathLike, image: np.ndarray, *, atomic: bool = False) -> Path:
    """Write an image as its suffix says (.png, .jpg, ...; OpenCV's encoders, as cv2.imwrite
    uses them): the one image writer of cgnet.

    cv2.imwrite returns False where it cannot write (a full disk, a read-only or missing folder)
    and writes nothing; here every failure is one CGNetError naming the file, and a file cut short
    by the failure is removed.

    Args:
        path: the file to write.
        image: H x W (grey or class ids) or H x W x 3 BGR (x 4 BGRA), uint8 (or uint16 for PNG).
        atomic: write under a temporary name, synced, then renamed (`cgnet.fileio.write_atomic`), for
            files whose presence says the work is done (converted labels); else written in place.
    """
    path = Path(path)
    data = encode_image(path, image)
    try:
        if atomic:
            return write_atomic(path, data)
        file = path.open("wb")
    except OSError as error:
        raise CGNetError(f"cannot write {path} ({error.strerror or error})") from None
    try:
        with file:
            file.write(data)
    except OSError as error:
        path.unlink(missing_ok=True)  # cut short (a full disk): no half image is left
        raise CGNetError(f"cannot write {path} ({error.strerror or error})") from None
    return path


def encode_image(path: str | os.PathLike, image: np.ndarray) -> bytes:
    """The bytes `write_image` writes to `path` (its suffix picks the encoder), for a writer that
    puts them elsewhere (an object store); an image OpenCV cannot encode so is one CGNetError."""
    path = Path(path)
    try:
        ok, data = cv2.imencode(path.suffix, image)
    except cv2.error:  # no encoder for the suffix, or not an image it takes
        ok = False
    if not ok:
        shape = "x".join(map(str, np.shape(image)))
        raise CGNetError(f"cannot write {path}: OpenCV cannot encode a {np.asarray(image).dtype} {shape} image as "
                         f"{path.suffix or 'a file without a suffix'}")
    return data.tobytes()


# ---- videos ------------------------------------------------------------------------------------

DEFAULT_FPS = 25.0  # a video's frame rate where its container tells none


def video_fps(cap) -> float:
    """The frame rate an opened cv2.VideoCapture reports, or DEFAULT_FPS when it reports none."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    return fps if fps and math.isfinite(fps) and fps > 0 else DEFAULT_FPS


class VideoStreams:
    """A video being read (`cap`) and, once opened, the one being written (`writer`); both are
    released when the `with` block ends, however it ends."""

    def __init__(self, path: Path):
        self.cap = cv2.VideoCapture(str(path))
        self.writer = None

    def open_writer(self, path: Path, codec: str, fps: float, size: tuple[int, int]):
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
        return self.writer

    def __enter__(self) -> "VideoStreams":
        return self

    def __exit__(self, *exc) -> None:
        self.cap.release()
        if self.writer is not None:
            self.writer.release()
