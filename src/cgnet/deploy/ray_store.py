"""Files for `cgnet predict --engine ray`, local or in an object store, through pyarrow's
filesystems: `s3://bucket/key` (and the other URIs `pyarrow.fs.FileSystem.from_uri` knows, with
credentials and endpoint from the usual environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL), or a plain local path.

The inputs are listed as local `cgnet predict` lists them (`predict.collect_inputs`: files, folders
and glob patterns, each once, in order) and get the same output names (`predict.output_names`).
Writes are whole-file: a local file appears under its name only when complete (`fileio`), an
object in a store only when its upload completes, so a killed job never leaves a half-written
output that a re-run would take for finished.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..common import IMAGE_EXTS, VIDEO_EXTS, InputError, MissingFileError
from ..fileio import write_atomic
from ..images import encode_image, write_image
from .predict import collect_inputs, output_names


def is_uri(text: str) -> bool:
    """Whether an input or --out names an object store (`s3://...`) rather than a local path."""
    return "://" in text and not text.startswith("file://")


def open_fs(location: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI. A local path is made
    absolute, so that Ray workers on this machine find it from any working directory."""
    from pyarrow import fs
    if is_uri(location):
        try:
            return fs.FileSystem.from_uri(location)
        except Exception as error:  # noqa: BLE001 - pyarrow's errors are ArrowInvalid, OSError, ...
            raise InputError(f"{location}: {str(error).splitlines()[0]}") from None
    return fs.LocalFileSystem(), os.path.abspath(location.removeprefix("file://"))


def to_uri(filesystem, path: str) -> str:
    """The location a worker reopens with `open_fs`: the URI for an object store, else the path."""
    if filesystem.type_name == "local":
        return path
    return f"{filesystem.type_name}://{path}"


@dataclass(frozen=True)
class Source:
    """One input file: where it is and the output name it gets (as local predict names it)."""
    uri: str
    name: str


def _naming_path(uri: str) -> Path:
    """A local path `output_names` can take for an input: the file itself, or for an object
    store its key under a root (so colliding stems get the name of their parent folder)."""
    if is_uri(uri):
        return Path("/", uri.split("://", 1)[1])
    return Path(uri)


def _kind(path: str) -> str | None:
    suffix = PurePosixPath(path).suffix.lower()
    return "image" if suffix in IMAGE_EXTS else "video" if suffix in VIDEO_EXTS else None


def _listing(filesystem, folder: str, recursive: bool) -> list[str]:
    from pyarrow import fs
    infos = filesystem.get_file_info(fs.FileSelector(folder, recursive=recursive, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == fs.FileType.File)


def _remote_matches(text: str) -> list[tuple[str, bool]]:
    """The object-store files one input names, each with whether it was named explicitly."""
    from pyarrow import fs
    filesystem, path = open_fs(text)
    if any(c in path for c in "*?["):
        parts = PurePosixPath(path).parts
        fixed = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
        found = [p for p in _listing(filesystem, str(PurePosixPath(*parts[:fixed])), recursive=True)
                 if fnmatch.fnmatchcase(p, path) or fnmatch.fnmatchcase(p, path.replace("**/", ""))]
        if not found:
            raise MissingFileError(f"{text}: no files match this pattern")
        return [(to_uri(filesystem, p), False) for p in found]
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.File:
        return [(to_uri(filesystem, path), True)]
    found = [p for p in _listing(filesystem, path, recursive=False) if _kind(p) == "image"]
    if info.type == fs.FileType.NotFound and not found:
        raise MissingFileError(f"{text}: no such file or folder")
    if not found:
        raise MissingFileError(f"{text}: no images ({' '.join(IMAGE_EXTS)}) in this folder")
    return [(to_uri(filesystem, p), False) for p in found]


def gather_inputs(inputs: list[str]) -> tuple[list[Source], list[Source]]:
    """The images and videos `inputs` name (local files, folders, globs; object-store keys,
    prefixes and globs), in order, each once, named as local predict names them."""
    local = [text for text in inputs if not is_uri(text)]
    images: list[str] = []
    videos: list[str] = []
    if local:
        found_images, found_videos = collect_inputs(local)
        images += [str(p.resolve()) for p in found_images]
        videos += [str(p.resolve()) for p in found_videos]
    for text in (t for t in inputs if is_uri(t)):
        for uri, explicit in _remote_matches(text):
            kind = _kind(uri)
            if kind is None and explicit:
                raise InputError(f"{uri}: not a supported image ({' '.join(IMAGE_EXTS)}) "
                                 f"or video ({' '.join(VIDEO_EXTS)})")
            target = images if kind == "image" else videos if kind == "video" else None
            if target is not None and uri not in target:
                target.append(uri)

    def named(uris: list[str]) -> list[Source]:
        return [Source(u, n) for u, n in zip(uris, output_names([_naming_path(u) for u in uris]))]
    return named(images), named(videos)


def read_path(filesystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as f:
        return f.read()


def read_bytes(uri: str) -> bytes:
    return read_path(*open_fs(uri))


def put_bytes(filesystem, path: str, data: bytes) -> None:
    """Write a whole file: locally under a temporary name renamed when complete; in an object
    store as one upload, visible when it completes."""
    if filesystem.type_name == "local":
        write_atomic(path, data)
        return
    with filesystem.open_output_stream(path) as f:
        f.write(data)


def put_image(filesystem, path: str, image) -> None:
    """Write an image as its suffix says: locally by the one checked image writer
    (`images.write_image`, atomic: a re-run takes a present file for finished), in an object store
    as one upload of the same bytes (`images.encode_image`)."""
    if filesystem.type_name == "local":
        write_image(path, image, atomic=True)
        return
    put_bytes(filesystem, path, encode_image(path, image))


def names_in(filesystem, folder: str) -> set[str]:
    """The file names directly in a folder (none when it does not exist)."""
    return {PurePosixPath(p).name for p in _listing(filesystem, folder, recursive=False)}


def local_copy(uri: str, folder: str) -> str:
    """A local path to read a file from: the file itself, or an object downloaded into `folder`."""
    if not is_uri(uri):
        return uri
    target = os.path.join(folder, hashlib.sha256(uri.encode()).hexdigest()[:16] + PurePosixPath(uri).suffix)
    if not os.path.exists(target):
        write_atomic(target, read_bytes(uri))
    return target


def upload_file(local: str, filesystem, path: str) -> None:
    """Move a finished local file to its place: a rename on the local filesystem, else an upload."""
    if filesystem.type_name == "local":
        os.replace(local, path)
        return
    with open(local, "rb") as src, filesystem.open_output_stream(path) as dst:
        while chunk := src.read(1 << 22):
            dst.write(chunk)
