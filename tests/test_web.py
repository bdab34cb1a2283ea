"""The page's in-browser mode (cgnet.deploy.web): onnxruntime-web in a real headless Chromium, fed
by `cgnet serve` and by a static folder from `write_site`, against `cgnet predict`'s class ids;
the runtime's download and integrity check. Browser tests skip without Chromium and playwright
(a failure under CGNET_REQUIRE_BROWSER=1) and without the runtime (no network, no cached copy)."""
from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import http.client
import os
import shutil
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from cgnet.cli import main
from cgnet.deploy import web
from cgnet.deploy.predictor import make_predictor
from helpers.server import running_serve
from test_serve import CHROMIUM_ARGS, MISSING, browser_or_skip, street_like

FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


# ---- the runtime: download, integrity, cache ---------------------------------------------------

def fake_tarball(path: Path, names=web.ORT_FILES) -> bytes:
    """A gzipped tarball laid out as the npm package (package/dist/<file>), each file naming itself."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in names:
            data = f"contents of {name}".encode()
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def sha512_sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_runtime_is_checked_extracted_and_cached(tmp_path):
    tarball = tmp_path / "ort.tgz"
    data = fake_tarball(tarball)
    cache = tmp_path / "cache"
    folder = web.fetch_runtime(cache, url=tarball.as_uri(), integrity=sha512_sri(data))
    assert folder == cache / f"onnxruntime-web-{web.ORT_VERSION}"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*web.ORT_FILES, "LICENSE"])
    for name in web.ORT_FILES:
        assert (folder / name).read_text() == f"contents of {name}"
    assert "MIT License" in (folder / "LICENSE").read_text() and web.ORT_VERSION in (folder / "LICENSE").read_text()
    tarball.unlink()  # kept: a second call does not download again
    assert web.fetch_runtime(cache, url=tarball.as_uri(), integrity=sha512_sri(data)) == folder
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no temporary folder left


def test_tampered_runtime_is_refused(tmp_path):
    tarball = tmp_path / "ort.tgz"
    data = bytearray(fake_tarball(tarball))
    expected = sha512_sri(bytes(data))
    data[len(data) // 2] ^= 1  # one bit flipped
    tarball.write_bytes(bytes(data))
    found = sha512_sri(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(web.RuntimeDownloadError) as raised:
        web.fetch_runtime(cache, url=tarball.as_uri(), integrity=expected)
    assert str(raised.value) == (f"{tarball.as_uri()}: integrity check failed (sha512 is {found}, expected "
                                 f"{expected}); the download is corrupt or was tampered with, and was not used")
    assert not cache.exists() or not any(cache.iterdir())  # nothing cached

    # the pinned hash is the one npm publishes for the pinned version, and a real tarball is checked against it
    with pytest.raises(web.RuntimeDownloadError, match=r"integrity check failed .* expected sha512-q0y\+Jrrt"):
        web.fetch_runtime(cache, url=tarball.as_uri())


def test_a_missing_file_in_the_tarball_and_no_network_are_one_line(tmp_path):
    tarball = tmp_path / "ort.tgz"
    data = fake_tarball(tarball, names=web.ORT_FILES[:-1])
    with pytest.raises(web.RuntimeDownloadError) as raised:
        web.fetch_runtime(tmp_path / "cache", url=tarball.as_uri(), integrity=sha512_sri(data))
    assert str(raised.value) == f"{tarball.as_uri()}: package/dist/{web.ORT_FILES[-1]} is not a file in the tarball"
    assert not any((tmp_path / "cache").iterdir())

    with pytest.raises(web.RuntimeDownloadError) as raised:  # port 9 on this machine: connection refused
        web.fetch_runtime(tmp_path / "cache", url="http://127.0.0.1:9/onnxruntime-web.tgz")
    message = str(raised.value)
    assert message.startswith(f"cannot download onnxruntime-web {web.ORT_VERSION} from "
                              f"http://127.0.0.1:9/onnxruntime-web.tgz (")
    assert message.endswith(f"the in-browser mode needs it once (it is then kept in "
                            f"{tmp_path / 'cache' / ('onnxruntime-web-' + web.ORT_VERSION)})")
    assert "\n" not in message


# ---- the page's metadata and the static folder's refusals -------------------------------------

def test_page_meta_is_the_checkpoints(randomized_ckpt, tmp_path):
    from cgnet.checkpoint import load_model
    from cgnet.data.catalog import CAMVID
    from cgnet.deploy.export import export

    meta = load_model(randomized_ckpt).meta
    info = web.page_meta(meta, "tiny.pt")
    assert info["classes"] == list(CAMVID.classes) and len(info["classes"]) == 11
    assert info["palette"][:11] == [list(c) for c in CAMVID.palette]
    assert info["preprocess"] == {"mode": "standard", "channel_order": "RGB", "value_scale": 1 / 255,
                                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert info["runtime"] == {"name": "onnxruntime-web", "version": web.ORT_VERSION}
    # an .onnx file from cgnet export carries the same metadata
    onnx_path = export(load_model(randomized_ckpt), tmp_path / "tiny.onnx", "onnx", log=lambda *a: None)
    path, onnx_meta = web.model_onnx(onnx_path)
    assert path == onnx_path
    assert {k: v for k, v in web.page_meta(onnx_meta, "tiny.pt").items() if k != "precision"} == \
        {k: v for k, v in info.items() if k != "precision"}
    for name, title in (("model.xml", "OpenVINO"), ("model.pte", "ExecuTorch"), ("model.tflite", "LiteRT"),
                        ("model.pt2", "PyTorch"), ("model.ts", "TorchScript")):  # every format of the table but ONNX
        with pytest.raises(web.InputError) as refused:
            web.model_onnx(name)
        assert str(refused.value).startswith(f"{name}: the in-browser mode runs ONNX files, not {title}")
        assert str(refused.value).endswith("; give a checkpoint or an .onnx file")


def test_write_site_refuses_a_non_empty_folder(randomized_ckpt, tmp_path, capsys):
    out = tmp_path / "site"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", "--format", "web", "--checkpoint", str(randomized_ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--out {out}: exists and is not an empty folder; give a new folder for the site")
    assert len(err.splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["export", "--format", "web", "--precision", "int8", "--out", str(tmp_path / "x")]) == 2
    assert "--format web runs fp32 in the browser, not --precision int8" in capsys.readouterr().err


# ---- in a real browser -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runtime():
    """The real runtime (downloaded once into the cgnet cache folder); skipped without network."""
    try:
        return web.fetch_runtime()
    except web.RuntimeDownloadError as error:
        if os.environ.get("CGNET_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CGNET_REQUIRE_BROWSER=1 but {error}")
        pytest.skip(str(error))


def launch(playwright, executable: str, extra=()):
    return playwright.chromium.launch(executable_path=executable, args=[*CHROMIUM_ARGS, *extra])


def watch(page, origin: str) -> tuple[list, list]:
    """Requests to other hosts, and console errors / page errors."""
    elsewhere, problems = [], []
    page.on("request", lambda r: None if r.url.startswith((origin, "data:", "blob:")) else elsewhere.append(r.url))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return elsewhere, problems


def wait_until(page, expression: str, timeout: float = 300) -> None:
    """Poll a JS expression until true (wait_for_function evaluates strings with eval, which the
    served page's Content-Security-Policy forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.2)


def wait_ready(page) -> None:
    page.wait_for_selector("body[data-browser]", timeout=300_000)
    state = page.get_attribute("body", "data-browser")
    assert state == "ready", page.inner_text("#browser-error")


def browser_mask(page, image: Path) -> tuple[np.ndarray, str]:
    """Upload `image` in the in-browser mode; the class ids read back from the page's hook, and
    the card's latency line. The mask PNG the page offers for download is checked to hold the
    same ids."""
    before = page.locator(".image-result.done").count()
    page.set_input_files("#file-input", str(image))
    wait_until(page, f"document.querySelectorAll('.image-result.done, .image-result.failed').length > {before}")
    card = page.locator(".image-result").first
    assert card.get_attribute("data-mode") == "browser"
    assert "failed" not in card.get_attribute("class"), card.locator(".error").inner_text()
    hook = page.evaluate("window.cgnet.lastMask")
    mask = np.frombuffer(base64.b64decode(hook["ids"]), np.uint8).reshape(hook["height"], hook["width"])
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(hook["png"]), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded, mask)  # an 8-bit grayscale PNG of the class ids
    return mask, card.locator(".latency").inner_text()


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


