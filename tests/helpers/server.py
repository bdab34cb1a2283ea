"""`cgnet serve` in a subprocess, for the tests that talk to a real server (started and stopped
as benchmarks.serve_load does)."""
from contextlib import contextmanager

import pytest

from benchmarks.serve_load import BenchError, start_server, stop_server


@contextmanager
def running_serve(*args: str, timeout: float = 240):
    """`cgnet serve --port 0 ARGS` in a subprocess: yields (process, url, output lines) once it
    prints its address (a test failure with its last output lines if it does not), and stops it
    after."""
    try:
        process, url, lines = start_server(list(args), timeout)
    except BenchError as e:
        pytest.fail(str(e))
    try:
        yield process, url, lines
    finally:
        stop_server(process)
