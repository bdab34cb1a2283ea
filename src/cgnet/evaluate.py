"""`cgnet eval` and `cgnet test`: scoring, multi-scale + flip inference, saved predictions and
the Cityscapes server submission."""
from __future__ import annotations

import argparse
import json
import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from . import data as D
from .datasets import DATASETS, DatasetInfo, resolve_dataset
from .metrics import ConfusionMatrix, scores_table
from .preprocess import check_spec, make_spec
from .runtime import make_predictor


def make_eval_loader(ds, rank: int = 0, world: int = 1, workers: int = 1) -> DataLoader:
    # each rank takes every world-th image, without the padding DistributedSampler adds
    return DataLoader(ds, batch_size=1, sampler=list(range(rank, len(ds), world)), num_workers=workers)


@torch.no_grad()
def predict_logits(model, image: torch.Tensor, *, scales=(1.0,), flip: bool = False, amp: str = "off",
                   channels_last: bool = False) -> torch.Tensor:
    """Class scores at the image's size: softmax averaged over scales (and flips) when more than one
    view is used, plain logits for a single view."""
    from .train import autocast
    size = image.shape[-2:]
    views = [(s, f) for s in scales for f in ((False, True) if flip else (False,))]
    total = None
    for scale, flipped in views:
        x = image
        if scale != 1.0:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        if flipped:
            x = x.flip(-1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(image.device, amp):
            out = model(x).float()
        if flipped:
            out = out.flip(-1)
        if out.shape[-2:] != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        if len(views) > 1:
            out = out.softmax(1)
        total = out if total is None else total + out
    return total


@torch.no_grad()
def evaluate(model, loader, info: DatasetInfo, device, *, amp: str = "off", channels_last: bool = False,
             scales=(1.0,), flip: bool = False, progress: bool = True, save_dir: Path | None = None) -> dict:
    """Confusion matrix over the loader's images (all-reduced across ranks) -> scores."""
    from tqdm import tqdm
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(info.num_classes, info.ignore_index, device)
    ds = loader.dataset
    for image, label, index in tqdm(loader, desc="evaluate", disable=not progress, leave=False, dynamic_ncols=True):
        logits = predict_logits(model, image.to(device), scales=scales, flip=flip, amp=amp,
                                channels_last=channels_last)
        pred = logits.argmax(1)
        if label.numel():
            cm.update(pred, label.to(device))
        if save_dir is not None:
            for p, i in zip(pred, index.tolist()):
                save_prediction(p.cpu().numpy().astype(np.uint8), ds.samples[i].image, info, save_dir)
    cm.all_reduce()
    model.train(was_training)
    return cm.scores()


def save_prediction(pred: np.ndarray, image_path: Path, info: DatasetInfo, save_dir: Path) -> None:
    """Train-id PNG, colour PNG and overlay (image blended with the colours) for one image."""
    stem = image_path.stem
    for sub in ("trainids", "color", "overlay"):
        (save_dir / sub).mkdir(parents=True, exist_ok=True)
    color = D.colorize(pred, info.palette)
    cv2.imwrite(str(save_dir / "trainids" / f"{stem}.png"), pred)
    cv2.imwrite(str(save_dir / "color" / f"{stem}.png"), cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
    image = D.read_image(image_path)
    overlay = (0.5 * image + 0.5 * color).astype(np.uint8)
    cv2.imwrite(str(save_dir / "overlay" / f"{stem}.jpg"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))


# ---- command line --------------------------------------------------------------------------

def add_eval_args(p: argparse.ArgumentParser, *, test: bool = False) -> None:
    p.add_argument("--checkpoint", help="our checkpoint or the original release's (default: shipped weights)")
    p.add_argument("--dataset", help="camvid or cityscapes (default: from the checkpoint)")
    p.add_argument("--data-root", help="dataset folder (default: $CGNET_DATA, ./data/<dataset>, ../shared/datasets/<dataset>)")
    if not test:
        p.add_argument("--split", default="val", help="val, test, train, trainval or a list file (default val)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--scales", type=lambda s: [float(v) for v in s.split(",")], default=[1.0],
                   help="comma-separated scales, e.g. 0.5,0.75,1,1.25,1.5,1.75 (default 1)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False, help="add horizontally flipped views")
    p.add_argument("--preprocess", choices=["standard", "original"], help="override the checkpoint's")
    p.add_argument("--mean", type=lambda s: [float(v) for v in s.replace(",", " ").split()],
                   help="3 values (original mode: B,G,R on 0-255, as the release computed them)")
    p.add_argument("--std", type=lambda s: [float(v) for v in s.replace(",", " ").split()])
    p.add_argument("--device", default=None)
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off", help="autocast for the torch backend")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "openvino"], default="torch",
                   help="run the model through an exported file (see cgnet export) instead of PyTorch")
    p.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32",
                   help="with --backend: openvino bf16, onnxruntime int8")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--save-dir", help="write train-id PNGs, colour PNGs and overlays here")
    p.add_argument("--json", dest="json_out", help="also write the scores to this JSON file")
    if test:
        p.add_argument("--out", default="submission", help="folder for the Cityscapes submission")


def default_data_root(dataset: str) -> Path:
    folder = {"camvid": "CamVid", "cityscapes": "cityscapes"}.get(dataset, dataset)
    candidates = []
    if os.environ.get("CGNET_DATA"):
        candidates.append(Path(os.environ["CGNET_DATA"]))
    candidates += [Path("data") / folder, Path("..") / "shared" / "datasets" / folder]
    for c in candidates:
        if c.is_dir():
            return c
    hint = "cgnet data download camvid --root data/CamVid" if dataset == "camvid" else \
        "download it from cityscapes-dataset.com, then cgnet data cityscapes-trainids and cgnet data lists"
    raise FileNotFoundError(f"no {dataset} data in {', '.join(map(str, candidates))}; give --data-root "
                            f"or set CGNET_DATA (to get it: {hint})")


class PredictorModule(torch.nn.Module):
    """An exported model (cgnet.runtime.Predictor) where evaluate() expects a torch module."""

    def __init__(self, predictor):
        super().__init__()
        self.predictor = predictor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.predictor.run(x.detach().float().cpu().numpy()), dtype=np.float32))


