"""`cgnet train --init`: a run that starts from trained weights (fine-tuning). The weights are read
and their M/N checked before anything is written (`read_init`); the classifier's rows are matched
to this run's classes by class name (`match_classifier`: exactly, else ignoring case; by position
only where names are unknown), the other tensors by name and shape (`checkpoint.load_matching`);
--freeze keeps the stem (and stage 2) as loaded (`start_from`), and one short block says what was
loaded, what was re-initialised and why."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint, load_matching, resolve_weights
from ..model import CGNet
from ..common import ConfigError
from .config import TrainConfig
from .distributed import is_main_process


@dataclass
class InitWeights:
    """The trained weights a run starts from (--init)."""
    path: Path
    state_dict: dict
    meta: dict


def read_init(cfg: TrainConfig) -> InitWeights:
    """The --init weights, read (and their M/N checked) before anything is written."""
    path = resolve_weights(cfg.init)
    state_dict, meta, _ = load_checkpoint(path)
    arch = meta["arch"]
    if (arch["m"], arch["n"]) != (cfg.m, cfg.n):
        raise ConfigError(f"--init {cfg.init}: the weights are CGNet M{arch['m']}N{arch['n']}, this run is "
                          f"M{cfg.m}N{cfg.n}; add --blocks {arch['m']} {arch['n']} to start from them")
    return InitWeights(path, state_dict, meta)


def names_known(names: list[str] | None) -> bool:
    """Whether class names say what the classes are (`make_meta`'s default is class0, class1, ...)."""
    return bool(names) and not all(re.fullmatch(r"class\d+", n) for n in names)


def match_classifier(own: torch.Tensor, theirs: torch.Tensor, names: list[str],
                     their_names: list[str] | None) -> tuple[torch.Tensor | None, list[str], bool]:
    """The --init classifier rows for this run's classes, matched by class name (exactly, else
    ignoring case); rows of classes the weights lack keep their new initialisation. By position
    only when either side's names are unknown (and the counts agree).

    Args:
        own: this model's freshly initialised classifier weight (classes x 256 x 1 x 1).
        theirs: the --init weights' classifier weight (their classes x 256 x 1 x 1).
        names: this run's class names; their_names: the --init weights' (None when unrecorded).
    Returns:
        (the weight to load, or None to leave `load_matching` to decide by shape; the lines that
        say what was done; whether no row came from the --init weights).
    """
    if not (names_known(names) and names_known(their_names)):
        if own.shape != theirs.shape:
            return None, [], False
        whose = "the --init weights" if not names_known(their_names) else "this run"
        return theirs, [f"  classifier rows loaded by position: the class names of {whose} are unknown"], False
    folded = {n.casefold(): j for j, n in reversed(list(enumerate(their_names)))}
    source = [their_names.index(n) if n in their_names else folded.get(n.casefold()) for n in names]
    if all(j is None for j in source):
        return own, [f"  re-initialised: classifier.weight {tuple(own.shape)} (no class name in common with the "
                     f"--init weights': {', '.join(their_names)})"], True
    weight = own.clone()
    moved, new = [], []
    for i, (name, j) in enumerate(zip(names, source)):
        if j is None:
            new.append(name)
            continue
        weight[i] = theirs[j]
        if j != i or their_names[j] != name:
            moved.append(f"{name} from row {j}" + (f" ({their_names[j]})" if their_names[j] != name else ""))
    lines = [f"  classifier rows matched by class name: {len(names) - len(new)} of {len(names)}"
             + (f"; reordered: {', '.join(moved)}" if moved else " (same order)")]
    if new:
        lines.append(f"  re-initialised classifier rows (classes the --init weights lack): {', '.join(new)}")
    return weight, lines, False


# the modules --freeze keeps as loaded
FROZEN = {"none": (), "stem": ("stem", "bn_act1"), "stage2": ("stem", "bn_act1", "down2", "stage2", "bn_act2")}


def start_from(model: CGNet, init: InitWeights, cfg: TrainConfig, names: list[str] | None = None) -> None:
    """Load the --init weights into the new model (classifier rows matched to `names`, this run's
    classes, by name: `match_classifier`), freeze what --freeze names, and say in one short block
    what was loaded, what was re-initialised and why."""
    state = dict(init.state_dict)
    weight, lines, all_new = match_classifier(model.classifier.weight.detach(), state["classifier.weight"],
                                     list(names or []), init.meta.get("classes"))
    if weight is not None:
        state["classifier.weight"] = weight
    if "classifier.bias" in state:  # mmsegmentation's head: its bias rows follow the weight's
        bias, _, _ = match_classifier(model.classifier.bias.detach(), state["classifier.bias"],
                                      list(names or []), init.meta.get("classes"))
        if bias is not None:
            state["classifier.bias"] = bias
    reinitialised = load_matching(model, state, where=f"--init {cfg.init}")
    frozen = FROZEN[cfg.freeze]
    for name in frozen:
        for param in getattr(model, name).parameters():
            param.requires_grad_(False)
    if is_main_process():
        total = len(model.state_dict())
        print(f"--init {cfg.init} ({init.path}): loaded {total - len(reinitialised) - all_new} of {total} tensors")
        for line in lines:
            print(line)
        for name, why in reinitialised.items():
            print(f"  re-initialised: {name} {why}")
        if frozen:
            count = sum(p.numel() for p in model.parameters() if not p.requires_grad)
            print(f"  frozen (--freeze {cfg.freeze}): {', '.join(frozen)} ({count:,} weights)")
