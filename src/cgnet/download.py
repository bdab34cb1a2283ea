"""The one downloader: a URL fetched into a `.part` file that survives interruptions and resumes
with an HTTP Range request, with a bytes-and-rate progress bar and one-line errors. The CamVid
download (`data/camvid.py`) and the in-browser runtime (`deploy/web.py`) both use it; what they do
with the file (checksums, extraction into a staged folder) stays theirs."""
from __future__ import annotations

import hashlib
import re
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from .common import CGNetError

CHUNK = 1 << 20


class DownloadError(CGNetError, RuntimeError):
    """A file could not be fetched, read or verified (a RuntimeError too, as before 0.3).

    `reason` is the short why ('Connection refused', 'HTTP 404 Not Found') for callers that word
    the message themselves."""

    def __init__(self, message: str = "", reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


def one_line_reason(error: BaseException) -> str:
    """A one-line reason: 'Connection refused' rather than '<urlopen error [Errno 111] ...>'."""
    reason = getattr(error, "reason", error)
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return " ".join(text.split())


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """(first byte, total or None) of a `bytes FIRST-LAST/TOTAL` header, or None when malformed."""
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (value or "").strip())
    if m is None:
        return None
    return int(m[1]), None if m[3] == "*" else int(m[3])


def _unsatisfied_total(value: str | None) -> int | None:
    """The total of a 416 answer's `bytes */TOTAL` header, or None."""
    m = re.fullmatch(r"bytes \*/(\d+)", (value or "").strip())
    return int(m[1]) if m else None


def fetch(url: str, part: str | Path, *, progress: bool = True, timeout: float = 60, desc: str = "download",
          manual: str = "") -> Path:
    """Download url into `part`, asking for the rest (HTTP Range) when part holds a partial download.

    A 206 answer whose Content-Range starts where part ends is appended; a 200 answer (Range
    ignored), a 416 or any other Content-Range starts again from byte 0. A 416 saying that the
    total is exactly what part holds means the download was already complete. file:// URLs work
    too (read from byte 0). A part file left empty is removed (nothing to resume from).

    Args:
        url: what to fetch (http, https or file).
        part: the file to write; its folder is created.
        progress: a progress bar (bytes and rate) on stderr, titled `desc`.
        timeout: seconds to wait for the server, per connection attempt and per read.
        manual: appended to the message when the server cannot be reached at all (how to get
            the file by hand).
    Returns:
        part, complete.
    Raises:
        DownloadError: one line naming the URL: unreachable (with `manual`), an HTTP error, or a
            transfer cut short (run again to resume).
    """
    part = Path(part)
    try:
        _fetch(url, part, progress, timeout, desc, manual)
    finally:
        if part.is_file() and not part.stat().st_size:
            part.unlink()
    return part


def _fetch(url: str, part: Path, progress: bool, timeout: float, desc: str, manual: str) -> None:
    for _ in range(2):  # the second round starts from byte 0
        offset = part.stat().st_size if part.is_file() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            resp = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416 and offset:
                if _unsatisfied_total(e.headers.get("Content-Range")) == offset:
                    return  # every byte is already here (interrupted after the transfer)
                part.unlink()
                continue
            reason = f"HTTP {e.code} {e.reason}"
            raise DownloadError(f"download of {url} failed: {reason}", reason) from e
        except (urllib.error.URLError, OSError, HTTPException) as e:  # refused, DNS, timeout, no such file
            reason = one_line_reason(e)
            raise DownloadError(f"could not reach {url} ({reason})" + (f"; {manual}" if manual else ""),
                                reason) from e
        with resp:
            start, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            # GitHub archives are often sent without Content-Length: then the bar only counts bytes
            total = int(length) if length and length.isdigit() else None
            if getattr(resp, "status", None) == 206:
                crange = _content_range(resp.headers.get("Content-Range"))
                if crange is None or crange[0] != offset:
                    part.unlink(missing_ok=True)
                    continue
                start, total, mode = offset, crange[1], "ab"
            _stream(resp, url, part, mode, start, total, progress, desc)
            return
    raise DownloadError(f"{url} answered a download from byte 0 with a wrong Content-Range",
                        "a wrong Content-Range")


def _stream(resp, url: str, part: Path, mode: str, start: int, total: int | None, progress: bool,
            desc: str) -> None:
    """Copy the response body into part (mode 'wb' or 'ab'), with a bytes and rate progress bar."""
    done = start
    part.parent.mkdir(parents=True, exist_ok=True)
    with open(part, mode) as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                     unit_divisor=1024, desc=desc, disable=not progress) as bar:
        while True:
            try:
                chunk = resp.read(CHUNK)
            except (OSError, HTTPException) as e:  # timeouts and dropped connections mid-stream
                reason = f"cut short after {done} bytes ({one_line_reason(e)})"
                raise DownloadError(f"download of {url} was {reason}; run the same command again to resume",
                                    reason) from e
            if not chunk:
                break
            f.write(chunk)
            done += len(chunk)
            bar.update(len(chunk))
    if total is not None and done != total:
        reason = f"cut short at {done} of {total} bytes"
        raise DownloadError(f"download of {url} was {reason}; run the same command again to resume", reason)


def file_digest(path: str | Path, algorithm: str = "sha256"):
    """The hashlib digest object of a file's bytes (read in chunks), e.g. `.hexdigest()`."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm)
