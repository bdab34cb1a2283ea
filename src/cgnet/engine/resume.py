"""`cgnet train --resume`: the resumed run's settings against the ones stored in its checkpoint,
field by field, by each field's resume policy (`cgnet.engine.config`): a change of what the run
learns is refused in one line, a change of how it runs is accepted and listed for the log.

Under torchrun's elastic agent, the same `--resume` serves the first start (no last.pt yet) and
every restart of the worker group; OUT/progress.json holds the iteration the run has reached, so a
restart says how many iterations past last.pt it runs again (docs/scaling.md)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..common import ConfigError
from ..fileio import write_atomic
from .config import DEFINES, NOT_INHERITED, SAME_KIND, TrainConfig, option_name, policy, show
from .distributed import elastic_attempt

PROGRESS_FILE = "progress.json"  # under torchrun's agent: the iteration the run has reached (main process)


def _flag(name: str, value) -> str:
    """`--lr 0.001`, `--blocks 3 21`, `--no-class-weights`, `no --time-budget`."""
    option = option_name(name)
    if value is None:
        return f"no {option}"
    if isinstance(value, bool):
        return option if value else "--no-" + option[2:]
    return f"{option} {_value(name, value)}"


def _value(name: str, value) -> str:
    if name in ("m", "crop") and isinstance(value, (list, tuple)):
        return " ".join(show(v) for v in value)
    return show(value)


def _comparable(config: dict) -> dict:
    """A config dict with lists for tuples and --blocks as one entry (under 'm')."""
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    if "m" in out and "n" in out:
        out["m"] = [out["m"], out.pop("n")]
    return out


def compare_for_resume(saved: dict, cfg: TrainConfig, *, schedule_fixed: bool = False) -> list[str]:
    """Check a resumed run's config against the one stored in its checkpoint.

    A change of a setting that defines the run (`DEFINES`), or of the device's kind (cpu, cuda), raises one
    ConfigError naming each with its old and new value; `epochs` is not compared once a
    --time-budget has fixed the schedule (`schedule_fixed`), nor what is never inherited (the
    folder, --max-iters). Returns the accepted changes, as `--workers 2 -> 0`, for the log."""
    old, new = _comparable(saved), _comparable(cfg.to_dict())
    refused, accepted = [], []
    for name in new:
        if name not in old or name in NOT_INHERITED or (name == "epochs" and schedule_fixed):
            continue
        if old[name] == new[name]:
            continue
        if policy(name) == SAME_KIND:
            kinds = [torch.device(d).type if d else None for d in (old[name], new[name])]
            (refused if kinds[0] != kinds[1] else accepted).append(name)
        else:
            (refused if policy(name) == DEFINES else accepted).append(name)
    if refused:
        name = refused[0]
        if len(refused) == 1 and not isinstance(new[name], bool) and None not in (old[name], new[name]):
            change = f"the run was trained with {_flag(name, old[name])}, this command says {_value(name, new[name])}"
        else:
            change = (f"the run was trained with {' '.join(_flag(n, old[n]) for n in refused)}, this command says "
                      f"{' '.join(_flag(n, new[n]) for n in refused)}")
        keep = "it" if len(refused) == 1 else "them"
        raise ConfigError(f"--resume: {change}; keep {keep}, or start a new run with another --out")
    return [f"{option_name(n)} {_value(n, old[n]) if old[n] is not None else 'none'} -> "
            f"{_value(n, new[n]) if new[n] is not None else 'none'}" for n in accepted]


# ---- restarts by torchrun's elastic agent ---------------------------------------------------------

def elastic_fresh_start(resume: str | None, out: Path) -> bool:
    """Whether `--resume` starts the run instead: under torchrun's elastic agent, with no
    OUT/last.pt yet, so that one command serves the first start and every restart."""
    return resume == "auto" and elastic_attempt() is not None and not (out / "last.pt").exists()


def write_progress(out: Path, iteration: int) -> None:
    """OUT/progress.json: the iteration the run has reached (the main process, after each one)."""
    write_atomic(out / PROGRESS_FILE, json.dumps({"iteration": iteration}) + "\n")


def restart_line(out: Path, iteration: int) -> str | None:
    """Under torchrun's agent, when an attempt of this run failed (its OUT/progress.json is still
    there): where the run resumes (`iteration`, last.pt's) and how many iterations the failed
    attempt ran past it (they are run again). None otherwise."""
    if elastic_attempt() is None:
        return None
    try:
        reached = json.loads((out / PROGRESS_FILE).read_text())["iteration"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    lost = max(0, reached - iteration)
    return (f"torchrun restart: resuming at iteration {iteration} (last.pt); the failed attempt had reached "
            f"iteration {reached}: {lost} iteration{'s' * (lost != 1)} lost, run again")