@pytest.fixture(scope="module")
def served(runtime):
    """`cgnet serve` with the shipped weights (torch on the CPU for the server mode)."""
    if MISSING:
        pytest.skip(MISSING)
    with running_serve("--backend", "torch", "--device", "cpu") as (_, url, _):
        yield url


def get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=600) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.slow
def test_served_files_and_headers(served, runtime):
    status, headers, body = get(served)
    assert status == 200
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["cross-origin-embedder-policy"] == "require-corp"
    assert "script-src 'self' 'wasm-unsafe-eval'" in headers["content-security-policy"]
    status, headers, body = get(served + "web/model.json")
    meta = json.loads(body)
    assert status == 200 and meta["classes"][:4] == ["Sky", "Building", "Pole", "Road"] and meta["model"] == "camvid"
    status, headers, body = get(served + "web/ort/ort-wasm-simd-threaded.wasm")
    assert status == 200 and headers["content-type"] == "application/wasm"
    assert body == (runtime / "ort-wasm-simd-threaded.wasm").read_bytes()
    status, headers, body = get(served + "web/model.onnx")
    assert status == 200
    onnx = pytest.importorskip("onnx")
    proto = onnx.load_from_string(body)
    assert json.loads({p.key: p.value for p in proto.metadata_props}["cgnet"])["export_precision"] == "fp32"
    status, headers, body = get(served + "web/ort/index.html")  # only the runtime's files
    assert status == 404 and json.loads(body)["error"] == "in-browser mode unavailable: no runtime file 'index.html'"
    assert get(served + "web/ort/..%2F..%2Fmodel.onnx")[0] == 404


