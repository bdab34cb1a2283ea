"""Files that survive interruptions: atomic writes (a temporary file in the target's folder, then
a rename, so a reader or an interrupted job never sees half a file), folders built the same way
(`staged_folder`), the leftovers of writes that were killed, a lock (an OS lock, through filelock)
that keeps two jobs out of one folder, and the one archive extractor (`extract_archive`: safe names,
a size limit)."""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import tarfile
import time
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import filelock

from .common import CGNetError

# `.<name>.<pid>.<8 hex>.tmp`, as `atomic_open` names its temporary files, and
# `.<stem>.<pid>.<8 hex>.partial<suffix>`, as `partial_name` names a file a writer builds in place
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.(tmp|partial(\.\w+)?)$")


def hidden_sibling(path: Path, ending: str) -> Path:
    """A unique hidden name beside `path` for work in progress: `.NAME.PID.RANDOM.ENDING`."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{ending}")


def partial_name(path: Path) -> Path:
    """Where a file is written before it is complete, when the writer goes by its suffix (a video
    container, an export format): a hidden name beside `path` that ends in `.partial<suffix>`."""
    return hidden_sibling(path.with_suffix(""), f"partial{path.suffix}")


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


def remove_leftover_temp_files(folder: str | os.PathLike, *, any_pid: bool = False,
                               recursive: bool = False) -> list[Path]:
    """Delete the temporary files of `atomic_open` and `partial_name` writes that were killed
    (SIGKILL, power loss, a lost Ray worker): those of processes that no longer run on this host,
    or all of them with `any_pid` (for a caller that holds the folder's lock, so no other job writes there); in the folders below it
    too with `recursive`. Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    paths = ([Path(root, name) for root, _, names in os.walk(folder) for name in names] if recursive
             else folder.iterdir())  # os.walk: symbolic links to folders are not followed
    for path in sorted(paths):
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
    """The lock of a folder a job writes into: an OS lock on `<folder>/<name>` held for the job's
    life (filelock's `lock_descriptor`: flock on Unix, LockFileEx on Windows), the file holding
    JSON with the holder's pid, host and start time for the messages.

    The OS releases the lock when its process ends, however it ends (kill -9 and power loss too),
    so a lock file left by a job that no longer runs is taken over (`taken_over` holds what it
    said). A lock another process holds is refused with `FolderLocked`, and so is a lock file
    written on another host (the OS lock does not reach across hosts on a network file system),
    unless it names this torchrun job (`TORCHELASTIC_RUN_ID`, recorded as `torchrun_job`): a group
    torchrun's agents restarted takes over its failed group's lock, on whichever host it is.
    `release` removes the file, and the folder if the lock created it and it is empty.
    """

    def __init__(self, folder: str | os.PathLike, name: str = "train.lock", *, what: str = "a run"):
        self.folder, self.path, self.what = Path(folder), Path(folder) / name, what
        self.held = False
        self.taken_over: dict | None = None
        self.created_folder = False
        self.fd: int | None = None

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

    def refusal(self, holder: dict, held: bool = True) -> FolderLocked:
        pid, host = holder.get("pid"), holder.get("host")
        if host not in (None, socket.gethostname()):
            return FolderLocked(f"{self.folder} is locked by {self.what} of pid {pid} on host {host} "
                                f"({self.path}); if that run has ended, delete the lock file")
        of = f" of pid {pid}" if pid is not None else ""
        return FolderLocked(f"{self.folder} is in use by {self.what}{of} ({self.path}); wait for "
                            f"it to end, or give another --out")

    @staticmethod
    def _other_host(holder: dict) -> bool:
        """A lock file written on another host, except by a process of this torchrun job: torchrun's
        agents stop every worker of the group before a restarted group starts, so that process is
        gone (and the restarted group's main process may run on another host)."""
        job = os.environ.get("TORCHELASTIC_RUN_ID")
        if job and holder.get("torchrun_job") == job:
            return False
        return holder.get("host") not in (None, socket.gethostname())

    def check(self) -> None:
        """Refuse now (without writing anything) if another process holds the lock, or a lock
        file of another host is there."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file (or no folder): nothing holds it
            return
        try:
            held = not filelock.lock_descriptor(fd, blocking=False)
            if not held:
                filelock.unlock_descriptor(fd)
        finally:
            os.close(fd)
        holder = self.holder() or {}
        if held or self._other_host(holder):
            raise self.refusal(holder, held)

    def acquire(self) -> "FolderLock":
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            self.created_folder = True
        for _ in range(3):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            if not filelock.lock_descriptor(fd, blocking=False):
                os.close(fd)
                raise self.refusal(self.holder() or {})
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # removed by its holder's release after we opened it: open the new one
                filelock.unlock_descriptor(fd)
                os.close(fd)
                continue
            holder = _read_record(fd)
            if self._other_host(holder):
                filelock.unlock_descriptor(fd)
                os.close(fd)
                raise self.refusal(holder, held=False)
            self.taken_over = holder if holder.get("pid") is not None else None
            job = os.environ.get("TORCHELASTIC_RUN_ID")
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                 **({"torchrun_job": job} if job else {})}) + "\n"
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, record.encode())
            self.fd, self.held = fd, True
            return self
        raise self.refusal(self.holder() or {})

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = self.holder()
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)  # before the OS lock goes: a waiter then sees a new file
        filelock.unlock_descriptor(self.fd)
        os.close(self.fd)
        self.fd = None
        if self.created_folder:
            try:
                self.folder.rmdir()  # only when empty: nothing was written
            except OSError:
                pass

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_record(fd: int) -> dict:
    """The JSON record of an open lock file ({} when empty or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 1 << 16).decode())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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
        probe = hidden_sibling(target / "cgnet-write-test", "probe")
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


