#!/usr/bin/env bash
# The one-GPU measurements in one device command, in two lanes that run side by side when the machine has two GPUs
# (each lane on a GPU of its own, so that no figure is taken on a shared GPU) and one after the other otherwise.
#
#   bash benchmarks/gpu_measure.sh            # on the device machine, after the wheels are installed
#
#   lane A (GPU 0): this project's Triton kernels: their tests as the library compiles them (tests/test_triton_mlstm.py
#                   without the grid, tests/test_triton_mlstm_scalars.py, tests/test_triton_output_gate.py,
#                   tests/test_triton_conv.py, tests/test_triton_input_stage.py), the grid of issue 12 (about 260 to 310 s),
#                   its speed against TFLA at the backbones' call shapes (triton_mlstm_speed.py ->
#                   triton_mlstm_speed.md); with ANNOTATE=1 then annotate_speed.py (24 h of $STATIONS stations, all
#                   four models, eager and compiled, the kernels $KERNELS) -> annotate_gpu.md/.csv
#   lane B (GPU 1): the CUDA tests of the kernels, backbones, runners and annotate (pytest -k gpu); pretrain_speed.py
#                   with the library's kernel choice ("auto"), compiled: recipe 1 at batch 128 and recipe 2 at batch
#                   256, each with the kernel's per-step scalar work in PyTorch and in Triton
#                   (triton_mlstm_scalars.IMPLEMENTATION), and a profile of recipe 1 -> pretrain_gpu.md/.csv and
#                   $OUT/profile/
# (window_cost.py and tfla_agreement.py: see benchmarks/README.md; they ran in this script on 2026-11-29/30.)
#
# Every step has a time limit (DEADLINE seconds from the start, default 540, less what the step needs to finish);
# a step that would start too late is skipped and says so in the log. What the steps wrote under
# benchmarks/results/ goes to $OUT/results.tar.gz after every step; their output (the tests' too) to $OUT/gpu_measure.log.
# Environment: OUT (/tmp/gpu_measure_out), DEADLINE (540), STATIONS (3), LABEL (a prefix for the report rows),
# LANES (AB: both, side by side on two GPUs, else A then B; BA: B first; A or B: that lane only; with one GPU the
# two lanes do not fit one 10-minute command), KERNELS (the mLSTM kernels annotate_speed.py times: auto),
# ANNOTATE_ARGS (more of its arguments, e.g. "--models XLSTMUNetPicker --compile yes --setting
# bimlstm.OUTPUT_STAGE=torch,auto"), ANNOTATE_REPORT (its report under benchmarks/results: annotate_gpu),
# SEISBENCH_XLSTM_SHARED_DATA (default .carry/data when it exists: the continuous record for annotate_speed),
# GRID (1: lane A runs the grid; 0: skips it), SPEED_ARGS (more arguments of triton_mlstm_speed.py, e.g.
# "--kernel-warps none backward_chunks=4"), SPEED_CHUNKS (the chunk sizes it runs at: 64), A_TESTS (0: lane A
# skips its tests), PRETRAIN (0: lane B skips pretrain_speed.py), A_TESTS_K (pytest -k of lane A's tests: "not
# test_grid"), B_TESTS (1: lane B runs its tests; 0: skips them), PRETRAIN_ARGS (the settings lane B's
# pretrain_speed.py runs compare: "--scalar-work torch triton"; e.g. "--tokens-per-group 0 1024 --rounds 2"),
# PRETRAIN_RECIPES (the recipes pretrain_speed.py runs: "masked contrastive"), PROFILE (1: lane B profiles the recipes PROFILE_RECIPES, default "masked" (batch 128; contrastive: 256); 0: not),
# STAGE_SPEED ("output conv": lane A times those Triton stages against compiled PyTorch with output_stage_speed.py,
# before the grid), INDUCTOR_CODE (1: the code inductor generated for each profiled recipe to $OUT/inductor_code_RECIPE.tar.gz), SPEED
# (1: lane A runs triton_mlstm_speed.py; 0: not), VARIANTS
# (NAME=PATH words: lane A runs triton_mlstm_variants.py on these versions of the kernel module first and writes
# $R/$VARIANTS_REPORT.md, default triton_mlstm_variants), AB_REV1 / AB_REV2 (lane B times recipe 1 / recipe 2 against
# that revision with ab_revisions.sh, AB_ROUNDS / AB_ROUNDS2 rounds (2 / 1), rows in $R/ab_REV.md, instead of
# pretrain_speed.py's settings; prepare the trees here first).
# Measured on nvidia-h200-x2 (2026-11-30): annotate_speed 235 s (one kernel) to 350 s (two), pytest -k gpu 87 to 95 s,
# pretrain_speed about 70 s a configuration, triton_mlstm_speed.py 120 s, the Triton tests without the grid about
# 125 s, the grid 262 s. On nvidia-h200 (2026-11-30, thirteenth session) the Triton tests without the grid took 334 s,
# 111 s of them compiling test_float32_project_head_dims_wide_gates[96-exact] (float32 kernels at tiles 128 x 128),
# and pytest -k gpu did not finish its last two tests (compiled U-Net annotate, tiny fine-tuning) in 240 s.
# DRY_RUN=1: the same steps on this machine's CPU with tiny backbones (checks the wiring, not the figures).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 SEISBENCH_CACHE_ROOT=${SEISBENCH_CACHE_ROOT:-/tmp/sbcache}
if [ -z "${SEISBENCH_XLSTM_SHARED_DATA:-}" ] && [ -d .carry/data ]; then export SEISBENCH_XLSTM_SHARED_DATA=$PWD/.carry/data; fi
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_measure_out}; mkdir -p "$OUT"
LOG=$OUT/gpu_measure.log; DEADLINE=${DEADLINE:-540}; STATIONS=${STATIONS:-3}; LABEL=${LABEL:-h200}; LANES=${LANES:-AB}
KERNELS=${KERNELS:-auto}  # annotate_speed.py --kernels (e.g. "auto chunkwise--seisbench_triton")
case "$LANES" in AB|BA|A|B) ;; *) echo "gpu_measure.sh: LANES must be A, B, AB or BA, got '$LANES'" >&2; exit 2 ;; esac
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
  timeout --signal=TERM --kill-after=10 "$left" "$@" 2>&1 | grep -v -E 'Warning: |warnings\.warn\(' | sed "s/^/[$lane] /" >> "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "[$lane] $(( $(date +%s) - T0 ))s end (rc $rc): $1 $2 $3" | tee -a "$LOG"
  collect
}
lane_a() {
  export CUDA_VISIBLE_DEVICES=0
  local hours=24 tests=(tests/test_triton_mlstm.py tests/test_triton_mlstm_scalars.py tests/test_triton_output_gate.py
                        tests/test_triton_conv.py tests/test_triton_input_stage.py -k "${A_TESTS_K:-not test_grid}")
  local grid=(tests/test_triton_mlstm.py -k test_grid)
  [ "$DRY" = 1 ] && { hours=0.05; tests=(tests/test_triton_mlstm.py -k rejects_bad_shapes); grid=("${tests[@]}"); }
  [ "${A_TESTS:-1}" = 1 ] && step A 60 $PY -m pytest -q -p no:cacheprovider --tb=short "${tests[@]}"
  local stage
  for stage in ${STAGE_SPEED:-}; do  # output / conv: output_stage_speed.py -> output_stage_speed.md, conv_stage_speed.md
    [ "$DRY" = 1 ] || step A 40 $PY benchmarks/output_stage_speed.py --stage "$stage"
  done
  [ "${GRID:-1}" = 1 ] && step A 270 $PY -m pytest -q -p no:cacheprovider --tb=short "${grid[@]}"
  if [ -n "${VARIANTS:-}" ] && [ "$DRY" != 1 ]; then  # versions of the kernel module side by side
    local variant_args=() v
    for v in $VARIANTS; do variant_args+=(--variant "$v"); done
    step A 120 $PY benchmarks/triton_mlstm_variants.py "${variant_args[@]}" --out-jsonl "$OUT/variants.jsonl"
    step A 10 $PY benchmarks/triton_mlstm_variants.py --report "$OUT/variants.jsonl" \
      --out "$R/${VARIANTS_REPORT:-triton_mlstm_variants}.md"
  fi
  local chunk suffix
  for chunk in ${SPEED_CHUNKS:-64}; do  # the library's chunk (64) writes triton_mlstm_speed.md, others _chunkN.md
    suffix=""; [ "$chunk" = 64 ] || suffix=_chunk$chunk
    # shellcheck disable=SC2086  # SPEED_ARGS: several words
    [ "$DRY" = 1 ] || [ "${SPEED:-1}" = 0 ] || step A 80 $PY benchmarks/triton_mlstm_speed.py ${SPEED_ARGS:-} \
      --chunk-size "$chunk" --out $R/triton_mlstm_speed$suffix.md
  done
  if [ "${ANNOTATE:-0}" = 1 ]; then
    # shellcheck disable=SC2086  # ANNOTATE_ARGS: several words
    step A 150 $PY benchmarks/annotate_speed.py --hours $hours --stations "$STATIONS" --batch-sizes 256 \
      --overlaps 512 --repeats 2 --compile both --kernels $KERNELS "${TINY[@]}" ${ANNOTATE_ARGS:-} \
      --out "$R/${ANNOTATE_REPORT:-annotate_gpu}.md"
  fi
}
lane_b() {
  export CUDA_VISIBLE_DEVICES=$(( NGPU > 1 ? 1 : 0 ))
  # shellcheck disable=SC2206  # PRETRAIN_ARGS: several words
  local settings=(${PRETRAIN_ARGS:---scalar-work torch triton})
  local r1=(--batch 128 --compile yes "${settings[@]}") r2=(--batch 256 --compile yes "${settings[@]}")
  local prof=(--compile yes)
  [ "$DRY" = 1 ] && { r1=(--batch 2 --compile no --samples 1024 --steps 2 --tiny --out $R/pretrain_gpu.md)
                      r2=("${r1[@]}"); prof=("${r1[@]}"); }
  [ "${B_TESTS:-1}" = 1 ] && step B 120 $PY -m pytest -q -p no:cacheprovider --tb=short tests/test_kernels.py \
    tests/test_backbones.py tests/test_pretrain_runner.py tests/test_pickers.py tests/test_finetune_runner.py -k gpu
  if [ -n "${AB_REV1:-}${AB_REV2:-}" ]; then  # A/B against earlier revisions (ab_revisions.sh), in turns
    [ -n "${AB_REV1:-}" ] && step B 150 env OUT="$R" bash benchmarks/ab_revisions.sh run "$AB_REV1" "${AB_ROUNDS:-2}" \
      --recipe masked "${r1[@]}"
    [ -n "${AB_REV2:-}" ] && step B 150 env OUT="$R" bash benchmarks/ab_revisions.sh run "$AB_REV2" "${AB_ROUNDS2:-1}" \
      --recipe contrastive "${r2[@]}"
  elif [ "${PRETRAIN:-1}" = 1 ]; then
    case " ${PRETRAIN_RECIPES:-masked contrastive} " in *" masked "*)
      step B 150 $PY benchmarks/pretrain_speed.py --recipe masked "${r1[@]}" --label "$LABEL" ;; esac
    case " ${PRETRAIN_RECIPES:-masked contrastive} " in *" contrastive "*)
      step B 150 $PY benchmarks/pretrain_speed.py --recipe contrastive "${r2[@]}" --label "$LABEL" ;; esac
  fi
  if [ "${PROFILE:-1}" = 1 ]; then  # each recipe with its own inductor cache, whose code goes to $OUT (INDUCTOR_CODE=1)
    local recipe cache
    for recipe in ${PROFILE_RECIPES:-masked}; do
      cache=/tmp/gpu_measure_inductor_$recipe; rm -rf "$cache"
      local batch=(--batch 128); [ "$recipe" = contrastive ] && batch=(--batch 256); [ "$DRY" = 1 ] && batch=()
      step B 80 env TORCHINDUCTOR_CACHE_DIR=$cache $PY benchmarks/pretrain_speed.py --recipe $recipe "${prof[@]}" \
        "${batch[@]}" --label "$LABEL, profiled" --profile "$OUT/profile"
      [ "${INDUCTOR_CODE:-0}" = 1 ] && (cd "$cache" && find . -name '*.py' -print0 |
        tar czf "$OUT/inductor_code_$recipe.tar.gz" --null -T -)
    done
  fi
}
trap 'echo "gpu_measure.sh: stopped by a signal" | tee -a "$LOG"; collect; exit 143' TERM INT
echo "gpu_measure.sh: $NGPU GPU(s), deadline ${DEADLINE}s, $(date -u +%FT%TZ)" | tee -a "$LOG"
case "$LANES" in
  AB) if [ "$NGPU" -gt 1 ]; then lane_a & lane_b & wait; else lane_a; lane_b; fi ;;
  BA) lane_b; lane_a ;;
  A) lane_a ;;
  B) lane_b ;;
esac
collect
echo "gpu_measure.sh: done after $(( $(date +%s) - T0 ))s" | tee -a "$LOG"
