#!/usr/bin/env bash
# One command for the GPU machine: both local pretraining recipes (../shared/data copied to $SEISBENCH_XLSTM_SHARED_DATA,
# default .carry/data), then the exported backbones as bf16 shards (< 16 MiB each, the device tool's limit per file)
# and the logs (loss curves, configs, metrics.csv) as one tar.gz in $OUT. Reassemble a backbone export
# (pretrain/export.py format, float32) from its shards with:
#   python -c "import sys, torch; p = [torch.load(f, weights_only=True) for f in sys.argv[2:]]; \
#     m = {k: v for k, v in p[0].items() if k not in ('state_dict', 'shard')}; \
#     m['state_dict'] = {k: v.float() if v.is_floating_point() else v for x in p for k, v in x['state_dict'].items()}; \
#     torch.save(m, sys.argv[1])" backbone.pt r2_backbone_bf16_0.pt r2_backbone_bf16_1.pt
# Usage: bash benchmarks/gpu_pretrain_local.sh STEPS1 STEPS2 [overrides for both runs...]  (RUNS, WORKERS, OUT)
set -u
S1=${1:-300}; S2=${2:-1200}; shift 2; EXTRA="$*"
export SEISBENCH_XLSTM_SHARED_DATA=${SEISBENCH_XLSTM_SHARED_DATA:-$PWD/.carry/data} SEISBENCH_CACHE_ROOT=${SEISBENCH_CACHE_ROOT:-/tmp/sbcache}
RUNS=${RUNS:-/tmp/runs}
W=${WORKERS:-8}
python3 -m pretrain experiment=xlstm_large/pure_mlstm_sequential_12m_local trainer.max_steps=$S1 \
  data.num_workers=$W out_dir=$RUNS/r1 trainer.progress_bar=false trainer.log_every_n_steps=10 $EXTRA 2>&1 | grep -v Warning | tail -25
python3 -m pretrain experiment=contrastive/xlstm_unet_local trainer.max_steps=$S2 \
  data.num_workers=$W out_dir=$RUNS/r2 trainer.progress_bar=false trainer.log_every_n_steps=10 $EXTRA 2>&1 | grep -v Warning | tail -25
python3 - <<'PY'
import os, torch, tarfile, glob
runs, out = os.environ.get("RUNS", "/tmp/runs"), os.environ.get("OUT", "/tmp/out")
os.makedirs(out, exist_ok=True)
for r in ("r1", "r2"):
    p = f"{runs}/{r}/backbone.pt"
    if not os.path.exists(p):
        print("missing", p); continue
    payload = torch.load(p, map_location="cpu", weights_only=True)
    sd = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in payload["state_dict"].items()}
    keys = sorted(sd); half = len(keys) // 2
    for i, part in enumerate((keys[:half], keys[half:])):
        torch.save({**{k: v for k, v in payload.items() if k != "state_dict"}, "state_dict": {k: sd[k] for k in part}, "shard": i},
                   f"{out}/{r}_backbone_bf16_{i}.pt")
with tarfile.open(f"{out}/pretrain_logs.tar.gz", "w:gz") as tar:
    for f in glob.glob(f"{runs}/*/loss_curve.png") + glob.glob(f"{runs}/*/config.yaml") + glob.glob(f"{runs}/*/logs/*/metrics.csv"):
        tar.add(f, arcname=os.path.relpath(f, runs))
print(sorted(os.listdir(out)))
PY
