"""Tile, warp and state-saving settings of the TFLA ``triton_xl_chunk`` kernel at this project's shapes.

The stock kernel picks its tiles with heuristics made for large heads (xLSTM-7B: head dim 512). This script
measures, for every mLSTM call shape of both backbones' training steps (recorded from the real models at their
seed batch sizes, both directions stacked as the layers call the kernel), the forward+backward time of the default
settings and of variants, by coordinate descent over one setting at a time (each setting's values tried with the
others at their best so far). A variant counts only if its outputs and all input gradients agree with the default
settings' (relative L2 error below ``--tolerance``: the same kernel arithmetic, so only summation order differs).

Run on a CUDA machine (writes ``benchmarks/results/kernel_tuning.md`` and ``.csv``, and the best settings per shape
to ``benchmarks/results/kernel_tuning_params.json``)::

    python benchmarks/kernel_tuning.py --budget-s 60
    python benchmarks/kernel_tuning.py --check 2 86 128     # the settings found, at other batch sizes

Times: ``triton.testing.do_bench`` (median, ms) of one forward+backward call with bf16 inputs.

The library does not use these settings. ``--check`` (each batch size forward-only and forward+backward, each in its
own process, against the default settings) found the head-dim-96 setting found at batch 256 wrong at batch 2, and a
recipe-2 pretraining run with the U-Net settings died with an illegal memory access (benchmarks/results/
kernel_tuning.md). Changing TFLA's tiles is not safe without a check at every shape a model meets; a kernel of our own
for small heads (issue 12) is the way to faster calls.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from unittest import mock

import torch

os.environ.setdefault("DISABLE_LLVM_OPT", "1")  # Triton 3.6 aborts compiling xl_chunk without it (GPU.md)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO, forward_backward, machine, random_mlstm_inputs, relative_error, write_report,
)

sys.path.insert(0, str(REPO))
from mlstm_stand_in import mlstm_stand_in  # noqa: E402
from pretrain_speed import SEED_BATCH, build  # noqa: E402

from seisbench_xlstm import bimlstm  # noqa: E402
from seisbench_xlstm.kernels import kernel_shape  # noqa: E402

PARAMS_FILE = REPO / "benchmarks" / "results" / "kernel_tuning_params.json"

#: Settings of ``mlstm_chunkwise__xl_chunk`` and the values tried (``None`` = the kernel's own heuristic).
SEARCH_SPACE = {
    "chunk_size": [128, 64, 256],
    "recompute_states_in_bw": [True, False],
    "siz_b_L_parallel": [None, 32, 64],
    "siz_b_L_loop": [None, 32, 64],
    "siz_b_DH_parallel": [None, 32, 64, 128],
    "siz_b_DH_loop": [None, 32, 64, 128],
    "num_warps_intra": [None, 2, 4, 8],
    "num_stages_intra": [None, 1, 2, 3],
    "num_warps_inter": [None, 2, 4, 8],
    "num_stages_inter": [None, 1, 2, 3],
}
DEFAULT = {name: values[0] for name, values in SEARCH_SPACE.items()}
FIELDS = ["device", "shape", "used_by", "default_ms", "tuned_ms", "speedup", "tried", "rejected", "tuned"]


def call_shapes() -> dict[tuple, str]:
    """``(batch, heads, padded steps, head dim) -> backbone`` of every mLSTM call in both recipes' training steps."""
    shapes = {}
    for recipe, batch in SEED_BATCH.items():
        module = build(recipe, False, False, "auto")
        calls: list = []
        # The calls in the dense form's layout, (directions x batch, heads, ...), the convention of every results
        # table; the per_head form (the GPU default) makes the same calls as (directions x heads, batch, ...), which
        # the kernels flatten to the same sequences.
        with mlstm_stand_in(calls), torch.no_grad(), mock.patch.object(bimlstm, "CPU_QKV_FORM", "dense"):
            module.recipe(torch.randn(1, 3, 4096))
        for b, heads, steps, dim in calls:
            shape = (b * batch, heads, kernel_shape(steps, 128).padded_length, dim)
            shapes.setdefault(shape, module.backbone_name)
    return shapes


def run_once(inputs, grad, settings):
    from mlstm_kernels.torch.chunkwise.triton_xl_chunk import mlstm_chunkwise__xl_chunk

    kernel = partial(mlstm_chunkwise__xl_chunk, eps=1e-6, autocast_kernel_dtype=torch.bfloat16, **settings)
    return forward_backward(kernel, inputs, grad)


def rel_error(a, b):
    return max(relative_error(x, y) for x, y in zip(a, b))


def tune(shape, budget_s: float, tolerance: float):
    from triton.testing import do_bench

    inputs, grad = random_mlstm_inputs(shape)
    reference = run_once(inputs, grad, DEFAULT)
    default_ms = do_bench(lambda: run_once(inputs, grad, DEFAULT), warmup=10, rep=50)
    best, best_ms, tried, rejected = dict(DEFAULT), default_ms, 1, 0
    start = time.perf_counter()
    for name, values in SEARCH_SPACE.items():
        for value in values:
            if value == best[name] or time.perf_counter() - start > budget_s:
                continue
            candidate = {**best, name: value}
            tried += 1
            try:
                out = run_once(inputs, grad, candidate)
                torch.cuda.synchronize()
            except Exception as err:  # settings the kernel rejects (block sizes that do not divide, ...)
                rejected += 1
                print(f"  {shape} {name}={value}: rejected ({type(err).__name__}: {str(err)[:80]})", flush=True)
                continue
            error = rel_error(out, reference)
            if not error < tolerance:
                rejected += 1
                print(f"  {shape} {name}={value}: disagrees (rel. error {error:.2e})", flush=True)
                continue
            ms = do_bench(lambda: run_once(inputs, grad, candidate), warmup=10, rep=50)
            print(f"  {shape} {name}={value}: {ms:.3f} ms (best {best_ms:.3f})", flush=True)
            if ms < best_ms:
                best, best_ms = candidate, ms
    return default_ms, best_ms, best, tried, rejected


