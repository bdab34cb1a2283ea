"""The `cgnet` command line: one subcommand per job, each a plain function."""
from __future__ import annotations

import argparse
import sys

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
    g.add_argument("--m", type=int, default=3, help="blocks in stage 2 (default 3)")
    g.add_argument("--n", type=int, default=21, help="blocks in stage 3 (default 21)")


def build_model(args: argparse.Namespace):
    from .checkpoint import load_model
    from .model import CGNet
    if args.checkpoint:
        return load_model(args.checkpoint, num_classes=args.num_classes)
    return CGNet(args.num_classes if args.num_classes is not None else 19, m=args.m, n=args.n).eval()


def cmd_info(args: argparse.Namespace) -> int:
    from .profile import profile_table
    model = build_model(args)
    for i, (h, w) in enumerate(args.size):
        if i:
            print()
        print(profile_table(model, h, w, activations=args.activations))
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
    return parser


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"cgnet {args.command}: error: {e}", file=sys.stderr)
        return 2
