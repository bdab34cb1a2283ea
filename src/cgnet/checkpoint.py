"""Checkpoints: our own format, and the original release's files.

Our format is a dict saved with `torch.save`::

    {"format": "cgnet", "format_version": 1,
     "model": state_dict,
     "meta": {"arch": {...}, "preprocess": {...}, "classes": [...], "palette": [[r, g, b], ...],
              "ignore_index": int, "dataset": str, "config": {...} | None},
     # saved by `cgnet train`, for --resume:
     "optimizer": Adam's state_dict, "scaler": the GradScaler's, "rng": the generators' states,
     "train_state": {"epoch", "iteration", "best_miou", "history", ...}}

Everything under "meta" is JSON-able, so `torch.load(..., weights_only=True)` reads it.

The original release saved ``{"epoch": ..., "model": state_dict}`` or a bare state dict, with
``module.`` prefixes when trained under DataParallel, without ``num_batches_tracked`` buffers when
saved by PyTorch 0.4.0, and with the classifier under ``classifier.1`` when it used dropout.

mmsegmentation saves ``{"meta": {...}, "state_dict": state_dict}`` (and, before its
publish_model step, optimizer and logging state); its CGNet is the original topology under other
names (``backbone.level1.0`` is our ``down2``, ``bottleneck`` our ``fuse``) with a 1x1
``decode_head.conv_seg`` that has a bias. Its meta holds the class names and palette
(``dataset_meta`` since mmseg 1.0, ``CLASSES``/``PALETTE`` before) and the config text, whose
``mean``, ``std`` and ``bgr_to_rgb`` (``to_rgb`` before 1.0) give the preprocessing.

`load_checkpoint` maps all of these onto our module names.
"""
from __future__ import annotations

import itertools
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .common import CGNetError, InputError
from .fileio import atomic_open
from .model import CGNet
from .preprocess import make_spec
from .visualize import default_palette
from .zoo import WEIGHTS, weights_file

FORMAT = "cgnet"
FORMAT_VERSION = 1
ORIGINAL_DROPOUT = 0.1

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "load_model", "atomic_save",
           "convert_original_state_dict"]


class CheckpointError(CGNetError, ValueError):
    """A file that cannot be used as a CGNet checkpoint; the message says why."""


# original release name -> our name, applied in order, first match wins
_ORIGINAL_RULES = [
    (r"level1_(\d+)\.", r"stem.\1."),
    (r"b1\.", "bn_act1."),
    (r"bn_prelu_2\.", "bn_act2."),
    (r"bn_prelu_3\.", "bn_act3."),
    (r"level([23])_0\.conv1x1\.", r"down\1.conv."),
    (r"level([23])_0\.F_loc\.conv\.", r"down\1.loc."),
    (r"level([23])_0\.F_sur\.conv\.", r"down\1.sur."),
    (r"level([23])_0\.bn\.", r"down\1.bn_act.bn."),
    (r"level([23])_0\.act\.", r"down\1.bn_act.act."),
    (r"level([23])_0\.reduce\.conv\.", r"down\1.fuse."),
    (r"level([23])_0\.F_glo\.fc\.0\.", r"down\1.glo.fc1."),
    (r"level([23])_0\.F_glo\.fc\.2\.", r"down\1.glo.fc2."),
    (r"level([23])\.(\d+)\.conv1x1\.", r"stage\1.\2.reduce."),
    (r"level([23])\.(\d+)\.F_loc\.conv\.", r"stage\1.\2.loc."),
    (r"level([23])\.(\d+)\.F_sur\.conv\.", r"stage\1.\2.sur."),
    (r"level([23])\.(\d+)\.bn_prelu\.", r"stage\1.\2.bn_act."),
    (r"level([23])\.(\d+)\.F_glo\.fc\.0\.", r"stage\1.\2.glo.fc1."),
    (r"level([23])\.(\d+)\.F_glo\.fc\.2\.", r"stage\1.\2.glo.fc2."),
    (r"classifier\.[01]\.conv\.", "classifier."),
]
_ORIGINAL_RULES = [(re.compile(pat), rep) for pat, rep in _ORIGINAL_RULES]


