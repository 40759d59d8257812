#!/usr/bin/env bash
# Kernel settings and the training step's profile on a GPU machine (issues 8 and 12), one device command.
#
#   bash benchmarks/gpu_tuning.sh          (2 GPUs: the two halves run side by side; 1 GPU: one after the other)
#
# GPU A: benchmarks/kernel_tuning.py --write-params (TFLA settings per call shape of both backbones), then
#        benchmarks/pretrain_speed.py for both recipes, compiled, with the tuned settings ("tuned TFLA settings").
# GPU B: the same speed runs with the kernel's own settings (SEISBENCH_XLSTM_TFLA_TUNED=0) and a profiler table of
#        each configuration ("default TFLA settings").
# Everything lands in $RES (default /tmp/gpu_tuning) and, packed, in $OUT/gpu_tuning.tgz when OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 DISABLE_LLVM_OPT=1
PY=${PYTHON:-python3}
RES=${RES:-/tmp/gpu_tuning}; mkdir -p "$RES"
NGPU=$($PY -c 'import torch; print(torch.cuda.device_count())')
B=$([ "$NGPU" -ge 2 ] && echo 1 || echo 0)
pack() { [ -n "${OUT:-}" ] && tar czf "$OUT/gpu_tuning.tgz" -C "$RES" . && ls -la "$OUT"; }
trap pack EXIT
speed() {  # $1 label, $2 report stem, rest: extra arguments
  local label=$1 stem=$2; shift 2
  $PY benchmarks/pretrain_speed.py --recipe masked --batch 128 --compile yes --steps 8 --label "$label" \
    --out "$RES/$stem.md" "$@" && \
  $PY benchmarks/pretrain_speed.py --recipe contrastive --batch 64 256 --compile yes --steps 8 --label "$label" \
    --out "$RES/$stem.md" "$@"
}
(CUDA_VISIBLE_DEVICES=$B SEISBENCH_XLSTM_TFLA_TUNED=0 speed "default TFLA settings" speed_default \
   --profile "$RES/profiles" > "$RES/speed_default.log" 2>&1; echo "default speed runs: exit $?") &
CUDA_VISIBLE_DEVICES=0 timeout 330 $PY benchmarks/kernel_tuning.py --budget-s ${BUDGET_S:-45} --write-params \
  --out "$RES/kernel_tuning.md" > "$RES/tuning.log" 2>&1; echo "tuning: exit $?"
cp seisbench_xlstm/tfla_params.json "$RES/" 2>/dev/null
[ "$B" = 0 ] && wait
CUDA_VISIBLE_DEVICES=0 speed "tuned TFLA settings" speed_tuned > "$RES/speed_tuned.log" 2>&1; echo "tuned speed runs: exit $?"
wait
tail -n 5 "$RES"/*.log
