#!/usr/bin/env bash
# Pretraining on several GPUs (issues 9 and 13): DDP scaling of both recipes, then recipe 1 on real data via DDP.
#
#   bash benchmarks/gpu_ddp.sh [STAGE ...]      STAGE: bench1 bench2 run report (default: bench1 bench2 run report)
#
#   bench1  benchmarks/pretrain_speed.py --devices 1 2 [4 8]: recipe 1 (masked, sequential), batch 128 per GPU, compiled
#   bench2  the same for recipe 2 (contrastive + VQ, U-Net), batch 64 per GPU
#   run     python -m pretrain $RUN_EXPERIMENT trainer.devices=$NGPU for $RUN_MINUTES minutes of training on real data
#           (../shared/data, or $SEISBENCH_XLSTM_SHARED_DATA, default .carry/data when it exists)
#   report  benchmarks/results/pretrain_ddp.md rewritten from its CSVs (after runs in separate calls)
#
# Installs nothing. Environment (defaults): NGPU (all visible GPUs), RUN_MINUTES (4), RUN_EXPERIMENT
# (xlstm_large/pure_mlstm_sequential_12m_local), WORKERS (loader workers per GPU: the runner's default, min(8, cores)),
# LABEL (h200xNGPU), OUT (/tmp/gpu_ddp_out), RUNS (/tmp/gpu_ddp_runs), STEPS (10 timed), WARMUP (3), RUN_OVERRIDES
# (more overrides for the run, e.g. "trainer.accumulate_grad_batches=2" for recipe 2 at 64 x 2 GPUs x 2 = 256),
# BENCH_DDP (DDP settings of the bench stages, e.g. "static_graph=true bucket_cap_mb=100": pretrain_speed.py --ddp),
# DEVICES (the device counts of the bench stages: 1 and every power of two up to NGPU, e.g. "1 4").
# DRY_RUN=1: the same commands on this machine's CPU (gloo) with tiny backbones and short windows.
# At most 10 minutes a device command: bench1 + bench2 should take about 5 (an estimate: compilation of both models
# on 1 and N GPUs plus 24 steps each), run about RUN_MINUTES + 3 (data, compilation, checkpoints);
# run them as two calls then ("bench1 bench2", "run"); whatever ran is copied to $OUT after every stage. Measured on
# nvidia-h200-x2 (2026-11-29): bench1 165 s, run with RUN_MINUTES=3 266 s.
# $OUT gets at most 5 files: pretrain_ddp.md/.csv, pretrain_ddp_runs.csv, gpu_ddp.log, run_logs.tar.gz.
# The local experiments read all of ../shared/data (NZ-DFDP's 21 MB too; without it the run stops at once with
# FileNotFoundError). Tree + .whl + all the data exceed the device's 64 MiB; the 2026-12-01 run carried 59 MiB by
# leaving the shipped weights (20.5 MB, not read by pretraining) out of the tree for that command:
#   W=seisbench_xlstm/weights/xlstmunetpicker/ncedc_dfdp.pt.v1; mv $W /tmp/ && git rm -q --cached $W   (before)
#   mv /tmp/ncedc_dfdp.pt.v1 $W && git reset -q $W                                                  (after)
set -euo pipefail
cd "$(dirname "$0")/.."
# NVLink multicast off, before anything starts NCCL (the Python code sets the same defaults)
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}
export NVSHMEM_DISABLE_NVLS=${NVSHMEM_DISABLE_NVLS:-1}
export PYTHONUNBUFFERED=1 SEISBENCH_CACHE_ROOT=${SEISBENCH_CACHE_ROOT:-/tmp/sbcache}
if [ -z "${SEISBENCH_XLSTM_SHARED_DATA:-}" ] && [ -d .carry/data ]; then export SEISBENCH_XLSTM_SHARED_DATA=$PWD/.carry/data; fi
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_ddp_out}; RUNS=${RUNS:-/tmp/gpu_ddp_runs}; mkdir -p "$OUT" "$RUNS"
DRY=${DRY_RUN:-0}
if [ "$DRY" = 1 ]; then NGPU=${NGPU:-2}; else NGPU=${NGPU:-$($PY -c 'import torch; print(torch.cuda.device_count())')}; fi
if [ "$NGPU" -lt 2 ]; then echo "gpu_ddp.sh: $NGPU GPU(s) visible; DDP needs 2 or more" >&2; exit 2; fi
if [ -z "${DEVICES:-}" ]; then DEVICES="1"; for n in 2 4 8; do [ "$n" -le "$NGPU" ] && DEVICES="$DEVICES $n"; done; fi
LABEL=${LABEL:-h200x$NGPU}; RUN_MINUTES=${RUN_MINUTES:-4}
RUN_EXPERIMENT=${RUN_EXPERIMENT:-xlstm_large/pure_mlstm_sequential_12m_local}
BENCH=(benchmarks/pretrain_speed.py --label "$LABEL" --steps "${STEPS:-10}" --warmup "${WARMUP:-3}")
RUN_ARGS=(trainer.devices="$NGPU" trainer.max_time="00:00:$(printf %02d "$RUN_MINUTES"):00" trainer.progress_bar=false
          trainer.log_every_n_steps=10 out_dir="$RUNS/ddp")