# mmsegmentation's CGNet names -> ours; the block index of level1/level2 is mapped in `_mmseg_key`
_MMSEG_RULES = [(re.compile(pat), rep) for pat, rep in [
    (r"backbone\.stem\.(\d+)\.activate\.", r"stem.\1.act."),
    (r"backbone\.stem\.(\d+)\.", r"stem.\1."),
    (r"backbone\.norm_prelu_([012])\.0\.", "bn_act{}.bn."),
    (r"backbone\.norm_prelu_([012])\.1\.", "bn_act{}.act."),
    (r"decode_head\.conv_seg\.", "classifier."),
]]
_MMSEG_BLOCK = re.compile(r"backbone\.level([12])\.(\d+)\.")
_MMSEG_BLOCK_PARTS = [("conv1x1.activate.", "{conv}.act."), ("conv1x1.", "{conv}."), ("f_loc.", "loc."),
                      ("f_sur.", "sur."), ("bn.", "bn_act.bn."), ("activate.", "bn_act.act."),
                      ("bottleneck.", "fuse."), ("f_glo.fc.0.", "glo.fc1."), ("f_glo.fc.2.", "glo.fc2.")]
# the preprocessing of mmseg's CGNet configs (Cityscapes), when a checkpoint's meta has no config text
MMSEG_CGNET_MEAN = (72.39239876, 82.90891754, 73.15835921)


def _mmseg_key(key: str) -> str | None:
    """One mmseg CGNet key with our name, or None when it is not one."""
    block = _MMSEG_BLOCK.match(key)
    if block:
        level, index, rest = int(block[1]), int(block[2]), key[block.end():]
        stage = f"down{level + 1}" if index == 0 else f"stage{level + 1}.{index - 1}"
        for theirs, ours in _MMSEG_BLOCK_PARTS:
            if rest.startswith(theirs):
                return f"{stage}." + ours.format(conv="conv" if index == 0 else "reduce") + rest[len(theirs):]
        return None
    for pat, rep in _MMSEG_RULES:
        hit = pat.match(key)
        if hit:
            name = rep.format(int(hit[1]) + 1) if "{}" in rep else hit.expand(rep)
            return name + key[hit.end():]
    return None


def is_mmseg_state_dict(state_dict: dict) -> bool:
    return any(k.startswith("backbone.stem.") for k in state_dict) and "decode_head.conv_seg.weight" in state_dict


def convert_mmseg_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """mmsegmentation CGNet keys -> ours. Returns (state_dict, arch) with arch inferred from tensors."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        name = _mmseg_key(key)
        if name is None:
            unknown.append(key)
        else:
            out[name] = value
    if unknown:
        raise CheckpointError(f"keys that mmsegmentation's CGNet does not have: {_clip(unknown)}")
    return out, infer_arch(out)


def _mmseg_meta(meta: dict, arch: dict) -> dict:
    """Our meta from an mmseg checkpoint's: classes and palette, and the preprocessing from its
    config text (mean, std and bgr_to_rgb / to_rgb of the data preprocessor)."""
    dataset_meta = meta.get("dataset_meta") or {}
    classes = dataset_meta.get("classes") or meta.get("CLASSES")
    palette = dataset_meta.get("palette") or meta.get("PALETTE")
    text = meta.get("config") if isinstance(meta.get("config"), str) else ""

    def vector(name: str, default):
        found = re.search(rf"\b{name}=\[([^\]]*)\]", text)
        if not found:
            return [float(v) for v in default]
        values = [v.strip() for v in found[1].split(",") if v.strip()]
        if len(values) != 3 or not all(re.fullmatch(r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?", v) for v in values):
            raise CheckpointError(f"the config's {name}=[{found[1].strip()}] is not three numbers")
        return [float(v) for v in values]

    to_rgb = re.search(r"\b(?:bgr_)?to_rgb=(True|False)", text)
    # mmseg feeds the network RGB when to_rgb is set: ours reads RGB images, so the order is kept
    preprocess = {"mode": "mmseg", "channel_order": "RGB" if to_rgb is None or to_rgb[1] == "True" else "BGR",
                  "value_scale": 1.0, "mean": vector("mean", MMSEG_CGNET_MEAN), "std": vector("std", (1, 1, 1))}
    n = arch["num_classes"]
    return {"arch": arch, "preprocess": preprocess,
            "classes": [str(c) for c in classes] if classes and len(classes) == n else None,
            "palette": [[int(v) for v in c] for c in palette] if palette and len(palette) == n else None,
            "ignore_index": 255, "dataset": "cityscapes" if n == 19 and classes else None, "config": None,
            "source": "mmsegmentation", "mmseg_version": meta.get("mmseg_version")}


def _strip_module(state_dict: dict) -> dict:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def is_original_state_dict(state_dict: dict) -> bool:
    return any(k.startswith("level1_0.") for k in _strip_module(state_dict))


def convert_original_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """Original release keys -> ours. Returns (state_dict, arch) with arch inferred from tensors."""
    state_dict = _strip_module(state_dict)
    out, unknown = {}, []
    for key, value in state_dict.items():
        for pat, rep in _ORIGINAL_RULES:
            hit = pat.match(key)
            if hit:
                out[hit.expand(rep) + key[hit.end():]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"keys that the original CGNet does not have: {_clip(unknown)}")
    arch = infer_arch(out)
    if "classifier.1.conv.weight" in state_dict:
        arch["dropout"] = ORIGINAL_DROPOUT
    return out, arch


def infer_arch(state_dict: dict) -> dict:
    """num_classes, m and n from a state dict with our key names."""
    if "classifier.weight" not in state_dict:
        raise CheckpointError("no classifier weight in the state dict: not a CGNet checkpoint")
    stage2 = {int(k.split(".")[1]) for k in state_dict if k.startswith("stage2.")}
    stage3 = {int(k.split(".")[1]) for k in state_dict if k.startswith("stage3.")}
    arch = {"num_classes": int(state_dict["classifier.weight"].shape[0]),
            "m": len(stage2) + 1, "n": len(stage3) + 1, "dropout": 0.0}
    if "classifier.bias" in state_dict:
        arch["classifier_bias"] = True
    return arch


def _clip(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, then rename: never a half-written file."""
    with atomic_open(path) as f:
        torch.save(obj, f)
    return Path(path)


