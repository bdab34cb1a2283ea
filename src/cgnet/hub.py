"""The Hugging Face Hub's conventions (`pip install cgnet[hub]`): a model folder of
`model.safetensors` (the weights), `config.json` (architecture, classes, palette, preprocessing:
the checkpoint's whole metadata) and `README.md` (a model card with the scores as model-index
YAML, the training command and the provenance).

    model = cgnet.load_model("camvid")
    cgnet.save_pretrained(model, "cgnet-camvid")       # or model.save_pretrained("cgnet-camvid")
    model = cgnet.from_pretrained("cgnet-camvid")      # a folder, or a Hub repo id
    cgnet.push_to_hub(model, "you/cgnet-camvid")       # huggingface_hub's create_repo + upload_folder

Loading reads safetensors and JSON only (nothing is unpickled) and is strict: a missing or
unknown tensor is an error. A repo id is fetched with huggingface_hub's `hf_hub_download`, into
its cache (HF_HUB_CACHE); with HF_HUB_OFFLINE=1 only that cache is read.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch

from .checkpoint import CheckpointError, flush_subnormals_, infer_arch, load_state_into
from .common import InputError, MissingFileError
from .fileio import atomic_open, staged_folder
from .model import CGNet
from .zoo import WEIGHTS

__all__ = ["save_pretrained", "from_pretrained", "push_to_hub"]

WEIGHTS_FILE, CONFIG_FILE, CARD_FILE = "model.safetensors", "config.json", "README.md"
HUB_FORMAT = "cgnet-hub"
HUB_FORMAT_VERSION = 1


def _safetensors():
    try:
        from safetensors import torch as safetensors_torch
    except ImportError:
        raise MissingFileError("the Hub format needs safetensors: pip install 'cgnet[hub]'") from None
    return safetensors_torch


def _huggingface_hub():
    try:
        import huggingface_hub
    except ImportError:
        raise MissingFileError("Hub repositories need huggingface_hub: pip install 'cgnet[hub]'") from None
    return huggingface_hub


def parse_score(score: str) -> tuple[float, str]:
    """'64.05 test mIoU' -> (64.05, 'test')."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?) (\w+) mIoU", score.strip())
    if found is None:
        raise InputError(f"score {score!r}: expected 'VALUE SPLIT mIoU', e.g. '64.05 test mIoU'")
    return float(found[1]), found[2]


def model_card(meta: dict, *, name: str, score: str | None, reported_by: str, training_command: str,
               licence: str) -> str:
    """The README.md of a model folder: YAML front matter (model-index with the score), then the
    classes, the preprocessing, how to load it, the training command and the provenance."""
    dataset = meta.get("dataset") or "custom"
    lines = ["---", "library_name: cgnet", f"license: {licence.split()[0].lower()}",
             "pipeline_tag: image-segmentation", "tags:", "- semantic-segmentation", "- cgnet",
             f"datasets:\n- {dataset}"]
    if score:
        value, split = parse_score(score)
        lines += ["model-index:", f"- name: {name}", "  results:", "  - task:", "      type: image-segmentation",
                  "      name: Semantic Segmentation", "    dataset:", f"      name: {dataset}",
                  f"      type: {dataset}", f"      split: {split}", "    metrics:", "    - type: mean_iou",
                  f"      value: {value}", f"      name: {split} mIoU", "      verified: false"]
    lines += ["---", "", f"# CGNet: {name}", ""]
    arch = meta["arch"]
    lines.append(f"CGNet M{arch['m']}N{arch['n']} ({arch['num_classes']} classes) for semantic segmentation, "
                 f"trained on {dataset}." + (f" {score}, {reported_by}." if score else ""))
    lines += ["", "```python", "import cgnet", f'model = cgnet.from_pretrained("{name}")  # or this folder',
              "```", "", "## Classes", "", ", ".join(meta.get("classes") or []), "",
              "## Preprocessing", "", "```json", json.dumps(meta.get("preprocess")), "```", "",
              "## Training", "", f"`{training_command}`" if training_command else "Not recorded.", ""]
    if meta.get("config"):
        lines += ["The training settings (`cgnet train --config`):", "", "```json",
                  json.dumps(meta["config"], indent=1, sort_keys=True), "```", ""]
    provenance = meta.get("provenance") or meta.get("source")
    lines += ["## Provenance", "", str(provenance) if provenance else "Not recorded.", "",
              "Written by `cgnet.save_pretrained`.", ""]
    return "\n".join(lines)


