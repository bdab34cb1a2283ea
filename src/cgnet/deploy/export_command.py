"""`cgnet export`: its options and its function. A format of the formats table is written by
`export.py`; `--format web`, a static folder whose page runs the model in the browser, by `web.py`,
which builds on export's ONNX file (so this module sits above both)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import load_model
from ..common import DEFAULT_WEIGHTS, InputError, parse_size
from ..fileio import check_writable
from ..options import add_checkpoint_arg, add_data_root_arg, add_precision_arg
from .export import check_request, export
from .formats import FORMATS, writable_formats
from .web import cmd_export_web


def add_export_args(p: argparse.ArgumentParser) -> None:
    add_checkpoint_arg(p)
    p.add_argument("--format", required=True, choices=[*writable_formats(), "web"],
                   help="; ".join(f"{name}: {FORMATS[name].suffix} for {FORMATS[name].title}"
                                  for name in writable_formats())
                   + "; web: a static folder (--out) whose page runs the model in the browser")
    add_precision_arg(p, sorted({precision for f in FORMATS.values() for precision in f.precisions}),
                      default="fp32", why="every format writes it, and it needs no calibration",
                      note="; ".join(f"{name}: {', '.join(FORMATS[name].precisions)}" for name in writable_formats()))
    p.add_argument("--out", help="output file (default: cgnet_<dataset>_<precision>.<ext>)")
    add_data_root_arg(p, use="frames to verify (and calibrate int8) on, or a folder of images; without one, "
                             "synthetic frames (int8 needs real training data)")
    p.add_argument("--size", type=parse_size, metavar="HxW",
                   help="fixed-size formats (" + ", ".join(n for n in writable_formats() if FORMATS[n].fixed_size)
                        + "): the input size (default 360x480, CamVid's frames)")
    p.add_argument("--app-io", action="store_true",
                   help="an app-ready file (" + ", ".join(n for n in writable_formats() if FORMATS[n].load_app)
                        + "): H x W x 3 uint8 RGB in, H x W uint8 class ids out, the preprocessing and the "
                          "argmax inside")
    p.add_argument("--prelu-as-max", action=argparse.BooleanOptionalAction, default=None,
                   help="write PReLU as max(x, a*x) (default: when every slope is <= 1, where it is exact)")


def cmd_export(args: argparse.Namespace) -> int:
    """`cgnet export`: a file of the formats table, or with --format web the static site."""
    if args.format == "web":
        if args.size or args.app_io:
            raise InputError("--size and --app-io are for the phone formats, not --format web (the page takes any size)")
        return cmd_export_web(args)
    entry = check_request(args.format, args.precision, args.out)
    entry.writer_options(args.size, args.app_io)  # refused before anything is loaded
    model = load_model(args.checkpoint or DEFAULT_WEIGHTS)
    kind = "_app" if args.app_io else ""
    out = Path(args.out or f"cgnet_{model.meta.get('dataset') or 'model'}_{args.precision}{kind}{entry.suffix}")
    check_writable(out, "--out", folder=False)
    path = export(model, out, args.format, args.precision, data_root=args.data_root, prelu_as_max=args.prelu_as_max,
                  size=args.size, app_io=args.app_io)
    print("wrote " + " and ".join(map(str, entry.files(path))))
    return 0
