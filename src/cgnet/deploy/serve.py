"""`cgnet serve`: a local web page and JSON API that segment uploaded images and short videos.

One model is loaded once and shared by every request. Inference runs in worker threads, never on
the event loop, one prediction at a time (a lock: OpenVINO's infer request and ONNX Runtime's
session are shared objects, and on a CPU concurrent forwards only compete for the same cores),
so concurrent requests queue and each gets its own result.

    GET  /                 the page (HTML, JS and CSS from serve_static/, nothing external)
    GET  /api/info         model, backend, precision, classes and limits
    POST /api/segment      multipart field `image` -> mask, colours, overlay, legend, latency
    POST /api/video        multipart field `video` -> 202 and a job to poll
    GET  /api/jobs/{id}    state and progress of a video job
    GET  /api/jobs/{id}/video[?download=1]     the overlay video (mp4, `predict_video`)
    GET  /api/jobs/{id}/preview                the same video as WebM (VP8), which browsers play

Errors are JSON `{"error": message}` (at most 300 characters; echoed values are cut to 64) with
status 400 (not an image or video, corrupt, an image whose size its header does not tell, wrong
field, no Host header), 403 (a POST from another site's Origin), 404, 413 (upload, image or video
too large), 421 (a Host header naming a host not served: DNS rebinding) or 429 (video queue full,
with Retry-After). An image's size is read from its header (pure Python) and checked before it is
decoded; at most `max_concurrent_images` images are decoded and segmented at once, the others wait.
Starlette, uvicorn and python-multipart are the optional extra `pip install 'cgnet[serve]'`; they
are imported only when a server is made.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import json
import math
import shutil
import socket
import struct
import tempfile
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import cv2
import numpy as np

from ..common import DEFAULT_WEIGHTS, VIDEO_EXTS, CGNetError, number_type
from ..visualize import blend, colorize
from .predict import VideoStreams, palette_of, predict_video, video_fps
from .predictor import Predictor, add_predictor_args, make_predictor, resolve_backend
from .runners import MissingBackend
from .web import ISOLATION_HEADERS, add_tls_args, tls_options, web_routes

STATIC = Path(__file__).resolve().parent / "serve_static"
SERVE_MODULES = {"starlette": "starlette", "uvicorn": "uvicorn", "python-multipart": "python_multipart"}
MAX_JOBS_KEPT = 16  # finished video jobs whose files are kept; older ones are deleted
RETRY_AFTER_S = 10  # what a 429 (video queue full) tells the client to wait
MAX_MESSAGE = 300  # the longest error message sent (a safety net: echoed values are cut to 64)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # host names always served
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # --host values that are not names a client uses
NOT_A_VIDEO = ("not a video this server can decode (corrupt, or an unsupported format): "
               "send an mp4, avi, mov, mkv or webm file")
BROWSER_IMAGES = ("png", "jpeg", "bmp", "webp", "gif")  # formats a browser shows itself
SECURITY_HEADERS = {
    # everything comes from this server; images and videos may also be data:/blob: URLs made by the page;
    # the in-browser mode compiles WebAssembly ('wasm-unsafe-eval') and needs cross-origin isolation
    "content-security-policy": "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
                               "img-src 'self' data: blob:; media-src 'self' blob:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    **ISOLATION_HEADERS,
}


def require_serve() -> None:
    """Fail with the one line that says how to get the web stack, when part of it is missing."""
    for package, module in SERVE_MODULES.items():
        found = importlib.util.find_spec(module) is not None
        if not found and module == "python_multipart":  # releases before 0.0.13 name it `multipart`
            found = importlib.util.find_spec("multipart") is not None
        if not found:
            raise MissingBackend(f"{package} is not installed: pip install 'cgnet[serve]'")


class UploadError(CGNetError, ValueError):
    """A request the server refuses; `status` is the HTTP status (400, 403, 404, 413, 421 or 429),
    `headers` extra response headers (Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, dict(headers or {})


class BodyTooLarge(UploadError):
    def __init__(self, limit_bytes: int):
        super().__init__(413, f"upload too large: the limit is {limit_bytes / 2**20:g} MB (--max-upload-mb)")


# ---- images ------------------------------------------------------------------------------------

def shorten(text: str, limit: int = 64) -> str:
    """`text` cut to `limit` characters, the cut marked with '...': what an error message echoes
    of a request (a job id, a host name) stays short whatever the request sent."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


TIFF_WIDTH, TIFF_LENGTH, TIFF_SAMPLES = 256, 257, 277  # baseline tags: ImageWidth, ImageLength, SamplesPerPixel
TIFF_MAX_SAMPLES = 4  # gray, gray + alpha, RGB, RGBA


def tiff_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a classic TIFF's first image (IFD 0, the page OpenCV reads), from its
    ImageWidth and ImageLength tags (SHORT or LONG), else None. A first image with more than 4
    samples per pixel counts as unreadable: OpenCV would allocate them all."""
    if len(data) < 8 or data[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    order = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", data[4:8])[0]
    if offset < 8 or offset + 2 > len(data):
        return None
    count = struct.unpack(order + "H", data[offset:offset + 2])[0]
    if offset + 2 + 12 * count > len(data):
        return None
    values: dict[int, int] = {}
    for k in range(count):
        tag, kind, number = struct.unpack(order + "HHI", data[offset + 2 + 12 * k:offset + 10 + 12 * k])
        field = data[offset + 10 + 12 * k:offset + 14 + 12 * k]
        if tag in (TIFF_WIDTH, TIFF_LENGTH, TIFF_SAMPLES) and number == 1 and kind in (3, 4):  # SHORT, LONG
            values[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), field[:2 if kind == 3 else 4])[0]
    if TIFF_WIDTH not in values or TIFF_LENGTH not in values or values.get(TIFF_SAMPLES, 1) > TIFF_MAX_SAMPLES:
        return None
    return values[TIFF_WIDTH], values[TIFF_LENGTH]


def _webp_chunk_size(fourcc: bytes, body: bytes) -> tuple[int, int] | None:
    """(width, height) in a WebP 'VP8 ' (lossy), 'VP8L' (lossless) or 'VP8X' (extended) chunk."""
    if fourcc == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", body[6:10])
        return width & 0x3FFF, height & 0x3FFF  # the top 2 bits are an upscaling hint decoders ignore
    if fourcc == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
        bits = struct.unpack("<I", body[1:5])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if fourcc == b"VP8X" and len(body) >= 10:
        return int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1
    return None


def webp_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a WebP file from its first chunk ('VP8 ', 'VP8L' or 'VP8X', whose
    canvas bounds every frame), else None. For 'VP8X' the first 'VP8 '/'VP8L' chunk after it
    counts too, the larger of the two sizes wins."""
    if len(data) < 20 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    first = _webp_chunk_size(data[12:16], data[20:20 + struct.unpack("<I", data[16:20])[0]])
    if first is None or data[12:16] != b"VP8X":
        return first
    width, height = first
    offset = 12
    while offset + 8 <= len(data):
        fourcc, length = data[offset:offset + 4], struct.unpack("<I", data[offset + 4:offset + 8])[0]
        if fourcc in (b"VP8 ", b"VP8L"):
            image = _webp_chunk_size(fourcc, data[offset + 8:offset + 8 + length])
            if image is None:
                return None
            return max(width, image[0]), max(height, image[1])
        offset += 8 + length + (length & 1)  # chunks are padded to an even length
    return width, height


def gif_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a GIF: its logical screen, grown to hold the first image when that one
    reaches beyond it (the frame OpenCV decodes), else None."""
    if len(data) < 13 or data[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    width, height = struct.unpack("<HH", data[6:10])
    flags, i = data[10], 13
    if flags & 0x80:  # a global colour table
        i += 3 * 2 ** ((flags & 7) + 1)
    while i < len(data):
        if data[i] == 0x2C and i + 10 <= len(data):  # image descriptor
            left, top, frame_width, frame_height = struct.unpack("<HHHH", data[i + 1:i + 9])
            return max(width, left + frame_width), max(height, top + frame_height)
        if data[i] != 0x21 or i + 2 >= len(data):  # anything but an extension: no image here
            return None
        i += 2  # extension introducer and label, then sub-blocks up to a zero length
        while i < len(data) and data[i]:
            i += 1 + data[i]
        i += 1
    return None


def image_format(data: bytes) -> str | None:
    """'png', 'jpeg', 'bmp', 'webp', 'gif', 'tiff' from the first bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from the header of a PNG, JPEG, BMP, TIFF, WebP or GIF file without
    decoding it (pure Python, a few hundred bytes read at most but for JPEG's marker walk), else
    None; lets a huge image be refused before its pixels are allocated.

    Args:
        data: the whole file (a prefix is enough when the header lies in it).
    """
    fmt = image_format(data)
    if fmt == "png" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if fmt == "jpeg":
        return _jpeg_size(data)
    if fmt == "bmp" and len(data) >= 26:
        header = struct.unpack("<I", data[14:18])[0]
        if header == 12:  # BITMAPCOREHEADER (OS/2): 16-bit sizes
            return struct.unpack("<HH", data[18:22])
        if header >= 40:
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        return None
    if fmt == "tiff":
        return tiff_size(data)
    if fmt == "webp":
        return webp_size(data)
    if fmt == "gif":
        return gif_size(data)
    return None


def _too_many_pixels(width: int, height: int, max_pixels: int) -> UploadError:
    return UploadError(413, f"image too large: {width}x{height} is {width * height / 1e6:.1f} megapixels, "
                            f"the limit is {max_pixels / 1e6:g} (--max-megapixels)")


NOT_AN_IMAGE = "not an image (or one of an unknown kind): send a PNG, JPEG, BMP, TIFF, WebP or GIF file"


def check_image_header(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """The format, width and height of an uploaded image, read from its header; raises
    UploadError before anything is decoded: 400 for an empty file, an unknown format or a header
    whose size cannot be read, 413 for more than `max_pixels` pixels."""
    if not data:
        raise UploadError(400, "the uploaded file is empty")
    fmt = image_format(data)
    if fmt is None:  # OpenCV reads more formats (PPM, HDR, AVIF ...) whose sizes this server does not check
        raise UploadError(400, NOT_AN_IMAGE)
    size = header_size(data)
    if size is None:
        raise UploadError(400, f"cannot read the size of this {fmt.upper()} file from its header "
                               f"(corrupt, truncated, or a variant this server does not read)")
    if size[0] * size[1] > max_pixels:
        raise _too_many_pixels(*size, max_pixels)
    return fmt, size[0], size[1]


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """H x W x 3 uint8 RGB from an uploaded file, converted as `cgnet predict` reads files
    (grayscale and RGBA to RGB). The size is checked from the header first (`check_image_header`),
    so a huge image is refused before its pixels exist. Raises UploadError (400 or 413) with a
    message for the page."""
    fmt = check_image_header(data, max_pixels)[0]
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise UploadError(400, f"cannot decode this {fmt.upper()} file (corrupt or truncated)")
    if image.dtype != np.uint8:
        raise UploadError(400, f"the image is {image.dtype}; an 8-bit image is expected")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise _too_many_pixels(image.shape[1], image.shape[0], max_pixels)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _encode(ext: str, image: np.ndarray, *params: int) -> str:
    ok, buffer = cv2.imencode(ext, image, list(params))
    if not ok:
        raise RuntimeError(f"cannot encode a {ext} image")
    return base64.b64encode(buffer.tobytes()).decode("ascii")


# ---- the model, shared -------------------------------------------------------------------------

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
        image = decode_image(data, max_pixels)
        mask, seconds = self.timed_predict(image)
        color = colorize(mask, self.palette)
        overlay = blend(image, color, self.alpha)
        answer = {"width": int(image.shape[1]), "height": int(image.shape[0]),
                  "latency_ms": round(seconds * 1000, 2),
                  "backend": self.predictor.backend, "precision": self.predictor.precision,
                  "mask_png": _encode(".png", mask),
                  "color_png": _encode(".png", cv2.cvtColor(color, cv2.COLOR_RGB2BGR)),
                  "overlay_png": _encode(".png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)),
                  "alpha": self.alpha, "legend": self.legend(mask)}
        if image_format(data) not in BROWSER_IMAGES:  # e.g. TIFF: the page cannot show the upload itself
            answer["image_jpeg"] = _encode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), cv2.IMWRITE_JPEG_QUALITY, 92)
        return answer


# ---- video jobs --------------------------------------------------------------------------------

class JobCancelled(CGNetError):
    pass


class Job:
    def __init__(self, folder: Path, name: str, source: Path, total: int):
        self.id, self.folder, self.name, self.source, self.total = folder.name, folder, name, source, total
        self.state, self.frames, self.error, self.latency = "queued", 0, None, 0.0
        self.mp4 = folder / f"{name}_overlay.mp4"
        self.preview: Path | None = None
        self.cancelled = False

    def status(self) -> dict:
        progress = 1.0 if self.state == "done" else (min(0.99, self.frames / self.total) if self.total else 0.0)
        status = {"id": self.id, "state": self.state, "frames": self.frames, "total": self.total,
                  "progress": progress, "error": self.error, "name": self.name}
        if self.frames:
            status["latency_ms"] = round(self.latency / self.frames * 1000, 2)
        if self.state == "done":
            status["video_url"] = f"/api/jobs/{self.id}/video?download=1"
            status["preview_url"] = f"/api/jobs/{self.id}/preview"
        return status


class _JobPredictor:
    """The shared model as `predict_video` sees it: counts the frames for the progress bar and
    stops the job when it is cancelled or longer than allowed."""

    def __init__(self, segmenter: Segmenter, job: Job, max_frames: int):
        self.segmenter, self.job, self.max_frames = segmenter, job, max_frames
        self.meta = segmenter.meta

    def predict(self, image_rgb: np.ndarray) -> np.ndarray:
        if self.job.cancelled:
            raise JobCancelled("the server is stopping")
        if self.job.frames >= self.max_frames:
            raise UploadError(413, f"video too long: more than {self.max_frames} frames (--max-video-frames)")
        mask, seconds = self.segmenter.timed_predict(image_rgb)
        self.job.frames += 1
        self.job.latency += seconds
        return mask


def webm_copy(mp4: Path, webm: Path) -> bool:
    """Re-encode the overlay video as WebM (VP8), which browsers play (they do not play mp4v);
    False when this OpenCV build cannot write VP8."""
    with VideoStreams(mp4) as streams:
        ok, frame = streams.cap.read()
        if not ok:
            return False
        writer = streams.open_writer(webm, "VP80", video_fps(streams.cap), (frame.shape[1], frame.shape[0]))
        if not writer.isOpened():
            return False
        while ok:
            writer.write(frame)
            ok, frame = streams.cap.read()
        return True


class Jobs:
    """Video jobs, run one after the other in a worker thread, with their files in a temporary
    folder that is deleted when the server stops."""

    def __init__(self, segmenter: Segmenter, max_frames: int, max_pixels: int, max_pending: int = 4):
        self.segmenter, self.max_frames, self.max_pixels = segmenter, max_frames, max_pixels
        self.max_pending = max_pending
        self.pending = 0  # uploads being received, checked, queued or run: at most max_pending
        self.folder = Path(tempfile.mkdtemp(prefix="cgnet-serve-"))
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgnet-video")

    def get(self, job_id: str) -> Job:
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise UploadError(404, f"no video job {shorten(job_id)!r} "
                                   f"(finished jobs are kept until {MAX_JOBS_KEPT} newer ones)")
        return job

    def reserve(self) -> None:
        """Take one of the `max_pending` places for a video (its upload, check, wait and run);
        429 with Retry-After when none is free. `release` gives it back (a finished job does)."""
        with self.lock:
            if self.pending >= self.max_pending:
                raise UploadError(429, f"the video queue is full ({self.max_pending} videos waiting or running, "
                                       f"--max-queued-videos): try again later",
                                  headers={"retry-after": str(RETRY_AFTER_S)})
            self.pending += 1

    def release(self) -> None:
        with self.lock:
            self.pending -= 1

    def create(self, upload_path: Path, filename: str) -> Job:
        """Check the uploaded video (in `upload_path`, inside a fresh job folder) and queue it;
        the caller holds a place (`reserve`), which the job gives back when it ends."""
        with upload_path.open("rb") as file:
            fmt = image_format(file.read(16))
        if fmt is not None:
            raise UploadError(400, f"this is a {fmt.upper()} image, not a video: send images to /api/segment")
        cap = cv2.VideoCapture(str(upload_path))
        try:
            if not cap.isOpened() or cap.getBackendName() == "CV_IMAGES":  # OpenCV's reader of still images
                raise UploadError(400, NOT_A_VIDEO)
            width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            if width * height > self.max_pixels:  # before a frame is decoded
                raise _too_many_pixels(width, height, self.max_pixels)
            ok, frame = cap.read()
            if not ok or frame is None:
                raise UploadError(400, NOT_A_VIDEO)
            height, width = frame.shape[:2]
            if width * height > self.max_pixels:
                raise _too_many_pixels(width, height, self.max_pixels)
            count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            if math.isfinite(count) and count > 0:
                total = int(count)
            else:  # no count in the container (a still image read as a stream, a live recording): count them
                total = 1
                while total <= self.max_frames and cap.grab():
                    total += 1
                if total < 2:
                    raise UploadError(400, "not a video: one frame and no frame count (a still image?): "
                                           "send an mp4, avi, mov, mkv or webm file")
        finally:
            cap.release()
        if total > self.max_frames:
            told = str(total) if math.isfinite(count) and count > 0 else f"more than {self.max_frames}"
            raise UploadError(413, f"video too long: {told} frames, the limit is {self.max_frames} "
                                   f"(--max-video-frames)")
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(filename or "video").stem)[:80] or "video"
        job = Job(upload_path.parent, stem, upload_path, total)
        with self.lock:
            self.jobs[job.id] = job
            self._forget_old()
        self.executor.submit(self._run, job)
        return job

    def new_folder(self) -> Path:
        folder = self.folder / uuid.uuid4().hex
        folder.mkdir()
        return folder

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs.values() if j.state in ("done", "error")]
        for job in finished[:max(0, len(finished) - MAX_JOBS_KEPT)]:
            del self.jobs[job.id]
            shutil.rmtree(job.folder, ignore_errors=True)

    def _run(self, job: Job) -> None:
        state, message = "error", None
        try:
            if job.cancelled:
                raise JobCancelled("the server is stopping")
            job.state = "running"
            frames = predict_video(_JobPredictor(self.segmenter, job, self.max_frames), job.source, job.mp4,
                                   alpha=self.segmenter.alpha, progress=False)
            job.total = frames
            job.state = "encoding"
            preview = job.folder / f"{job.name}_overlay.webm"
            job.preview = preview if webm_copy(job.mp4, preview) else job.mp4
            state = "done"
        except (CGNetError, ValueError, RuntimeError, OSError) as error:
            message = str(error)
        except Exception as error:  # noqa: BLE001 - a job must end in a state the page can show
            message = f"internal error: {type(error).__name__}: {error}"
        finally:
            job.source.unlink(missing_ok=True)
            self.release()  # before the job shows as finished: its client may send the next video at once
            job.error, job.state = message, state

    def close(self) -> None:
        with self.lock:
            for job in self.jobs.values():
                job.cancelled = True
        self.executor.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.folder, ignore_errors=True)


