"""`cgnet serve`, tested against the real server: `cgnet serve --port 0` in a subprocess, its JSON
API over HTTP, and its page in a real headless Chromium (skipped when none is installed, a
failure under CGNET_REQUIRE_BROWSER=1). Skipped with the install hint when the `serve` extra
(starlette, uvicorn, python-multipart) is missing."""
from __future__ import annotations

import base64
import http.client
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from cgnet.cli import main
from cgnet.deploy import serve
from cgnet.deploy.predict import predict_video
from cgnet.deploy.predictor import make_predictor
from cgnet.deploy.runners import MissingBackend
from helpers.paths import camvid_candidates, real_camvid

try:
    serve.require_serve()
    MISSING = None
except MissingBackend as error:
    MISSING = str(error)

MAX_UPLOAD_MB = 2
MAX_MEGAPIXELS = 1
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


# ---- the server and a small HTTP client --------------------------------------------------------

class Server:
    def __init__(self, url: str, process: subprocess.Popen, lines: list[str]):
        self.url, self.process, self.lines = url, process, lines

    def get(self, path: str) -> tuple[int, dict, bytes]:
        try:
            with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=120) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def post(self, path: str, field: str, filename: str, data: bytes) -> tuple[int, dict]:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(self.url + path.lstrip("/"), data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def segment(self, data: bytes, filename: str = "image.png") -> tuple[int, dict]:
        return self.post("/api/segment", "image", filename, data)


@pytest.fixture(scope="module")
def server():
    if MISSING:
        pytest.skip(MISSING)
    command = [sys.executable, "-m", "cgnet", "serve", "--backend", "torch", "--device", "cpu", "--port", "0",
               "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-megapixels", str(MAX_MEGAPIXELS),
               "--max-video-frames", "40"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if "http://" in line:
                found.set()
    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 240
        while not found.wait(0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("cgnet serve did not start:\n" + "".join(lines))
        url = re.search(r"http://\S+/", "".join(lines)).group(0)
        yield Server(url, process, lines)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def predictor():
    return make_predictor(None, backend="torch", device="cpu")


def png(image_rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def decode_png(text: str, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), flags)


def street_like(seed: int, height: int, width: int) -> np.ndarray:
    """A random image with large regions (sky-, road- and wall-like bands and blobs)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    bands = np.sort(rng.integers(0, height, 3))
    for top, bottom, colour in zip([0, *bands], [*bands, height], rng.integers(0, 256, (4, 3))):
        image[top:bottom] = colour
    for _ in range(6):
        y, x = rng.integers(0, height), rng.integers(0, width)
        cv2.circle(image, (int(x), int(y)), int(rng.integers(4, 20)), [int(c) for c in rng.integers(0, 256, 3)], -1)
    return np.clip(image.astype(np.int16) + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)


def camvid_frame() -> Path | None:
    """A CamVid test frame when the dataset is here (no skip: callers fall back)."""
    for root in camvid_candidates():
        if (root / "camvid_test_list.txt").is_file():
            return root / (root / "camvid_test_list.txt").read_text().split()[0]
    return None


# ---- the JSON API ------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_server_prints_its_real_address(server):
    assert server.url.startswith("http://127.0.0.1:") and not server.url.startswith("http://127.0.0.1:0/")
    status, headers, body = server.get("/api/info")
    info = json.loads(body)
    assert status == 200 and info["backend"] == "torch" and info["precision"] == "fp32"
    assert [c["name"] for c in info["classes"]][:4] == ["Sky", "Building", "Pole", "Road"]
    assert info["limits"] == {"max_upload_mb": MAX_UPLOAD_MB, "max_megapixels": MAX_MEGAPIXELS,
                              "max_video_frames": 40}


@pytest.mark.slow
def test_page_and_assets_come_from_the_server(server):
    status, headers, body = server.get("/")
    html = body.decode()
    assert status == 200 and "<title>CGNet segmentation</title>" in html
    assert "default-src 'self'" in headers["content-security-policy"]
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert links and all(link.startswith("/static/") or link.startswith("data:") for link in links), links
    for link in links:
        if link.startswith("/static/"):
            assert server.get(link)[0] == 200, link
    for name in ("app.js", "style.css"):
        text = server.get(f"/static/{name}")[2].decode()
        assert "http://" not in text and "https://" not in text, f"{name} names another host"


@pytest.mark.data
@pytest.mark.slow
def test_mask_equals_cgnet_predict(server, tmp_path):
    root = real_camvid()
    frame = root / (root / "camvid_test_list.txt").read_text().split()[0]
    status, answer = server.segment(frame.read_bytes(), frame.name)
    assert status == 200, answer
    assert main(["predict", str(frame), "--out", str(tmp_path), "--backend", "torch", "--device", "cpu",
                 "--no-progress"]) == 0
    expected = cv2.imread(str(tmp_path / "masks" / f"{frame.stem}.png"), cv2.IMREAD_UNCHANGED)
    mask = decode_png(answer["mask_png"])
    assert mask.dtype == np.uint8 and mask.shape == expected.shape == (360, 480)
    np.testing.assert_array_equal(mask, expected)

    color = decode_png(answer["color_png"], cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(color, cv2.imread(str(tmp_path / "color" / f"{frame.stem}.png")))
    assert decode_png(answer["overlay_png"], cv2.IMREAD_COLOR).shape == (360, 480, 3)
    assert (answer["width"], answer["height"]) == (480, 360)
    assert answer["backend"] == "torch" and answer["precision"] == "fp32" and answer["latency_ms"] > 0
    legend = answer["legend"]
    assert [entry["id"] for entry in legend] == list(range(11)) and legend[3]["name"] == "Road"
    assert sum(entry["share"] for entry in legend) == pytest.approx(1.0)
    counts = np.bincount(expected.ravel(), minlength=11)
    assert [entry["share"] for entry in legend] == pytest.approx(list(counts / expected.size))
    assert legend[3]["share"] > 0.1  # a street scene: plenty of road
    assert "image_jpeg" not in answer  # a PNG: the page shows the upload itself


@pytest.mark.slow
def test_bad_uploads_get_a_clear_error(server, tmp_path):
    status, answer = server.segment(b"this is a text file, not a picture\n", "notes.txt")
    assert status == 400 and "not an image" in answer["error"]

    whole = png(street_like(1, 120, 160))
    status, answer = server.segment(whole[: len(whole) // 2], "truncated.png")
    assert status == 400 and answer["error"] == "cannot decode this PNG file (corrupt or truncated)"

    status, answer = server.segment(b"", "empty.png")
    assert status == 400 and "empty" in answer["error"]

    status, answer = server.post("/api/segment", "file", "frame.png", whole)
    assert status == 400 and "field named 'image'" in answer["error"]

    request = urllib.request.Request(server.url + "api/segment", data=b'{"image": 1}', method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=60)
    assert raised.value.code == 400 and "multipart/form-data" in json.loads(raised.value.read())["error"]

    # more pixels than --max-megapixels: refused from the header, before decoding
    big = np.zeros((1000, 1100), np.uint8)  # grayscale: the BMP stays under --max-upload-mb
    for suffix in (".png", ".jpg", ".bmp"):
        status, answer = server.segment(cv2.imencode(suffix, big)[1].tobytes(), "big" + suffix)
        assert status == 413, (suffix, answer)
        assert answer["error"] == ("image too large: 1100x1000 is 1.1 megapixels, the limit is 1 "
                                   "(--max-megapixels)")

    status, headers, body = server.get("/api/jobs/nope")
    assert status == 404 and "no video job" in json.loads(body)["error"]
    assert server.process.poll() is None


@pytest.mark.slow
def test_too_large_upload_is_413(server):
    data = np.random.default_rng(0).integers(0, 256, (MAX_UPLOAD_MB + 1) * 2**20, dtype=np.uint8).tobytes()
    status, answer = server.segment(data, "huge.png")
    assert status == 413
    assert answer["error"] == f"upload too large: the limit is {MAX_UPLOAD_MB} MB (--max-upload-mb)"

    # without a Content-Length (chunked), the body is counted as it arrives
    host, port = urllib.parse.urlsplit(server.url).netloc.split(":")
    boundary = "x" * 16

    def chunks():
        yield f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n".encode()
        for start in range(0, len(data), 2**16):
            yield data[start:start + 2**16]
        yield f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    connection.request("POST", "/api/segment", body=chunks(), encode_chunked=True,
                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = connection.getresponse()
    assert response.status == 413 and "upload too large" in json.loads(response.read())["error"]
    connection.close()

    status, answer = server.segment(png(street_like(2, 64, 80)))  # the server is fine afterwards
    assert status == 200


@pytest.mark.slow
def test_concurrent_requests_get_their_own_results(server, predictor):
    images = [street_like(10 + k, 72 + 8 * k, 96 + 16 * k) for k in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda image: server.segment(png(image)), images))
    for image, (status, answer) in zip(images, answers):
        assert status == 200, answer
        assert (answer["height"], answer["width"]) == image.shape[:2]
        np.testing.assert_array_equal(decode_png(answer["mask_png"]), predictor.predict(image))


def write_video(path: Path, frames: int, size=(48, 64)) -> list[np.ndarray]:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (size[1], size[0]))
    assert writer.isOpened()
    written = []
    for k in range(frames):
        frame = street_like(100 + k, *size)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        written.append(frame)
    writer.release()
    return written


def read_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while (item := cap.read())[0]:
        frames.append(item[1])
    cap.release()
    return frames


@pytest.mark.slow
def test_video_job_gives_the_predict_video_overlay(server, predictor, tmp_path):
    source = tmp_path / "clip.mp4"
    write_video(source, 12)
    status, job = server.post("/api/video", "video", "clip.mp4", source.read_bytes())
    assert status == 202 and job["state"] in ("queued", "running") and job["total"] == 12
    seen = []
    deadline = time.monotonic() + 240
    while job["state"] not in ("done", "error"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
        job = json.loads(server.get(f"/api/jobs/{job['id']}")[2])
        seen.append(job["progress"])
    assert job["state"] == "done", job["error"]
    assert seen == sorted(seen) and seen[-1] == 1.0 and job["frames"] == 12

    status, headers, body = server.get(job["video_url"])
    assert status == 200 and headers["content-type"] == "video/mp4"
    assert 'filename="clip_overlay.mp4"' in headers["content-disposition"]
    (tmp_path / "served.mp4").write_bytes(body)
    predict_video(predictor, source, tmp_path / "direct.mp4", progress=False)
    served, direct = read_frames(tmp_path / "served.mp4"), read_frames(tmp_path / "direct.mp4")
    assert len(served) == len(direct) == 12
    for a, b in zip(served, direct):
        np.testing.assert_array_equal(a, b)

    status, headers, body = server.get(job["preview_url"])
    assert status == 200 and headers["content-type"] in ("video/webm", "video/mp4") and body

    status, answer = server.post("/api/video", "video", "notes.mp4", b"not a video at all")
    assert status == 400 and "not a video" in answer["error"]
    long_clip = tmp_path / "long.mp4"
    write_video(long_clip, 41, size=(16, 16))
    status, answer = server.post("/api/video", "video", "long.mp4", long_clip.read_bytes())
    assert status == 413 and answer["error"] == "video too long: 41 frames, the limit is 40 (--max-video-frames)"


def test_missing_web_stack_names_the_extra(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("uvicorn",) else real(name, *a))
    with pytest.raises(MissingBackend, match=r"^uvicorn is not installed: pip install 'cgnet\[serve\]'$"):
        serve.require_serve()
    assert main(["serve", "--port", "0"]) == 2
    assert "uvicorn is not installed: pip install 'cgnet[serve]'" in capsys.readouterr().err


# ---- the page, in a real browser ---------------------------------------------------------------

def chromium() -> str | None:
    for candidate in (os.environ.get("CGNET_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def browser_or_skip() -> str:
    reason = None
    executable = chromium()
    if executable is None:
        reason = "no Chromium found (apt-get install chromium, or set CGNET_CHROMIUM)"
    elif importlib.util.find_spec("playwright") is None:
        reason = "playwright is not installed (pip install playwright; its browser download is not needed)"
    if reason:
        if os.environ.get("CGNET_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CGNET_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return executable


@pytest.mark.browser
@pytest.mark.slow
def test_page_in_a_headless_browser(server, predictor, tmp_path):
    executable = browser_or_skip()
    from playwright.sync_api import sync_playwright

    frame = camvid_frame()
    if frame is None:
        frame = tmp_path / "generated.png"
        frame.write_bytes(png(street_like(7, 180, 240)))
    notes = tmp_path / "notes.png"
    notes.write_text("a text file with an image's name")
    clip = tmp_path / "clip.mp4"
    write_video(clip, 6)
    expected = predictor.predict(cv2.cvtColor(cv2.imread(str(frame)), cv2.COLOR_BGR2RGB))
    origin = server.url.rstrip("/")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            elsewhere, problems = [], []
            page.on("request", lambda r: None if r.url.startswith((origin, "data:", "blob:"))
                    else elsewhere.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(server.url)
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            assert "torch" in page.inner_text("#model-info")

            # a short video: progress, then a video the browser can play
            page.set_input_files("#file-input", str(clip))
            page.wait_for_selector(".video-result.done", timeout=240_000)
            page.wait_for_function("document.querySelector('.video-result video').readyState >= 1",
                                   timeout=30_000)
            assert page.get_attribute(".video-result .download-video", "download") == "clip_overlay.mp4"

            # not an image: the server's message on the page
            page.set_input_files("#file-input", str(notes))
            page.wait_for_selector(".image-result.failed", timeout=60_000)
            assert "not an image" in page.inner_text(".image-result.failed .error")

            # a frame: original | colour mask | overlay, legend, latency, downloads
            page.set_input_files("#file-input", str(frame))
            page.wait_for_selector(".image-result.done", timeout=120_000)
            card = page.locator(".image-result.done").first
            size = card.locator("canvas.overlay").evaluate("c => [c.width, c.height]")
            assert size == [expected.shape[1], expected.shape[0]]
            painted = card.locator("canvas.overlay").evaluate(
                "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some(v => v > 0 && v < 255)")
            assert painted
            rows = card.locator(".legend tbody tr")
            names = [rows.nth(k).locator("td").nth(1).inner_text() for k in range(rows.count())]
            classes = list(predictor.meta["classes"])
            present = {classes[i] for i in np.unique(expected)}
            assert set(names) == present and len(names) == len(present)
            shares = [float(rows.nth(k).locator("td").nth(2).inner_text().strip("<%")) for k in range(rows.count())]
            assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(100, abs=1)
            assert "torch (fp32)" in card.locator(".latency").inner_text()

            card.locator("input.opacity").fill("80")
            assert card.locator(".opacity-value").inner_text() == "80%"
            with page.expect_download() as download:
                card.locator(".download-mask").click()
            download.value.save_as(tmp_path / "mask.png")
            np.testing.assert_array_equal(cv2.imread(str(tmp_path / "mask.png"), cv2.IMREAD_UNCHANGED), expected)

            page.evaluate("window.scrollTo(0, 0)")
            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("CGNET_SCREENSHOT_DIR"):
                folder = Path(os.environ["CGNET_SCREENSHOT_DIR"])
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, folder / "serve.png")
            assert shot.stat().st_size > 10_000
            assert not elsewhere, f"the page asked other hosts: {elsewhere}"
            assert not [p for p in problems if "400" not in p], problems  # the bad upload logs its 400
        finally:
            browser.close()
