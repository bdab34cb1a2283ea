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

Errors are JSON `{"error": message}` with status 400 (not an image, corrupt, wrong field),
413 (upload or image too large) or 404. Starlette, uvicorn and python-multipart are the optional
extra `pip install 'cgnet[serve]'`; they are imported only when a server is made.
"""
from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import shutil
import socket
import struct
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import cv2
import numpy as np

from ..common import DEFAULT_WEIGHTS, VIDEO_EXTS, CGNetError, number_type
from ..visualize import blend, colorize
from .predict import VideoStreams, palette_of, predict_video, video_fps
from .predictor import add_predictor_args, make_predictor, resolve_backend
from .runners import MissingBackend, Predictor
from .web import ISOLATION_HEADERS, add_tls_args, tls_options, web_routes

STATIC = Path(__file__).resolve().parent / "serve_static"
SERVE_MODULES = {"starlette": "starlette", "uvicorn": "uvicorn", "python-multipart": "python_multipart"}
MAX_JOBS_KEPT = 16  # finished video jobs whose files are kept; older ones are deleted
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
    """A request the server refuses; `status` is the HTTP status (400, 404 or 413)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class BodyTooLarge(UploadError):
    def __init__(self, limit_bytes: int):
        super().__init__(413, f"upload too large: the limit is {limit_bytes / 2**20:g} MB (--max-upload-mb)")


# ---- images ------------------------------------------------------------------------------------

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
    """(width, height) read from a PNG, JPEG or BMP header without decoding, else None; lets a
    huge image be refused before its pixels are allocated."""
    fmt = image_format(data)
    if fmt == "png" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if fmt == "jpeg":
        return _jpeg_size(data)
    if fmt == "bmp" and len(data) >= 26 and struct.unpack("<I", data[14:18])[0] >= 40:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    return None


