"""`cgnet serve`: a local web page and JSON API that segment uploaded images and short videos.

One model is loaded once and shared by every request. Inference runs in worker threads, never on
the event loop, one prediction at a time (a lock: OpenVINO's infer request and ONNX Runtime's
session are shared objects, and on a CPU concurrent forwards only compete for the same cores),
so concurrent requests queue and each gets its own result.

    GET  /                 the page (HTML, JS modules and CSS from serve_static/, nothing external)
    GET  /api/info         model, backend, precision, classes and limits
    POST /api/segment      multipart field `image` -> mask, colours, overlay, legend, latency
    POST /api/video        multipart field `video` -> 202 and a job to poll
    GET  /api/jobs/{id}    state and progress of a video job
    GET  /api/jobs/{id}/video[?download=1]     the overlay video (mp4, `predict_video`)
    GET  /api/jobs/{id}/preview                the same video as WebM (VP8), which browsers play

Errors are JSON `{"error": message}` (at most 300 characters; echoed values are cut to 64) with
status 400 (not an image or video, corrupt, an image whose header Pillow cannot read, wrong
field, no Host header), 403 (a POST from another origin), 404, 413 (upload, image or video
too large), 421 (a Host header naming a host not served: DNS rebinding) or 429 (video queue full,
with Retry-After). An image's size is read from its header (Pillow) and checked before it is
decoded; at most `max_concurrent_images` images are decoded and segmented at once, the others wait.
Starlette, uvicorn and python-multipart are the optional extra `pip install 'cgnet[serve]'`; they
are imported only when a server is made.

The package: `images` (limits, decoding, the shared model's answer), `jobs` (the video queue),
`guard` (Host/Origin checks, the body limit, security headers), `browser` (the in-browser mode's
/web/ routes), `app` (the routes); here, the command line (HTTPS: --certfile/--keyfile).
"""
from __future__ import annotations

import argparse
import math
import socket
import warnings
from pathlib import Path

from PIL import Image

from ...common import DEFAULT_WEIGHTS, CGNetError, InputError, MissingFileError, number_type
from ..predictor import add_predictor_args, make_predictor
from .app import create_app, require_serve
from .guard import GuardHosts, UploadError, host_name, served_hosts, shorten
from .images import Segmenter, check_image_header, image_format, image_header, pillow_pixel_limit
from .jobs import NOT_A_VIDEO

__all__ = ["GuardHosts", "NOT_A_VIDEO", "Segmenter", "UploadError", "add_serve_args", "address_of", "bind",
           "check_image_header", "cmd_serve", "create_app", "host_name", "image_format", "image_header",
           "require_serve", "run_server", "served_hosts", "shorten"]


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


def add_tls_args(p: argparse.ArgumentParser) -> None:
    """--certfile/--keyfile of `cgnet serve` (HTTPS: phones only give a camera to secure pages)."""
    p.add_argument("--certfile", help="TLS certificate (PEM) to serve HTTPS, with --keyfile; a phone's browser "
                                      "only opens its camera on an HTTPS page (or on localhost)")
    p.add_argument("--keyfile", help="the certificate's private key (PEM), with --certfile")


def tls_options(args: argparse.Namespace) -> dict:
    """uvicorn's ssl_certfile/ssl_keyfile from --certfile/--keyfile (checked), or {}."""
    certfile, keyfile = getattr(args, "certfile", None), getattr(args, "keyfile", None)
    if bool(certfile) != bool(keyfile):
        raise InputError("--certfile and --keyfile go together (HTTPS needs both)")
    if not certfile:
        return {}
    for option, path in (("--certfile", certfile), ("--keyfile", keyfile)):
        if not Path(path).is_file():
            raise MissingFileError(f"{option} {path}: no such file")
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}


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
    most = math.floor(pillow_pixel_limit() / 1e5) / 10  # Pillow opens no more pixels (178.9 by default)
    p.add_argument("--max-megapixels", default=40.0, type=number_type(float, positive=True, maximum=most),
                   help=f"largest image or video frame in megapixels (default 40; at most {most:g}, "
                        f"Pillow's decompression-bomb limit)")
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
    # sizes are checked against --max-megapixels before Pillow's own warning threshold matters
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    sock = bind(args.host, args.port)  # before loading the model: a busy port fails at once
    try:
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