def setup_eval(args: argparse.Namespace, split: str):
    """Model, dataset description, preprocessing and dataset for eval/test."""
    from .checkpoint import load_model
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(args.checkpoint or "camvid", num_classes=args.num_classes, device=device)
    meta = model.meta
    name = args.dataset or meta.get("dataset")
    if name is None:
        raise ValueError("the checkpoint does not say its dataset: give --dataset camvid or cityscapes")
    if name in DATASETS:
        info = resolve_dataset(name)
    else:  # a custom dataset: its description travels in the checkpoint
        info = resolve_dataset(name, meta.get("classes"), meta.get("ignore_index"), meta.get("palette"))
    if model.num_classes != info.num_classes:
        raise ValueError(f"the model has {model.num_classes} classes but {name} has {info.num_classes}")
    if args.preprocess or meta.get("preprocess") is None:
        if args.preprocess is None:
            raise ValueError("the checkpoint stores no preprocessing (an original release file?): give "
                             "--preprocess original --mean B,G,R (the release's dataset mean, 0-255 scale)")
        spec = make_spec(args.preprocess, mean=args.mean, std=args.std)
    else:
        spec = check_spec(meta["preprocess"])
    if getattr(args, "backend", "torch") != "torch":
        model = PredictorModule(make_predictor(args.checkpoint or "camvid", backend=args.backend,
                                               precision=args.precision))
        device = torch.device("cpu")
    root = Path(args.data_root) if args.data_root else default_data_root(name)
    list_file = info.split_path(root, split)
    ds = D.SegDataset(root, list_file, info, spec, train=False, labels=False)
    return model, info, ds, device


