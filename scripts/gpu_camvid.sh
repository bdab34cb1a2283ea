#!/usr/bin/env bash
# The prepared GPU job (the device machine): a short training-throughput benchmark, then the
# `camvid` preset for the paper's full 800 epochs (train+val, 360x360, batch 8) with the fastest
# step (--compile on CUDA: forward, loss, backward and Adam compiled by inductor and replayed as
# one CUDA graph, checked against eager; it falls back to the eager step's CUDA graph), validating
# every 50 epochs. A device command may run 10 minutes, so the run is chained:
#   PART=1  benchmark (<= BENCH_TIMEOUT s, default 400: two cold compiles), then train until the
#           command's time is nearly up;
#   PART=2  train --resume to the end (run it right after PART=1, while the machine is warm, or
#           carry the run folder RUN, which holds last.pt and the inductor cache).
# Inductor's caches live in RUN/inductor-cache, so the second command (and the training after
# the benchmark) reuses the kernels the first compiled. Each part copies the checkpoints, the
# log, the curve, its console output and the cache (as a .tar.gz, if under 30 MB) to $OUT.
#   DATA=gpu/CamVid-trainval-jpeg OUT=/tmp/out bash scripts/gpu_camvid.sh            # PART=1
#   PART=2 DATA=gpu/CamVid-trainval-jpeg OUT=/tmp/out bash scripts/gpu_camvid.sh
#   DRY_RUN=1 OUT=/tmp/out bash scripts/gpu_camvid.sh   # both parts on the CPU, tiny, end to end
# FIT=1 instead fits the schedule into PART=1 alone (--time-budget = the command's time left),
# for a device session too short for two commands; SKIP_BENCH=1 skips the benchmark.
# EXTRA="--time-budget M" fits the schedule into M minutes of wall-clock over both parts (set-up,
# compiling and the resume included; the time limit's SIGTERM saves part 1 where it stands).
# Measured on an H200 (results/gpu_h200_camvid_run.txt): 149 s of cold compiling, ~1.0 s per epoch,
# ~45 s to resume, so 800 epochs need 15-17 minutes in all (more than a 15-minute device session).
# Across device sessions: run without FIT and EXTRA, so the schedule stays the preset's 800
# epochs; each part stops at its command's limit and saves exactly where it stands. Put $OUT's
# last.pt, best.pt, log.jsonl and config.json back into runs/camvid-gpu on the home machine
# (ignored by git; ~9 MB), carry it with the data to the next session (carry: gpu, runs/camvid-gpu;
# ~57 MB of the 64 MiB) and run PART=2 there: the run resumes bit for bit (after a cold compile).
# The benchmarks for inference and the Cityscapes projection are scripts/gpu_bench.sh.
set -u
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-$(if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi)}
OUT=${OUT:?set OUT to the folder for results}
PART=${PART:-1}
COMMAND_LIMIT=${COMMAND_LIMIT:-600}   # seconds one device command may run
START=$SECONDS
if [ -n "${DRY_RUN:-}" ]; then
  # the same steps on the CPU with a small net, crop and dataset: proves the script, not the speed
  DEVICE=cpu
  RUN=${RUN:-/tmp/cgnet-camvid-dry}
  DATA=${DATA:-../shared/datasets/CamVid-trainval-jpeg}
  if [ ! -f "$DATA/camvid_trainval_list.txt" ]; then
    DATA=$RUN/data
    "$PY" -c "import sys; sys.path.insert(0, 'tests'); from helpers.camvid_like import make_camvid_like; \
make_camvid_like(sys.argv[1], counts={'train': 12, 'val': 4, 'test': 2}, size=(96, 128))" "$DATA"
  fi
  BENCH_ARGS="--batch 2 --iters 2 --warmup 1 --crop 32 --blocks 2 2"
  # a cold inductor compile of the whole step takes ~100 s on 2 CPU cores (tests/test_steps.py
  # checks it); add fp32+channels_last+compiled-step to BENCH_MODES to see its row here too
  BENCH_MODES=${BENCH_MODES:-fp32 fp32+channels_last}
  # part 1 stops after 3 iterations (as the timeout stops the real one); part 2 resumes and
  # finishes the 2 epochs (validation, best.pt, log and curve)
  TRAIN_ARGS="--epochs 2 --crop 64 --blocks 2 2 --workers 1 $([ "$PART" = 1 ] && echo --max-iters 3)"
