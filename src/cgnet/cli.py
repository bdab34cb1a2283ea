"""The `cgnet` command line: the top layer. Each command's options (`add_*_args`) and function
(`cmd_*`) live in the module of its concern; this file holds the table of commands and runs one
with cgnet's error handling."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Callable

from . import __version__
from .common import CGNetError, inductor_cache
from .complexity import add_info_args, cmd_info
from .data.commands import add_data_args, cmd_data
from .deploy.bench import add_bench_args, cmd_bench
from .deploy.export_command import add_export_args, cmd_export
from .deploy.predict_command import add_predict_args, cmd_predict
from .deploy.serve import add_serve_args, cmd_serve
from .engine.commands import (add_demo_args, add_eval_args, add_soft_targets_args, add_test_args, cmd_demo, cmd_eval,
                              cmd_soft_targets, cmd_test)
from .engine.config import add_train_args
from .engine.train import cmd_train
from .plot import add_plot_args, cmd_plot
from .zoo import add_weights_args, cmd_weights


@dataclass
class Command:
    """One `cgnet` command: its name and one-line help, the function that adds its options to its
    parser, the function that runs it (args -> exit code), and whether it is heavy (it runs the
    model or trains it: the process restarts once with `ALLOCATOR_ENV`)."""

    name: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    heavy: bool


COMMANDS = [
    Command("info", "parameters, FLOPs and activation memory per stage", add_info_args, cmd_info, False),
    Command("train", "train (a paper preset or your own settings); torchrun for several processes",
            add_train_args, cmd_train, True),
    Command("eval", "score a checkpoint on a labelled split (per-class IoU table)", add_eval_args, cmd_eval, True),
    Command("test", "Cityscapes: server submission; CamVid: score the test split", add_test_args, cmd_test, True),
    Command("soft-targets", "a teacher's probabilities on a training list (multi-scale + flip by default), for "
                            "cgnet train --teacher", add_soft_targets_args, cmd_soft_targets, True),
    Command("demo", "the main job: shipped CamVid weights on the test set, table and pictures",
            add_demo_args, cmd_demo, True),
    Command("export", "a model file for a runtime (ONNX, OpenVINO, torch.export, ...) or a static in-browser "
                      "site, verified against PyTorch", add_export_args, cmd_export, True),
    Command("predict", "segment images, folders, globs and videos; writes masks, colour masks and overlays",
            add_predict_args, cmd_predict, True),
    Command("bench", "latency and throughput of every backend and precision vs eager fp32", add_bench_args,
            cmd_bench, True),
    Command("serve", "a local web page and JSON API that segment uploaded images and videos (cgnet[serve])",
            add_serve_args, cmd_serve, True),
    Command("plot", "draw a run's training curves (against epochs and wall-clock time), or compare several runs' "
                    "validation mIoU against wall-clock", add_plot_args, cmd_plot, False),
    Command("data", "dataset tools", add_data_args, cmd_data, False),
    Command("weights", "named weights: list them (scores, sources, licences) or download one", add_weights_args,
            cmd_weights, False),
]
COMMAND = {c.name: c for c in COMMANDS}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cgnet", description="CGNet semantic segmentation")
    parser.add_argument("--version", action="version", version=f"cgnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help)
        command.add_args(p)
    for p in subcommand_parsers(parser):
        p.add_argument("--debug", action="store_true",
                       help="show the traceback of every error and the third-party libraries' own logs")
    return parser


def subcommand_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser under `parser`: the commands', and those of their subcommands (`data`'s tools)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                found += [p, *subcommand_parsers(p)]
    return found


# glibc returns large freed buffers to the OS after every step, so eager PyTorch page-faults its
# activations back in each iteration; these settings keep them (1.2-2x faster training/inference)
ALLOCATOR_ENV = {"MALLOC_TRIM_THRESHOLD_": "17179869184", "MALLOC_TOP_PAD_": "1073741824",
                 "MALLOC_MMAP_THRESHOLD_": "17179869184"}


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
    if argv is None and COMMAND[args.command].heavy:
        reexec_with_allocator_env(sys.argv[1:])
    inductor_cache()
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
        return COMMAND[args.command].run(args)
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
