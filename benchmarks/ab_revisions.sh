#!/usr/bin/env bash
# A/B of the pretraining step between this working tree and an earlier revision, in turns on one GPU, so that a
# change that has no switch of its own (a rewritten loss, quantizer or layer) is measured side by side.
#
#   bash benchmarks/ab_revisions.sh prepare REV             # here: the tree of REV into .carry/ab/REV (ignored;
#                                                           # carry .carry/ab with the device tool)
#   bash benchmarks/ab_revisions.sh run REV ROUNDS ARGS...  # there: ROUNDS turns of "REV, then this tree", each a
#                                                           # benchmarks/pretrain_speed.py ARGS of its own tree
#
# Each side runs its own tree's pretrain_speed.py, which imports its own tree's library and recipes; every row goes
# to $OUT/ab_REV.md/.csv (OUT: /tmp/ab_out) labelled "REV, round N" or "HEAD, round N". The rows are in the order
# run, so a first-run effect shows as a difference between rounds. Example (recipe 2 before the loss and quantizer
# changes of 2026-11-30):
#   bash benchmarks/ab_revisions.sh prepare 8e23887
#   bash benchmarks/ab_revisions.sh run 8e23887 2 --recipe contrastive --batch 256 --compile yes
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}; rev=${2:-}
if [ -z "$rev" ] || { [ "$mode" != prepare ] && [ "$mode" != run ]; }; then
  echo "usage: ab_revisions.sh prepare REV | run REV ROUNDS PRETRAIN_SPEED_ARGS..." >&2; exit 2
fi
tree=.carry/ab/$rev
if [ "$mode" = prepare ]; then
  git rev-parse --verify --quiet "$rev^{commit}" > /dev/null || { echo "ab_revisions.sh: no revision $rev" >&2; exit 2; }
  rm -rf "$tree" && mkdir -p "$tree"
  # the library (without its shipped weights: the benchmark builds its models), the recipes and their configs, the
  # benchmarks (without their results)
  git archive "$rev" seisbench_xlstm pretrain experiments benchmarks \
    ':(exclude)seisbench_xlstm/weights' ':(exclude)benchmarks/results' | tar -x -C "$tree"
  du -sh "$tree"
  exit 0
fi
rounds=${3:?ROUNDS}; shift 3
[ -f "$tree/benchmarks/pretrain_speed.py" ] || { echo "ab_revisions.sh: $tree is missing: run 'prepare $rev' first" >&2; exit 2; }
OUT=${OUT:-/tmp/ab_out}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
for ((r = 1; r <= rounds; r++)); do
  for side in "$rev" HEAD; do
    script=benchmarks/pretrain_speed.py; [ "$side" = HEAD ] || script=$tree/benchmarks/pretrain_speed.py
    echo "ab_revisions.sh: $side, round $r: $script $*"
    "$PY" "$script" "$@" --label "$side, round $r" --out "$OUT/ab_$rev.md"
  done
done
