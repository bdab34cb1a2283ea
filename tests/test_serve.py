"""`cgnet serve`, tested against the real server: `cgnet serve --port 0` in a subprocess, its JSON
API over HTTP, and its page in a real headless Chromium (skipped when none is installed, a
failure under CGNET_REQUIRE_BROWSER=1). Skipped with the install hint when the `serve` extra
(starlette, uvicorn, python-multipart) is missing."""
from __future__ import annotations

import base64
import http.client
import io
import socket
import struct
import zlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import threading
import time
import tracemalloc
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
from cgnet.deploy.web import PAGE_FILES
from helpers.paths import camvid_candidates, real_camvid
from helpers.server import running_serve

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

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port

    def request(self, method: str, path: str, headers: dict, body: bytes | None = None) -> tuple[int, dict, bytes]:
        """One request with exactly these headers (a Host header given here replaces the real one)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def peak_rss_mb(self) -> float:
        """The server's peak resident memory (VmHWM) in MB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used, from /proc/PID/stat: unlike
        wall-clock time, not stretched by other processes on a busy machine."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15

    def reset_peak_rss(self) -> None:
        """Set VmHWM back to the present RSS (Linux clear_refs 5); left as is where not allowed."""
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        except OSError:
            pass


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def server():
    if MISSING:
        pytest.skip(MISSING)
    command = ["--backend", "torch", "--device", "cpu", "--max-upload-mb", str(MAX_UPLOAD_MB),
               "--max-megapixels", str(MAX_MEGAPIXELS), "--max-video-frames", "40", "--allowed-host", "CGNet.test",
               "--max-queued-videos", "1"]
    with running_serve(*command) as (process, url, lines):
        yield Server(url, process, lines)


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
                              "max_video_frames": 40, "max_queued_videos": 1, "max_concurrent_images": 4}
    assert info["videos_pending"] == 0


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
    for name in PAGE_FILES[1:]:  # the entry module, the modules it imports, the style sheet
        status, headers, body = server.get(f"/static/{name}")
        text = body.decode()
        assert status == 200 and "http://" not in text and "https://" not in text, f"{name} names another host"
        imported = re.findall(r'^import .* from "([^"]+)";$', text, re.M)
        assert all(module[2:] in PAGE_FILES for module in imported), (name, imported)  # all served, relative


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
    assert status == 400 and answer["error"] == "cannot decode the PNG file (corrupt, truncated or not an image)"

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


# ---- crafted image headers: the sizes are read before anything is decoded -----------------------