[ -n "${WORKERS:-}" ] && RUN_ARGS+=(data.num_workers="$WORKERS")
read -r -a EXTRA <<< "${RUN_OVERRIDES:-}"; RUN_ARGS+=("${EXTRA[@]}")
REPORT=benchmarks/results/pretrain_ddp.md
if [ "$DRY" = 1 ]; then  # CPU, gloo, tiny: checks the commands, not the figures
  REPORT=$OUT/pretrain_ddp.md
  BENCH+=(--tiny --samples 1024 --compile no --out "$REPORT")
  BATCH1=(--batch 2); BATCH2=(--batch 2)
  RUN_ARGS+=(trainer.accelerator=cpu trainer.strategy=ddp trainer.max_steps=4 trainer.log_every_n_steps=1
             data.window_len=1024 data.batch_size=2 data.windows_per_epoch=8 data.val_windows=4 data.num_workers=0
             backbone.qkv_proj_blocksize=4 "backbone.stem_channels=[8,16]" "backbone.decoder_channels=[16,16]" export=false)
  case $RUN_EXPERIMENT in  # each backbone has keys of its own
    *unet*) RUN_ARGS+=("backbone.dims=[16,32,64]" backbone.layers_per_stage=1) ;;
    *) RUN_ARGS+=(backbone.d_model=32 backbone.num_layers=2) ;;
  esac
  export OMP_NUM_THREADS=1
else
  BENCH+=(--compile yes)
  BATCH1=(--batch 128); BATCH2=(--batch 64)
fi
LOG=$OUT/gpu_ddp.log
to_log() {  # a stage's output, less Python's warning lines, to the terminal and $LOG
  grep -v -E 'Warning: |warnings\.warn\(' | tee -a "$LOG"
}
stage_bench() {  # $1: recipe, rest: batch arguments
  local recipe=$1; shift
  local ddp=(); read -r -a ddp <<< "${BENCH_DDP:-}"; [ ${#ddp[@]} -gt 0 ] && ddp=(--ddp "${ddp[@]}")
  $PY "${BENCH[@]}" --devices $DEVICES --recipe "$recipe" "${ddp[@]}" "$@" 2>&1 | to_log || return 1
}
stage_run() {
  $PY -m pretrain experiment="$RUN_EXPERIMENT" "${RUN_ARGS[@]}" 2>&1 | to_log || return 1
  $PY "${BENCH[@]}" --run-dir "$RUNS/ddp" 2>&1 | tail -n 20 | tee -a "$LOG" || return 1
}
collect() {  # results so far to $OUT (every call's $OUT starts empty)
  for f in "$REPORT" "${REPORT%.md}.csv" "${REPORT%.md}_runs.csv"; do
    if [ -f "$f" ] && [ "$(dirname "$f")" != "$OUT" ]; then cp "$f" "$OUT/"; fi
  done
  if [ -f "$RUNS/ddp/config.yaml" ]; then
    (cd "$RUNS/ddp" && tar czf "$OUT/run_logs.tar.gz" config.yaml logs $(ls loss_curve.png 2>/dev/null)) || true
  fi
}
trap collect EXIT
trap 'echo "gpu_ddp.sh: stopped by a signal" | tee -a "$LOG"; exit 143' TERM INT
STAGES=("$@"); [ ${#STAGES[@]} -eq 0 ] && STAGES=(bench1 bench2 run report)
echo "gpu_ddp.sh: stages ${STAGES[*]}; devices $DEVICES; label $LABEL; dry run $DRY; $(date -u +%FT%TZ)" | tee -a "$LOG"
failed=0
for stage in "${STAGES[@]}"; do
  start=$(date +%s)
  case $stage in
    bench1) stage_bench masked "${BATCH1[@]}" ;;
    bench2) stage_bench contrastive "${BATCH2[@]}" ;;
    run) stage_run ;;
    report) $PY "${BENCH[@]}" --regenerate | tail -n 40 ;;
    *) echo "unknown stage $stage (bench1 bench2 run report)" >&2; exit 2 ;;
  esac || { echo "gpu_ddp.sh: stage $stage FAILED" | tee -a "$LOG"; failed=1; }
  echo "gpu_ddp.sh: $stage took $(( $(date +%s) - start )) s" | tee -a "$LOG"
  collect  # after every stage: a command stopped at its time limit still returns what ran
done
exit $failed