@pytest.mark.slow
@pytest.mark.browser
def test_in_browser_matches_cgnet_predict(served, camvid_root):
    executable = browser_or_skip()
    from playwright.sync_api import sync_playwright

    frame = camvid_root / (camvid_root / "camvid_test_list.txt").read_text().split()[0]
    expected = make_predictor(None, backend="torch", device="cpu").predict(
        cv2.cvtColor(cv2.imread(str(frame)), cv2.COLOR_BGR2RGB))
    with sync_playwright() as playwright:
        browser = launch(playwright, executable)
        try:
            page = browser.new_page()
            elsewhere, problems = watch(page, served.rstrip("/"))
            page.goto(served + "?mode=browser&ep=wasm")
            wait_ready(page)
            assert page.evaluate("window.crossOriginIsolated") is True  # COOP/COEP from cgnet serve
            status = page.inner_text("#browser-status")
            threads = max(1, min(4, page.evaluate("navigator.hardwareConcurrency")))  # what the page asks for
            assert f"WebAssembly, {threads} thread" in status and "one thread only" not in status, status
            mask, latency = browser_mask(page, frame)
            assert mask.shape == expected.shape == (360, 480)
            print(f"in-browser vs cgnet predict: {100 * agreement(mask, expected):.4f}% of pixels agree")
            assert agreement(mask, expected) >= 0.999
            assert "onnxruntime-web, WebAssembly" in latency
            legend = page.locator(".image-result .legend tbody tr")
            assert legend.count() == len(np.unique(expected))

            # back to the server mode: the same page still uploads to /api/segment
            page.check('input[name="mode"][value="server"]')
            page.set_input_files("#file-input", str(frame))
            wait_until(page, "document.querySelector('.image-result').dataset.mode === 'server' && "
                             "document.querySelector('.image-result').classList.contains('done')")
            assert "torch (fp32)" in page.locator(".image-result .latency").first.inner_text()
            assert not elsewhere, f"the page asked other hosts: {elsewhere}"
            assert not problems, problems
        finally:
            browser.close()