def bits_to_bytes(fields: list[tuple[int, int]]) -> bytes:
    """[(value, bit count), ...] packed least significant bit first (VP8L's order)."""
    acc, count = 0, 0
    for value, width in fields:
        acc |= value << count
        count += width
    return acc.to_bytes((count + 7) // 8, "little")


def riff_webp(*chunks: tuple[bytes, bytes]) -> bytes:
    body = b"WEBP" + b"".join(fourcc + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1)
                              for fourcc, data in chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def vp8l_black(width: int, height: int) -> bytes:
    """A VP8L (lossless WebP) chunk body of a black width x height image: five one-symbol prefix
    codes, so every pixel takes 0 bits and the file stays 36 bytes whatever its size."""
    fields = [(width - 1, 14), (height - 1, 14), (0, 1), (0, 3),  # size, alpha hint, version
              (0, 1), (0, 1), (0, 1)]  # no transform, no colour cache, no meta prefix codes
    fields += [(1, 1), (0, 1), (0, 1), (0, 1)] * 5  # a simple code of 1 symbol, 1 bit long: 0
    return b"\x2f" + bits_to_bytes(fields) + bytes(8)  # OpenCV reads at least 32 bytes of a file


def vp8x(width: int, height: int) -> tuple[bytes, bytes]:
    return b"VP8X", bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")


def vp8_header(width: int, height: int) -> bytes:
    """The start of a lossy 'VP8 ' key frame: frame tag, start code, 14-bit sizes (junk after)."""
    return b"\x10\x02\x00\x9d\x01\x2a" + struct.pack("<HH", width, height) + bytes(16)


def tiff_ifd(order: str, entries: list[tuple[int, int, int, int]], tail: bytes = b"") -> bytes:
    """A TIFF whose IFD 0 holds `entries` (tag, type, count, value inline), then `tail`."""
    ifd = struct.pack(order + "H", len(entries))
    for tag, kind, count, value in entries:
        field = struct.pack(order + "H", value) + b"\0\0" if kind == 3 else struct.pack(order + "I", value)
        ifd += struct.pack(order + "HHI", tag, kind, count) + field
    return (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "I", 8) + ifd + bytes(4) + tail


def tiff_black(width: int, height: int, rows_per_strip: int = 16, order: str = "<") -> bytes:
    """A valid deflate-compressed 8-bit grayscale TIFF of zeros whose strips all point at one
    compressed strip: a few KB whatever its size."""
    strips = -(-height // rows_per_strip)
    strip = zlib.compress(bytes(width * rows_per_strip), 9)
    header = 8 + 2 + 12 * 9 + 4
    offsets_at, counts_at, data_at = header, header + 4 * strips, header + 8 * strips
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
               (273, 4, strips, offsets_at if strips > 1 else data_at), (277, 3, 1, 1),
               (278, 4, 1, rows_per_strip), (279, 4, strips, counts_at if strips > 1 else len(strip))]
    arrays = struct.pack(order + f"{strips}I", *[data_at] * strips) + struct.pack(order + f"{strips}I",
                                                                                  *[len(strip)] * strips)
    return tiff_ifd(order, entries, arrays + strip)


def gif(screen: tuple[int, int], frame: tuple[int, int, int, int], extension: bool = True) -> bytes:
    """A GIF header: logical screen, global colour table of 2, a graphic control extension,
    then an image descriptor (left, top, width, height)."""
    data = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + bytes(6)
    if extension:
        data += b"\x21\xf9\x04\x00\x00\x00\x00\x00"
    return data + b"\x2c" + struct.pack("<HHHHB", *frame, 0) + b"\x02\x02\x44\x01\x00\x3b"


def test_pillows_header_size_is_what_opencv_decodes():
    """The size checked before decoding (Pillow's header read) is the size OpenCV then decodes,
    for every served format and for the hand-built files the bomb test sends at full size."""
    for ext, params in ((".png", []), (".jpg", []), (".bmp", []), (".tiff", []), (".webp", []),
                        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), (".gif", [])):
        for shape in ((23, 37, 3), (5, 300, 3), (301, 2, 3)):
            data = cv2.imencode(ext, np.zeros(shape, np.uint8), params)[1].tobytes()
            assert serve.image_header(data)[1:] == (shape[1], shape[0]), (ext, params, shape)
    for data, shape in ((riff_webp((b"VP8L", vp8l_black(37, 23))), (23, 37, 3)),
                        (riff_webp(vp8x(300, 5), (b"VP8L", vp8l_black(300, 5))), (5, 300, 3)),
                        (tiff_black(37, 23, rows_per_strip=4), (23, 37)),
                        (tiff_black(300, 5, rows_per_strip=2, order=">"), (5, 300))):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.shape == shape, shape
        assert serve.image_header(data)[1:] == (shape[1], shape[0])
    assert [serve.image_format(cv2.imencode(ext, np.zeros((4, 4, 3), np.uint8))[1].tobytes())
            for ext in (".png", ".jpg", ".bmp", ".tiff", ".webp", ".gif")] == ["PNG", "JPEG", "BMP", "TIFF", "WEBP",
                                                                            "GIF"]
    # read by Pillow and OpenCV alike, but not served: no size is checked for them
    for ext, channels in ((".ppm", 3), (".pgm", 1), (".ras", 3), (".hdr", 3)):
        data = cv2.imencode(ext, np.zeros((4, 4, channels), np.uint8))[1].tobytes()
        assert serve.image_header(data) is None, ext


def tiff_samples(width: int, height: int, samples: int) -> bytes:
    """An uncompressed 8-bit TIFF of zeros: RGB plus `samples - 3` extra samples per pixel."""
    entries = 10
    bits_at = 8 + 2 + 12 * entries + 4
    extra_at = bits_at + 2 * samples
    data_at = extra_at + 2 * (samples - 3)
    pixels = bytes(width * height * samples)
    fields = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, samples, bits_at), (259, 3, 1, 1), (262, 3, 1, 2),
              (273, 4, 1, data_at), (277, 3, 1, samples), (278, 4, 1, height), (279, 4, 1, len(pixels)),
              (338, 3, samples - 3, extra_at)]
    ifd = struct.pack("<H", entries)
    for tag, kind, count, value in fields:
        inline = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + inline
    return (b"II*\0" + struct.pack("<I", 8) + ifd + bytes(4) + struct.pack(f"<{samples}H", *[8] * samples)
            + bytes(2 * (samples - 3)) + pixels)


