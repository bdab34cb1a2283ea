"""A real two-node Ray cluster on 127.0.0.1 for the tests of `cgnet predict --engine ray`: a head
node (`ray start --head`) and a second node (`ray start --address=...`), two `ray start --block`
processes, each the leader of a session of its own, so that the tests end them, and every process
they started, by those ids (no `ray stop`, which would end every Ray cluster of the machine).

Ray replaces 127.0.0.1 in an address by the machine's routable address (`resolve_ip_for_localhost`),
so both nodes and the driver meet there: a head bound to 127.0.0.1 alone cannot be joined. Ray starts
a head with token authentication on; `AUTH_ENV` (one random token, RAY_AUTH_MODE=token) goes to the
nodes and to every `cgnet predict` that joins them, as a user's cluster needs."""
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
START_LIMIT_S = 600  # a node's start on a loaded 2-core machine
AUTH_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}


def session_processes(sid: int) -> list[int]:
    """The processes of a session (what a `ray start --block` started, its Ray workers included)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after the name: state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


class Cluster:
    """Start with `start()`, end with `stop()` (always: it is safe after a failed start)."""

    def __init__(self, port: int, env: dict, cpus: int = 1):
        self.port, self.env, self.cpus = port, env, cpus
        self.temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
        self.nodes: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _node(self, args: list[str], env: dict, log: str) -> subprocess.Popen:
        out = open(os.path.join(self.temp, log), "w")
        node = subprocess.Popen([RAY, "start", "--block", "--num-cpus", str(self.cpus), "--disable-usage-stats", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.nodes.append(node)
        return node

    def _wait_started(self, node: subprocess.Popen, log: str, deadline: float) -> None:
        path = os.path.join(self.temp, log)
        while time.monotonic() < deadline:
            if "Ray runtime started" in Path(path).read_text():
                return
            if node.poll() is not None:
                raise RuntimeError(f"ray start ended: {Path(path).read_text()[-2000:]}")
            time.sleep(0.5)
        raise RuntimeError(f"ray start did not finish in {START_LIMIT_S} s")

    def _start(self, args: list[str], env: dict, log: str, deadline: float) -> None:
        """A node, started again (up to 3 times) when it does not come up: Ray gives a raylet 30 s
        to register, which a loaded machine can miss."""
        for attempt in range(3):
            node = self._node(args, env, log)
            try:
                self._wait_started(node, log, deadline)
                return
            except RuntimeError:
                self.nodes.remove(node)
                kill_session(node.pid)
                node.wait(timeout=60)
                if attempt == 2 or time.monotonic() > deadline:
                    raise

    def start(self) -> "Cluster":
        deadline = time.monotonic() + START_LIMIT_S
        self._start(["--head", "--port", str(self.port), "--include-dashboard=false", "--temp-dir", self.temp],
                    self.env, "head.log", deadline)
        self._start(["--address", self.address], self.env, "node.log", deadline)
        return self

    def workers(self) -> list[int]:
        """The Ray worker processes running `map_batches` actors (Ray names them ray::MapWorker...)."""
        found = []
        for node in self.nodes:
            for pid in session_processes(node.pid):
                try:
                    if b"MapWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        found.append(pid)
                except OSError:
                    continue
        return found

    def stop(self) -> None:
        """SIGTERM to each node's session, then SIGKILL to whatever of it is left after 60 s."""
        for node in self.nodes:
            signal_session(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(session_processes(n.pid) for n in self.nodes):
            time.sleep(0.5)
        for node in self.nodes:
            kill_session(node.pid)
            node.wait(timeout=60)
        shutil.rmtree(self.temp, ignore_errors=True)


def signal_session(sid: int, signum: int) -> None:
    for pid in session_processes(sid):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def kill_session(sid: int) -> None:
    signal_session(sid, signal.SIGKILL)
