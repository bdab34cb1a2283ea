"""The page's in-browser mode: CGNet run by onnxruntime-web (WebAssembly; WebGPU where the browser
has it) from the exported ONNX file, written as a static folder (`cgnet export --format web`) or
served by `cgnet serve` (its routes: `cgnet.deploy.serve.browser`).

The runtime is not vendored: the pinned `onnxruntime-web` npm tarball is downloaded once from the
npm registry (`cgnet.download.fetch`, no npm needed), checked against the sha512 integrity hash pinned here, and
only the files the page loads are kept in the cgnet cache folder (`cache_dir()`):

    ort.wasm.min.js + ort-wasm-simd-threaded.{mjs,wasm}                    WebAssembly only
    ort.webgpu.min.js + ort-wasm-simd-threaded.asyncify.{mjs,wasm}         WebGPU, else WebAssembly
    LICENSE                                                                 the runtime's licence

A browser loads one of the two sets (WebGPU when `navigator.gpu` gives an adapter). The page gets
the model's classes, palette and preprocessing as JSON (`page_meta`), read from the checkpoint or
from the metadata an exported ONNX file carries (`cgnet export` stores it under the key "cgnet").

A static folder (`write_site`) holds the same files beside the page: index.html, its JS modules
(app.js and the modules it imports), style.css, model.json, model.onnx, ort/.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

from ..checkpoint import load_model
from ..common import DEFAULT_WEIGHTS, CGNetError, InputError, MissingFileError, cache_dir
from ..download import DownloadError, fetch, file_digest
from ..fileio import ArchiveError, check_writable, extract_archive, staged_folder
from ..visualize import palette_of
from .predictor import cached_export
from .formats import FORMATS, format_of, read_exported_meta

STATIC = Path(__file__).resolve().parent / "serve_static"
PAGE_FILES = ("index.html", "app.js", "common.js", "server.js", "browser.js", "camera.js", "style.css")

# the pinned runtime: `npm view onnxruntime-web@1.30.0 dist` (tarball, integrity)
ORT_VERSION = "1.30.0"
ORT_TARBALL = f"https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-{ORT_VERSION}.tgz"
ORT_INTEGRITY = "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
# what the page loads: per bundle, the JS (a classic script defining `ort`) and the wasm it needs
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
             "ort.webgpu.min.js", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")
# the npm package declares "license": "MIT" and ships no licence file; this is the text of the
# LICENSE of github.com/microsoft/onnxruntime, which the package's README points to
ORT_LICENSE = """onnxruntime-web {version} (https://www.npmjs.com/package/onnxruntime-web), from
https://github.com/microsoft/onnxruntime; its package.json declares the MIT licence:

MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""
# what makes a page cross-origin isolated, so that WebAssembly threads (SharedArrayBuffer) work
ISOLATION_HEADERS = {"cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp",
                     "cross-origin-resource-policy": "same-origin"}


class RuntimeDownloadError(CGNetError):
    """The runtime could not be downloaded, or what came is not the pinned tarball."""


# ---- the runtime -------------------------------------------------------------------------------

def integrity_of(data: bytes | Path) -> str:
    """The npm (subresource-integrity) form of the sha512 of `data` (bytes, or a file's): 'sha512-<base64>'."""
    digest = file_digest(data, "sha512") if isinstance(data, Path) else hashlib.sha512(data)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def check_integrity(data: bytes | Path, expected: str, source: str) -> None:
    """Raise RuntimeDownloadError unless `data` has the integrity hash `expected`.

    Args:
        data: the downloaded bytes, or the file that holds them.
        expected: 'sha512-<base64>', as `npm view PACKAGE dist.integrity` prints it.
        source: where the bytes came from, for the message.
    """
    found = integrity_of(data)
    if found != expected:
        raise RuntimeDownloadError(f"{source}: integrity check failed (sha512 is {found}, expected {expected}); "
                                   f"the download is corrupt or was tampered with, and was not used")


def runtime_dir(cache: str | os.PathLike | None = None) -> Path:
    """Where the runtime's files are kept: <cache>/onnxruntime-web-<version>."""
    return cache_dir(cache) / f"onnxruntime-web-{ORT_VERSION}"


def fetch_runtime(cache: str | os.PathLike | None = None, *, url: str = ORT_TARBALL, integrity: str = ORT_INTEGRITY,
                  log=None) -> Path:
    """The folder with the runtime's files (`ORT_FILES` and LICENSE), downloaded and checked once.

    The tarball is downloaded (`cgnet.download.fetch`: resumed when cut short) into
    `<cache>/.onnxruntime-web-<version>.tgz.part`, its sha512 checked against `integrity`, and the
    needed files extracted into a staged folder (`cgnet.fileio.staged_folder`) that is renamed into
    the cache when complete; a failed or interrupted download leaves nothing that looks finished,
    and a tarball that fails a check is deleted.

    Args:
        cache: the cache folder (default $CGNET_CACHE or ~/.cache/cgnet).
        url: the tarball (https://, or file:// for a copy at hand).
        integrity: its pinned 'sha512-<base64>' hash.
        log: where a progress line goes (None: nowhere).

    Returns:
        The folder (`runtime_dir(cache)`).
    """
    folder = runtime_dir(cache)
    if all((folder / name).is_file() for name in (*ORT_FILES, "LICENSE")):
        return folder
    if log:
        log(f"downloading onnxruntime-web {ORT_VERSION} (33 MB, once) from {url}")
    part = folder.with_name(f".{folder.name}.tgz.part")
    try:
        fetch(url, part, progress=False)
    except DownloadError as error:
        raise RuntimeDownloadError(f"cannot download onnxruntime-web {ORT_VERSION} from {url} ({error.reason}); the "
                                   f"in-browser mode needs it once (it is then kept in {folder})") from None
    try:
        check_integrity(part, integrity, url)
        # replace: an incomplete folder from before the checks existed
        with staged_folder(folder, replace=True) as staging:
            _extract_runtime(part, staging, url)
    finally:
        part.unlink(missing_ok=True)
    return folder


def _extract_runtime(tarball: Path, dest: Path, url: str) -> None:
    """`ORT_FILES` from the npm tarball's package/dist/ into dest, and the LICENSE."""
    wanted = {f"package/dist/{name}": name for name in ORT_FILES}
    try:
        written = extract_archive(tarball, dest, select=wanted.get, name=url)
    except ArchiveError as error:
        raise RuntimeDownloadError(str(error)) from None
    for name in ORT_FILES:
        if name not in written:
            raise RuntimeDownloadError(f"{url}: package/dist/{name} is not a file in the tarball")
    (dest / "LICENSE").write_text(ORT_LICENSE.format(version=ORT_VERSION))


# ---- the model ---------------------------------------------------------------------------------

def class_names(meta: dict) -> list[str]:
    """The class names, padded with 'class<i>' up to the model's number of classes."""
    names = [str(n) for n in meta.get("classes") or []]
    count = int((meta.get("arch") or {}).get("num_classes") or len(names))
    return names + [f"class{i}" for i in range(len(names), count)]


def page_meta(meta: dict, name: str) -> dict:
    """What the page needs of a model, as JSON: classes, palette, preprocessing spec.

    Args:
        meta: the checkpoint's metadata (or the one an exported file carries).
        name: what the page calls the model.
    """
    if meta.get("preprocess") is None:
        raise InputError(f"{name}: the model stores no preprocessing; the in-browser mode needs it")
    classes = class_names(meta)
    palette = palette_of(meta)
    return {"model": name, "dataset": meta.get("dataset"), "classes": classes,
            "palette": [[int(v) for v in palette[i]] for i in range(min(len(palette), 256))],
            "preprocess": meta["preprocess"], "precision": meta.get("export_precision", "fp32"),
            "runtime": {"name": "onnxruntime-web", "version": ORT_VERSION}}


def model_onnx(source: str | os.PathLike, cache: str | os.PathLike | None = None,
               data_root: str | os.PathLike | None = None, log=None) -> tuple[Path, dict]:
    """The ONNX file the browser runs and its metadata: `source` itself when it is an .onnx file
    written by `cgnet export`, else the checkpoint's fp32 export (made once into the cache,
    verified against PyTorch: `cached_export`)."""
    path = Path(source)
    fmt = format_of(path)
    if fmt is not None and fmt is not FORMATS["onnx"]:
        raise InputError(f"{source}: the in-browser mode runs ONNX files, not {fmt.title}; give a checkpoint "
                         f"or an {FORMATS['onnx'].suffix} file")
    if fmt is not None:
        if not path.is_file():
            raise MissingFileError(f"{source}: no such file")
        return path, read_exported_meta(path, fmt)
    model = load_model(source)
    if model.meta.get("preprocess") is None:
        raise InputError(f"{source}: the checkpoint stores no preprocessing; the in-browser mode needs it")
    return cached_export(model, source, "onnx", "fp32", cache, data_root, log), model.meta


# ---- a static folder ---------------------------------------------------------------------------

def static_page(html: str) -> str:
    """index.html as the static folder serves it: assets beside it, no server to ask."""
    return (html.replace('"/static/', '"./')
                .replace('<html lang="en">', '<html lang="en" data-site="static" data-web-base="./">', 1))


def write_site(source: str | os.PathLike, out_dir: str | os.PathLike, *, cache: str | os.PathLike | None = None,
               data_root: str | os.PathLike | None = None, runtime_url: str = ORT_TARBALL, log=print) -> Path:
    """Write the page as a static folder that runs the model in the browser.

    out_dir gets the page (`PAGE_FILES`), model.onnx, model.json (`page_meta`) and ort/
    (the runtime's files and LICENSE). It is written into a staged folder beside out_dir and
    renamed when complete (`cgnet.fileio.staged_folder`). The host must send the COOP/COEP
    headers (`ISOLATION_HEADERS`) for WebAssembly threads; without them the page runs on one thread.

    Args:
        source: a checkpoint, the name of shipped weights ('camvid') or an .onnx file written by
            `cgnet export`.
        out_dir: the folder to write; it must not exist or be empty.
        cache: the cgnet cache folder (exports and the runtime; default $CGNET_CACHE or ~/.cache/cgnet).
        data_root: frames to verify a fresh export on (see `cached_export`).
        runtime_url: where the runtime's tarball is downloaded from (checked against `ORT_INTEGRITY`).
        log: where progress lines go.

    Returns:
        out_dir.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out}: exists and is not an empty folder; give a new folder for the site")
    onnx_path, meta = model_onnx(source, cache, data_root, log)
    info = page_meta(meta, Path(str(source)).name)
    runtime = fetch_runtime(cache, url=runtime_url, log=log)
    with staged_folder(out) as tmp:
        (tmp / "index.html").write_text(static_page((STATIC / "index.html").read_text()))
        for name in PAGE_FILES[1:]:
            shutil.copyfile(STATIC / name, tmp / name)
        shutil.copyfile(onnx_path, tmp / "model.onnx")
        (tmp / "model.json").write_text(json.dumps(info, indent=1))
        (tmp / "ort").mkdir()
        for name in (*ORT_FILES, "LICENSE"):
            shutil.copyfile(runtime / name, tmp / "ort" / name)
    return out


def cmd_export_web(args: argparse.Namespace) -> int:
    """`cgnet export --format web --out FOLDER` (fp32 only)."""
    if args.precision != "fp32":
        raise InputError(f"--format web runs fp32 in the browser, not --precision {args.precision}")
    if not args.out:
        raise InputError("--format web needs --out FOLDER (a new folder for the site)")
    check_writable(Path(args.out).absolute().parent, "--out")
    out = write_site(args.checkpoint or DEFAULT_WEIGHTS, args.out, data_root=args.data_root)
    print(f"wrote {out}: serve it over HTTPS (or on localhost) with the headers Cross-Origin-Opener-Policy: "
          f"same-origin and Cross-Origin-Embedder-Policy: require-corp")
    return 0