def test_a_tiff_with_more_than_four_samples_is_refused_from_its_header():
    from PIL import Image

    data = tiff_samples(5, 6, 6)
    with Image.open(io.BytesIO(data)) as im:  # Pillow reads it (as RGB): the refusal is the server's
        assert im.size == (5, 6) and im.tag_v2[277] == 6
    with pytest.raises(serve.UploadError) as raised:
        serve.check_image_header(data, 10**6)
    assert raised.value.status == 400
    assert str(raised.value) == "a TIFF with 6 samples per pixel: at most 4 are read (gray, gray + alpha, RGB, RGBA)"


def vm_hwm_mb() -> float:
    return int(re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) / 1024


def test_a_10_kb_tiff_bomb_is_refused_in_time_and_memory():
    """A 10 KB TIFF claiming 20000x20000 (400 MB of 8-bit pixels once decoded) and one claiming
    12000x12000 (144 MB, under Pillow's own limit): 413 from the header alone, in this process.
    Bounds: < 2 s and < 100 MB of peak memory growth (a decode would take 400 or 144 MB); the
    Python allocations stay under 1 MB (the file is 10 KB; Pillow keeps its tags)."""
    limit = serve.images.pillow_pixel_limit()
    cases = ((20000, f"image too large: more than {limit / 1e6:g} megapixels, past Pillow's decompression-bomb limit"),
             (12000, "image too large: 12000x12000 is 144.0 megapixels, the limit is 1 (--max-megapixels)"))
    assert serve.image_header(tiff_black(8, 8)) == ("TIFF", 8, 8)  # Pillow's TIFF plugin imported before measuring
    for side, message in cases:
        data = tiff_black(side, side)
        assert len(data) <= 10_500
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the present RSS
        except OSError:
            pass
        before = vm_hwm_mb()
        tracemalloc.start()
        start = time.thread_time()  # CPU time: a busy machine does not stretch it
        with pytest.raises(serve.UploadError) as raised:
            serve.check_image_header(data, 10**6)
        seconds = time.thread_time() - start
        python_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert raised.value.status == 413 and str(raised.value) == message
        assert seconds < 2 and vm_hwm_mb() - before < 100 and python_peak < 2**20, (side, seconds, python_peak)


def test_shorten_cuts_long_values():
    assert serve.shorten("abc") == "abc"
    assert serve.shorten("x" * 64) == "x" * 64
    assert serve.shorten("x" * 65) == "x" * 61 + "..." and len(serve.shorten("y" * 10**5)) == 64


def test_host_names_and_served_hosts():
    assert serve.host_name("LocalHost:8000") == "localhost"
    assert serve.host_name("[::1]:8000") == "::1" and serve.host_name("[::1]") == "::1"
    assert serve.host_name("example.org") == "example.org"
    for bad in ("", ":80", "a:b", "[::1", "[::1]x", "::1"):
        assert serve.host_name(bad) is None, bad
    assert serve.served_hosts() == {"localhost", "127.0.0.1", "::1"}
    assert serve.served_hosts("0.0.0.0", ["Box.lan", "[fe80::1]"]) == {"localhost", "127.0.0.1", "::1", "box.lan",
                                                                       "fe80::1"}
    assert serve.served_hosts("192.168.1.5") == {"localhost", "127.0.0.1", "::1", "192.168.1.5"}


