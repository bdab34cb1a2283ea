"""The weights catalogue: every named set of CGNet weights cgnet knows, where it comes from, how
well it was reported to do and by whom, and `weights_file(name)`, the file itself (shipped inside
the package, or downloaded once into the cache with cgnet's one downloader and checked).

A name works wherever a checkpoint path does (`cgnet predict/eval/export/serve/bench
--checkpoint NAME`, `cgnet train --init NAME`, `cgnet.load_model(NAME)`, torch.hub):
`cgnet.checkpoint.resolve_weights` asks this table. `cgnet weights list` prints it and
`cgnet weights get NAME` downloads one set ahead of time.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from .common import InputError, MissingFileError, cache_dir
from .download import DownloadError, fetch, file_digest

__all__ = ["WeightsEntry", "WEIGHTS", "weights_file", "weights_cache", "add_weights_args", "cmd_weights"]

MMSEG_DOWNLOADS = "https://download.openmmlab.com/mmsegmentation/v0.5/cgnet"


@dataclass(frozen=True)
class WeightsEntry:
    """One named set of weights.

    Args:
        name: what users type (`--checkpoint NAME`).
        dataset: what the weights were trained on.
        classes: how many classes the classifier has.
        input_size: the HxW the score was measured at.
        score: the score, with its metric and split ("64.05 test mIoU").
        reported_by: who measured the score: "measured here (...)" only for weights whose score a
            cgnet command measured; otherwise "reported by ..." with the source.
        licence: the weights' licence, as their publisher states it.
        file: the file's name: inside the package (`url` empty) or in the cache.
        url: where the file is downloaded from; empty for weights shipped in the package.
        sha256: the file's full SHA-256 where it is known ("" when not).
        hash_prefix: the first hex digits of the SHA-256 that mmsegmentation puts in its file names.
        provenance: how the weights were made (recipe, config, publisher).
        training: the command that trained them.
    """
    name: str
    dataset: str
    classes: int
    input_size: str
    score: str
    reported_by: str
    licence: str
    file: str
    url: str = ""
    sha256: str = ""
    hash_prefix: str = ""
    provenance: str = ""
    training: str = ""

    @property
    def shipped(self) -> bool:
        return not self.url


def _mmseg(name: str, config: str, stamp: str, prefix: str, score: str, crop: str, mmseg_config: str) -> WeightsEntry:
    file = f"{config}_{stamp}-{prefix}.pth"
    return WeightsEntry(
        name=name, dataset="cityscapes", classes=19, input_size="1024x2048",
        score=f"{score} val mIoU", reported_by="reported by mmsegmentation",
        licence="Apache-2.0", file=file, url=f"{MMSEG_DOWNLOADS}/{config}/{file}",
        hash_prefix=prefix,
        provenance=f"mmsegmentation's {config}: CGNet M3N21 with a 1x1 head (with bias), {crop} crops, 60k "
                   "iterations on Cityscapes train; scored on val whole images, single scale (its "
                   "configs/cgnet/README.md)",
        training=f"mmsegmentation: tools/dist_train.sh configs/cgnet/{mmseg_config} 4")


WEIGHTS: dict[str, WeightsEntry] = {e.name: e for e in [
    WeightsEntry(
        name="camvid", dataset="camvid", classes=11, input_size="360x480", score="65.33 test mIoU",
        reported_by="measured here (cgnet eval)", licence="MIT",
        file="camvid.pt", sha256="044f43bb79099301e727fb4646a927ce7e86d9bb01977d977e3da9e74ae7293d",
        provenance="the weights of cgnet train --preset camvid (378 epochs on an H200, 64.05) trained over the rest "
                   "of the paper's 800-epoch schedule (422 epochs) on a 2-core CPU against their own 6-scale + flip "
                   "predictions, weights averaged; shipped inside the package (docs/training.md, 'Distilling the "
                   "multi-scale teacher on the CPU')",
        training="cgnet soft-targets --checkpoint camvid-6405.pt --split trainval --out DIR, then cgnet train "
                 "--init camvid-6405.pt --teacher DIR --ema 0.999 --lr 5.6e-4 --epochs 422 --train-split trainval "
                 "(commit 0b32a6e; later parts cgnet train --resume --out RUN)"),
    _mmseg("cityscapes-mmseg", "cgnet_512x1024_60k_cityscapes", "20201101_110254", "124ea03b", "68.27", "512x1024",
           "cgnet_fcn_4xb8-60k_cityscapes-512x1024.py"),
    _mmseg("cityscapes-mmseg-680", "cgnet_680x680_60k_cityscapes", "20201101_110253", "4c0b2f2d", "65.63",
           "680x680", "cgnet_fcn_4xb4-60k_cityscapes-680x680.py"),
]}


def weights_cache(cache: str | os.PathLike | None = None) -> Path:
    """Where downloaded weights are kept: cache, else $CGNET_CACHE/weights, else ~/.cache/cgnet/weights."""
    if cache:
        return Path(cache)
    return cache_dir() / "weights"


def shipped_file(entry: WeightsEntry) -> Path:
    path = Path(__file__).resolve().parent / "weights" / entry.file
    if not path.is_file():
        raise MissingFileError(f"the shipped {entry.name} weights are missing from this installation ({path}); "
                         "reinstall cgnet or give a checkpoint path")
    return path


def check_digest(entry: WeightsEntry, path: Path) -> None:
    """The file's SHA-256 against the entry's prefix and full digest; DownloadError naming both."""
    digest = file_digest(path).hexdigest()
    if (entry.hash_prefix and not digest.startswith(entry.hash_prefix)) or (entry.sha256 and digest != entry.sha256):
        expected = entry.sha256 or f"{entry.hash_prefix}..."
        raise DownloadError(f"the {entry.name} weights from {entry.url} have SHA-256 {digest}, expected {expected}: "
                            "the download is not the published file (it was removed; run again)", "wrong SHA-256")


def weights_file(name: str, *, cache: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The file of the named weights: the package's own, or the cached download (downloaded now,
    resumably with a progress bar, and checked against the published SHA-256 when not cached).

    Args:
        name: a key of `WEIGHTS`.
        cache: the download folder (default `weights_cache()`).
        progress: show the download's progress bar on stderr.

    Raises:
        InputError: an unknown name. DownloadError: one line naming the URL and, when the server
            cannot be reached, the manual way (download the file, then give its path).
    """
    if name not in WEIGHTS:
        raise InputError(f"unknown weights {name!r}: known names are {', '.join(WEIGHTS)} (cgnet weights list)")
    entry = WEIGHTS[name]
    if entry.shipped:
        return shipped_file(entry)
    path = weights_cache(cache) / entry.file
    if path.is_file():
        return path
    part = path.with_name(path.name + ".part")
    fetch(entry.url, part, progress=progress, desc=entry.file,
          manual=f"download it by hand and give the file's path instead of '{name}'")
    try:
        check_digest(entry, part)
    except DownloadError:
        part.unlink()
        raise
    part.replace(path)
    return path


