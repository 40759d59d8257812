#!/usr/bin/env bash
# One command for the GPU machine: fine-tune the xLSTM picker (from a pretrained backbone export, or from scratch)
# and the same-data PhaseNet / EQTransformer baselines, each within one wall-clock budget, export their weights,
# evaluate them next to the original teachers, and write everything under the output folder.
#
#   finetune/gpu_finetune.sh --teachers DIR [--pretrained runs/.../backbone.pt] [--shared DIR] [--budget 00:00:25:00]
#                            [--out DIR] [--baselines "phasenet eqtransformer"] [--extra "key=value ..."] [--pack]
#
#   --teachers DIR   SeisBench cache holding the converted teachers
#                    (python -m seisbench_xlstm.baselines install --cache-root DIR, on a machine with pip)
#   --pretrained F   pretrained-backbone export (pretrain/export.py); its backbone picks xlstm_seq or xlstm_unet
#   --arch A         xlstm_seq or xlstm_unet without --pretrained (default xlstm_seq)
#   --shared DIR     copy of ../shared/data (default: $SEISBENCH_XLSTM_SHARED_DATA, else ../shared/data)
#   --budget T       trainer.max_time of every training run, DD:HH:MM:SS (default 00:00:25:00)
#   --out DIR        results (default: $OUT if set, else runs/gpu_finetune)
#   --work DIR       runs, checkpoints and caches (default: <out>/work, or /tmp/gpu_finetune with --pack)
#   --baselines L    same-data baselines to train (default "phasenet eqtransformer"; "" for none)
#   --extra S        overrides given to every run (e.g. "trainer.max_epochs=2 data.windows_per_epoch=64")
#   --xlstm-extra S  overrides given to the xLSTM run only (e.g. "model.gradient_checkpointing=true")
#   --pack           put results.md/.csv in <out> and everything else (weights, logs, curves) in a tar cut into
#                    15 MiB parts, <out>/bundle.tar.part-*: the device tool brings back at most 8 files of 16 MiB
#                    (reassemble with: cat bundle.tar.part-* | tar x)
#
# Python: $PYTHON (default python3) with this repository importable (run from the repository root).
set -euo pipefail

PY=${PYTHON:-python3}
TEACHERS="" PRETRAINED="" ARCH="xlstm_seq" SHARED="${SEISBENCH_XLSTM_SHARED_DATA:-}" BUDGET="00:00:25:00"
OUTDIR="${OUT:-runs/gpu_finetune}" WORK="" BASELINES="phasenet eqtransformer" EXTRA="" XEXTRA="" PACK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --teachers) TEACHERS=$2; shift 2 ;;
    --pretrained) PRETRAINED=$2; shift 2 ;;
    --arch) ARCH=$2; shift 2 ;;
    --shared) SHARED=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --out) OUTDIR=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --baselines) BASELINES=$2; shift 2 ;;
    --extra) EXTRA=$2; shift 2 ;;
    --xlstm-extra) XEXTRA=$2; shift 2 ;;
    --pack) PACK=1; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$TEACHERS" ] || { echo "--teachers DIR is required (see --help)" >&2; exit 2; }
[ -d "$TEACHERS/models/v3" ] || { echo "$TEACHERS holds no SeisBench models (models/v3 missing)" >&2; exit 2; }
[ -n "$SHARED" ] && export SEISBENCH_XLSTM_SHARED_DATA=$SHARED
mkdir -p "$OUTDIR"
if [ -z "$WORK" ]; then
  if [ $PACK = 1 ]; then WORK=/tmp/gpu_finetune; else WORK=$OUTDIR/work; fi
fi
mkdir -p "$WORK"
TEACHERS=$(cd "$TEACHERS" && pwd)
export PYTHONUNBUFFERED=1
LOG=$WORK/log.txt
echo "[gpu_finetune] $(date -u +%FT%TZ) work $WORK, out $OUTDIR, budget $BUDGET per run" | tee "$LOG"

if [ -n "$PRETRAINED" ]; then
  KIND=$($PY -c "import sys, torch; print(torch.load(sys.argv[1], map_location='cpu', weights_only=True)['backbone'])" "$PRETRAINED")
  case "$KIND" in sequential) ARCH=xlstm_seq ;; unet) ARCH=xlstm_unet ;; *) echo "unknown backbone $KIND" >&2; exit 2 ;; esac
fi

COMMON="data.cache_dir=$WORK/cache pseudo.teacher_cache=$TEACHERS trainer.max_time=$BUDGET trainer.progress_bar=false"
MODELS=()
for arch in $ARCH $BASELINES; do
  args="experiment=local/$arch out_dir=$WORK/$arch export.name=$arch export.dir=$WORK/weights $COMMON"
  if [ "$arch" = "$ARCH" ]; then
    [ -n "$PRETRAINED" ] && args="$args model.pretrained=$PRETRAINED"
    args="$args $XEXTRA"
  fi
  echo "[gpu_finetune] $(date -u +%T) python -m finetune $args $EXTRA" | tee -a "$LOG"
  # shellcheck disable=SC2086
  $PY -m finetune $args $EXTRA 2>&1 | tee -a "$LOG" | grep -v -E "Warning|warn\(|inplace|whatsnew|^\s*$" || true
  [ -f "$WORK/$arch/result.json" ] || { echo "[gpu_finetune] $arch failed (see $LOG)" | tee -a "$LOG"; exit 1; }
  cls=$($PY -c "import sys; from finetune.models import ARCH_SPECS; print(ARCH_SPECS[sys.argv[1]].model_class)" "$arch")
  case "$arch" in
    xlstm_seq) label="xLSTM seq (ours)" ;;
    xlstm_unet) label="xLSTM U-Net (ours)" ;;
    phasenet) label="PhaseNet same data" ;;
    eqtransformer) label="EQTransformer same data" ;;
  esac
  MODELS+=(--model "$label=$cls:$WORK/weights/$arch")
done

echo "[gpu_finetune] $(date -u +%T) evaluation" | tee -a "$LOG"
$PY benchmarks/picking_eval.py --cache-root "$TEACHERS" --data-cache "$WORK/cache" --dev-tuned \
  --model "PhaseNet original=PhaseNet:original" --model "EQTransformer original=EQTransformer:original" \
  "${MODELS[@]}" --out "$WORK/results/picking_eval" 2>&1 | tee -a "$LOG" | grep -v -E "Warning|inplace|whatsnew|fragments" || true
[ -f "$WORK/results/picking_eval.md" ] || { echo "[gpu_finetune] evaluation failed (see $LOG)" >&2; exit 1; }

$PY -c "import sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); from gpu_campaign import run_table; \
print(run_table(Path(sys.argv[1])))" "$WORK" | tee "$WORK/results/runs.md"
cat "$WORK/results/runs.md" "$WORK/results/picking_eval.md" > "$OUTDIR/results.md"
cp "$WORK/results/picking_eval.csv" "$OUTDIR/results.csv"
if [ $PACK = 1 ]; then
  rm -f "$OUTDIR"/bundle.tar.part-*
  (cd "$WORK" && shopt -s nullglob && tar cf - results weights log.txt */result.json */config.yaml */curves.png */logs) \
    | split -b 15m - "$OUTDIR/bundle.tar.part-"
  echo "[gpu_finetune] packed: $(ls "$OUTDIR" | tr '\n' ' ')"
else
  cp -r "$WORK/weights" "$OUTDIR/" 2>/dev/null || true
fi
echo "[gpu_finetune] $(date -u +%T) done: $OUTDIR/results.md" | tee -a "$LOG"