def save_pretrained(model: CGNet, directory: str | os.PathLike, *, name: str | None = None,
                    score: str | None = None, training_command: str | None = None,
                    licence: str | None = None) -> Path:
    """Write the model folder: model.safetensors, config.json and README.md, as one folder that
    appears whole.

    Args:
        model: a CGNet with `meta` (from `load_model`, `make_meta` or training).
        directory: the folder to write; it appears whole (refused when it exists and is not empty).
        name: the model's name in the card (default: the catalogued weights' name, else the folder's).
        score: '64.05 test mIoU' (default: the catalogue's, for weights loaded by name).
        training_command: how the weights were trained (default: the catalogue's).
        licence: an SPDX id (default: the catalogue's, else 'mit').

    Returns:
        The folder.
    """
    model = getattr(model, "module", model)
    meta = dict(getattr(model, "meta", None) or {})
    meta["arch"] = model.config
    entry = WEIGHTS.get(meta.get("weights") or "")
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    card = model_card(meta, name=name or (entry.name if entry else directory.name),
                      score=score or (entry.score if entry else None),
                      reported_by=entry.reported_by if entry and not score else "measured by its publisher",
                      training_command=training_command or (entry.training if entry else ""),
                      licence=licence or (entry.licence if entry else "MIT"))
    config = {"format": HUB_FORMAT, "format_version": HUB_FORMAT_VERSION, "architecture": "CGNet", **meta}
    with staged_folder(directory) as staging:
        _safetensors().save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        with atomic_open(staging / CONFIG_FILE, "w") as f:
            json.dump(config, f, indent=1)
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
    return directory


def _hub_files(repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None) -> Path:
    """The folder of a Hub repository's model files in huggingface_hub's cache (downloaded unless
    offline)."""
    hub = _huggingface_hub()
    try:
        for filename in (CONFIG_FILE, WEIGHTS_FILE):
            path = hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)
    except Exception as e:  # huggingface_hub's errors: offline with no cache, no such repo, HTTP
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{repo_id}: not a local folder, and the Hub repository could not be read "
                              f"({type(e).__name__}: {first})") from None
    return Path(path).parent


def from_pretrained(source: str | os.PathLike, *, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> CGNet:
    """A model folder written by `save_pretrained`, or a Hub repository id holding one, loaded
    strictly (every tensor present, none unknown), in eval mode, with its metadata at `.meta`.

    Args:
        source: a folder, or 'owner/name' on the Hub (downloaded into huggingface_hub's cache).
        revision: the Hub revision (branch, tag or commit); default main.
        cache_dir: huggingface_hub's cache folder (default HF_HUB_CACHE).
        device: where the model is put.
    """
    folder = Path(source)
    if not folder.is_dir():
        if folder.exists() or str(source).count("/") != 1:
            raise CheckpointError(f"{source}: neither a model folder nor a Hub repository id ('owner/name')")
        folder = _hub_files(str(source), revision, cache_dir)
    for needed in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / needed).is_file():
            raise CheckpointError(f"{folder}: no {needed}; not a folder cgnet.save_pretrained wrote")
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if config.get("format") != HUB_FORMAT or config.get("format_version", 0) > HUB_FORMAT_VERSION:
        raise CheckpointError(f"{folder / CONFIG_FILE}: format {config.get('format')!r} version "
                              f"{config.get('format_version')}; this cgnet reads {HUB_FORMAT} up to "
                              f"{HUB_FORMAT_VERSION}")
    state = _safetensors().load_file(str(folder / WEIGHTS_FILE))
    meta = {k: v for k, v in config.items() if k not in ("format", "format_version", "architecture")}
    arch = meta["arch"]
    if infer_arch(state) | {"dropout": arch.get("dropout", 0.0)} != arch:
        raise CheckpointError(f"{folder}: config.json describes {arch}, the weights {infer_arch(state)}")
    model = CGNet(arch["num_classes"], m=arch["m"], n=arch["n"], dropout=arch["dropout"],
                  classifier_bias=arch.get("classifier_bias", False))
    load_state_into(model, state, where=str(folder / WEIGHTS_FILE))
    missing = model.state_dict().keys() - state.keys()
    if missing:
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: missing tensors {sorted(missing)}")
    flush_subnormals_(model)
    model.meta = meta
    return model.to(device).eval()


def push_to_hub(model: CGNet, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Upload CGNet", **card) -> str:
    """`save_pretrained` into a temporary folder, then huggingface_hub's `create_repo` and
    `upload_folder`. Returns the commit's URL. `card`: save_pretrained's name, score, ...
    (needs a network and a Hub token: not tested here)."""
    hub = _huggingface_hub()
    api = hub.HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", name=card.pop("name", repo_id), **card)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return str(api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message))