def test_crafted_huge_images_are_refused_before_decoding(server):
    # each decodes to hundreds of MB (the TIFF to 20000x20000, the WebP to 16000x16000x3) from a few KB;
    # past Pillow's decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS) Pillow itself refuses to size them
    bombs = {"bomb.tiff": (tiff_black(20000, 20000), (20000, 20000)),
             "bomb_be.tiff": (tiff_black(19000, 19000, order=">"), (19000, 19000)),
             "small_bomb.tiff": (tiff_black(12000, 12000), (12000, 12000)),
             "bomb.webp": (riff_webp((b"VP8L", vp8l_black(16000, 16000))), (16000, 16000)),
             "canvas.webp": (riff_webp(vp8x(16000, 16000), (b"VP8L", vp8l_black(16000, 16000))), (16000, 16000)),
             "lossy.webp": (riff_webp((b"VP8 ", vp8_header(16000, 9000))), (16000, 9000)),
             "wide.gif": (gif((10, 10), (0, 0, 30000, 30000)), (30000, 30000)),
             "framed.gif": (gif((10, 10), (5, 7, 5000, 4000)), (5005, 4007))}
    limit = serve.images.pillow_pixel_limit()
    server.reset_peak_rss()
    before = server.peak_rss_mb()
    for name, (data, (width, height)) in bombs.items():
        assert len(data) < 20_000
        start = server.cpu_s()  # the server's CPU time, not wall-clock: a busy machine does not stretch it
        status, answer = server.segment(data, name)
        assert server.cpu_s() - start < 2, name
        assert status == 413, (name, answer)
        if width * height > limit:
            assert answer["error"] == (f"image too large: more than {limit / 1e6:g} megapixels, past Pillow's "
                                       f"decompression-bomb limit"), name
        else:
            assert answer["error"] == (f"image too large: {width}x{height} is {width * height / 1e6:.1f} "
                                       f"megapixels, the limit is 1 (--max-megapixels)"), name
    assert server.peak_rss_mb() - before < 100
    assert server.process.poll() is None

    # headers Pillow does not read (no ImageLength; a WebP image larger than its canvas; BigTIFF's
    # empty IFD), and formats OpenCV reads but this server does not serve: 400, nothing decoded
    for name, data in (("no_length.tiff", tiff_ifd("<", [(256, 3, 1, 64)])),
                       ("inner.webp", riff_webp(vp8x(1, 1), (b"VP8L", vp8l_black(12000, 12000)))),
                       ("huge.ppm", b"P5\n20000 20000\n255\n" + bytes(64)),
                       ("small.ppm", cv2.imencode(".ppm", np.zeros((8, 8, 3), np.uint8))[1].tobytes()),
                       ("big.tiff", b"II+\0" + bytes(64))):
        status, answer = server.segment(data, name)
        assert status == 400 and answer["error"] == ("not an image this server reads (corrupt, truncated, or not "
                                                     "a PNG, JPEG, BMP, TIFF, WebP or GIF file)"), name
    # a small crafted file is decoded and segmented as any other
    status, answer = server.segment(tiff_black(64, 48), "small.tiff")
    assert status == 200 and (answer["width"], answer["height"]) == (64, 48) and "image_jpeg" in answer
    status, answer = server.segment(riff_webp((b"VP8L", vp8l_black(64, 48))), "small.webp")
    assert status == 200 and (answer["width"], answer["height"]) == (64, 48) and "image_jpeg" not in answer


def exif_jpeg(orientation: int) -> bytes:
    """A JPEG stored 200 wide x 100 tall whose EXIF tag says how to show it; a street-like picture
    with a white top-left quadrant, so that every turn and mirror of it differs."""
    from PIL import Image

    stored = street_like(40, 100, 200)
    stored[:50, :100] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(stored).save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


# the displayed frame of stored pixels under each EXIF orientation (the standard's eight cases)
DISPLAYED = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
             8: lambda a: np.rot90(a, 1)}


@pytest.mark.slow
def test_phone_photos_are_segmented_the_right_way_up(server, predictor):
    """A JPEG with each of the 8 EXIF orientations is segmented as displayed: orientations 5-8
    turn the stored 200x100 into 100 wide x 200 tall, and the mask is the model's on the displayed
    pixels (OpenCV's decode turned here, checked against Pillow's exif_transpose)."""
    from PIL import Image, ImageOps

    for orientation in range(1, 9):
        data = exif_jpeg(orientation)
        status, answer = server.segment(data, f"photo{orientation}.jpg")
        assert status == 200, answer
        size = (100, 200) if orientation >= 5 else (200, 100)
        assert (answer["width"], answer["height"]) == size, orientation
        stored = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION),
                              cv2.COLOR_BGR2RGB)
        assert stored.shape == (100, 200, 3)  # the stored frame
        displayed = np.ascontiguousarray(DISPLAYED[orientation](stored))
        with Image.open(io.BytesIO(data)) as im:
            shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        # the same JPEG from two decoders: equal up to IDCT rounding and chroma upsampling (a turned
        # or mirrored frame differs by 255 in the white quadrant)
        assert shown.shape == displayed.shape and np.abs(shown.astype(int) - displayed.astype(int)).max() <= 40
        np.testing.assert_array_equal(decode_png(answer["mask_png"]), predictor.predict(displayed))


# ---- Host and Origin checks, the video queue, long ids -----------------------------------------

