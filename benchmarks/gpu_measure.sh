#!/usr/bin/env bash
# The one-GPU measurements in one device command, in two lanes that run side by side when the machine has two GPUs
# (each lane on a GPU of its own, so that no figure is taken on a shared GPU) and one after the other otherwise.
#
#   bash benchmarks/gpu_measure.sh            # on the device machine, after the wheels are installed
#
#   lane A (GPU 0): annotate_speed.py (24 h of $STATIONS stations, all four models, eager and compiled)
#                   -> annotate_gpu.md/.csv; window_cost.py --backbones sequential -> window_cost_gpu_sequential.md/.csv;
#                   then the Triton kernel's tests (tests/test_triton_mlstm.py, every case on CUDA)
#   lane B (GPU 1): the CUDA tests of the kernels and backbones (pytest -k gpu); tfla_agreement.py (the library's GPU
#                   kernel path against the quadratic mLSTM) -> tfla_agreement_padded.md/.csv; pretrain_speed.py,
#                   recipe 1 at batch 128 with the q/k/v forms dense and per_head -> pretrain_gpu.md;
#                   window_cost.py --backbones unet -> window_cost_gpu_unet.md/.csv
#
# Every step has a time limit (DEADLINE seconds from the start, default 540, less what the step needs to finish);
# a step that would start too late is skipped and says so in the log. What the steps wrote under
# benchmarks/results/ goes to $OUT/results.tar.gz after every step; their output (the tests' too) to $OUT/gpu_measure.log.
# Environment: OUT (/tmp/gpu_measure_out), DEADLINE (540), STATIONS (3), LABEL (a prefix for the report rows),
# SEISBENCH_XLSTM_SHARED_DATA (default .carry/data when it exists: the continuous record for annotate_speed).
# Measured on nvidia-h200-x2 (2026-11-29, DEADLINE=500, the older lane order): annotate_speed 234 s, window_cost 265 s
# (sequential) and 204 s (U-Net), pytest -k gpu 69 s, pretrain_speed with both forms 139 s; the Triton tests did not
# fit. tfla_agreement.py over three head dims, two lengths, eight batch sizes and one kernel: about 70 s.
# DRY_RUN=1: the same steps on this machine's CPU with tiny backbones (checks the wiring, not the figures).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 SEISBENCH_CACHE_ROOT=${SEISBENCH_CACHE_ROOT:-/tmp/sbcache}
if [ -z "${SEISBENCH_XLSTM_SHARED_DATA:-}" ] && [ -d .carry/data ]; then export SEISBENCH_XLSTM_SHARED_DATA=$PWD/.carry/data; fi
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_measure_out}; mkdir -p "$OUT"
LOG=$OUT/gpu_measure.log; DEADLINE=${DEADLINE:-540}; STATIONS=${STATIONS:-3}; LABEL=${LABEL:-h200}
T0=$(date +%s); R=benchmarks/results
DRY=${DRY_RUN:-0}; TINY=()
if [ "$DRY" = 1 ]; then  # this machine's CPU, tiny backbones, short records: checks the wiring, not the figures
  NGPU=2; TINY=(--tiny); R=$OUT/results; mkdir -p "$R"; export OMP_NUM_THREADS=1
else
  NGPU=$($PY -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
  if [ "$NGPU" -lt 1 ]; then echo "gpu_measure.sh: no CUDA device" | tee -a "$LOG"; exit 2; fi
fi
touch "$OUT/.start"

collect() {  # every results file written since the start, and the pytest log
  (find "$R" -newer "$OUT/.start" -type f -print0 | tar czf "$OUT/results.tar.gz" --null -T -) 2>/dev/null || true
}
step() {  # step LANE NEEDED_SECONDS COMMAND...: runs COMMAND with what is left of the deadline as its time limit
  local lane=$1 need=$2; shift 2
  local left=$(( DEADLINE - ($(date +%s) - T0) ))
  if [ "$left" -lt "$need" ]; then
    echo "[$lane] skipped (${left}s left, needs ${need}s): $*" | tee -a "$LOG"; return 0
  fi
  echo "[$lane] $(( $(date +%s) - T0 ))s start: $*" | tee -a "$LOG"
  timeout --signal=TERM --kill-after=10 "$left" "$@" 2>&1 | grep -v -i warn | sed "s/^/[$lane] /" >> "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "[$lane] $(( $(date +%s) - T0 ))s end (rc $rc): $1 $2 $3" | tee -a "$LOG"
  collect
}
lane_a() {
  export CUDA_VISIBLE_DEVICES=0
  local hours=24 lengths=() tests=(tests/test_triton_mlstm.py)
  [ "$DRY" = 1 ] && { hours=0.05; lengths=(--lengths 256 1024); tests+=(-k rejects_bad_shapes); }
  step A 150 $PY benchmarks/annotate_speed.py --hours $hours --stations "$STATIONS" --batch-sizes 256 --overlaps 512 \
    --repeats 2 --compile both "${TINY[@]}" --out $R/annotate_gpu.md
  step A 90 $PY benchmarks/window_cost.py --backbones sequential --max-seconds 20 "${TINY[@]}" "${lengths[@]}" \
    --out $R/window_cost_gpu_sequential.md
  step A 60 $PY -m pytest -q -p no:cacheprovider "${tests[@]}"
}
lane_b() {
  export CUDA_VISIBLE_DEVICES=$(( NGPU > 1 ? 1 : 0 ))
  local lengths=() speed=(--batch 128 --compile yes)
  [ "$DRY" = 1 ] && { lengths=(--lengths 256 1024); speed=(--batch 2 --compile no --samples 1024 --steps 2 --tiny
                                                           --out $R/pretrain_gpu.md); }
  step B 60 $PY -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_backbones.py -k gpu
  [ "$DRY" = 1 ] || step B 60 $PY benchmarks/tfla_agreement.py --kernels chunkwise--triton_xl_chunk --out $R/tfla_agreement_padded.md
  step B 150 $PY benchmarks/pretrain_speed.py --recipe masked "${speed[@]}" --qkv-form dense per_head \
    --label "$LABEL, shipped defaults"
  step B 90 $PY benchmarks/window_cost.py --backbones unet --max-seconds 20 "${TINY[@]}" "${lengths[@]}" \
    --out $R/window_cost_gpu_unet.md
}
trap 'echo "gpu_measure.sh: stopped by a signal" | tee -a "$LOG"; collect; exit 143' TERM INT
echo "gpu_measure.sh: $NGPU GPU(s), deadline ${DEADLINE}s, $(date -u +%FT%TZ)" | tee -a "$LOG"
if [ "$NGPU" -gt 1 ]; then
  lane_a & lane_b & wait
else
  lane_a; lane_b
fi
collect
echo "gpu_measure.sh: done after $(( $(date +%s) - T0 ))s" | tee -a "$LOG"