# ---- the static folder, served by a plain threaded HTTP server --------------------------------

class IsolatedHandler(SimpleHTTPRequestHandler):
    """A plain static host that sends the headers the page needs for threads."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".mjs": "text/javascript", ".js": "text/javascript"}

    def end_headers(self):
        if self.server.isolated:
            for key, value in web.ISOLATION_HEADERS.items():
                self.send_header(key, value)
        super().end_headers()

    def log_message(self, *args):
        pass


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a browser closing a connection early is no error
        pass


@pytest.fixture()
def static_host():
    servers = []

    def start(folder: Path, isolated: bool = True) -> str:
        server = QuietServer(("127.0.0.1", 0), functools.partial(IsolatedHandler, directory=str(folder)))
        server.isolated = isolated
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    """A YUV4MPEG2 video (4:2:0) of RGB frames, what Chromium's fake camera plays."""
    height, width = frames[0].shape[:2]
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())


@pytest.fixture(scope="module")
def tiny_site(randomized_ckpt, runtime, tmp_path_factory):
    """The static folder of the tiny checkpoint, a street-like frame and its `cgnet predict` ids."""
    parent = tmp_path_factory.mktemp("web")
    site = web.write_site(randomized_ckpt, parent / "site", log=lambda *a: None)
    image = parent / "street.png"
    rgb = street_like(3, 200, 264)
    cv2.imwrite(str(image), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return site, image, make_predictor(randomized_ckpt, backend="torch", device="cpu").predict(rgb)


@pytest.mark.slow
@pytest.mark.browser
def test_static_site_round_trip_with_camera(tiny_site, static_host, tmp_path):
    executable = browser_or_skip()
    from playwright.sync_api import sync_playwright

    site, image, expected = tiny_site
    assert sorted(p.name for p in site.iterdir()) == ["app.js", "browser.js", "camera.js", "common.js", "index.html",
                                                      "model.json", "model.onnx", "ort", "server.js", "style.css"]
    assert sorted(p.name for p in (site / "ort").iterdir()) == sorted([*web.ORT_FILES, "LICENSE"])
    html = (site / "index.html").read_text()
    assert 'data-site="static"' in html and "/static/" not in html
    assert [p.name for p in site.parent.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    video = tmp_path / "camera.y4m"
    write_y4m(video, [street_like(20 + k, 240, 320) for k in range(8)])

    with sync_playwright() as playwright:
        browser = launch(playwright, executable, [*FAKE_CAMERA, f"--use-file-for-fake-video-capture={video}"])
        try:
            url = static_host(site)
            page = browser.new_page()
            elsewhere, problems = watch(page, url.rstrip("/"))
            page.goto(url + "?ep=wasm")
            assert page.is_hidden("#mode-switch")  # a static folder has no server mode
            wait_ready(page)
            assert page.evaluate("window.crossOriginIsolated") is True
            mask, latency = browser_mask(page, image)
            assert agreement(mask, expected) >= 0.999

            page.click("#camera-start")
            wait_until(page, "window.cgnet.camera && window.cgnet.camera.frames >= 3")
            stats = page.evaluate("window.cgnet.camera")
            assert stats["fps"] > 0 and (stats["width"], stats["height"]) == (320, 240)  # the 480 px cap
            assert "frames per second" in page.inner_text("#camera-fps")
            colours = page.evaluate("""() => { const c = document.getElementById('camera-color');
                return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""")
            pixels = {tuple(p) for p in np.asarray(colours, np.uint8).reshape(-1, 4)[:, :3]}
            palette = {tuple(c) for c in json.loads((site / "model.json").read_text())["palette"]}
            assert pixels <= palette  # every pixel is a class colour
            page.click("#camera-stop")
            assert not elsewhere, f"the page asked other hosts: {elsewhere}"
            assert not problems, problems

            # a host without the COOP/COEP headers: one thread, and the page says why
            plain = browser.new_page()
            plain.goto(static_host(site, isolated=False) + "?ep=wasm")
            wait_ready(plain)
            assert plain.evaluate("window.crossOriginIsolated") is False
            assert "one thread only: the page is not cross-origin isolated" in plain.inner_text("#browser-status")
            mask, latency = browser_mask(plain, image)
            assert agreement(mask, expected) >= 0.999 and "WebAssembly, 1 thread " in latency
        finally:
            browser.close()


@pytest.mark.slow
@pytest.mark.browser
def test_webgpu_path_on_a_software_adapter(tiny_site, static_host):
    """WebGPU where the browser has it: Chromium's SwiftShader adapter stands in for a GPU."""
    executable = browser_or_skip()
    from playwright.sync_api import sync_playwright

    site, image, expected = tiny_site
    flags = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader", "--enable-features=Vulkan"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable,
                                             args=[a for a in CHROMIUM_ARGS if a != "--disable-gpu"] + flags)
        try:
            page = browser.new_page()
            page.goto(static_host(site))
            if not page.evaluate("async () => !!(navigator.gpu && await navigator.gpu.requestAdapter())"):
                pytest.skip("this Chromium offers no WebGPU adapter (SwiftShader)")
            elsewhere, problems = watch(page, page.url.rstrip("/"))
            wait_ready(page)
            assert "onnxruntime-web, WebGPU" in page.inner_text("#browser-status")
            mask, latency = browser_mask(page, image)
            print(f"WebGPU (SwiftShader) vs cgnet predict: {100 * agreement(mask, expected):.4f}% of pixels agree")
            assert agreement(mask, expected) >= 0.999 and "WebGPU" in latency
            assert not elsewhere, elsewhere
        finally:
            browser.close()


# ---- HTTPS for phones: uploads from the page's own https origin ------------------------------

def test_tls_options_are_checked(tmp_path, capsys):
    if MISSING:
        pytest.skip(MISSING)
    assert main(["serve", "--port", "0", "--certfile", str(tmp_path / "cert.pem")]) == 2
    assert "--certfile and --keyfile go together (HTTPS needs both)" in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--certfile", str(tmp_path / "no.pem"), "--keyfile", str(tmp_path / "no.key")]) == 2
    assert f"--certfile {tmp_path / 'no.pem'}: no such file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tls_served(tmp_path_factory):
    """`cgnet serve` over HTTPS with a self-signed certificate for 127.0.0.1 made here by the
    openssl command: (url, certificate path)."""
    if MISSING:
        pytest.skip(MISSING)
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (to make a test certificate)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with running_serve("--backend", "torch", "--device", "cpu", "--certfile", str(cert), "--keyfile", str(key)) \
            as (_, url, lines):
        assert url.startswith("https://127.0.0.1:"), "".join(lines)
        yield url, cert


def tls_post(url: str, cert: Path, origin: str | None, image: bytes) -> tuple[int, dict]:
    """POST `image` to /api/segment over TLS (the certificate checked), with this Origin header."""
    boundary = "c" * 24
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if origin is not None:
        headers["Origin"] = origin
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=120,
                                             context=ssl.create_default_context(cafile=str(cert)))
    try:
        connection.request("POST", "/api/segment", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.slow
def test_serve_over_https_takes_uploads_from_its_own_origin_only(tls_served):
    url, cert = tls_served
    context = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(url + "api/info", context=context, timeout=60) as response:
        assert response.status == 200 and json.loads(response.read())["backend"] == "torch"
    with pytest.raises(OSError):  # plain HTTP gets no page (the connection is closed)
        urllib.request.urlopen(url.replace("https://", "http://") + "api/info", timeout=30).read()

    port = urllib.parse.urlsplit(url).port
    image = cv2.imencode(".png", street_like(8, 40, 56))[1].tobytes()
    for origin in (f"https://127.0.0.1:{port}", f"https://localhost:{port}", f"https://[::1]:{port}", None):
        status, answer = tls_post(url, cert, origin, image)
        assert status == 200 and (answer["width"], answer["height"]) == (56, 40), (origin, answer)
    other = port + 1 if port < 65535 else port - 1
    for origin in (f"http://127.0.0.1:{port}", "https://127.0.0.1", f"https://127.0.0.1:{other}",
                   f"https://evil.example:{port}", "https://evil.example", "null"):
        status, answer = tls_post(url, cert, origin, image)
        assert status == 403, origin
        assert answer == {"error": f"cross-origin request refused: {origin!r} is not this server's origin"}


@pytest.mark.slow
@pytest.mark.browser
def test_page_uploads_over_https_in_a_browser(tls_served, tmp_path):
    """The page served over HTTPS (self-signed: the browser is told to accept it) uploads an image
    through its own form: Chromium sends the page's https Origin, and the server answers."""
    executable = browser_or_skip()
    from playwright.sync_api import sync_playwright

    url, _ = tls_served
    rgb = street_like(9, 120, 160)
    image = tmp_path / "street.png"
    cv2.imwrite(str(image), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    expected = make_predictor(None, backend="torch", device="cpu").predict(rgb)
    with sync_playwright() as playwright:
        browser = launch(playwright, executable)
        try:
            page = browser.new_page(ignore_https_errors=True, accept_downloads=True)
            elsewhere, problems = watch(page, url.rstrip("/"))
            posts = []
            page.on("request", lambda r: posts.append(r) if r.method == "POST" else None)
            page.goto(url)
            page.wait_for_selector("body[data-ready=true]", timeout=60_000)
            assert page.evaluate("window.isSecureContext") is True
            page.set_input_files("#file-input", str(image))
            page.wait_for_selector(".image-result.done, .image-result.failed", timeout=120_000)
            card = page.locator(".image-result").first
            assert "failed" not in card.get_attribute("class"), card.locator(".error").inner_text()
            assert card.locator("canvas.overlay").evaluate("c => [c.width, c.height]") == [160, 120]
            with page.expect_download() as download:
                card.locator(".download-mask").click()
            download.value.save_as(tmp_path / "mask.png")
            np.testing.assert_array_equal(cv2.imread(str(tmp_path / "mask.png"), cv2.IMREAD_UNCHANGED), expected)
            # the page's own https origin went with the upload (all_headers: `headers` leaves Origin out)
            assert [r.all_headers().get("origin") for r in posts] == [url.rstrip("/")]
            assert not elsewhere, f"the page asked other hosts: {elsewhere}"
            assert not problems, problems
        finally:
            browser.close()


@pytest.mark.slow
def test_export_format_web_writes_the_folder(randomized_ckpt, runtime, tmp_path, capsys):
    out = tmp_path / "site"
    assert main(["export", "--format", "web", "--checkpoint", str(randomized_ckpt), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"wrote {out}: serve it over HTTPS")
    assert json.loads((out / "model.json").read_text())["model"] == "tiny.pt"
    for name in web.ORT_FILES:
        assert (out / "ort" / name).read_bytes() == (runtime / name).read_bytes()
    onnx = pytest.importorskip("onnx")
    stored = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(stored["cgnet"])["preprocess"] == json.loads((out / "model.json").read_text())["preprocess"]
