"""The in-browser mode's routes of `cgnet serve`: the page asks for the model, its metadata and
the runtime under /web/, and runs the model itself (`cgnet.deploy.web` makes those files).

    GET /web/model.json     classes, palette, preprocessing, runtime version (`web.page_meta`)
    GET /web/model.onnx     the fp32 ONNX export (exported once into the cache, verified)
    GET /web/ort/{file}     the runtime's files
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from ...common import CGNetError, InputError, MissingFileError
from ..web import ORT_FILES, fetch_runtime, model_onnx, page_meta

CONTENT_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
                 ".json": "application/json", ".onnx": "application/octet-stream", ".html": "text/html",
                 ".css": "text/css", "": "text/plain"}

class WebModel:
    """The in-browser mode's files for `cgnet serve`, made on first request (the export and the
    download take a while and need the `onnx` extra and the network), then kept."""

    def __init__(self, source: str | os.PathLike | None, cache: str | os.PathLike | None = None,
                 data_root: str | os.PathLike | None = None):
        self.source, self.cache, self.data_root = source, cache, data_root
        self.lock = threading.Lock()
        self.onnx: Path | None = None
        self.meta: dict | None = None
        self.runtime: Path | None = None

    def model(self) -> tuple[Path, dict]:
        if self.source is None:
            raise InputError("this server was started without its checkpoint; the in-browser mode is off")
        with self.lock:
            if self.onnx is None:
                onnx_path, meta = model_onnx(self.source, self.cache, self.data_root, log=print)
                self.meta = page_meta(meta, Path(str(self.source)).name)
                self.onnx = onnx_path
            return self.onnx, self.meta

    def runtime_file(self, name: str) -> Path:
        if name not in (*ORT_FILES, "LICENSE"):
            raise MissingFileError(f"no runtime file {name!r}")
        with self.lock:
            if self.runtime is None:
                self.runtime = fetch_runtime(self.cache, log=print)
        return self.runtime / name


def web_routes(source: str | os.PathLike | None, cache: str | os.PathLike | None = None,
               data_root: str | os.PathLike | None = None) -> list:
    """Starlette routes under /web/ serving the in-browser mode's model, metadata and runtime.

    Args:
        source: the served checkpoint (or .onnx file); None turns the mode off (each route then
            answers 503 with the reason).
        cache: the cgnet cache folder.
        data_root: frames to verify the one-time export on.
    """
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Route

    web = WebModel(source, cache, data_root)

    def refused(error: Exception) -> JSONResponse:
        status = 404 if isinstance(error, MissingFileError) and str(error).startswith("no runtime file") else 503
        return JSONResponse({"error": f"in-browser mode unavailable: {error}"}, status_code=status)

    def file(path: Path) -> FileResponse:
        return FileResponse(path, media_type=CONTENT_TYPES.get(path.suffix, "application/octet-stream"))

    async def meta(request):
        try:
            return JSONResponse((await run_in_threadpool(web.model))[1])
        except CGNetError as error:
            return refused(error)

    async def onnx(request):
        try:
            return file((await run_in_threadpool(web.model))[0])
        except CGNetError as error:
            return refused(error)

    async def runtime(request):
        try:
            return file(await run_in_threadpool(web.runtime_file, request.path_params["name"]))
        except CGNetError as error:
            return refused(error)

    return [Route("/web/model.json", meta), Route("/web/model.onnx", onnx), Route("/web/ort/{name}", runtime)]
