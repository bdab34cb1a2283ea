"""Test mIoU of the OpenVINO int8 export with accuracy control, against eager fp32 and plain NNCF
post-training quantisation (no accuracy control), through the commands a user runs.

    python -m benchmarks.openvino_int8 --data-root ../shared/datasets/CamVid --out results/openvino_int8.json

1. `cgnet eval --dataset camvid --split test` (eager fp32 PyTorch);
2. `cgnet eval ... --backend openvino --precision int8` (the export with accuracy control, made once
   into a fresh cache folder and verified; its metadata says what was kept in float);
3. the same fp32 IR quantised by plain `nncf.quantize` (the formats table's writer without
   validation frames, calibrated on the same 200 training crops), verified like an export, and
   scored as `cgnet eval --backend openvino` scores a file (`PredictorModule` through `evaluate`;
   `cgnet eval` takes checkpoints, not exported files).
No timings: accuracy only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cgnet import load_model
from cgnet.common import DEFAULT_WEIGHTS
from cgnet.deploy import export as exporter
from cgnet.deploy.formats import FORMATS, read_exported_meta
from cgnet.data.catalog import dataset_from_meta
from cgnet.data.listset import SegDataset
from cgnet.deploy.predictor import PredictorModule, cache_dir, make_predictor
from cgnet.deploy.simplify import simplify_for_inference
from cgnet.engine.inference import evaluate, make_eval_loader


def cgnet(*argv: str, env: dict | None = None) -> dict:
    """Run `cgnet eval ...` as a user would, with --json; its printed lines and scores."""
    with tempfile.TemporaryDirectory() as tmp:
        scores = Path(tmp) / "scores.json"
        done = subprocess.run([sys.executable, "-m", "cgnet", "eval", *argv, "--json", str(scores)], env=env,
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"cgnet eval {' '.join(argv)} failed:\n{done.stderr}")
        return {"command": "cgnet eval " + " ".join(argv), "printed": done.stdout.splitlines(),
                "scores": json.loads(scores.read_text())}


def plain_int8(data_root: str, out: Path) -> dict:
    """The shipped weights' IR quantised by plain NNCF post-training quantisation, verified on 8
    val frames as `cgnet export` verifies (not kept on failure: the report says so)."""
    model = load_model(DEFAULT_WEIGHTS)
    meta = dict(model.meta, export_format="openvino", export_precision="int8", prelu_as_max=True)
    calibration = exporter.calibration_inputs(model, data_root)
    FORMATS["openvino"].write(simplify_for_inference(model), out, meta, "int8", calibration, validation=None)
    frames, source = exporter.verification_images(model.meta, data_root)
    report = exporter.verify(FORMATS["openvino"].load(out, "int8"), model, frames, "int8")
    return {"verification": exporter.verification_line(report, source, "int8"), "report": report,
            "int8": read_exported_meta(out)["int8"]}


def score_file(path: Path, data_root: str) -> dict:
    """Test scores of an exported file, as `cgnet eval --backend openvino` computes them."""
    predictor = make_predictor(path)
    info = dataset_from_meta(predictor.meta)
    root = Path(data_root)
    ds = SegDataset(root, info.split_path(root, "test"), info, predictor.meta["preprocess"], train=False)
    return {"scores": evaluate(PredictorModule(predictor), make_eval_loader(ds), info, "cpu", progress=False)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True, help="the JSON results file")
    args = p.parse_args()
    common = ["--dataset", "camvid", "--split", "test", "--data-root", args.data_root]
    results = {"eager_fp32": cgnet(*common)}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, CGNET_CACHE=cache)
        results["openvino_int8_accuracy_control"] = cgnet(*common, "--backend", "openvino", "--precision", "int8",
                                                          env=env)
        (file,) = cache_dir(cache).glob("*_int8*.xml")
        results["openvino_int8_accuracy_control"]["int8"] = read_exported_meta(file)["int8"]
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain_int8.xml"
        results["openvino_int8_plain"] = plain_int8(args.data_root, plain)
        results["openvino_int8_plain"].update(score_file(plain, args.data_root))
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    for name, r in results.items():
        print(f"{name}: test mIoU {100 * r['scores']['miou']:.2f}")


if __name__ == "__main__":
    main()