def cmd_eval(args: argparse.Namespace) -> int:
    return score(args, *setup_eval(args, args.split))


def score(args: argparse.Namespace, model, info: DatasetInfo, ds, device) -> int:
    if any(s.label is None for s in ds.samples):
        raise ValueError(f"{ds.list_file} has images without labels: nothing to score "
                         "(use cgnet test for a submission)")
    loader = make_eval_loader(ds, workers=args.workers)
    save_dir = Path(args.save_dir) if args.save_dir else None
    scores = evaluate(model, loader, info, device, amp=args.amp, scales=args.scales, flip=args.flip,
                      save_dir=save_dir)
    views = f"scales {','.join(map(str, args.scales))}" + (" + flip" if args.flip else "")
    print(f"{info.name} {args.split}: {len(ds)} images, {views}")
    print(scores_table(scores, info.classes))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"dataset": info.name, "split": args.split,
                                                   "scales": args.scales, "flip": args.flip, **scores}, indent=1))
    if save_dir is not None:
        print(f"predictions in {save_dir}/trainids, color, overlay")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    """Cityscapes: label-id PNGs named after the frames, and a zip. Other datasets: score the test split."""
    from .cityscapes import train_ids_to_label_ids
    from tqdm import tqdm
    args.split = "test"
    model, info, ds, device = setup_eval(args, "test")
    if info.name != "cityscapes":
        return score(args, model, info, ds, device)
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    for image, _, index in tqdm(make_eval_loader(ds, workers=args.workers), desc="cityscapes test"):
        pred = predict_logits(model, image.to(device), scales=args.scales, flip=args.flip, amp=args.amp).argmax(1)
        ids = train_ids_to_label_ids(pred[0].cpu().numpy().astype(np.uint8))
        name = ds.samples[int(index)].image.name  # <city>_<seq>_<frame>_leftImg8bit.png
        cv2.imwrite(str(out / "results" / name), ids)
    archive = out / "submission.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted((out / "results").glob("*.png")):
            z.write(f, f.name)
    print(f"{len(ds)} label-id PNGs in {out / 'results'}; upload {archive} to the Cityscapes server")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: shipped (or given) weights scored on the CamVid test split, with a per-class
    table, overlays of a few frames and an image | ground truth | prediction grid in one folder."""
    from .checkpoint import load_model
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(args.checkpoint or "camvid", device=device)
    info = resolve_dataset(model.meta.get("dataset") or "camvid")
    root = Path(args.data_root) if args.data_root else default_data_root(info.name)
    spec = check_spec(model.meta["preprocess"])
    ds = D.SegDataset(root, root / info.list_file("test"), info, spec, train=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"scoring {args.checkpoint or 'the shipped camvid weights'} on {len(ds)} test frames from {root}")
    scores = evaluate(model, make_eval_loader(ds, workers=args.workers), info, device)
    table = scores_table(scores, info.classes)
    print(table)
    (out / "per_class_iou.txt").write_text(table + "\n")
    (out / "scores.json").write_text(json.dumps({"dataset": info.name, "split": "test", "data_root": str(root),
                                                 **scores}, indent=1))
    picks = np.linspace(0, len(ds) - 1, args.frames).round().astype(int).tolist()
    rows = []
    with torch.no_grad():
        for i in picks:
            image, label, _ = ds[i]
            pred = predict_logits(model, image[None].to(device)).argmax(1)[0].cpu().numpy().astype(np.uint8)
            save_prediction(pred, ds.samples[i].image, info, out / "frames")
            rgb = D.read_image(ds.samples[i].image)
            rows.append(np.concatenate([rgb, D.colorize(label.numpy().astype(np.uint8), info.palette),
                                        D.colorize(pred, info.palette)], 1))
    cv2.imwrite(str(out / "grid.png"), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
    print(f"\nwrote {out}/per_class_iou.txt, scores.json, grid.png (image | ground truth | prediction) "
          f"and {len(picks)} frames' overlays in {out}/frames/overlay")
    return 0
