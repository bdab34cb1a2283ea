"""Files that survive interruptions: atomic writes (a temporary file in the target's folder, then
a rename, so a reader or an interrupted job never sees half a file), folders built the same way
(`staged_folder`), the leftovers of writes that were killed, and a lock file that keeps two jobs
out of one folder."""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from .common import CGNetError

# `.<name>.<pid>.<8 hex>.tmp`, as `atomic_open` names its temporary files
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.tmp$")


def hidden_sibling(path: Path, ending: str) -> Path:
    """A unique hidden name beside `path` for work in progress: `.NAME.PID.RANDOM.ENDING`."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{ending}")


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file for writing; on success it replaces `path`, on error it is removed.

    Created with mode 0666 (not mkstemp's 0600) so the result gets the usual umask permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = hidden_sibling(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    with atomic_open(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)
    return Path(path)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (one of another user's counts too)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftover_temp_files(folder: str | os.PathLike, *, any_pid: bool = False) -> list[Path]:
    """Delete the temporary files of `atomic_open` writes that were killed (SIGKILL, power loss):
    those of processes that no longer run on this host, or all of them with `any_pid` (for a
    caller that holds the folder's lock, so no other job writes there). Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        found = TEMP_NAME.match(path.name)
        if found is None or not path.is_file():
            continue
        pid = int(found["pid"])
        if any_pid or (pid != os.getpid() and not pid_alive(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class FolderLocked(CGNetError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """A lock file (`<folder>/<name>`, JSON with pid, host and start time) held while a job
    writes into the folder.

    `acquire` creates it exclusively. A lock left by a process that no longer runs on this host
    is stale: it is taken over, and `taken_over` holds what it said. A lock of a live process,
    or of another host (which cannot be checked from here), is refused with `FolderLocked`.
    `release` removes the file if it is still ours, and the folder if the lock created it and
    it is empty.
    """

    def __init__(self, folder: str | os.PathLike, name: str = "train.lock", *, what: str = "a run"):
        self.folder, self.path, self.what = Path(folder), Path(folder) / name, what
        self.held = False
        self.taken_over: dict | None = None
        self.created_folder = False

    def holder(self) -> dict | None:
        """The lock file's content ({} when unreadable), or None without a lock file."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def is_stale(self, holder: dict) -> bool:
        """The holder's process is known to be gone: same host, pid not running; or, on another
        host, a process of the same torchrun job (its agents stop every worker of the group before
        a restarted group starts, so that process is gone)."""
        pid = holder.get("pid")
        job = os.environ.get("TORCHELASTIC_RUN_ID")
        if job and holder.get("torchrun_job") == job and holder.get("host") != socket.gethostname():
            return True
        return (isinstance(pid, int) and holder.get("host") == socket.gethostname()
                and pid != os.getpid() and not pid_alive(pid))

    def refusal(self, holder: dict) -> FolderLocked:
        pid, host = holder.get("pid"), holder.get("host")
        if pid is None:
            return FolderLocked(f"{self.path} is not a lock file cgnet can read; if no run uses "
                                f"{self.folder}, delete it")
        if holder.get("host") not in (None, socket.gethostname()):
            return FolderLocked(f"{self.folder} is locked by {self.what} of pid {pid} on host {host} "
                                f"({self.path}); if that run has ended, delete the lock file")
        return FolderLocked(f"{self.folder} is in use by {self.what} of pid {pid} ({self.path}); wait for "
                            f"it to end, or give another --out")

    def check(self) -> None:
        """Refuse now (without writing anything) if a live process holds the lock."""
        holder = self.holder()
        if holder is not None and not self.is_stale(holder):
            raise self.refusal(holder)

    def acquire(self) -> "FolderLock":
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            self.created_folder = True
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             **({"torchrun_job": os.environ["TORCHELASTIC_RUN_ID"]}
                                if os.environ.get("TORCHELASTIC_RUN_ID") else {})})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = self.holder()
                if holder is None:  # released in between: try again
                    continue
                if not self.is_stale(holder):
                    raise self.refusal(holder) from None
                self.taken_over = holder
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(record + "\n")
            self.held = True
            return self
        raise self.refusal(self.holder() or {})

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = self.holder()
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        if self.created_folder:
            try:
                self.folder.rmdir()  # only when empty: nothing was written
            except OSError:
                pass

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_writable(path: str | os.PathLike, option: str, *, folder: bool = True) -> Path:
    """Fail early, with one line naming the option, when an output cannot be written. Nothing is
    left behind: folders made for the probe are removed again.

    Args:
        path: an output folder (`folder=True`) or file (its folder is checked).
        option: the command-line option that named it, for the message (e.g. '--out').
    """
    path = Path(path)
    target = path if folder else path.parent
    missing = missing_folders(target)
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / f".cgnet-write-test.{os.getpid()}.{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()
        if not folder and path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        reason = e.strerror or str(e)
        raise CGNetError(f"{option} {path}: cannot write there ({reason})") from None
    finally:
        remove_made(missing)
    return path


def missing_folders(path: str | os.PathLike) -> list[Path]:
    """The folders of `path` (itself included) that do not exist yet, outermost first."""
    missing = []
    for folder in [Path(path), *Path(path).parents]:
        if folder.exists():
            break
        missing.insert(0, folder)
    return missing


def remove_made(folders: list[Path]) -> None:
    """Remove folders that a call created (outermost first, as `missing_folders` lists them),
    deepest first, stopping at the first one that is not empty or already gone."""
    for made in reversed(folders):
        try:
            made.rmdir()
        except OSError:
            break


class FolderExists(CGNetError, FileExistsError):
    """The folder `staged_folder` would rename into place exists and is not empty (or is a file)."""


@contextmanager
def staged_folder(target: str | os.PathLike, *, replace: bool = False):
    """Build a folder in a temporary place, then rename it into place.

    Yields a new empty folder beside `target` (`.<name>.<pid>.<8 hex>.partial`, on the same file
    system), created with the usual umask permissions. When the block ends without an error, it
    becomes `target` by one rename, so no reader ever sees a half-built folder: an absent target
    or an empty folder is replaced; one with content (or a file) is refused with `FolderExists`,
    unless `replace`, which removes a folder's content first (an incomplete cache entry). On any
    error, Ctrl-C included, the temporary folder is removed, and so are the parent folders of
    `target` that this call created.

    Args:
        target: the folder to make.
        replace: replace a folder that exists with content.
    """
    target = Path(target)
    made = missing_folders(target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = hidden_sibling(target, "partial")
    try:
        staging.mkdir()
        yield staging
        if target.is_dir() and not target.is_symlink():
            if any(target.iterdir()) and not replace:
                raise FolderExists(f"{target} exists and is not empty; nothing was written to it")
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            raise FolderExists(f"{target} exists and is not a folder; nothing was written to it")
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_made(made)
        raise