def format_table() -> str:
    """The catalogue as `cgnet weights list` prints it: one row per name, then where each comes from."""
    rows = [("name", "dataset", "classes", "input", "score", "reported by", "licence")]
    rows += [(e.name, e.dataset, str(e.classes), e.input_size, e.score, e.reported_by.removeprefix("reported by "),
              e.licence)
             for e in WEIGHTS.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.append("")
    for e in WEIGHTS.values():
        where = "shipped inside the package" if e.shipped else e.url
        digest = f"sha256 {e.sha256}" if e.sha256 else f"sha256 starts {e.hash_prefix} (full digest unpublished)"
        lines.append(f"{e.name}: {where}; {digest}")
    return "\n".join(lines)


def cmd_weights_list(args: argparse.Namespace) -> int:
    print(format_table())
    return 0


def cmd_weights_get(args: argparse.Namespace) -> int:
    print(weights_file(args.name, cache=args.cache))
    return 0


def add_weights_args(p: argparse.ArgumentParser) -> None:
    """`cgnet weights list` and `cgnet weights get NAME`, each with its function (`tool`)."""
    tools = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    q = tools.add_parser("list", help="every named set of weights: dataset, classes, score and who reported it, "
                                      "licence, URL")
    q.set_defaults(tool=cmd_weights_list)
    q = tools.add_parser("get", help="download named weights into the cache (checked against the published "
                                     "SHA-256) and print the file's path")
    q.add_argument("name", choices=list(WEIGHTS))
    q.add_argument("--cache", help="the download folder (default $CGNET_CACHE/weights or ~/.cache/cgnet/weights)")
    q.set_defaults(tool=cmd_weights_get)


def cmd_weights(args: argparse.Namespace) -> int:
    """`cgnet weights ACTION`: the action's function."""
    return args.tool(args)
