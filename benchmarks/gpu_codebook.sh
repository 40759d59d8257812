#!/usr/bin/env bash
# Recipe-2 pretraining runs side by side on one GPU, one per arm (a set of overrides), then their codebook health
# (code perplexity, codes in use, contrastive loss at the same steps: benchmarks/codebook_report.py).
#
#   bash benchmarks/gpu_codebook.sh          # on the device machine, after the wheels are installed
#
# Environment (defaults): ARMS (arms separated by ";", each a space-separated list of overrides:
# "recipe.diversity_weight=0.1; recipe.diversity_weight=1.0"), RUN_EXPERIMENT (contrastive/xlstm_unet_local),
# RUN_OVERRIDES (overrides of every arm: the effective batch of 256 on one device and the schedule of the two-GPU run
# of 2026-11-30, "data.batch_size=256 trainer.max_steps=6000 data.windows_per_epoch=256000"), RUN_MINUTES (5: the
# training time of each run; the arms run at the same time, so each gets about its share of the GPU), WORKERS
# (loader workers per run, 6), OUT (/tmp/gpu_codebook_out), RUNS (/tmp/gpu_codebook_runs), REPORT
# (benchmarks/results/pretrain_codebook.md; copied to $OUT with its PNG and the runs' logs).
# Each arm ingests the shared data into a cache folder of its own (no two runs write one folder).
# DRY_RUN=1: the same on this machine's CPU with a tiny U-Net, short windows and a few steps (checks the wiring).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 SEISBENCH_CACHE_ROOT=${SEISBENCH_CACHE_ROOT:-/tmp/sbcache}
if [ -z "${SEISBENCH_XLSTM_SHARED_DATA:-}" ] && [ -d .carry/data ]; then export SEISBENCH_XLSTM_SHARED_DATA=$PWD/.carry/data; fi
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_codebook_out}; RUNS=${RUNS:-/tmp/gpu_codebook_runs}; mkdir -p "$OUT" "$RUNS"
REPORT=${REPORT:-benchmarks/results/pretrain_codebook.md}
ARMS=${ARMS:-recipe.diversity_weight=0.1; recipe.diversity_weight=1.0}
read -r -a COMMON <<< "${RUN_OVERRIDES:-data.batch_size=256 trainer.max_steps=6000 data.windows_per_epoch=256000}"
COMMON+=(experiment="${RUN_EXPERIMENT:-contrastive/xlstm_unet_local}" trainer.progress_bar=false
         trainer.log_every_n_steps=10 data.num_workers="${WORKERS:-6}" export=false
         trainer.max_time="00:00:$(printf %02d "${RUN_MINUTES:-5}"):00")
if [ "${DRY_RUN:-0}" = 1 ]; then
  REPORT=$OUT/pretrain_codebook.md
  COMMON+=(trainer.accelerator=cpu trainer.max_steps=6 trainer.log_every_n_steps=1 data.window_len=1024
           data.batch_size=4 data.windows_per_epoch=24 data.val_windows=4 data.num_workers=0
           backbone.qkv_proj_blocksize=4 "backbone.dims=[16,32,64]" backbone.layers_per_stage=1
           "backbone.stem_channels=[8,16]" "backbone.decoder_channels=[16,16]")
  export OMP_NUM_THREADS=1
fi
LOG=$OUT/gpu_codebook.log
IFS=';' read -r -a ARM_LIST <<< "$ARMS"
dirs=(); labels=(); pids=()
for i in "${!ARM_LIST[@]}"; do
  read -r -a arm <<< "${ARM_LIST[$i]}"
  dir=$RUNS/arm$i; rm -rf "$dir"; dirs+=("$dir"); labels+=("${arm[*]}")
  echo "gpu_codebook.sh: arm $i: ${arm[*]} -> $dir ($(date -u +%FT%TZ))" | tee -a "$LOG"
  $PY -m pretrain "${COMMON[@]}" "${arm[@]}" out_dir="$dir" data.cache_dir="$RUNS/ingest$i" \
    > "$OUT/arm$i.log" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "gpu_codebook.sh: arm $i FAILED (tail of its log below)" | tee -a "$LOG"; failed=1
                          tail -n 30 "$OUT/arm$i.log" | tee -a "$LOG"; }
done
$PY benchmarks/codebook_report.py --run-dir "${dirs[@]}" --label "${labels[@]}" --out "$REPORT" | tee -a "$LOG" ||
  failed=1
cp "$REPORT" "${REPORT%.md}.png" "$OUT/" 2>/dev/null
(cd "$RUNS" && tar czf "$OUT/run_logs.tar.gz" arm*/config.yaml arm*/logs) 2>/dev/null
exit $failed
