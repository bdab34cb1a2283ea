"""The command-line options that several commands share, each defined here once with one help
text: `--checkpoint`, `--backend`, `--precision`, `--device`, `--data-root`.

A command adds one with its `add_*_arg(p, ...)`. Where commands differ (the default, the choices,
what the option is for there), the command passes that difference and the reason for it, which
is appended to the shared text, so `--help` argues every default that is not the usual one.
(`cgnet train`'s options come from its `TrainConfig` fields instead: see engine/config.py.)
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

SHIPPED = "the shipped CamVid weights"


def _with(text: str, default: str | None, note: str) -> str:
    """The shared text, the command's note, then its default (and why, when the command says)."""
    return text + (f"; {note}" if note else "") + (f" (default: {default})" if default else "")


def add_checkpoint_arg(p: argparse.ArgumentParser, *, default: str = SHIPPED, note: str = "") -> None:
    """--checkpoint: the model to load.

    Args:
        default: what runs without the option (the shipped weights, or the command's reason).
        note: what else this command accepts (an exported file, ...) or what the model is for.
    """
    p.add_argument("--checkpoint", metavar="FILE",
                   help=_with("the model: a checkpoint of cgnet train, of the original release or of "
                                 "mmsegmentation, or named weights (cgnet weights list)", default, note))


def add_backend_arg(p: argparse.ArgumentParser, choices: Sequence[str], *, default: str, why: str) -> None:
    """--backend: what runs the model.

    Args:
        choices: the backends this command offers (the formats table's, and 'auto' where the
            command picks one).
        default: the one used without the option; `why` says why this command uses it.
    """
    p.add_argument("--backend", choices=list(choices), default=default,
                   help=_with("what runs the model: torch (PyTorch) or the runtime of an exported file "
                              "(see cgnet export)", f"{default}: {why}", ""))


def add_precision_arg(p: argparse.ArgumentParser, choices: Sequence[str], *, default: str, why: str,
                      note: str = "") -> None:
    """--precision: the arithmetic the model runs (or is written) in.

    Args:
        choices: the precisions this command offers.
        default: the one used without the option; `why` says why this command uses it.
        note: which backend or format takes which precision, for this command.
    """
    p.add_argument("--precision", choices=list(choices), default=default,
                   help=_with("the arithmetic: fp32; bf16 or fp16 (autocast on the torch backend); int8 "
                              "(quantized exported files)", f"{default}: {why}", note))


def add_device_arg(p: argparse.ArgumentParser, *, default: str | None = None,
                   why: str = "cuda when a GPU is available, else cpu", note: str = "") -> None:
    """--device: the torch device (cpu, cuda, cuda:1, ...).

    Args:
        default: the device without the option (None: cuda when available, else cpu).
        why: the default as the help states it, with its reason where it is not the usual one.
        note: where the option acts in this command (the torch backend only, ...).
    """
    p.add_argument("--device", default=default,
                   help=_with("the torch device: cpu, cuda, cuda:1, ...", why, note))


def add_data_root_arg(p: argparse.ArgumentParser, *, use: str,
                      default: str = "the dataset's folder under $CGNET_DATA, ./data/ or ../shared/datasets/") -> None:
    """--data-root: a dataset folder (with its list files), or a folder of frames.

    Args:
        use: what this command reads there (the split to score, frames to verify an export on, ...).
        default: where the command looks without the option, and what it does when nothing is found.
    """
    p.add_argument("--data-root", metavar="DIR", help=_with("the dataset folder", default, use))
