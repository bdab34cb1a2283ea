"""The routes of `cgnet serve` and the Starlette app that holds them (`create_app`).

Each handler reads what it shares from `request.app.state`: the `Segmenter` (the one model),
the video `Jobs`, the limits and the semaphore that bounds the images in work at once.
Starlette is imported only here and only when an app is made (the `serve` extra).
"""
from __future__ import annotations

import asyncio
import importlib.util
import shutil
from contextlib import asynccontextmanager
from pathlib import Path

from ...common import DEFAULT_WEIGHTS, VIDEO_EXTS
from ..predictor import Predictor
from ..runners import MissingBackend
from ..web import STATIC
from .browser import web_routes
from .guard import MAX_MESSAGE, GuardHosts, LimitBody, SecurityHeaders, UploadError, served_hosts, shorten
from .images import Segmenter
from .jobs import Jobs

SERVE_MODULES = {"starlette": "starlette", "uvicorn": "uvicorn", "python-multipart": "python_multipart"}


def require_serve() -> None:
    """Fail with the one line that says how to get the web stack, when part of it is missing."""
    for package, module in SERVE_MODULES.items():
        found = importlib.util.find_spec(module) is not None
        if not found and module == "python_multipart":  # releases before 0.0.13 name it `multipart`
            found = importlib.util.find_spec("multipart") is not None
        if not found:
            raise MissingBackend(f"{package} is not installed: pip install 'cgnet[serve]'")


# ---- helpers of the handlers -------------------------------------------------------------------

def error_response(status: int, message: str, headers: dict[str, str] | None = None):
    from starlette.responses import JSONResponse
    return JSONResponse({"error": shorten(message, MAX_MESSAGE)}, status_code=status, headers=headers)


async def discard(request) -> None:
    """Read the request's body to its end and drop it (the client then gets the answer)."""
    from starlette.requests import ClientDisconnect
    try:
        async for _ in request.stream():
            pass
    except (ClientDisconnect, UploadError):
        pass


async def upload(request, field: str):
    """The form and the file in its multipart field `field` (close the form after), or an UploadError."""
    from starlette.formparsers import MultiPartException
    from starlette.requests import ClientDisconnect
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


async def store_video(request, jobs: Jobs):
    """The uploaded video written into a new job folder: (folder, path, the client's file name)."""
    form, item = await upload(request, "video")
    try:
        folder = jobs.new_folder()
        suffix = Path(item.filename or "").suffix.lower()
        path = folder / f"input{suffix if suffix in VIDEO_EXTS else '.mp4'}"
        with path.open("wb") as out:
            while chunk := await item.read(2**20):
                out.write(chunk)
    finally:
        await form.close()
    return folder, path, item.filename or "video"


# ---- the routes --------------------------------------------------------------------------------

async def index(request):
    from starlette.responses import FileResponse
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def info(request):
    from starlette.responses import JSONResponse
    state = request.app.state
    return JSONResponse({**state.segmenter.info(), "limits": state.limits, "videos_pending": state.jobs.pending,
                         "video_exts": list(VIDEO_EXTS)})


async def segment(request):
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    state = request.app.state
    form, item = await upload(request, "image")
    try:
        data = await item.read()
    finally:
        await form.close()
    async with state.image_slots:
        return JSONResponse(await run_in_threadpool(state.segmenter.segment, data, state.max_pixels))


async def video(request):
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    state = request.app.state
    try:
        state.jobs.reserve()  # before the upload is stored: a full queue costs no disk
    except UploadError:
        await discard(request)
        raise
    folder = None
    try:
        folder, path, filename = await store_video(request, state.jobs)
        async with state.image_slots:
            job = await run_in_threadpool(state.jobs.create, path, filename)
    except BaseException:
        state.jobs.release()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return JSONResponse(job.status(), status_code=202)


async def job_status(request):
    from starlette.responses import JSONResponse
    return JSONResponse(request.app.state.jobs.get(request.path_params["job"]).status())


async def job_video(request):
    from starlette.responses import FileResponse
    job = request.app.state.jobs.finished(request.path_params["job"])
    download = request.query_params.get("download") not in (None, "0")
    return FileResponse(job.mp4, media_type="video/mp4", filename=job.mp4.name if download else None)


async def job_preview(request):
    from starlette.responses import FileResponse
    job = request.app.state.jobs.finished(request.path_params["job"])
    kind = "video/webm" if job.preview.suffix == ".webm" else "video/mp4"
    return FileResponse(job.preview, media_type=kind)


# ---- errors and the app ------------------------------------------------------------------------

async def upload_error(request, exc: UploadError):
    return error_response(exc.status, str(exc), exc.headers)


async def http_error(request, exc):
    from starlette.responses import Response
    if request.url.path.startswith("/api/") or exc.status_code != 404:
        return error_response(exc.status_code, exc.detail if isinstance(exc.detail, str) else "request failed")
    return Response("not found", status_code=404, media_type="text/plain")


async def server_error(request, exc: Exception):
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


@asynccontextmanager
async def lifespan(app):
    try:
        yield
    finally:
        app.state.jobs.close()


def routes(web_source: str | None) -> list:
    """The page, the API, the static files and the in-browser mode's /web/ routes."""
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    return [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/segment", segment, methods=["POST"]),
        Route("/api/video", video, methods=["POST"]),
        Route("/api/jobs/{job}", job_status),
        Route("/api/jobs/{job}/video", job_video),
        Route("/api/jobs/{job}/preview", job_preview),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        *web_routes(web_source),  # the in-browser mode: /web/model.json, /web/model.onnx, /web/ort/*
    ]


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
        web_source: the checkpoint or .onnx file the page's in-browser mode runs (`browser.web_routes`);
            None turns that mode off.
    """
    require_serve()
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware

    middleware = [Middleware(SecurityHeaders), Middleware(GuardHosts, names=served_hosts(host, allowed_hosts)),
                  Middleware(LimitBody, limit=int(max_upload_mb * 2**20))]
    app = Starlette(routes=routes(web_source), lifespan=lifespan, middleware=middleware,
                    exception_handlers={UploadError: upload_error, HTTPException: http_error,
                                        Exception: server_error})
    state = app.state
    state.max_pixels = int(max_megapixels * 1e6)
    state.segmenter = Segmenter(predictor, name, alpha)
    state.jobs = Jobs(state.segmenter, max_video_frames, state.max_pixels, max_queued_videos)
    state.image_slots = asyncio.Semaphore(max_concurrent_images)  # waiting here takes no worker thread
    state.limits = {"max_upload_mb": max_upload_mb, "max_megapixels": max_megapixels,
                    "max_video_frames": max_video_frames, "max_queued_videos": max_queued_videos,
                    "max_concurrent_images": max_concurrent_images}
    return app