def listed_settings() -> list[tuple[int, int, dict]]:
    """``(head dim, padded steps, settings)`` of every shape in :data:`PARAMS_FILE`."""
    entries = json.loads(PARAMS_FILE.read_text())["shapes"]
    return [(int(e["head_dim"]), int(e["padded_steps"]), dict(e["settings"])) for e in entries]


def check_one(spec: str) -> None:
    """One check in this process: ``head_dim,padded_steps,batch,mode`` (mode ``fwd`` under no_grad or ``fwbw``) with the
    listed settings, against the default settings. Raises on disagreement; a CUDA fault ends the process."""
    dim, steps, batch, mode = spec.split(",")
    listed = [s for d, n, s in listed_settings() if (d, n) == (int(dim), int(steps))]
    settings = {**DEFAULT, **listed[0]}
    inputs, grad = random_mlstm_inputs((int(batch), 4, int(steps), int(dim)))
    if mode == "fwd":
        from mlstm_kernels.torch.chunkwise.triton_xl_chunk import mlstm_chunkwise__xl_chunk

        with torch.no_grad():
            out = [mlstm_chunkwise__xl_chunk(*inputs, eps=1e-6, autocast_kernel_dtype=torch.bfloat16, **s)
                   for s in (settings, DEFAULT)]
        error = rel_error(out[:1], out[1:])
    else:
        error = rel_error(run_once(inputs, grad, settings), run_once(inputs, grad, DEFAULT))
    torch.cuda.synchronize()
    print(f"rel. error {error:.2e}")
    if not error < 3e-2:
        raise SystemExit(f"disagrees: {error:.2e}")


def check(batches: list[int]) -> list[str]:
    """Every shape listed in the settings file, forward-only and forward+backward, at several batch sizes (batch x 4
    heads), each in its own process (a CUDA fault poisons the process)."""
    import subprocess

    lines = []
    for dim, steps, settings in listed_settings():
        if not settings:
            continue
        for batch in batches:
            for mode in ("fwd", "fwbw"):
                spec = f"{dim},{steps},{batch},{mode}"
                proc = subprocess.run([sys.executable, __file__, "--check-one", spec], capture_output=True, text=True)
                tail = (proc.stdout + proc.stderr).strip().splitlines()
                result = "ok" if proc.returncode == 0 else "FAILED"
                lines.append(f"{spec}: {result} {tail[-1] if tail else ''}")
                print(lines[-1], flush=True)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=60.0, help="search time per shape")
    parser.add_argument("--tolerance", type=float, default=2e-2, help="max relative L2 error against the default")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "kernel_tuning.md")
    parser.add_argument("--check", type=int, nargs="*", help="check the listed settings at these batch sizes "
                        "(batch x 4 heads; forward-only and forward+backward, each in its own process)")
    parser.add_argument("--check-one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    if args.check_one:
        return check_one(args.check_one)
    if args.check is not None:
        lines = check(args.check or [2, 86, 128, 512])
        with open(args.out, "a") as fh:
            fh.write(f"\n## Check at batch sizes {args.check} ({machine()})\n\n" + "\n".join(f"- {x}" for x in lines)
                     + "\n")
        return 1 if any("FAILED" in line for line in lines) else 0
    rows, params = [], []
    for shape, backbone in call_shapes().items():
        print(f"shape {shape} ({backbone})", flush=True)
        default_ms, best_ms, best, tried, rejected = tune(shape, args.budget_s, args.tolerance)
        changed = {k: v for k, v in best.items() if v != DEFAULT[k]}
        rows.append({"device": machine(), "shape": "x".join(map(str, shape)), "used_by": backbone,
                     "default_ms": round(default_ms, 3), "tuned_ms": round(best_ms, 3),
                     "speedup": round(default_ms / best_ms, 2), "tried": tried, "rejected": rejected,
                     "tuned": json.dumps(changed)})
        print(rows[-1], flush=True)
        _, heads, steps, dim = shape
        params.append({"head_dim": dim, "padded_steps": steps, "batch_heads": shape[0] * heads,
                       "default_ms": round(default_ms, 3), "tuned_ms": round(best_ms, 3), "settings": changed})
    lines = ["# TFLA kernel settings at this project's shapes", "",
             "`benchmarks/kernel_tuning.py` (see its docstring): forward+backward of one `chunkwise--triton_xl_chunk`"
             " call, bf16, median ms (`triton.testing.do_bench`); shape = batch (both directions) x heads x padded"
             " steps x head dim at the seed batch sizes; `tuned` = the settings that differ from the default.", ""]
    lines += ["| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    lines += ["| " + " | ".join(str(r[k]) for k in FIELDS) + " |" for r in rows]
    write_report(lines, args.out)
    with open(args.out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    PARAMS_FILE.write_text(json.dumps({"device": machine(), "shapes": params}, indent=1) + "\n")
    print(f"wrote {PARAMS_FILE}")


if __name__ == "__main__":
    sys.exit(main())
