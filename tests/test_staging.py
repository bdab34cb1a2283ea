"""The shared file helpers of the downloads, imports and outputs: `fileio.staged_folder` (build
beside, rename into place, leave nothing on error), `fileio.remove_leftover_temp_files` (what
killed writers leave) and `download.fetch` (the one downloader)."""
from __future__ import annotations

import errno
import hashlib
import os
import signal
import socket
import subprocess
import sys

import pytest

from cgnet.common import CGNetError
from cgnet.download import DownloadError, fetch, file_digest
from cgnet.fileio import FolderExists, partial_name, remove_leftover_temp_files, staged_folder


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---- staged_folder --------------------------------------------------------------------------------

def test_success_renames_the_built_folder_into_place_and_creates_its_parents(tmp_path):
    target = tmp_path / "a" / "b" / "site"
    with staged_folder(target) as staging:
        assert staging.parent == target.parent and staging.name.startswith(".site.") and staging.is_dir()
        assert not target.exists()  # nobody sees a half-built folder
        (staging / "sub").mkdir()
        (staging / "sub" / "x.txt").write_text("x")
    assert listing(tmp_path) == ["a", "a/b", "a/b/site", "a/b/site/sub", "a/b/site/sub/x.txt"]
    assert (target / "sub" / "x.txt").read_text() == "x"
    assert oct(target.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("error", [ValueError("bad input"), KeyboardInterrupt()])
def test_an_error_leaves_nothing_not_even_the_parents_it_made(tmp_path, error):
    (tmp_path / "keep").mkdir()
    target = tmp_path / "keep" / "new" / "deeper" / "out"
    with pytest.raises(type(error)):
        with staged_folder(target) as staging:
            (staging / "half.txt").write_text("half")
            raise error
    assert listing(tmp_path) == ["keep"]  # the parent that existed stays, the two it made are gone


def test_an_empty_target_is_replaced_a_full_one_or_a_file_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_folder(empty) as staging:
        (staging / "a.txt").write_text("a")
    assert listing(empty) == ["a.txt"]

    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("mine")
    with pytest.raises(FolderExists) as raised:
        with staged_folder(full) as staging:
            (staging / "b.txt").write_text("b")
    assert str(raised.value) == f"{full} exists and is not empty; nothing was written to it"
    assert isinstance(raised.value, CGNetError) and isinstance(raised.value, FileExistsError)
    assert listing(full) == ["mine.txt"]

    a_file = tmp_path / "file"
    a_file.write_text("f")
    with pytest.raises(FolderExists, match="exists and is not a folder"):
        with staged_folder(a_file):
            pass
    assert a_file.read_text() == "f"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "full"]  # no staging folder left


def test_replace_swaps_a_folder_with_content(tmp_path):
    target = tmp_path / "cache" / "runtime"
    target.mkdir(parents=True)
    (target / "stale.js").write_text("old")
    with staged_folder(target, replace=True) as staging:
        (staging / "fresh.js").write_text("new")
    assert listing(target) == ["fresh.js"]
    assert listing(tmp_path) == ["cache", "cache/runtime", "cache/runtime/fresh.js"]


# ---- remove_leftover_temp_files -------------------------------------------------------------------

WRITER = """
import sys, time
from cgnet.fileio import atomic_open
writing = atomic_open(sys.argv[1])
f = writing.__enter__()
f.write(b"half a file")
f.flush()
print("writing", flush=True)
time.sleep(120)
"""


def killed_mid_write(target):
    """A process SIGKILLed inside `atomic_open` (no cleanup runs), and the pid it had."""
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "writing\n"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    return child.pid


def test_the_temporary_files_of_killed_writers_go_in_every_subfolder_and_live_writers_keep_theirs(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    (out / ".parts" / "clip").mkdir(parents=True)
    outside.mkdir()
    dead = killed_mid_write(out / "masks" / "img1.png")
    left = [p.name for p in (out / "masks").iterdir()]
    assert len(left) == 1 and left[0].startswith(f".img1.png.{dead}.") and left[0].endswith(".tmp")
    video = out / ".parts" / "clip" / f".clip_overlay.{dead}.0123abcd.partial.mp4"  # partial_name's form
    assert partial_name(out / "clip_overlay.mp4").name.endswith(".partial.mp4")
    video.write_bytes(b"")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        kept = [out / f".color.png.{live.pid}.89abcdef.tmp",   # a writer that still runs
                out / f".legend.png.{os.getpid()}.01234567.tmp",  # this process's own
                out / ".notes.tmp", out / f".x.{dead}.0123.tmp",  # not the helpers' names
                outside / f".y.png.{dead}.01234567.tmp"]        # behind a link to another folder
        for path in kept:
            path.write_bytes(b"")
        (out / "linked").symlink_to(outside, target_is_directory=True)
        assert remove_leftover_temp_files(out) == []  # not recursive: nothing at the top is a leftover
        removed = remove_leftover_temp_files(out, recursive=True)
        assert sorted(removed) == sorted([out / ".parts" / "clip" / video.name, out / "masks" / left[0]])
        assert not any(p.exists() for p in removed) and all(p.exists() for p in kept)
        assert remove_leftover_temp_files(out, recursive=True) == []
    finally:
        live.kill()
        live.wait(timeout=30)


# ---- fetch ----------------------------------------------------------------------------------------

def test_fetch_a_file_url_and_its_digest(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(bytes(range(256)) * 4000)
    part = tmp_path / "downloads" / ".x.part"
    assert fetch(source.as_uri(), part, progress=False) == part
    assert part.read_bytes() == source.read_bytes()

    assert file_digest(part).hexdigest() == hashlib.sha256(source.read_bytes()).hexdigest()
    assert file_digest(part, "sha512").digest() == hashlib.sha512(source.read_bytes()).digest()


def test_fetch_errors_are_one_line_with_a_short_reason(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.zip"
    part = tmp_path / "d" / "x.part"
    with pytest.raises(DownloadError) as raised:
        fetch(url, part, progress=False, manual="get it by hand")
    refused = os.strerror(errno.ECONNREFUSED)
    assert str(raised.value) == f"could not reach {url} ({refused}); get it by hand"
    assert raised.value.reason == refused
    assert not (tmp_path / "d").exists()  # nothing written, not even the folder

    missing = (tmp_path / "nope.bin").as_uri()
    with pytest.raises(DownloadError) as raised:
        fetch(missing, part, progress=False)
    assert str(raised.value).startswith(f"could not reach {missing} (") and "\n" not in str(raised.value)
    assert not (tmp_path / "d").exists()