def test_only_served_host_names_are_answered(server):
    port = server.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"cgnet.test:{port}", "CGNET.TEST",
                 "localhost"):
        status, headers, body = server.request("GET", "/api/info", {"Host": host})
        assert status == 200 and json.loads(body)["backend"] == "torch", host
    for host, echoed in (("evil.example", "evil.example"), (f"evil.example:{port}", f"evil.example:{port}"),
                         (f"127.0.0.2:{port}", f"127.0.0.2:{port}"), ("x" * 500, "x" * 61 + "...")):
        for path in ("/", "/api/info", "/static/app.js"):
            status, headers, body = server.request("GET", path, {"Host": host})
            assert status == 421, (host, path)
            assert json.loads(body) == {"error": f"host {echoed!r} is not served here (--allowed-host adds names)"}
            assert headers["content-type"] == "application/json" and "default-src 'self'" in headers[
                "content-security-policy"]
    body, kind = multipart("image", "a.png", png(street_like(3, 32, 48)))
    status, headers, answer = server.request("POST", "/api/segment", {"Host": "evil.example", "Content-Type": kind},
                                             body)
    assert status == 421 and "evil.example" in json.loads(answer)["error"]

    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:  # HTTP/1.0 without a Host header
        raw.sendall(b"GET /api/info HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and json.loads(payload) == {"error": "the request has no Host header"}


def test_posts_from_other_origins_are_refused(server):
    port = server.port
    image = png(street_like(4, 32, 48))
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://cgnet.test:{port}",
                   f"http://[::1]:{port}"):
        body, kind = multipart("image", "a.png", image)
        status, headers, answer = server.request("POST", "/api/segment", {"Origin": origin, "Content-Type": kind}, body)
        assert status == 200 and json.loads(answer)["width"] == 48, origin
    # an https Origin is another origin for a server reached over http (the TLS case is in test_web.py)
    for origin in ("http://evil.example", f"http://evil.example:{port}", f"https://127.0.0.1:{port}",
                   f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}", "http://127.0.0.1", "null",
                   "http://" + "e" * 300):
        for path, field in (("/api/segment", "image"), ("/api/video", "video")):
            body, kind = multipart(field, "a.png", image)
            status, headers, answer = server.request("POST", path, {"Origin": origin, "Content-Type": kind}, body)
            assert status == 403, (origin, path)
            assert json.loads(answer) == {"error": f"cross-origin request refused: {serve.shorten(origin)!r} "
                                                   f"is not this server's origin"}
    # reading is not refused by Origin (the browser keeps another site from reading the answer)
    status, headers, answer = server.request("GET", "/api/info", {"Origin": "http://evil.example"})
    assert status == 200 and "access-control-allow-origin" not in headers
    assert json.loads(server.get("/api/info")[2])["videos_pending"] == 0


def wait_for_pending(server, count: int) -> None:
    deadline = time.monotonic() + 240  # a hang guard: a busy machine may take long
    while json.loads(server.get("/api/info")[2])["videos_pending"] != count:
        assert time.monotonic() < deadline, f"videos_pending never became {count}"
        time.sleep(0.05)


