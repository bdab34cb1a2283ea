#!/usr/bin/env bash
# The prepared GPU benchmark job (the device machine), most important first, each step under its
# own time limit so that one device command (COMMAND_LIMIT s) holds them all:
#   1. `cgnet bench --device cuda --output labels`: frame on the host -> class ids on the host, eager
#      fp32 against the compiled + CUDA-graph fp32/fp16 paths at 360x480, 512x1024, 1024x2048,
#      with the argmax agreement on the carried CamVid test frames (goal: 3x at 99.9% agreement;
#      bf16 already measured 99.80%);
#   2. benchmarks/train_throughput.py: the CamVid step at batch 8: eager fp32, the CUDA-graph
#      baseline, the compiled model without a graph (so the profile lists its kernels);
#   3. benchmarks/gpu_latency.py: the model alone (input and output on the device), with
#      torch.profiler's top kernels, to tell the transfers from the compute;
#   4. benchmarks/cityscapes_projection.py: the `cityscapes` preset's step (680x680, batch 16)
#      on a generated 2048x1024 tree and the projected hours for 300 epochs (a projection).
# Every output goes to $OUT/<step>.txt; inductor's cache lives in $CACHE (default
# runs/inductor-cache, shared with scripts/gpu_camvid.sh's runs when given RUN's cache).
#   OUT=/tmp/out bash scripts/gpu_bench.sh                 # on the device machine
#   DRY_RUN=1 OUT=/tmp/out bash scripts/gpu_bench.sh       # every step on the CPU, tiny
# CHECKPOINT (default: the shipped camvid weights) is what step 1 runs; TEST_FRAMES (default
# gpu/CamVid-test-sample, 40 frames) is where its agreement frames come from.
set -u
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-$(if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi)}
OUT=${OUT:?set OUT to the folder for results}
COMMAND_LIMIT=${COMMAND_LIMIT:-590}
START=$SECONDS
CKPT_ARGS=()
[ -n "${CHECKPOINT:-}" ] && CKPT_ARGS=(--checkpoint "$CHECKPOINT")
if [ -n "${DRY_RUN:-}" ]; then  # the same steps, small, on the CPU: proves the script, not the speed
  DEVICE=cpu
  BENCH=(--sizes 48x64 64x96 --paths torch-eager-fp32 torch-fp32 --runs 2 --warmup 1 --agreement-frames 2)
  LATENCY=(--device cpu --size 64 96 --runs 3 --blocks 2 2 --rows fp32 "compiled+graph bf16 class ids" --profile)
  CITY=(--device cpu --images 4 --size 128 256 --warmup 1 --iters 2 -- --crop 64 64 --batch-size 2 --blocks 2 2)
  THROUGHPUT=(--device cpu --batch 2 --iters 2 --warmup 1 --crop 32 --blocks 2 2 --no-eval --modes fp32
              fp32+channels_last+compile --profile 2)
  TEST_FRAMES=${TEST_FRAMES:-${RUN_DATA:-/tmp/cgnet-bench-dry/data}}
  if [ ! -f "$TEST_FRAMES/camvid_test_list.txt" ]; then
    "$PY" -c "import sys; sys.path.insert(0, 'tests'); from helpers.camvid_like import make_camvid_like; \
make_camvid_like(sys.argv[1], counts={'train': 2, 'val': 1, 'test': 2}, size=(48, 64))" "$TEST_FRAMES"
  fi
else
  DEVICE=cuda
  BENCH=(--sizes 360x480 512x1024 1024x2048 --paths torch-eager-fp32 torch-compiled-cudagraph-fp32
         torch-compiled-cudagraph-fp16 --runs 30 --warmup 5 --agreement-frames 40)
  LATENCY=(--runs 30 --rows fp32 bf16+channels_last+graph "compiled+graph fp16 class ids" --profile)
  CITY=(--images 48 --warmup 5 --iters 20)
  THROUGHPUT=(--device cuda --batch 8 --iters 60 --warmup 5 --no-eval --modes fp32 bf16+channels_last+cudagraph
              bf16+channels_last+compile --profile 5)
  TEST_FRAMES=${TEST_FRAMES:-gpu/CamVid-test-sample}
fi
CACHE=${CACHE:-runs/inductor-cache}
mkdir -p "$OUT" "$CACHE"
CACHE_ABS=$(cd "$CACHE" && pwd)
export TORCHINDUCTOR_CACHE_DIR="$CACHE_ABS" TRITON_CACHE_DIR="$CACHE_ABS/triton" \
  TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1

step() {  # step NAME SECONDS COMMAND...: runs it for at most SECONDS (less if the command's time is short)
  local name=$1 want=$2; shift 2
  local left=$((COMMAND_LIMIT - (SECONDS - START) - 10))
  local limit=$((want < left ? want : left))
  if [ "$limit" -lt 20 ]; then echo "$name: skipped, no time left" | tee -a "$OUT/summary.txt"; return; fi
  echo "== $name (at most $limit s): $*" | tee -a "$OUT/summary.txt"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}

(nvidia-smi -L 2>/dev/null || true; "$PY" -c "import torch; print('torch', torch.__version__)") > "$OUT/env.txt" 2>&1
step bench_labels "${BENCH_TIMEOUT:-240}" "$PY" -m cgnet bench --device "$DEVICE" --output labels \
  --data-root "$TEST_FRAMES" --json "$OUT/bench_labels.json" "${CKPT_ARGS[@]}" "${BENCH[@]}"
step train_throughput "${THROUGHPUT_TIMEOUT:-240}" "$PY" -m benchmarks.train_throughput "${THROUGHPUT[@]}"
step gpu_latency "${LATENCY_TIMEOUT:-100}" "$PY" -m benchmarks.gpu_latency "${LATENCY[@]}"
step cityscapes_projection "${CITY_TIMEOUT:-150}" "$PY" -m benchmarks.cityscapes_projection "${CITY[@]}"
# the tables, without the profiles, in one place
for f in bench_labels train_throughput gpu_latency cityscapes_projection; do
  # profile rows ("12.3%   4.5ms ...") and their rules left out; progress lines kept (a cut-short step)
  [ -f "$OUT/$f.txt" ] && { echo "## $f"; grep -v -E '^-|^USDT|Self |% +[0-9.]+(us|ms|s) ' "$OUT/$f.txt" | tail -n 30; }
done > "$OUT/tables.txt"
cat "$OUT/tables.txt"
echo "gpu_bench done in $((SECONDS - START)) s"
