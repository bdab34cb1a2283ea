"""Load benchmark of `cgnet serve`: N clients post one image to /api/segment at once, two rounds.

    python -m benchmarks.serve_load [--clients 8] [--requests 20 | --seconds S] [--size 360 480]
        [--image FILE] [--json FILE] [--url http://127.0.0.1:PORT/ [--pid PID]] [-- SERVE OPTIONS]

Starts `cgnet serve --host 127.0.0.1 --port 0 SERVE OPTIONS` itself (or uses a running server on
this machine: --url, a 127.0.0.1/localhost/[::1] URL only; --pid names its process for the memory
figures), sends one warm-up request, then two rounds of the same bounded load: every client sends
--requests requests one after the other on its own keep-alive connection (or as many as fit in
--seconds). Per round it prints requests/s, the p50/p95/p99 latency the clients saw, the median
model latency the server reports (`latency_ms` of /api/segment: preprocessing, forward, argmax),
and requests/s x that median: the share of the time the model was busy. The server runs one
prediction at a time, so with enough clients it should stay near 1 (>= 0.7 at 8 clients) when the
model is what bounds it. The server's resident memory (VmRSS from /proc/PID/status) is printed
before, during (the largest sample, every 50 ms) and after the rounds, with its peak (VmHWM).
--json FILE writes every figure. Exits 1 when a request failed.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import cv2
import numpy as np

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SAMPLE_S = 0.05  # how often the server's memory is read during the rounds


class BenchError(Exception):
    """A problem the benchmark reports as one line (exit 2)."""


# ---- the server ----------------------------------------------------------------------------------

def local_url(text: str) -> str:
    """`text` when it is an http URL of this machine (127.0.0.1, localhost or [::1]) with a port."""
    parts = urllib.parse.urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or parts.hostname not in LOCAL_HOSTS or port is None:
        raise BenchError(f"--url must be http://127.0.0.1:PORT/ (or localhost, [::1]) on this machine, got {text!r}")
    return text if text.endswith("/") else text + "/"


def start_server(serve_args: list[str], timeout: float) -> tuple[subprocess.Popen, str, list[str]]:
    """`cgnet serve --host 127.0.0.1 --port 0 serve_args` in a subprocess: the process, the URL it
    prints (http or https) and its output lines so far (a thread keeps appending to them).
    BenchError, with the last output lines, when it exits or prints no address in `timeout` s."""
    command = [sys.executable, "-m", "cgnet", "serve", "--host", "127.0.0.1", "--port", "0", *serve_args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if "http://" in line or "https://" in line:
                found.set()
    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found.wait(0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(process)
            tail = "".join(lines[-5:]).strip().replace("\n", " | ")
            raise BenchError(f"cgnet serve did not start: {tail or 'no output'}")
    return process, re.search(r"https?://\S+/", "".join(lines)).group(0), lines


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def memory_mb(pid: int | None, field: str = "VmRSS") -> float | None:
    """A memory figure of process `pid` from /proc/PID/status in MB (VmRSS, VmHWM), or None."""
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+) kB", status, re.M)
    return int(found.group(1)) / 1024 if found else None


class MemorySampler:
    """The largest VmRSS of `pid` seen while running (a sample every SAMPLE_S seconds)."""

    def __init__(self, pid: int | None):
        self.pid, self.largest, self.stop = pid, None, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while True:
            value = memory_mb(self.pid)
            if value is not None:
                self.largest = value if self.largest is None else max(self.largest, value)
            if self.stop.wait(SAMPLE_S):
                return

    def __enter__(self) -> MemorySampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


# ---- the load ------------------------------------------------------------------------------------

def street_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A street-like H x W x 3 BGR image: horizontal bands, blobs and noise (a PNG that compresses
    as a photo would not, so decoding is not free)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    edges = np.sort(rng.integers(0, height, 3))
    for top, bottom, colour in zip([0, *edges], [*edges, height], rng.integers(0, 256, (4, 3))):
        image[top:bottom] = colour
    for _ in range(8):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(4, max(5, height // 8)))
        cv2.circle(image, centre, radius, [int(c) for c in rng.integers(0, 256, 3)], -1)
    return np.clip(image.astype(np.int16) + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)


def multipart(filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Client:
    """One keep-alive connection that posts the image and records what each request took."""

    def __init__(self, url: str, body: bytes, kind: str):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port, self.body, self.kind = parts.hostname, parts.port, body, kind
        self.connection: http.client.HTTPConnection | None = None
        self.latencies: list[float] = []  # seconds, successful requests
        self.model_ms: list[float] = []  # what the server reports
        self.errors: list[str] = []

    def post(self) -> None:
        start = time.perf_counter()
        try:
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=600)
            self.connection.request("POST", "/api/segment", body=self.body,
                                    headers={"Content-Type": self.kind})
            response = self.connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as error:
            self.close()
            self.errors.append(f"{type(error).__name__}: {error}")
            return
        elapsed = time.perf_counter() - start
        if response.status != 200:
            try:
                message = json.loads(payload).get("error", "")
            except ValueError:
                message = payload[:200].decode(errors="replace")
            self.errors.append(f"HTTP {response.status}: {message}")
            return
        self.latencies.append(elapsed)
        self.model_ms.append(float(json.loads(payload)["latency_ms"]))

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))  # linear between the closest ranks


def run_round(url: str, body: bytes, kind: str, clients: int, requests: int | None, seconds: float | None,
              pid: int | None) -> dict:
    """One round: `clients` threads at once, each `requests` posts (or posts until `seconds` end)."""
    workers = [Client(url, body, kind) for _ in range(clients)]
    ready = threading.Barrier(clients + 1)
    times: dict[str, float] = {}

    def work(client: Client) -> None:
        ready.wait()
        if seconds is not None:
            while time.perf_counter() < times["end"]:
                client.post()
        else:
            for _ in range(requests):
                client.post()
        client.close()

    threads = [threading.Thread(target=work, args=(client,)) for client in workers]
    for thread in threads:
        thread.start()
    with MemorySampler(pid) as sampler:
        times["start"] = time.perf_counter()
        times["end"] = times["start"] + (seconds or 0)
        ready.wait()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - times["start"]
    latencies = [s * 1000 for client in workers for s in client.latencies]
    model = [ms for client in workers for ms in client.model_ms]
    errors = [e for client in workers for e in client.errors]
    if not latencies:
        raise BenchError(f"no request of the round succeeded: {errors[0]}")
    rate = len(latencies) / wall
    median_model = statistics.median(model)
    return {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "sent": len(latencies) + len(errors), "seconds": wall, "requests_per_s": rate,
            "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                           "p99": percentile(latencies, 99), "max": max(latencies)},
            "model_ms_median": median_model, "model_busy": rate * median_model / 1000,
            "rss_mb_max": sampler.largest}


# ---- report --------------------------------------------------------------------------------------

def mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


def report(result: dict) -> None:
    print(f"cgnet serve at {result['url']}: {result['model']} on {result['backend']} ({result['precision']}); "
          f"image {result['image']['width']}x{result['image']['height']} ({result['image']['bytes']} bytes); "
          f"{result['clients']} clients x " + (f"{result['requests_per_client']} requests"
                                               if result["requests_per_client"] is not None
                                               else f"{result['seconds_per_round']:g} s") + " per round")
    print(f"{'round':>5} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'model ms':>9} {'req/s x model':>13} {'RSS max':>8}")
    for k, row in enumerate(result["rounds"], 1):
        lat = row["latency_ms"]
        print(f"{k:>5} {row['requests']:>8} {row['errors']:>6} {row['requests_per_s']:>8.2f} {lat['p50']:>8.1f} "
              f"{lat['p95']:>8.1f} {lat['p99']:>8.1f} {row['model_ms_median']:>9.2f} {row['model_busy']:>13.3f} "
              f"{mb(row['rss_mb_max']):>8}")
        for error in row["first_errors"]:
            print(f"      error: {error}")
    rss = result["rss_mb"]
    print(f"server RSS: before {mb(rss['before'])}, during (largest sample) {mb(rss['during_max'])}, "
          f"after {mb(rss['after'])}; peak (VmHWM) {mb(rss['peak_hwm'])}")
    low = [k for k, row in enumerate(result["rounds"], 1) if row["model_busy"] < 0.7]
    if result["clients"] >= 8 and low:
        print(f"NOTE: req/s x model latency is below 0.7 in round(s) {low}: something besides the model bounds "
              f"the server here (or the machine is busy)")


def write_json(path: Path, result: dict) -> None:
    """`result` as JSON in `path`, written beside it and renamed when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(result, out, indent=2)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="options after -- go to `cgnet serve` (e.g. -- --backend torch --device cpu)")
    p.add_argument("--clients", type=positive(int), default=8, help="clients sending at once (default 8)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--requests", type=positive(int), default=20, help="requests per client and round (default 20)")
    how.add_argument("--seconds", type=positive(float), help="seconds per round instead of a number of requests")
    p.add_argument("--size", type=positive(int), nargs=2, default=(360, 480), metavar=("H", "W"),
                   help="size of the generated test image (default 360 480, a CamVid frame)")
    p.add_argument("--image", type=Path, help="send this image file instead of a generated one")
    p.add_argument("--url", type=str, help="a running server on this machine (http://127.0.0.1:PORT/)")
    p.add_argument("--pid", type=positive(int), help="with --url: the server's process id, for its memory")
    p.add_argument("--start-timeout", type=positive(float), default=300, help="seconds to wait for the server")
    p.add_argument("--json", type=Path, help="write every figure to this JSON file")
    p.add_argument("serve_args", nargs=argparse.REMAINDER, help="-- then options for `cgnet serve`")
    args = p.parse_args(argv)
    serve_args = args.serve_args[1:] if args.serve_args[:1] == ["--"] else args.serve_args
    if args.url and serve_args:
        p.error("options for `cgnet serve` need a server started here, not --url")
    if args.pid and not args.url:
        p.error("--pid goes with --url (a server started here is measured anyway)")
    try:
        return run(args, serve_args)
    except BenchError as error:
        print(f"serve_load: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, serve_args: list[str]) -> int:
    if args.image is not None:
        try:
            data = args.image.read_bytes()
        except OSError as error:
            raise BenchError(f"--image {args.image}: {error.strerror}") from None
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise BenchError(f"--image {args.image}: not an image OpenCV can read")
        filename = args.image.name
    else:
        image = street_image(*args.size)
        data, filename = cv2.imencode(".png", image)[1].tobytes(), "load.png"
    body, kind = multipart(filename, data)

    process = None
    if args.url:
        url, pid = local_url(args.url), args.pid
    else:
        process, url, _ = start_server(serve_args, args.start_timeout)
        pid = process.pid
    try:
        warm = Client(url, body, kind)
        warm.post()
        warm.close()
        if warm.errors:
            raise BenchError(f"the warm-up request failed: {warm.errors[0]}")
        parts = urllib.parse.urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        connection.request("GET", "/api/info")
        info = json.loads(connection.getresponse().read())
        connection.close()

        before = memory_mb(pid)
        rounds = [run_round(url, body, kind, args.clients, None if args.seconds else args.requests, args.seconds, pid)
                  for _ in range(2)]
        after = memory_mb(pid)
        samples = [row["rss_mb_max"] for row in rounds if row["rss_mb_max"] is not None]
        result = {
            "url": url, "started_here": process is not None, "serve_args": serve_args, "pid": pid,
            "model": info.get("model"), "backend": info.get("backend"), "precision": info.get("precision"),
            "image": {"width": int(image.shape[1]), "height": int(image.shape[0]), "bytes": len(data)},
            "clients": args.clients, "requests_per_client": None if args.seconds else args.requests,
            "seconds_per_round": args.seconds, "rounds": rounds,
            "rss_mb": {"before": before, "during_max": max(samples) if samples else None, "after": after,
                       "peak_hwm": memory_mb(pid, "VmHWM")},
        }
    finally:
        if process is not None:
            stop_server(process)
    report(result)
    if args.json:
        write_json(args.json, result)
    return 1 if any(row["errors"] for row in rounds) else 0


if __name__ == "__main__":
    sys.exit(main())