def make_meta(model: CGNet, *, preprocess: dict | None = None, classes: list[str] | None = None,
              palette: list[list[int]] | None = None, ignore_index: int | None = None,
              dataset: str | None = None, config: dict | None = None) -> dict:
    """The JSON-able metadata stored beside the weights, with defaults for what is not given.

    Args:
        model: the network; its architecture (classes, M, N, dropout) is recorded.
        preprocess: how images become inputs (`cgnet.make_spec`); default: the standard spec
            (RGB / 255, ImageNet mean and std), recorded with `"preprocess_default": true`.
        classes: one name per class; default `class0`, `class1`, ...
        palette: one RGB colour per class; default: a fixed, well-spread palette.
        ignore_index: the label id of unlabelled pixels; default 255.
        dataset: 'camvid', 'cityscapes' or your own dataset's name (default 'custom').
        config: the training configuration, when the weights come from `cgnet train`.

    Returns:
        A dict with keys arch, preprocess, classes, palette, ignore_index, dataset, config.
    """
    n = model.num_classes
    if classes is not None and len(classes) != n:
        raise InputError(f"{len(classes)} class names for a model with {n} classes")
    if palette is not None and len(palette) != n:
        raise InputError(f"{len(palette)} palette colours for a model with {n} classes")
    meta = {"arch": model.config,
            "preprocess": preprocess if preprocess is not None else make_spec("standard"),
            "classes": list(classes) if classes is not None else [f"class{i}" for i in range(n)],
            "palette": [list(map(int, c)) for c in (palette if palette is not None else default_palette(n))],
            "ignore_index": ignore_index if ignore_index is not None else 255,
            "dataset": dataset or "custom", "config": config}
    if preprocess is None:
        meta["preprocess_default"] = True
    return meta


def save_checkpoint(path: str | os.PathLike, model: CGNet, meta: dict | None = None,
                    **extra: Any) -> Path:
    """Save `model` in our format, atomically (a temporary file, then a rename).

    Args:
        path: the file to write; its folder is created.
        model: a CGNet (or DDP / DataParallel around one).
        meta: from `make_meta`; default `make_meta(model)`. Its `arch` is always the model's own.
        **extra: training state stored beside the weights (optimizer, train_state, rng, scores).

    Returns:
        The path written. `load_model(path)` reads it back with `weights_only=True`.
    """
    model = getattr(model, "module", model)  # DDP / DataParallel
    meta = dict(meta) if meta is not None else make_meta(model)
    meta["arch"] = model.config
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_save({"format": FORMAT, "format_version": FORMAT_VERSION, "model": state_dict,
                        "meta": meta, **extra}, path)


