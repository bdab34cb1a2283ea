"""`cgnet predict`: its options and its function. In this process (`--engine local`, the default)
by `predict.py`; on a Ray cluster (`--engine ray`, the `ray` extra) by `ray_predict.py`, which
builds on predict's input listing and naming, so this module sits above both."""
from __future__ import annotations

import argparse

from .predict import add_local_args, run_local
from .ray_predict import add_ray_args, refuse_ray_options, run_ray


def add_predict_args(p: argparse.ArgumentParser) -> None:
    add_local_args(p)
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: Ray Data over a cluster, inputs and --out local or "
                        "s3://... (cgnet[ray]; docs/scaling.md)")
    add_ray_args(p)


def cmd_predict(args: argparse.Namespace) -> int:
    """`cgnet predict`: in this process, or with --engine ray on a Ray cluster."""
    if args.engine == "ray":
        return run_ray(args)
    refuse_ray_options(args)
    return run_local(args)
