"""Versions of this project's Triton mLSTM module side by side: time per call at the backbones' call shapes, the
registers and spilled registers ptxas gave each kernel, and whether the versions compute the same values.

Run on a CUDA machine, with earlier versions of ``seisbench_xlstm/triton_mlstm.py`` taken from git (since the kernels
moved to ``triton_mlstm_kernels.py``, a version that differs in kernel code is a folder holding both files)::

    git show d1eefbd:seisbench_xlstm/triton_mlstm.py > /tmp/fp32_states.py
    python benchmarks/triton_mlstm_variants.py --variant fp32_states=/tmp/fp32_states.py \\
        --variant now=seisbench_xlstm/triton_mlstm.py > run.jsonl
    python benchmarks/triton_mlstm_variants.py --report run.jsonl --out benchmarks/results/triton_mlstm_variants.md

The first form prints one JSON line per (shape, variant) and one per (shape, variant after the first) with the
largest absolute difference of the output and the five input gradients against the first variant (0.0: the same
values). Each setting
of ``--llvm-opt`` runs in a process of its own, because Triton reads ``DISABLE_LLVM_OPT`` when it compiles a kernel
(``off``: ``DISABLE_LLVM_OPT=1``, as the library compiles). The second form writes the Markdown and CSV report of
saved JSON lines (several files: one run each, in order).

Inputs as ``triton_mlstm_speed.py``: bf16 q/k/v and upstream gradient, gates ``i ~ N(0, 1)``, ``f ~ 3 + N(0, 1)``;
chunk 64, the exact gradient, each module's own tile defaults. Times: ``triton.testing.do_bench`` medians (ms) of a
forward under ``torch.no_grad`` and of forward+backward (which includes the backward's PyTorch ops on the per-step
scalars, so its short calls also depend on how fast the host launches them).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MLSTM_CALL_SHAPES, REPO, forward_backward, random_mlstm_inputs, write_report  # noqa: E402

sys.path.insert(0, str(REPO))

NAMES = ("h", "dq", "dk", "dv", "di", "df")
#: every kernel any version had (a version lacking one leaves its column empty)
KERNELS = ("_mlstm_fwd_kernel", "_mlstm_fwd_states_kernel", "_mlstm_fwd_chunk_kernel", "_mlstm_bwd_kernel",
           "_mlstm_bwd_dq_kernel", "_mlstm_bwd_states_kernel", "_mlstm_bwd_chunk_kernel")
FIELDS = ["run", "llvm_opt", "shape", "variant", "fwd_ms", "fwbw_ms"] + [f"{k.strip('_')}_regs_spills" for k in KERNELS]


def load_module(name: str, path: str):
    """The module at ``path`` as a module of the ``seisbench_xlstm`` package (its relative imports resolve there).
    ``path`` a folder: its ``triton_mlstm.py`` with its own ``triton_mlstm_kernels.py`` (the kernels' module since
    2026-11-30; a file alone imports the library's)."""
    importlib.import_module("seisbench_xlstm")  # the parent package
    folder = Path(path)
    if not folder.is_dir():
        return _load(f"seisbench_xlstm._triton_mlstm_variant_{name}", folder)
    key = "seisbench_xlstm.triton_mlstm_kernels"
    library = sys.modules.get(key)
    kernels = folder / "triton_mlstm_kernels.py"
    sys.modules[key] = _load(f"seisbench_xlstm._triton_mlstm_kernels_variant_{name}", kernels)
    try:
        return _load(f"seisbench_xlstm._triton_mlstm_variant_{name}", folder / "triton_mlstm.py")
    finally:
        if library is None:
            del sys.modules[key]
        else:
            sys.modules[key] = library


def _load(module_name: str, path: Path):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compiled(module, kernel: str) -> dict:
    """The compiled versions of one of the module's kernels in this process: ``(registers, spills)``, cleared
    after reading so that the next shape lists only its own."""
    jit = getattr(module, kernel, None)
    found = None
    for cache in (jit.device_caches.values() if jit is not None else ()):
        for kernel_binary in cache[0].values():
            found = [kernel_binary.n_regs, kernel_binary.n_spills]
        cache[0].clear()
    return found


def measure(variants: dict, llvm_opt: str, first_warmup: int = 500, jsonl: Path | None = None):
    def emit(record):  # a JSON line on stdout and, with jsonl, appended to that file
        print(json.dumps(record), flush=True)
        if jsonl is not None:
            with open(jsonl, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    import torch
    import triton

    modules = {name: load_module(name, path) for name, path in variants.items()}
    for shape in MLSTM_CALL_SHAPES:
        outputs = {}
        for index, (name, module) in enumerate(modules.items()):
            inputs, grad = random_mlstm_inputs(shape)

            def fn(*x, module=module):
                return module.mlstm_chunkwise_triton(*x, chunk_size=64, eps=1e-6)

            outputs[name] = [t.cpu() for t in forward_backward(fn, inputs, grad)]
            # the first version of a shape warms the GPU up longer (later rows were faster with the same code)
            warmup = max(50, first_warmup) if index == 0 else 50
            fwbw = triton.testing.do_bench(lambda: forward_backward(fn, inputs, grad), warmup=warmup, rep=300)
            with torch.no_grad():
                fwd = triton.testing.do_bench(lambda: fn(*inputs), warmup=50, rep=300)
            row = {"llvm_opt": llvm_opt, "shape": "x".join(map(str, shape)), "variant": name,
                   "fwd_ms": round(fwd, 3), "fwbw_ms": round(fwbw, 3)}
            row.update({f"{k.strip('_')}_regs_spills": compiled(module, k) for k in KERNELS})
            emit(row)
        first = next(iter(modules))
        for name in list(modules)[1:]:
            diffs = {n: float((a.float() - b.float()).abs().max()) for n, a, b in zip(NAMES, outputs[first],
                                                                                     outputs[name])}
            emit({"llvm_opt": llvm_opt, "shape": "x".join(map(str, shape)), "variant": name,
                  f"max_abs_diff_vs_{first}": diffs})


def report(files: list[str], out: Path):
    rows, agreement = [], []
    for run, file in enumerate(files, start=1):
        for line in Path(file).read_text().splitlines():
            record = json.loads(line)
            if "llvm_opt_off" in record:  # the first runs' field name (2026-11-30)
                record["llvm_opt"] = "off" if record.pop("llvm_opt_off") == "1" else "on"
            diff = next((v for k, v in record.items() if k.startswith("max_abs_diff")), None)
            if diff is not None:
                agreement.append(max(diff.values()))
                continue
            legacy = record.pop("regs_spills", {})  # the first runs' form: {kernel: [regs, spills]}
            for k in KERNELS:
                record.setdefault(f"{k.strip('_')}_regs_spills", legacy.get(k))
            record.pop("peak_gib", None)  # those runs held the previous variant's gradients: not comparable
            rows.append({"run": run, **{f: record.get(f) for f in FIELDS[1:]}})
    for row in rows:
        for k in KERNELS:
            key = f"{k.strip('_')}_regs_spills"
            row[key] = "/".join(map(str, row[key])) if row[key] else ""
    description = (
        "`benchmarks/triton_mlstm_variants.py` (see its docstring): versions of `seisbench_xlstm/triton_mlstm.py` side "
        "by side in one process per run and LLVM setting; median ms of a forward and of forward+backward at chunk 64, "
        "bf16; `*_regs_spills`: registers per thread / spilled registers of each kernel as compiled for that shape "
        "(empty: the kernel does not exist in that version or did not run). Largest absolute difference of output "
        f"and gradients between the first variant and every other of each shape and run: {max(agreement, default=0.0)}."
    )
    lines = ["# Triton mLSTM versions side by side", "", description, "",
             "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    lines += ["| " + " | ".join(str(r[k]) for k in FIELDS) + " |" for r in rows]
    write_report(lines, out)
    with open(out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=PATH",
                        help="a version of the module (repeatable; the first is the baseline of the agreement check)")
    parser.add_argument("--llvm-opt", choices=["off", "on", "both"], default="off")
    parser.add_argument("--report", nargs="+", metavar="JSONL", help="write the report of saved JSON lines")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "triton_mlstm_variants.md")
    parser.add_argument("--first-warmup", type=int, default=500,
                        help="ms of warm-up before timing the first version of each shape (later ones: 50)")
    parser.add_argument("--out-jsonl", type=Path, help="also append the JSON lines to this file")
    parser.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.report:
        return report(args.report, args.out)
    variants = dict(v.split("=", 1) for v in args.variant)
    if not variants:
        parser.error("give at least one --variant NAME=PATH, or --report")
    if args.child:
        return measure(variants, args.child, args.first_warmup, args.out_jsonl)
    for setting in (["off", "on"] if args.llvm_opt == "both" else [args.llvm_opt]):
        env = dict(os.environ, DISABLE_LLVM_OPT="1" if setting == "off" else "0")
        subprocess.run([sys.executable, __file__, *sum((["--variant", v] for v in args.variant), []),
                        "--first-warmup", str(args.first_warmup), "--child", setting,
                        *(["--out-jsonl", str(args.out_jsonl)] if args.out_jsonl else [])], env=env, check=True)


if __name__ == "__main__":
    main()
