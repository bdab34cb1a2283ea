"""The `cgnet` command line: the top layer. Each command's function lives in the module of its
concern (`cgnet.engine.train.main`, `cgnet.deploy.predict.cmd_predict`, ...); this file wires them."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from pathlib import Path

from . import __version__
from .checkpoint import load_model
from .common import CGNetError, InputError, inductor_cache_per_capability, number_type, parse_size
from .complexity import profile_table
from .data.commands import add_data_commands
from .deploy.bench import add_bench_args, cmd_bench
from .deploy.export import add_export_args, cmd_export
from .deploy.predict import add_predict_args
from .deploy.ray_predict import add_engine_args, cmd_predict_engine
from .deploy.serve import add_serve_args, cmd_serve
from .deploy.web import cmd_export_web
from .engine import commands as eval_commands, train
from .engine.config import add_train_args
from .engine.commands import add_demo_args, add_eval_args
from .model import CGNet
from .plot import plot_compare, plot_run


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (a checkpoint, or an architecture with random weights)")
    g.add_argument("--checkpoint", help="our checkpoint or one of the original release's")
    g.add_argument("--num-classes", type=number_type(int, minimum=1), help="classes (19 for Cityscapes, 11 for CamVid)")
    g.add_argument("--blocks", type=int, nargs=2, default=[3, 21], metavar=("M", "N"),
                   help="blocks in stages 2 and 3 (default 3 21)")


def cmd_info(args: argparse.Namespace) -> int:
    if args.checkpoint:
        model = load_model(args.checkpoint, num_classes=args.num_classes)
    else:
        m, n = args.blocks
        model = CGNet(args.num_classes if args.num_classes is not None else 19, m=m, n=n).eval()
    for i, (h, w) in enumerate(args.size):
        if i:
            print()
        print(profile_table(model, h, w, activations=args.activations))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    if len(args.run) > 1 or args.out:
        print(plot_compare([Path(r) for r in args.run], Path(args.out or "compare.png")))
        return 0
    for x in ("epoch", "elapsed_s"):
        print(plot_run(Path(args.run[0]), x=x))
    return 0


def export_command(args: argparse.Namespace) -> int:
    """`cgnet export`: a file of the formats table (cgnet.deploy.export), or with --format web a
    static folder whose page runs the model in the browser (cgnet.deploy.web, which builds on
    export's ONNX file and so sits above it)."""
    if args.format == "web" and (args.size or args.app_io):
        raise InputError("--size and --app-io are for the phone formats, not --format web (the page takes any size)")
    return cmd_export_web(args) if args.format == "web" else cmd_export(args)


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

    commands = [
        ("train", "train (a paper preset or your own settings); torchrun for several processes",
         add_train_args, train.main),
        ("eval", "score a checkpoint on a labelled split (per-class IoU table)", add_eval_args, eval_commands.cmd_eval),
        ("test", "Cityscapes: server submission; CamVid: score the test split",
         lambda p: add_eval_args(p, test=True), eval_commands.cmd_test),
        ("soft-targets", "a teacher's probabilities on a training list (multi-scale + flip by default), for "
                         "cgnet train --teacher", eval_commands.add_soft_targets_args, eval_commands.cmd_soft_targets),
        ("demo", "the main job: shipped CamVid weights on the test set, table and pictures",
         add_demo_args, eval_commands.cmd_demo),
        ("export", "a model file for a runtime (ONNX, OpenVINO, torch.export, ...) or a static in-browser "
                   "site, verified against PyTorch", add_export_args, export_command),
        ("predict", "segment images, folders, globs and videos; writes masks, colour masks and overlays",
         lambda p: (add_predict_args(p), add_engine_args(p)), cmd_predict_engine),
        ("bench", "latency and throughput of every backend and precision vs eager fp32", add_bench_args, cmd_bench),
        ("serve", "a local web page and JSON API that segment uploaded images and videos (cgnet[serve])",
         add_serve_args, cmd_serve),
    ]
    for name, text, add_args, func in commands:
        p = sub.add_parser(name, help=text)
        add_args(p)
        p.set_defaults(func=func)

    p = sub.add_parser("plot", help="draw a run's training curves (against epochs and wall-clock time), or "
                                    "compare several runs' validation mIoU against wall-clock")
    p.add_argument("run", nargs="+", help="run folder(s) of cgnet train")
    p.add_argument("--out", help="with several runs: the comparison PNG (default compare.png)")
    p.set_defaults(func=cmd_plot)

    data = sub.add_parser("data", help="dataset tools")
    tools = data.add_subparsers(dest="data_command", required=True, metavar="TOOL")
    add_data_commands(tools)
    for command in [*sub.choices.values(), *tools.choices.values()]:
        command.add_argument("--debug", action="store_true",
                             help="show the traceback of every error and the third-party libraries' own logs")
    return parser


# glibc returns large freed buffers to the OS after every step, so eager PyTorch page-faults its
# activations back in each iteration; these settings keep them (1.2-2x faster training/inference)
ALLOCATOR_ENV = {"MALLOC_TRIM_THRESHOLD_": "17179869184", "MALLOC_TOP_PAD_": "1073741824",
                 "MALLOC_MMAP_THRESHOLD_": "17179869184"}
HEAVY_COMMANDS = {"train", "soft-targets", "eval", "test", "demo", "predict", "bench", "export", "serve"}


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
    """Run one command. Errors cgnet recognises (`CGNetError`) are one line on stderr and exit 2
    (or their `exit_code`); Ctrl-C is one line and exit 130; anything else is a bug: its traceback,
    a line asking to report it, exit 1. `--debug` or CGNET_DEBUG=1 shows every traceback."""
    args = make_parser().parse_args(argv)
    if argv is None and args.command in HEAVY_COMMANDS:
        reexec_with_allocator_env(sys.argv[1:])
    inductor_cache_per_capability()
    debug = getattr(args, "debug", False) or os.environ.get("CGNET_DEBUG") == "1"
    with debug_environment(debug):
        return run_command(args, debug)


@contextlib.contextmanager
def debug_environment(debug: bool):
    """CGNET_DEBUG=1 while a --debug command runs, which also shows the third-party libraries' own
    output (cgnet.common.quiet_third_party); restored afterwards (main is called in-process by tests)."""
    previous = os.environ.get("CGNET_DEBUG")
    if debug:
        os.environ["CGNET_DEBUG"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("CGNET_DEBUG", None)
        else:
            os.environ["CGNET_DEBUG"] = previous


def run_command(args: argparse.Namespace, debug: bool) -> int:
    """The command's function, with cgnet's error handling (see `main`)."""
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"cgnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except CGNetError as e:
        if debug:
            traceback.print_exc()
        print(f"cgnet {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception:
        traceback.print_exc()
        print(f"cgnet {args.command}: unexpected error (a bug in cgnet, or a problem it does not recognise): "
              f"please report it with the traceback above", file=sys.stderr)
        return 1