# ---- archives ----------------------------------------------------------------------------------

class ArchiveError(CGNetError):
    """An archive that cannot be unpacked: unreadable, an unsafe member name, or larger unpacked
    than the limit."""


class ArchiveTooLarge(ArchiveError):
    """An archive whose files add up to more bytes unpacked than the limit."""


def unsafe_member(name: str) -> bool:
    """Whether an archive member's name would land outside the folder it is unpacked into: an
    absolute path (`/x`, `C:/x`) or a `..` part."""
    posix = name.replace("\\", "/")
    drive = len(posix) > 1 and posix[1] == ":"
    return posix.startswith("/") or drive or ".." in posix.split("/")


def free_space(folder: Path) -> int:
    """Free bytes on the file system of `folder` (or of its nearest existing parent)."""
    for candidate in [folder, *folder.parents]:
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return shutil.disk_usage(".").free


def _archive_files(archive: Path, name: str) -> tuple[str, list[tuple[str, int, object]]]:
    """('zip' or 'tar', [(member name, uncompressed size, member)]) of the regular files."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            return "zip", [(i.filename, i.file_size, i) for i in zf.infolist() if not i.is_dir()]
    try:
        with tarfile.open(archive) as tar:
            return "tar", [(m.name, m.size, m) for m in tar.getmembers() if m.isfile()]
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise ArchiveError(f"{name}: not a readable zip or tar archive ({e})") from None


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike, *,
                    select: Callable[[str], str | None] | None = None, limit: int | None = None,
                    name: str | None = None) -> list[str]:
    """Unpack the regular files of a zip or tar archive (any compression tarfile reads) into
    `dest`; the one archive extractor of cgnet (imports, the CamVid download, the in-browser
    runtime).

    Before anything is written, every member name is checked (none may be absolute or contain
    `..`, skipped members included) and the total uncompressed size of the files to write is
    compared with `limit`: an archive that would unpack to more is refused (a zip bomb, or an
    archive the disk cannot hold). Sizes come from the archive's directory; zipfile and tarfile
    never read more than a member's recorded size. Links and special files are not unpacked.

    Args:
        archive: the .zip or tar file.
        dest: an existing folder to unpack into.
        select: member name -> the relative path to write it to, or None to skip it (default:
            every file under its own name).
        limit: the most bytes to unpack (default: the free space of `dest`'s file system).
        name: what to call the archive in messages (default: its path; e.g. the URL it came from).
    Returns:
        the relative paths written, in archive order.
    Raises:
        ArchiveError: unreadable, an unsafe member name, or over the limit (nothing written).
    """
    archive, dest, name = Path(archive), Path(dest), name or str(archive)
    kind, files = _archive_files(archive, name)
    chosen = []
    for member_name, size, member in files:
        target = select(member_name) if select is not None else member_name
        if unsafe_member(member_name) or (target is not None and unsafe_member(target)):
            raise ArchiveError(f"{name}: unsafe member path {member_name!r} (absolute or with '..'); "
                               "refusing to unpack")
        if target is not None:
            chosen.append((target, size, member))
    total = sum(size for _, size, _ in chosen)
    allowed = free_space(dest) if limit is None else limit
    if total > allowed:
        why = "the free space where it unpacks" if limit is None else "the limit given"
        raise ArchiveTooLarge(f"{name}: unpacks to {total:,} bytes, more than {allowed:,} ({why}); "
                           "refusing to unpack")
    try:
        opened = zipfile.ZipFile(archive) if kind == "zip" else tarfile.open(archive)
        with opened:
            for target, _, member in chosen:
                out = dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                source = opened.open(member) if kind == "zip" else opened.extractfile(member)
                with source, open(out, "wb") as f:
                    shutil.copyfileobj(source, f, 1 << 20)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise ArchiveError(f"{name}: the archive is corrupt ({e})") from None
    return [target for target, _, _ in chosen]