def test_full_video_queue_is_429_with_retry_after(server, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_video(clip, 3, size=(16, 16))
    # an upload still arriving holds the queue's one place (--max-queued-videos 1)
    boundary = "b" * 20
    start = f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"slow.mp4\"\r\n\r\n".encode()
    slow = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    slow.putrequest("POST", "/api/video")
    slow.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    slow.putheader("Content-Length", str(len(start) + 100_000))
    slow.endheaders(start + bytes(1000))
    try:
        wait_for_pending(server, 1)
        for _ in range(3):
            body, kind = multipart("video", "clip.mp4", clip.read_bytes())
            status, headers, answer = server.request("POST", "/api/video", {"Content-Type": kind}, body)
            assert status == 429 and headers["retry-after"] == "10"
            assert json.loads(answer) == {"error": "the video queue is full (1 videos waiting or running, "
                                                   "--max-queued-videos): try again later"}
    finally:
        slow.close()
    wait_for_pending(server, 0)  # the interrupted upload gave its place back
    status, job = server.post("/api/video", "video", "clip.mp4", clip.read_bytes())
    assert status == 202 and job["total"] == 3
    deadline = time.monotonic() + 240
    while job["state"] not in ("done", "error"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = json.loads(server.get(f"/api/jobs/{job['id']}")[2])
    assert job["state"] == "done" and job["frames"] == 3
    assert json.loads(server.get("/api/info")[2])["videos_pending"] == 0


def test_an_image_sent_as_a_video_is_400(server, tmp_path):
    still = png(street_like(5, 48, 64))
    for name, data in (("frame.png", still), ("frame.mp4", still),
                       ("frame.mp4", cv2.imencode(".jpg", street_like(5, 48, 64))[1].tobytes()),
                       ("frame.mp4", riff_webp((b"VP8L", vp8l_black(64, 48))))):
        status, answer = server.post("/api/video", "video", name, data)
        fmt = serve.image_format(data).upper()
        assert status == 400 and answer == {"error": f"this is a {fmt} image, not a video: send images to /api/segment"}
    # formats FFmpeg reads as a one-frame stream without a frame count (its count is -2**63)
    for ext in (".ppm", ".ras", ".hdr"):
        data = cv2.imencode(ext, street_like(6, 48, 64))[1].tobytes()
        status, answer = server.post("/api/video", "video", "frame.mp4", data)
        assert status == 400 and answer["error"] == ("not a video: one frame and no frame count (a still image?): "
                                                     "send an mp4, avi, mov, mkv or webm file"), ext
    # OpenCV's image-sequence reader opens a PAM file
    status, answer = server.post("/api/video", "video", "frame.mp4",
                                 cv2.imencode(".pam", street_like(6, 48, 64))[1].tobytes())
    assert status == 400 and answer["error"] == serve.NOT_A_VIDEO
    assert json.loads(server.get("/api/info")[2])["videos_pending"] == 0


def test_not_found_echoes_a_short_id(server):
    for job_id in ("x" * 100_000, "é" * 70):
        status, headers, body = server.get("/api/jobs/" + urllib.parse.quote(job_id))
        assert status == 404 and len(body) < 300
        assert json.loads(body) == {"error": f"no video job {job_id[:61] + '...'!r} "
                                             f"(finished jobs are kept until 16 newer ones)"}
        status, headers, body = server.get("/api/jobs/" + urllib.parse.quote(job_id) + "/video")
        assert status == 404 and len(body) < 300
    status, headers, body = server.get("/api/jobs/abc")
    assert json.loads(body) == {"error": "no video job 'abc' (finished jobs are kept until 16 newer ones)"}


def test_serve_options_are_checked(capsys):
    for argv, message in ((["--allowed-host", "evil.example:80"], "argument --allowed-host: a host name"),
                          (["--allowed-host", "http://x"], "argument --allowed-host: a host name"),
                          (["--allowed-host", "fe80::1"], "an IPv6 address in brackets"),
                          (["--max-queued-videos", "0"], "argument --max-queued-videos: must be at least 1, got '0'"),
                          (["--max-megapixels", "200"], "argument --max-megapixels: must be at most 178.9, got '200'"),
                          (["--max-concurrent-images", "x"], "argument --max-concurrent-images: expected a whole")):
        with pytest.raises(SystemExit) as raised:
            main(["serve", "--port", "0", *argv])
        assert raised.value.code == 2 and message in capsys.readouterr().err, argv


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


def test_images_in_work_at_once_are_bounded(monkeypatch, predictor):
    """--max-concurrent-images: six uploads at once, at most two are decoded and segmented at a
    time (the ASGI app driven in this process; the others wait without taking a worker thread)."""
    if MISSING:
        pytest.skip(MISSING)
    import asyncio

    lock, state = threading.Lock(), {"active": 0, "peak": 0}

    def slow_segment(self, data, max_pixels):
        with lock:
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
        time.sleep(0.1)
        with lock:
            state["active"] -= 1
        return {"bytes": len(data)}
    monkeypatch.setattr(serve.Segmenter, "segment", slow_segment)
    app = serve.create_app(predictor, max_concurrent_images=2)

    async def post(k: int) -> tuple[int, dict]:
        body, kind = multipart("image", "a.png", bytes(k + 1))
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/api/segment", "raw_path": b"/api/segment", "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 5000 + k), "server": ("127.0.0.1", 8000),
                 "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", kind.encode()),
                             (b"content-length", str(len(body)).encode())]}
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent = []

        async def receive():
            if messages:
                return messages.pop(0)
            await asyncio.sleep(3600)

        async def send(message):
            sent.append(message)
        await app(scope, receive, send)
        return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))

    async def together():
        return await asyncio.gather(*[post(k) for k in range(6)])
    try:
        answers = asyncio.run(together())
    finally:
        app.state.jobs.close()
    assert answers == [(200, {"bytes": k + 1}) for k in range(6)]
    assert state["peak"] == 2
