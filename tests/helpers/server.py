"""`cgnet serve` in a subprocess, for the tests that talk to a real server."""
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest


@contextmanager
def running_serve(*args: str, timeout: float = 240):
    """`cgnet serve --port 0 ARGS` in a subprocess: yields (process, url, output lines) once it
    prints its address (a test failure with its output if it does not), and stops it after."""
    process = subprocess.Popen([sys.executable, "-m", "cgnet", "serve", "--port", "0", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if "http://" in line or "https://" in line:
                found.set()
    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        while not found.wait(0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("cgnet serve did not start:\n" + "".join(lines))
        yield process, re.search(r"https?://\S+/", "".join(lines)).group(0), lines
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
