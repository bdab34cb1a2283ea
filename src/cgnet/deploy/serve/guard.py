"""What `cgnet serve` refuses before a route runs, and the headers every answer carries.

`UploadError` is a refusal with its HTTP status; the three ASGI middlewares are `LimitBody` (413
for a body over --max-upload-mb), `GuardHosts` (421 for a Host header naming a host not served,
DNS rebinding; 403 for a POST from another origin) and `SecurityHeaders` (the Content-Security-
Policy, nosniff, no referrer and the cross-origin isolation the in-browser mode needs).
"""
from __future__ import annotations

import json
import urllib.parse

from ...common import CGNetError
from ..web import ISOLATION_HEADERS

MAX_MESSAGE = 300  # the longest error message sent (a safety net: echoed values are cut to 64)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # host names always served
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # --host values that are not names a client uses
DEFAULT_PORTS = {"http": 80, "https": 443}  # the port an Origin without one means
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


class UploadError(CGNetError, ValueError):
    """A request the server refuses; `status` is the HTTP status (400, 403, 404, 413, 421 or 429),
    `headers` extra response headers (Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, dict(headers or {})


class BodyTooLarge(UploadError):
    def __init__(self, limit_bytes: int):
        super().__init__(413, f"upload too large: the limit is {limit_bytes / 2**20:g} MB (--max-upload-mb)")


def shorten(text: str, limit: int = 64) -> str:
    """`text` cut to `limit` characters, the cut marked with '...': what an error message echoes
    of a request (a job id, a host name) stays short whatever the request sent."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


async def drain(receive) -> None:
    """Read a request's body to its end (the client then reads the answer, not a reset)."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


async def send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
            await drain(receive)
            return await send_json(send, 413, {"error": str(BodyTooLarge(self.limit))})
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    if message.get("more_body"):
                        await drain(receive)
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


def request_scheme(scope) -> str:
    """'http' or 'https': how the request reached the server (a WebSocket's ws/wss counted as such)."""
    scheme = scope.get("scheme") or "http"
    return {"ws": "http", "wss": "https"}.get(scheme, scheme)


class GuardHosts:
    """ASGI middleware against DNS rebinding and cross-site posts. A request whose Host header
    names none of `names` is answered 421 (400 without a Host header); one with a body-carrying
    method (anything but GET, HEAD and OPTIONS) whose Origin header is present and is not this
    server's origin (the request's own scheme, a served NAME, the server's own port; a missing
    port meaning 80 for http and 443 for https) is answered 403. Both with a short JSON
    `{"error": ...}`; the body, if any, is read and dropped first."""

    SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

    def __init__(self, app, names: frozenset[str]):
        self.app, self.names = app, names

    def served_origin(self, origin: str, scope) -> bool:
        parts = urllib.parse.urlsplit(origin)
        scheme = request_scheme(scope)
        try:
            port = parts.port or DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            return False
        server = scope.get("server")
        return (parts.scheme == scheme and parts.hostname in self.names
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
        await drain(receive)
        return await send_json(send, refused[0], {"error": refused[1]})


class SecurityHeaders:
    """ASGI middleware: `SECURITY_HEADERS` added to every HTTP answer."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [
                    (k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
            return await send(message)
        return await self.app(scope, receive, with_headers)