# ---- the web app -------------------------------------------------------------------------------

class LimitBody:
    """ASGI middleware: a request body over `limit` bytes is read to its end (so the client gets
    the answer instead of a reset connection) and answered 413 with a JSON message. A declared
    Content-Length is checked before anything is parsed; a chunked body as it arrives."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _drain(receive)
            return await _send_json(send, 413, {"error": str(BodyTooLarge(self.limit))})
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    if message.get("more_body"):
                        await _drain(receive)
                    raise BodyTooLarge(self.limit)
            return message
        return await self.app(scope, counted, send)


def host_name(value: str) -> str | None:
    """The lower-case name in a Host header ('name', 'name:port', '[v6]' or '[v6]:port'), or None
    when it is malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        return name or None
    name, colon, port = value.partition(":")
    if colon and not port.isdigit():
        return None
    return name or None


def served_hosts(host: str = "127.0.0.1", allowed: tuple[str, ...] | list[str] = ()) -> frozenset[str]:
    """The host names a server answers: the loopback names, the address it listens on (unless
    that is 0.0.0.0 or ::, which no client names) and the `--allowed-host` names, lower case and
    without IPv6 brackets."""
    names = set(LOOPBACK_NAMES)
    for name in [host, *allowed]:
        name = name.strip().lower()
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        if name not in WILDCARD_HOSTS:
            names.add(name)
    return frozenset(names)