def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """torch.load(weights_only=True) with errors that say what is wrong with the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # not a refused reference: the bytes are no pickle torch wrote
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (unreadable pickle data)") from None
        # weights_only=True refused a class or function reference: never suggest turning it off
        raise CheckpointError(f"{path}: holds Python code or objects that cgnet refuses to load (it reads only "
                              "tensors and plain data); it is not a checkpoint cgnet or the original release "
                              "wrote") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        msg = _first_line(e)
        if zipfile.is_zipfile(path) or "central directory" in msg or isinstance(e, EOFError):
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({msg})") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({msg})") from None
    except Exception as e:  # anything else torch.load raises: not a file torch.save wrote
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first_line(e)})") from None


def _first_line(error: Exception) -> str:
    """The first line of an error's message."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict, dict]:
    """Read any supported checkpoint. Returns (state_dict with our names, meta, the whole file)."""
    obj = read_checkpoint_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a CGNet checkpoint")
    try:
        if obj.get("format") == FORMAT:
            if obj.get("format_version", 0) > FORMAT_VERSION:
                raise CheckpointError(f"format version {obj['format_version']} is newer than this "
                                      f"cgnet understands ({FORMAT_VERSION}); upgrade cgnet")
            state_dict, meta = obj["model"], dict(obj["meta"])
            arch = infer_arch(state_dict)
            arch["dropout"] = meta.get("arch", {}).get("dropout", 0.0)
            meta["arch"] = arch
            return state_dict, meta, obj
        if isinstance(obj.get("state_dict"), dict) and is_mmseg_state_dict(obj["state_dict"]):
            state_dict, arch = convert_mmseg_state_dict(obj["state_dict"])
            return state_dict, _mmseg_meta(obj.get("meta") or {}, arch), obj
        state_dict = obj["model"] if isinstance(obj.get("model"), dict) else obj
        if not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
            raise CheckpointError("neither our format, nor a state dict, nor {'model': state_dict}")
        if is_mmseg_state_dict(state_dict):
            state_dict, arch = convert_mmseg_state_dict(state_dict)
            return state_dict, _mmseg_meta({}, arch), obj
        if is_original_state_dict(state_dict):
            state_dict, arch = convert_original_state_dict(state_dict)
            source = "original"
        else:
            state_dict = _strip_module(state_dict)
            arch = infer_arch(state_dict)
            source = "state_dict"
        meta = {"arch": arch, "preprocess": None, "classes": None, "palette": None,
                "ignore_index": None, "dataset": None, "config": None, "source": source}
        return state_dict, meta, obj
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def load_state_into(model: CGNet, state_dict: dict, where: str = "checkpoint") -> None:
    """Strict load with messages naming each unknown/missing key and each shape mismatch."""
    own = model.state_dict()
    unknown = [k for k in state_dict if k not in own]
    # PyTorch 0.4.0 files have no num_batches_tracked; every other key must be there
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    if unknown:
        raise CheckpointError(f"{where}: unknown keys {_clip(unknown)}")
    if missing:
        raise CheckpointError(f"{where}: missing keys {_clip(missing)}")
    for k, v in state_dict.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{where}: tensor '{k}' has shape {tuple(v.shape)} in the "
                                  f"checkpoint but the model expects {tuple(own[k].shape)}")
    model.load_state_dict(state_dict, strict=False)


