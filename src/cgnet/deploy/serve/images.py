"""Uploaded images for `cgnet serve`: their size read from the header and checked before a pixel is
decoded, then decoded by cgnet's one image reader, and the shared model's answer for them.

The header is read by Pillow (`Image.open` is lazy: it parses the header and stops). Only PNG,
JPEG, BMP, TIFF, WebP and GIF are served; anything else, or a header Pillow cannot read, is
refused with 400. More pixels than --max-megapixels is 413, as is anything past Pillow's own
decompression-bomb limit (2 x `Image.MAX_IMAGE_PIXELS`, which Pillow checks inside `open`, so
such a file's exact size is never known here). Only then are the pixels decoded, by
`cgnet.images` (OpenCV, with the EXIF orientation applied: a phone's portrait photo comes out
upright, as the page shows it).
"""
from __future__ import annotations

import base64
import io
import os
import threading
import time

import cv2
import numpy as np
from PIL import Image

from ...common import DEFAULT_WEIGHTS, InputError
from ...images import decode_pixels, to_rgb
from ...visualize import blend, colorize, palette_of
from ..predictor import Predictor
from .guard import UploadError

SERVED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")  # Pillow's names for them
BROWSER_IMAGES = ("PNG", "JPEG", "BMP", "WEBP", "GIF")  # formats a browser shows itself
TIFF_SAMPLES, TIFF_MAX_SAMPLES = 277, 4  # SamplesPerPixel: gray, gray + alpha, RGB, RGBA; more would all be decoded
NOT_AN_IMAGE = ("not an image this server reads (corrupt, truncated, or not a PNG, JPEG, BMP, TIFF, WebP "
                "or GIF file)")


def pillow_pixel_limit() -> int:
    """The most pixels Pillow opens at all (beyond, `Image.open` raises DecompressionBombError)."""
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 2**63


def too_many_pixels(width: int, height: int, max_pixels: int) -> UploadError:
    return UploadError(413, f"image too large: {width}x{height} is {width * height / 1e6:.1f} megapixels, "
                            f"the limit is {max_pixels / 1e6:g} (--max-megapixels)")


def image_header(source: bytes | str | os.PathLike) -> tuple[str, int, int] | None:
    """(format, width, height) of a PNG, JPEG, BMP, TIFF, WebP or GIF file read from its header by
    Pillow, no pixel decoded; None for any other file or a header Pillow cannot read. The format
    is Pillow's name ('PNG', 'JPEG', 'BMP', 'TIFF', 'WEBP', 'GIF').

    Raises UploadError 413 for an image over Pillow's decompression-bomb limit and 400 for a
    TIFF with more than 4 samples per pixel.

    Args:
        source: the encoded file's bytes, or its path.
    """
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with Image.open(fp, formats=SERVED_FORMATS) as im:
            samples = im.tag_v2.get(TIFF_SAMPLES, 1) if im.format == "TIFF" else 1
            fmt, (width, height) = im.format, im.size
    except Image.DecompressionBombError:
        raise UploadError(413, f"image too large: more than {pillow_pixel_limit() / 1e6:g} megapixels, "
                               f"past Pillow's decompression-bomb limit") from None
    except Exception:  # noqa: BLE001 - not one of the served formats, or a header Pillow cannot read
        return None
    if samples > TIFF_MAX_SAMPLES:
        raise UploadError(400, f"a TIFF with {samples} samples per pixel: at most {TIFF_MAX_SAMPLES} are read "
                               f"(gray, gray + alpha, RGB, RGBA)")
    return fmt, width, height


def image_format(source: bytes | str | os.PathLike) -> str | None:
    """Pillow's name of a served image format ('PNG', 'JPEG', ...) when `source` is such an image
    whose header reads, else None (`image_header`)."""
    header = image_header(source)
    return header[0] if header else None


