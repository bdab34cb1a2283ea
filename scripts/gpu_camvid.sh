#!/usr/bin/env bash
# One prepared GPU job (the device machine): training throughput on the GPU, then the `camvid`
# preset (800 epochs on train+val, 360x360, batch 8) fitted to a time budget, from the JPEG copy
# of CamVid train+val. Results land in $OUT (at most 8 files): score them on the PNG test set here.
#   DATA=gpu/CamVid-trainval-jpeg BUDGET=7 OUT=/tmp/out bash scripts/gpu_camvid.sh
set -u
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DATA=${DATA:-gpu/CamVid-trainval-jpeg}
OUT=${OUT:?set OUT to the folder for results}
BUDGET=${BUDGET:-7}
DEVICE=${DEVICE:-cuda}
RUN=${RUN:-/tmp/cgnet-camvid-gpu}
mkdir -p "$OUT"
(nvidia-smi -L || true; python3 -c "import torch, cv2; print('torch', torch.__version__, 'cv2', cv2.__version__)") \
  2>&1 | tee "$OUT/env.txt"
if [ -z "${SKIP_BENCH:-}" ]; then
  timeout "${BENCH_TIMEOUT:-100}" python3 benchmarks/train_throughput.py --device "$DEVICE" --batch 8 32 \
    --iters "${BENCH_ITERS:-40}" --warmup 10 --modes fp32 fp32+channels_last bf16+channels_last fp32+channels_last+cudagraph bf16+channels_last+cudagraph \
    2>&1 | tee "$OUT/throughput.txt"
  timeout 40 python3 benchmarks/gpu_latency.py --runs 30 2>&1 | tee "$OUT/latency.txt"
fi
train() {
  timeout "${TRAIN_LIMIT:-$(python3 -c "print(int($BUDGET * 60 + 90))")}" python3 -m cgnet train --preset camvid --data-root "$DATA" --out "$RUN" --device "$DEVICE" \
    --time-budget "$BUDGET" --val-every 50 --no-progress ${EXTRA:-} "$@" 2>&1 | tee -a "$OUT/train_log.txt"
  return "${PIPESTATUS[0]}"
}
# a run that stops on a non-finite loss continues from its last good epoch in fp32
train || { if [ -f "$RUN/last.pt" ]; then train --resume --amp off; else train --amp off; fi; }
python3 -m cgnet plot "$RUN" >/dev/null 2>&1
for f in best.pt last.pt log.jsonl curve.png; do
  [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/$f"
done
ls -la "$OUT"