def load_matching(model: CGNet, state_dict: dict, where: str = "checkpoint") -> dict[str, str]:
    """Load trained weights into a model for fine-tuning: every tensor whose name and shape match.

    The classifier (`classifier.weight`) is left as the model initialised it when the class
    counts differ; any other difference (another M/N, a tensor of another shape) raises one
    CheckpointError naming the tensor and both shapes.

    Args:
        model: the CGNet to start from the weights.
        state_dict: the weights with our names (`load_checkpoint`'s first value).
        where: how messages name the source.

    Returns:
        The tensors left as initialised (re-initialised): name -> shape and why.
    """
    own = model.state_dict()
    arch = infer_arch(state_dict)
    if (arch["m"], arch["n"]) != (model.m, model.n):
        raise CheckpointError(f"{where}: the checkpoint is CGNet M{arch['m']}N{arch['n']}, this model is "
                              f"M{model.m}N{model.n} (--blocks {arch['m']} {arch['n']} starts from it)")
    unknown = [k for k in state_dict if k not in own]
    if unknown:
        raise CheckpointError(f"{where}: tensor '{unknown[0]}' {tuple(state_dict[unknown[0]].shape)} of the "
                              "checkpoint is not in the model")
    reinitialised = {}
    for k, v in own.items():
        if k not in state_dict:
            if not k.endswith("num_batches_tracked"):
                raise CheckpointError(f"{where}: tensor '{k}' of the model is not in the checkpoint")
            continue
        if tuple(state_dict[k].shape) != tuple(v.shape):
            if k not in ("classifier.weight", "classifier.bias"):
                raise CheckpointError(f"{where}: tensor '{k}' has shape {tuple(state_dict[k].shape)} in the "
                                      f"checkpoint but the model expects {tuple(v.shape)}")
            reinitialised[k] = (f"{tuple(v.shape)} (the checkpoint's {tuple(state_dict[k].shape)} is for "
                                f"{state_dict[k].shape[0]} classes)")
    model.load_state_dict({k: v for k, v in state_dict.items()
                           if k in own and tuple(v.shape) == tuple(own[k].shape)}, strict=False)
    return reinitialised


def resolve_weights(path: str | os.PathLike) -> Path:
    """A checkpoint path, or the name of catalogued weights (`cgnet weights list`: 'camvid',
    'cityscapes-mmseg', ...), downloaded into the cache on first use. An existing file of that
    name wins."""
    if str(path) in WEIGHTS and not Path(path).exists():
        return weights_file(str(path))
    return Path(path)


def load_model(path: str | os.PathLike, *, num_classes: int | None = None,
               device: str | torch.device = "cpu") -> CGNet:
    """Build a CGNet from a checkpoint, in eval mode.

    Args:
        path: our checkpoint, one of the original release's (bare state dict or
            `{"epoch", "model"}`, with or without `module.`), one of mmsegmentation's CGNet
            checkpoints, or the name of catalogued weights (`"camvid"`, `"cityscapes-mmseg"`:
            `cgnet weights list`). Always read with `torch.load(..., weights_only=True)`.
        num_classes: when given, must agree with the checkpoint's classifier.
        device: where the model is put.

    Returns:
        The model, with the checkpoint's metadata (preprocessing, class names, palette, ignore
        index, dataset, training config) at `model.meta`. Classes, M and N come from the tensors.

    Raises:
        CheckpointError: the file is missing, not a checkpoint, truncated, or does not fit.
    """
    name = str(path) if str(path) in WEIGHTS and not Path(path).exists() else None
    path = resolve_weights(path)
    state_dict, meta, _ = load_checkpoint(path)
    if name:
        meta["weights"] = name  # which catalogued weights (`save_pretrained` writes their card)
    arch = meta["arch"]
    if num_classes is not None and num_classes != arch["num_classes"]:
        raise CheckpointError(f"{path}: the checkpoint's classifier has {arch['num_classes']} "
                              f"classes but {num_classes} were asked for (--num-classes)")
    model = CGNet(arch["num_classes"], m=arch["m"], n=arch["n"], dropout=arch["dropout"],
                  classifier_bias=arch.get("classifier_bias", False))
    load_state_into(model, state_dict, where=str(path))
    flush_subnormals_(model)
    model.meta = meta
    return model.to(device).eval()


def flush_subnormals_(model: nn.Module) -> int:
    """Set the weights and buffers below the smallest normal float (fp32: 1.2e-38) to zero, in
    place; returns how many there were.

    Adam's weight decay drives weights that get no gradient towards zero until they are subnormal
    (the shipped CamVid weights hold 159,811 of 494,258). x86 CPUs compute with subnormal operands
    in microcode: eager fp32 inference of those weights took 1.77 s a frame at 360x480 on a 2-core
    Intel Xeon, 0.14 s with them flushed (one thread with flush-to-zero). Zero changes any sum the
    weight enters by less than 1.2e-38 x its input, far below that sum's fp32 rounding, so
    inference (and every export, which starts from `load_model`) is unchanged. Training reads
    checkpoints through `load_checkpoint`, not here: a resumed run keeps its weights bit for bit."""
    flushed = 0
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if tensor.is_floating_point():
                tiny = (tensor.abs() < torch.finfo(tensor.dtype).tiny) & (tensor != 0)
                flushed += int(tiny.sum())
                tensor[tiny] = 0
    return flushed