else
  DEVICE=${DEVICE:-cuda}
  RUN=${RUN:-runs/camvid-gpu}
  DATA=${DATA:-gpu/CamVid-trainval-jpeg}
  BENCH_ARGS="--batch 8 --iters ${BENCH_ITERS:-100} --warmup 5 --no-eval"
  BENCH_MODES=${BENCH_MODES:-fp32 bf16+channels_last+cudagraph bf16+channels_last+compiled-step bf16+channels_last+compiled-fwdbwd}
  # last.pt every 10 epochs (~9 s of an H200): the time limit's SIGTERM saves where the run is anyway
  TRAIN_ARGS="--save-every 10"
fi
CACHE=$RUN/inductor-cache
mkdir -p "$OUT" "$RUN"
if [ ! -d "$CACHE" ] && [ -f "$RUN/inductor-cache.tar.gz" ]; then  # a carried run folder
  tar -xzf "$RUN/inductor-cache.tar.gz" -C "$RUN"
fi
mkdir -p "$CACHE"
CACHE_ABS=$(cd "$CACHE" && pwd)
export TORCHINDUCTOR_CACHE_DIR="$CACHE_ABS" TRITON_CACHE_DIR="$CACHE_ABS/triton" \
  TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1

if [ "$PART" = 1 ]; then
  (nvidia-smi -L || true; "$PY" -c "import torch, cv2; print('torch', torch.__version__, 'cv2', cv2.__version__)") \
    2>&1 | tee "$OUT/env.txt"
  if [ -z "${SKIP_BENCH:-}" ]; then
    # shellcheck disable=SC2086
    timeout "${BENCH_TIMEOUT:-400}" "$PY" -m benchmarks.train_throughput --device "$DEVICE" $BENCH_ARGS \
      --modes $BENCH_MODES 2>&1 | tee "$OUT/throughput.txt"
  fi
  if [ -n "${LATENCY:-}" ] && [ "$DEVICE" = cuda ]; then
    timeout 40 "$PY" -m benchmarks.gpu_latency --runs 30 2>&1 | tee "$OUT/latency.txt"
  fi
fi

train() {  # stops at the command's limit (less time to copy the results): its SIGTERM saves last.pt there
  local limit=$((COMMAND_LIMIT - (SECONDS - START) - ${COPY_MARGIN:-40}))
  if [ "$limit" -lt 30 ]; then echo "no time left to train in this command" | tee -a "$OUT/train_log.txt"; return 124; fi
  echo "training for at most $limit s: $*" | tee -a "$OUT/train_log.txt"
  # shellcheck disable=SC2086
  timeout "$limit" "$PY" -m cgnet train --preset camvid --data-root "$DATA" --out "$RUN" --device "$DEVICE" \
    --compile --val-every 50 --no-progress $TRAIN_ARGS ${EXTRA:-} "$@" 2>&1 | tee -a "$OUT/train_log.txt"
  return "${PIPESTATUS[0]}"
}
if [ "$PART" = 1 ] && [ ! -f "$RUN/last.pt" ]; then
  if [ -n "${FIT:-}" ]; then
    # FIT=1: one command holds the whole schedule: --time-budget is this command's time left
    # (setup and compilation count against it), so the poly schedule ends inside it
    budget=$((COMMAND_LIMIT - (SECONDS - START) - ${COPY_MARGIN:-40} - 10))
    train --time-budget "$(awk -v s="$budget" 'BEGIN { printf "%.2f", s / 60 }')"
  else
    train
  fi
else
  train --resume
fi
rc=$?
if [ "$rc" = 124 ]; then
  echo "stopped at the command's time limit; continue with PART=2 (--resume)" | tee -a "$OUT/train_log.txt"
elif [ "$rc" != 0 ] && tail -n 5 "$OUT/train_log.txt" | grep -q "the loss became"; then
  # a non-finite loss: continue from the last good epoch in fp32
  if [ -f "$RUN/last.pt" ]; then train --resume --amp off; else train --amp off; fi
fi

"$PY" -m cgnet plot "$RUN" >/dev/null 2>&1
for f in best.pt last.pt log.jsonl curve.png config.json; do
  [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/$f"
done
tar -czf "$RUN/inductor-cache.tar.gz" -C "$RUN" inductor-cache
size=$(stat -c %s "$RUN/inductor-cache.tar.gz")
if [ "$size" -lt $((30 * 1024 * 1024)) ]; then cp "$RUN/inductor-cache.tar.gz" "$OUT/"; else
  echo "inductor cache is $((size / 1024 / 1024)) MB: not copied to \$OUT"; fi
tail -n 2 "$RUN/log.jsonl" 2>/dev/null
ls -la "$OUT"
echo "part $PART done in $((SECONDS - START)) s"