def _too_many_pixels(width: int, height: int, max_pixels: int) -> UploadError:
    return UploadError(413, f"image too large: {width}x{height} is {width * height / 1e6:.1f} megapixels, "
                            f"the limit is {max_pixels / 1e6:g} (--max-megapixels)")


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """H x W x 3 uint8 RGB from an uploaded file, converted as `cgnet predict` reads files
    (grayscale and RGBA to RGB). Raises UploadError (400 or 413) with a message for the page."""
    if not data:
        raise UploadError(400, "the uploaded file is empty")
    size = header_size(data)
    if size and size[0] * size[1] > max_pixels:
        raise _too_many_pixels(*size, max_pixels)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        what = image_format(data)
        raise UploadError(400, f"cannot decode this {what.upper()} file (corrupt or truncated)" if what else
                               "not an image (or one of an unknown kind): send a PNG, JPEG, BMP, TIFF or WebP file")
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

    def __init__(self, segmenter: Segmenter, max_frames: int, max_pixels: int):
        self.segmenter, self.max_frames, self.max_pixels = segmenter, max_frames, max_pixels
        self.folder = Path(tempfile.mkdtemp(prefix="cgnet-serve-"))
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgnet-video")

    def get(self, job_id: str) -> Job:
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise UploadError(404, f"no video job {job_id!r} (finished jobs are kept until {MAX_JOBS_KEPT} newer ones)")
        return job

    def create(self, upload_path: Path, filename: str) -> Job:
        """Check the uploaded video (in `upload_path`, inside a fresh job folder) and queue it."""
        cap = cv2.VideoCapture(str(upload_path))
        try:
            ok, frame = cap.read() if cap.isOpened() else (False, None)
            if not ok or frame is None:
                raise UploadError(400, "not a video this server can decode (corrupt, or an unsupported format): "
                                       "send an mp4, avi, mov, mkv or webm file")
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        finally:
            cap.release()
        height, width = frame.shape[:2]
        if width * height > self.max_pixels:
            raise _too_many_pixels(width, height, self.max_pixels)
        if total > self.max_frames:
            raise UploadError(413, f"video too long: {total} frames, the limit is {self.max_frames} (--max-video-frames)")
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
            job.state = "done"
        except (CGNetError, ValueError, RuntimeError, OSError) as error:
            job.error, job.state = str(error), "error"
        except Exception as error:  # noqa: BLE001 - a job must end in a state the page can show
            job.error, job.state = f"internal error: {type(error).__name__}: {error}", "error"
        finally:
            job.source.unlink(missing_ok=True)

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
               web_source: str | None = None):
    """The ASGI app (Starlette) serving `predictor`.

    Args:
        predictor: the model, loaded once (`make_predictor`).
        name: what the page calls the model.
        max_upload_mb: the largest request body; more is answered 413.
        max_megapixels: the largest image (or video frame), in millions of pixels; more is 413.
        max_video_frames: the longest video, in frames; more is 413 (or the job's error).
        alpha: weight of the colours in the server's overlays (the page has its own slider).
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
    jobs = Jobs(segmenter, max_video_frames, max_pixels)
    limits = {"max_upload_mb": max_upload_mb, "max_megapixels": max_megapixels, "max_video_frames": max_video_frames}

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

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
        return JSONResponse({**segmenter.info(), "limits": limits,
                             "video_exts": list(VIDEO_EXTS)})

    async def segment(request):
        form, item = await upload(request, "image")
        try:
            data = await item.read()
        finally:
            await form.close()
        return JSONResponse(await run_in_threadpool(segmenter.segment, data, max_pixels))

    async def video(request):
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
        try:
            job = await run_in_threadpool(jobs.create, path, item.filename or "video")
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return JSONResponse(job.status(), status_code=202)

    async def job_status(request):
        return JSONResponse(jobs.get(request.path_params["job"]).status())

    def finished(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job.state != "done":
            raise UploadError(404, f"video job {job_id} is {job.state}, not done")
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
        return error(exc.status, str(exc))

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
                    middleware=[Middleware(SecurityHeaders), Middleware(LimitBody, limit=limit)],
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


def add_serve_args(p: argparse.ArgumentParser) -> None:
    add_predictor_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-upload-mb", type=number_type(float, positive=True), default=50.0,
                   help="largest upload in MB (default 50)")
    p.add_argument("--max-megapixels", type=number_type(float, positive=True), default=40.0,
                   help="largest image or video frame in megapixels (default 40)")
    p.add_argument("--max-video-frames", type=number_type(int, minimum=1), default=1500,
                   help="longest video in frames (default 1500, 1 minute at 25 fps)")
    p.add_argument("--alpha", type=number_type(float, minimum=0, maximum=1), default=0.5, help="weight of the colours in the server's overlays "
                                                            "(default 0.5; the page has a slider)")
    add_tls_args(p)


def cmd_serve(args: argparse.Namespace) -> int:
    require_serve()
    tls = tls_options(args)
    sock = bind(args.host, args.port)  # before loading the model: a busy port fails at once
    try:
        backend = resolve_backend(args.backend, args.precision, args.checkpoint, args.compile)
        predictor = make_predictor(args.checkpoint, backend=backend, precision=args.precision, device=args.device,
                                   data_root=args.data_root, log=print, compile=args.compile)
        name = Path(args.checkpoint).name if args.checkpoint else DEFAULT_WEIGHTS
        app = create_app(predictor, name=name, max_upload_mb=args.max_upload_mb,
                         max_megapixels=args.max_megapixels, max_video_frames=args.max_video_frames,
                         alpha=args.alpha, web_source=args.checkpoint or DEFAULT_WEIGHTS)
    except BaseException:
        sock.close()
        raise
    url = address_of(sock).replace("http://", "https://" if tls else "http://", 1)
    host = sock.getsockname()[0]
    note = "" if host in ("127.0.0.1", "::1") else " (listening on every interface: others on the network can use it)"

    def ready() -> None:
        print(f"cgnet serve: {url} - {name} on {predictor.backend} ({predictor.precision}){note}; "
              f"Ctrl+C stops it", flush=True)
    run_server(app, sock, ready, tls)
    return 0
