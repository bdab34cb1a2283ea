"""The two ONNX exporters of torch on the shipped weights (simplified for inference, as
`cgnet export` writes them): the TorchScript-based one (`dynamo=False`, opset 17) and the
torch.export-based one torch recommends (`dynamo=True`, opset 18, needs onnxscript).

For each: export time, graph size, the largest logit difference to eager PyTorch at three sizes,
and ONNX Runtime's median latency at 360x480, with the ratio of the two measured in this run
(interleaved rounds, so that a machine's drift hits both alike).

    python -m benchmarks.onnx_exporters --runs 30 --json results/onnx_exporters.json
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.devices import alternating_medians
from cgnet import load_model
from cgnet.deploy.runners import onnxruntime_runner
from cgnet.deploy.simplify import simplify_for_inference

SIZES = ((40, 48), (53, 77), (360, 480))


def export(model, path: Path, dynamo: bool) -> float:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (torch.randn(2, 3, 96, 128),), str(path), input_names=["image"],
                              output_names=["logits"], opset_version=18, dynamo=True,
                              dynamic_shapes=({0: "batch", 2: "height", 3: "width"},))
        else:
            torch.onnx.export(model, (torch.randn(1, 3, 96, 128),), str(path), input_names=["image"],
                              output_names=["logits"], opset_version=17, dynamo=False,
                              dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                            "logits": {0: "batch", 2: "height", 3: "width"}})
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed calls per exporter and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", dest="json_out", help="write the figures here")
    args = parser.parse_args()
    import onnx  # the onnx extra
    model = load_model("camvid")
    simple = simplify_for_inference(model)
    result = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "exporters": {}}
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, dynamo in (("torchscript", False), ("dynamo", True)):
            path = Path(tmp) / f"{name}.onnx"
            seconds = export(simple, path, dynamo)
            run = onnxruntime_runner(path)
            diffs = []
            for h, w in SIZES:
                x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h))
                with torch.no_grad():
                    diffs.append(float(np.abs(run(x.numpy()) - model(x).numpy()).max()))
            result["exporters"][name] = {"export_s": seconds, "nodes": len(onnx.load(str(path)).graph.node),
                                         "max_abs_diff": dict(zip(["x".join(map(str, s)) for s in SIZES], diffs))}
            runners[name] = run
        x = np.random.default_rng(0).standard_normal((1, 3, 360, 480), dtype=np.float32)
        medians = alternating_medians(runners, x, args.rounds, args.runs)
    for name in runners:
        result["exporters"][name]["median_ms_360x480"] = medians[name]
    result["latency_ratio_torchscript_over_dynamo"] = (result["exporters"]["torchscript"]["median_ms_360x480"]
                                                       / result["exporters"]["dynamo"]["median_ms_360x480"])
    for name, row in result["exporters"].items():
        print(f"{name:<12} export {row['export_s']:6.1f} s  nodes {row['nodes']:4d}  ORT median "
              f"{row['median_ms_360x480']:6.1f} ms  max |diff| {max(row['max_abs_diff'].values()):.2g}")
    print(f"ORT latency, TorchScript-exported / dynamo-exported: {result['latency_ratio_torchscript_over_dynamo']:.3f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
