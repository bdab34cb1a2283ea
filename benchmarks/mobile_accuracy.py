"""Test-split mIoU of the phone formats (cgnet.deploy.mobile) of a checkpoint: accuracy only.

    python benchmarks/mobile_accuracy.py --data-root data/CamVid --out /tmp/phone pte_fp32 pte_int8 tflite_fp32

Each named file is written into --out (reused when already there) at the default fixed size and
run through its runner on every test frame (other sizes are resized to it and back); the int8
file is calibrated on 200 training crops (`cgnet.deploy.export.calibration_inputs`).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from cgnet.checkpoint import load_model
from cgnet.common import DEFAULT_WEIGHTS
from cgnet.data.catalog import dataset_from_meta
from cgnet.data.listset import SegDataset
from cgnet.deploy import mobile
from cgnet.deploy.export import calibration_inputs
from cgnet.deploy.runners import torch_runner
from cgnet.deploy.simplify import simplify_for_inference
from cgnet.metrics import ConfusionMatrix

WRITERS = {"pte_fp32": ("fp32.pte", mobile.write_executorch, mobile.executorch_runner, "fp32"),
           "pte_int8": ("int8.pte", mobile.write_executorch, mobile.executorch_runner, "int8"),
           "tflite_fp32": ("fp32.tflite", mobile.write_litert, mobile.litert_runner, "fp32")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", nargs="+", choices=["eager", *WRITERS])
    p.add_argument("--checkpoint", default=DEFAULT_WEIGHTS)
    p.add_argument("--data-root", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="folder for the phone files")
    args = p.parse_args()
    model = load_model(args.checkpoint)
    simple = simplify_for_inference(model)
    info = dataset_from_meta(model.meta)
    args.out.mkdir(parents=True, exist_ok=True)
    runners = {}
    for name in args.which:
        if name == "eager":
            runners[name] = torch_runner(model, "fp32", "cpu", channels_last=False)
            continue
        filename, write, runner, precision = WRITERS[name]
        path = args.out / filename
        if not path.exists():
            start = time.time()
            calibration = calibration_inputs(model, args.data_root) if precision == "int8" else None
            write(simple, path, model.meta, precision, calibration)
            print(f"wrote {path} in {time.time() - start:.0f} s", flush=True)
        runners[name] = runner(path, precision)
    ds = SegDataset(args.data_root, info.split_path(args.data_root, "test"), info, model.meta["preprocess"])
    matrices = {name: ConfusionMatrix(info.num_classes, info.ignore_index) for name in runners}
    for i in tqdm(range(len(ds)), desc="test frames"):
        image, label, _ = ds[i]
        for name, run in runners.items():
            matrices[name].update(torch.from_numpy(run(image[None].numpy())[0].argmax(0)), label)
    for name, matrix in matrices.items():
        print(f"{name}: test mIoU {100 * matrix.scores()['miou']:.2f} over {len(ds)} frames")


if __name__ == "__main__":
    main()