class GuardHosts:
    """ASGI middleware against DNS rebinding and cross-site posts. A request whose Host header
    names none of `names` is answered 421 (400 without a Host header); one with a body-carrying
    method (anything but GET, HEAD and OPTIONS) whose Origin header is present and is not
    http://NAME:PORT for a served NAME and the server's own port is answered 403. Both with a
    short JSON `{"error": ...}`; the body, if any, is read and dropped first."""

    SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

    def __init__(self, app, names: frozenset[str]):
        self.app, self.names = app, names

    def served_origin(self, origin: str, scope) -> bool:
        parts = urllib.parse.urlsplit(origin)
        try:
            port = parts.port or 80
        except ValueError:
            return False
        server = scope.get("server")
        return (parts.scheme == "http" and parts.hostname in self.names
                and (not server or server[1] is None or port == server[1]))

    def refusal(self, scope) -> tuple[int, str] | None:
        headers = dict(scope["headers"])
        host = headers.get(b"host")
        if host is None:
            return 400, "the request has no Host header"
        text = host.decode("latin-1")
        if host_name(text) not in self.names:
            return 421, f"host {shorten(text)!r} is not served here (--allowed-host adds names)"
        origin = headers.get(b"origin")
        if origin is not None and scope.get("method", "GET") not in self.SAFE_METHODS:
            text = origin.decode("latin-1")
            if not self.served_origin(text, scope):
                return 403, f"cross-origin request refused: {shorten(text)!r} is not this server's origin"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        refused = self.refusal(scope)
        if refused is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        await _drain(receive)
        return await _send_json(send, refused[0], {"error": refused[1]})