def check_image_header(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """The format, width and height of an uploaded image, read from its header; raises
    UploadError before anything is decoded: 400 for an empty file or one `image_header` does not
    read, 413 for more than `max_pixels` pixels."""
    if not data:
        raise UploadError(400, "the uploaded file is empty")
    header = image_header(data)
    if header is None:
        raise UploadError(400, NOT_AN_IMAGE)
    fmt, width, height = header
    if width * height > max_pixels:
        raise too_many_pixels(width, height, max_pixels)
    return header


def decode_image(data: bytes, max_pixels: int) -> tuple[str, np.ndarray]:
    """The format and H x W x 3 uint8 RGB pixels of an uploaded file, as `cgnet predict` reads
    files (`cgnet.images`: EXIF orientation applied, grayscale and RGBA to RGB). The size is
    checked from the header first (`check_image_header`), so a huge image is refused before its
    pixels exist. Raises UploadError (400 or 413) with a message for the page."""
    fmt = check_image_header(data, max_pixels)[0]
    try:
        pixels = decode_pixels(data, f"{fmt} file")
    except InputError as error:
        raise UploadError(400, str(error)) from None
    if pixels.shape[0] * pixels.shape[1] > max_pixels:  # a header that understated the size
        raise too_many_pixels(pixels.shape[1], pixels.shape[0], max_pixels)
    return fmt, to_rgb(pixels)


def encode_base64(ext: str, image: np.ndarray, *params: int) -> str:
    """An OpenCV image (H x W or H x W x 3 BGR) encoded as `ext` ('.png', '.jpg'), in base64."""
    ok, buffer = cv2.imencode(ext, image, list(params))
    if not ok:
        raise RuntimeError(f"cannot encode a {ext} image")
    return base64.b64encode(buffer.tobytes()).decode("ascii")


class Segmenter:
    """One model shared by all requests; predictions run one at a time (a lock)."""

    def __init__(self, predictor: Predictor, name: str = DEFAULT_WEIGHTS, alpha: float = 0.5):
        self.predictor, self.name, self.alpha = predictor, name, alpha
        self.lock = threading.Lock()
        meta = predictor.meta
        self.palette = palette_of(meta)
        names = list(meta.get("classes") or [])
        count = int((meta.get("arch") or {}).get("num_classes") or len(names))
        self.classes = names + [f"class{i}" for i in range(len(names), count)]

    @property
    def meta(self) -> dict:  # what predict_video needs of a predictor
        return self.predictor.meta

    def timed_predict(self, image_rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """H x W uint8 class ids and the seconds the model took (preprocessing, forward, argmax)."""
        with self.lock:
            start = time.perf_counter()
            mask = self.predictor.predict(image_rgb)
            return mask, time.perf_counter() - start

    def predict(self, image_rgb: np.ndarray) -> np.ndarray:
        return self.timed_predict(image_rgb)[0]

    def legend(self, mask: np.ndarray) -> list[dict]:
        counts = np.bincount(mask.ravel(), minlength=256)
        total = max(1, mask.size)
        ids = list(range(len(self.classes))) + [i for i in np.flatnonzero(counts) if i >= len(self.classes)]
        return [{"id": int(i), "name": self.classes[i] if i < len(self.classes) else f"id {i}",
                 "color": [int(v) for v in self.palette[i]] if i < len(self.palette) else [0, 0, 0],
                 "share": float(counts[i] / total)} for i in ids]

    def info(self) -> dict:
        return {"model": self.name, "backend": self.predictor.backend, "precision": self.predictor.precision,
                "alpha": self.alpha, "classes": [{"id": i, "name": n, "color": [int(v) for v in self.palette[i]]}
                                                 for i, n in enumerate(self.classes)]}

    def segment(self, data: bytes, max_pixels: int) -> dict:
        """The API's answer for one uploaded image file."""
        fmt, image = decode_image(data, max_pixels)
        mask, seconds = self.timed_predict(image)
        color = colorize(mask, self.palette)
        overlay = blend(image, color, self.alpha)
        answer = {"width": int(image.shape[1]), "height": int(image.shape[0]),
                  "latency_ms": round(seconds * 1000, 2),
                  "backend": self.predictor.backend, "precision": self.predictor.precision,
                  "mask_png": encode_base64(".png", mask),
                  "color_png": encode_base64(".png", cv2.cvtColor(color, cv2.COLOR_RGB2BGR)),
                  "overlay_png": encode_base64(".png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)),
                  "alpha": self.alpha, "legend": self.legend(mask)}
        if fmt not in BROWSER_IMAGES:  # e.g. TIFF: the page cannot show the upload itself
            answer["image_jpeg"] = encode_base64(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                                 cv2.IMWRITE_JPEG_QUALITY, 92)
        return answer
