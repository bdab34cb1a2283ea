"""Do the two XNNPACK-friendly rewrites of the inference simplification (the global context's
mean with keepdim, the injection's explicit padding) cost the desktop backends anything?

The shipped weights, simplified as `cgnet export` does, are written as ONNX twice: with the
rewrites and with them undone. Each file runs in ONNX Runtime and in OpenVINO (fp32) at 360x480,
batch 1, timed in alternating rounds; the ratio is without / with (above 1: the rewrites are
faster). The logits of the two files are compared too (the rewrites change no value).

    python -m benchmarks.xnnpack_rewrites --runs 30 --json results/xnnpack_rewrites.json
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.devices import alternating_medians
from cgnet import load_model
from cgnet.deploy.formats import write_onnx, write_openvino
from cgnet.deploy.runners import onnxruntime_runner, openvino_runner
from cgnet.deploy.simplify import KeepdimGlobalContext, simplify_for_inference
from cgnet.model import GlobalContext


def without_rewrites(simple: torch.nn.Module) -> torch.nn.Module:
    """The simplified model with both rewrites undone (same weights)."""
    for parent in list(simple.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, KeepdimGlobalContext):
                glo = GlobalContext.__new__(GlobalContext)
                torch.nn.Module.__init__(glo)
                glo.fc1, glo.fc2 = child.fc1, child.fc2
                setattr(parent, name, glo)
    simple.explicit_inject_pad = False
    return simple


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    model = load_model("camvid")
    meta = dict(model.meta, export_format="onnx", export_precision="fp32")
    x = np.random.default_rng(0).standard_normal((1, 3, 360, 480), dtype=np.float32)
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("with", "without"):
            simple = simplify_for_inference(model)
            if variant == "without":
                simple = without_rewrites(simple)
            onnx_path, ir_path = Path(tmp) / f"{variant}.onnx", Path(tmp) / f"{variant}.xml"
            write_onnx(simple, onnx_path, meta)
            write_openvino(simple, ir_path, meta)
            runners[f"onnxruntime {variant}"] = onnxruntime_runner(onnx_path)
            runners[f"openvino {variant}"] = openvino_runner(ir_path)
        same = {backend: float(np.abs(runners[f"{backend} with"](x) - runners[f"{backend} without"](x)).max())
                for backend in ("onnxruntime", "openvino")}
        medians = alternating_medians(runners, x, args.rounds, args.runs)
    result = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "median_ms_360x480": medians, "max_abs_logit_diff": same,
              "ratio_without_over_with": {b: medians[f"{b} without"] / medians[f"{b} with"]
                                          for b in ("onnxruntime", "openvino")}}
    for backend in ("onnxruntime", "openvino"):
        print(f"{backend:<12} with rewrites {medians[f'{backend} with']:6.1f} ms, without "
              f"{medians[f'{backend} without']:6.1f} ms: ratio without/with "
              f"{result['ratio_without_over_with'][backend]:.3f}; max |logit diff| {same[backend]:.2g}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