async def _drain(receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


async def _send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(predictor: Predictor, *, name: str = DEFAULT_WEIGHTS, max_upload_mb: float = 50,
               max_megapixels: float = 40, max_video_frames: int = 1500, alpha: float = 0.5,
               host: str = "127.0.0.1", allowed_hosts: tuple[str, ...] | list[str] = (),
               max_queued_videos: int = 4, max_concurrent_images: int = 4,
               web_source: str | None = None):
    """The ASGI app (Starlette) serving `predictor`.

    Args:
        predictor: the model, loaded once (`make_predictor`).
        name: what the page calls the model.
        max_upload_mb: the largest request body; more is answered 413.
        max_megapixels: the largest image (or video frame), in millions of pixels; more is 413.
        max_video_frames: the longest video, in frames; more is 413 (or the job's error).
        alpha: weight of the colours in the server's overlays (the page has its own slider).
        host: the address the server listens on; a client may name it in its Host header.
        allowed_hosts: more host names to answer (besides localhost, 127.0.0.1, ::1 and `host`);
            any other Host is answered 421.
        max_queued_videos: videos being uploaded, waiting or running at once; one more is 429.
        max_concurrent_images: images decoded, segmented and encoded at once; more wait their turn
            (bounds the memory that decoded images take; the model runs one at a time anyway).
        web_source: the checkpoint or .onnx file the page's in-browser mode runs (`web.web_routes`);
            None turns that mode off.
    """
    require_serve()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    limit = int(max_upload_mb * 2**20)
    max_pixels = int(max_megapixels * 1e6)
    segmenter = Segmenter(predictor, name, alpha)
    jobs = Jobs(segmenter, max_video_frames, max_pixels, max_queued_videos)
    image_slots = asyncio.Semaphore(max_concurrent_images)  # waiting here takes no worker thread
    limits = {"max_upload_mb": max_upload_mb, "max_megapixels": max_megapixels, "max_video_frames": max_video_frames,
              "max_queued_videos": max_queued_videos, "max_concurrent_images": max_concurrent_images}

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": shorten(message, MAX_MESSAGE)}, status_code=status, headers=headers)

    async def discard(request) -> None:
        """Read the request's body to its end and drop it (the client then gets the answer)."""
        try:
            async for _ in request.stream():
                pass
        except (ClientDisconnect, UploadError):
            pass

    async def upload(request, field: str):
        """The file in multipart field `field`, or an UploadError."""
        try:
            form = await request.form(max_files=1, max_fields=16)
        except MultiPartException as e:
            raise UploadError(400, f"could not read the upload as multipart/form-data: {e}") from None
        except ClientDisconnect:
            raise UploadError(400, "the upload was interrupted") from None
        item = form.get(field)
        if item is None or isinstance(item, str):
            await form.close()
            raise UploadError(400, f"send the file as a multipart/form-data file field named {field!r}")
        return form, item

    async def index(request):
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def info(request):
        return JSONResponse({**segmenter.info(), "limits": limits, "videos_pending": jobs.pending,
                             "video_exts": list(VIDEO_EXTS)})

    async def segment(request):
        form, item = await upload(request, "image")
        try:
            data = await item.read()
        finally:
            await form.close()
        async with image_slots:
            return JSONResponse(await run_in_threadpool(segmenter.segment, data, max_pixels))

    async def video(request):
        try:
            jobs.reserve()  # before the upload is stored: a full queue costs no disk
        except UploadError:
            await discard(request)
            raise
        folder = None
        try:
            form, item = await upload(request, "video")
            folder = jobs.new_folder()
            suffix = Path(item.filename or "").suffix.lower()
            path = folder / f"input{suffix if suffix in VIDEO_EXTS else '.mp4'}"
            try:
                with path.open("wb") as out:
                    while chunk := await item.read(2**20):
                        out.write(chunk)
            finally:
                await form.close()
            async with image_slots:
                job = await run_in_threadpool(jobs.create, path, item.filename or "video")
        except BaseException:
            jobs.release()
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return JSONResponse(job.status(), status_code=202)

    async def job_status(request):
        return JSONResponse(jobs.get(request.path_params["job"]).status())

    def finished(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job.state != "done":
            raise UploadError(404, f"video job {shorten(job_id)} is {job.state}, not done")
        return job

    async def job_video(request):
        job = finished(request.path_params["job"])
        download = request.query_params.get("download") not in (None, "0")
        return FileResponse(job.mp4, media_type="video/mp4", filename=job.mp4.name if download else None)

    async def job_preview(request):
        job = finished(request.path_params["job"])
        kind = "video/webm" if job.preview.suffix == ".webm" else "video/mp4"
        return FileResponse(job.preview, media_type=kind)

    async def upload_error(request, exc: UploadError):
        return error(exc.status, str(exc), exc.headers)

    async def http_error(request, exc: HTTPException):
        if request.url.path.startswith("/api/") or exc.status_code != 404:
            return error(exc.status_code, exc.detail if isinstance(exc.detail, str) else "request failed")
        return Response("not found", status_code=404, media_type="text/plain")

    async def server_error(request, exc: Exception):
        return error(500, f"internal error: {type(exc).__name__}: {exc}")

    class SecurityHeaders:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            async def with_headers(message):
                if message["type"] == "http.response.start":
                    message.setdefault("headers", [])
                    message["headers"] = list(message["headers"]) + [
                        (k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                return await send(message)
            return await self.app(scope, receive, with_headers if scope["type"] == "http" else send)

    @asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            jobs.close()

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/segment", segment, methods=["POST"]),
        Route("/api/video", video, methods=["POST"]),
        Route("/api/jobs/{job}", job_status),
        Route("/api/jobs/{job}/video", job_video),
        Route("/api/jobs/{job}/preview", job_preview),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    routes += web_routes(web_source)  # the in-browser mode: /web/model.json, /web/model.onnx, /web/ort/*
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(SecurityHeaders),
                                Middleware(GuardHosts, names=served_hosts(host, allowed_hosts)),
                                Middleware(LimitBody, limit=limit)],
                    exception_handlers={UploadError: upload_error, HTTPException: http_error,
                                        Exception: server_error})
    app.state.segmenter, app.state.jobs = segmenter, jobs
    return app


# ---- running it --------------------------------------------------------------------------------

def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (port 0: a free one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise CGNetError(f"--host {host}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise CGNetError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def address_of(sock: socket.socket) -> str:
    """The URL to open for a listening socket (for 0.0.0.0 / :: the local one)."""
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run_server(app, sock: socket.socket, on_ready=None, tls: dict | None = None) -> None:
    """Serve `app` on `sock` until interrupted (Ctrl+C) or told to stop (SIGTERM); `on_ready()` is
    called once the server accepts connections; `tls`: uvicorn's ssl_certfile/ssl_keyfile."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if on_ready is not None and not self.should_exit:
                on_ready()

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", **(tls or {}))
    Server(config).run(sockets=[sock])


# ---- command line ------------------------------------------------------------------------------

def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0: a free one), got {text!r}")
    return int(text)


def _allowed_host(text: str) -> str:
    name = text.strip().lower()
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    if not bare or any(c in bare for c in "/@?#[] \t") or (":" in bare and bare == name):
        raise argparse.ArgumentTypeError(f"a host name or address without scheme or port "
                                          f"(an IPv6 address in brackets), got {text!r}")
    return bare


def add_serve_args(p: argparse.ArgumentParser) -> None:
    add_predictor_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--allowed-host", type=_allowed_host, action="append", default=[], metavar="NAME",
                   help="a host name clients may use to reach the server, besides localhost, 127.0.0.1, [::1] "
                        "and --host (repeatable); requests naming any other host are refused (DNS rebinding)")
    p.add_argument("--max-upload-mb", type=number_type(float, positive=True), default=50.0,
                   help="largest upload in MB (default 50)")
    p.add_argument("--max-megapixels", type=number_type(float, positive=True), default=40.0,
                   help="largest image or video frame in megapixels (default 40)")
    p.add_argument("--max-video-frames", type=number_type(int, minimum=1), default=1500,
                   help="longest video in frames (default 1500, 1 minute at 25 fps)")
    p.add_argument("--max-queued-videos", type=number_type(int, minimum=1), default=4,
                   help="videos uploading, waiting or running at once (default 4); one more is refused "
                        "with 429 and Retry-After")
    p.add_argument("--max-concurrent-images", type=number_type(int, minimum=1), default=4,
                   help="images decoded and segmented at once (default 4); more uploads wait their turn")
    p.add_argument("--alpha", type=number_type(float, minimum=0, maximum=1), default=0.5, help="weight of the colours in the server's overlays "
                                                            "(default 0.5; the page has a slider)")
    add_tls_args(p)


def cmd_serve(args: argparse.Namespace) -> int:
    require_serve()
    tls = tls_options(args)
    sock = bind(args.host, args.port)  # before loading the model: a busy port fails at once
    try:
        backend = resolve_backend(args.backend, args.precision, args.checkpoint, args.compile)
        predictor = make_predictor(args.checkpoint, backend=args.backend, precision=args.precision, device=args.device,
                                   data_root=args.data_root, log=print, compile=args.compile)
        name = Path(args.checkpoint).name if args.checkpoint else DEFAULT_WEIGHTS
        app = create_app(predictor, name=name, max_upload_mb=args.max_upload_mb,
                         max_megapixels=args.max_megapixels, max_video_frames=args.max_video_frames,
                         alpha=args.alpha, host=args.host, allowed_hosts=args.allowed_host,
                         max_queued_videos=args.max_queued_videos,
                         max_concurrent_images=args.max_concurrent_images,
                         web_source=args.checkpoint or DEFAULT_WEIGHTS)
    except BaseException:
        sock.close()
        raise
    url = address_of(sock).replace("http://", "https://" if tls else "http://", 1)
    host = sock.getsockname()[0]
    note = ""
    if host not in ("127.0.0.1", "::1"):
        note = " (listening on every interface: others on the network can use it"
        note += ", by the names given with --allowed-host)" if args.allowed_host else \
            "; give --allowed-host NAME for each name they reach it by)"

    def ready() -> None:
        print(f"cgnet serve: {url} - {name} on {predictor.backend} ({predictor.precision}){note}; "
              f"Ctrl+C stops it", flush=True)
    run_server(app, sock, ready, tls)
    return 0
