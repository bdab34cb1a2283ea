#!/usr/bin/env bash
# The deployment measurements (speed goals and accuracy cost of each fast path) in one run, on a
# quiet machine, with the shipped CamVid weights:
#   bash benchmarks/deploy_goals.sh [OUT_DIR]
# 1. cgnet bench at 360x480, 512x1024, 1024x2048 (every installed backend and precision, ratio to
#    eager fp32 in the same run); 2. CamVid test mIoU through each path, to compare with eager fp32.
set -euo pipefail
OUT=${1:-deploy_goals}
mkdir -p "$OUT"
cgnet bench --sizes 360x480 512x1024 1024x2048 --runs "${RUNS:-10}" --warmup 2 --json "$OUT/bench.json" \
  | tee "$OUT/bench.txt"
for path in "torch fp32" "onnxruntime fp32" "onnxruntime int8" "openvino fp32" "openvino bf16"; do
  set -- $path
  cgnet eval --dataset camvid --split test --backend "$1" --precision "$2" --json "$OUT/eval_$1_$2.json" \
    | tail -3 | sed "s/^/$1 $2: /"
done
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
base = json.loads((out / "eval_torch_fp32.json").read_text())["miou"]
for f in sorted(out.glob("eval_*.json")):
    m = json.loads(f.read_text())["miou"]
    print(f"{f.stem[5:]:<20} test mIoU {100 * m:6.2f}  change vs eager fp32 {100 * (m - base):+6.2f}")
PY
