"""Speed and agreement of this project's chunkwise Triton mLSTM (``seisbench_xlstm.triton_mlstm``) against TFLA's
``chunkwise--triton_xl_chunk`` at the project's call shapes.

Run on a CUDA machine (writes ``benchmarks/results/triton_mlstm_speed.md`` and ``.csv``)::

    python benchmarks/triton_mlstm_speed.py
    python benchmarks/triton_mlstm_speed.py --chunk-size 32 --out benchmarks/results/triton_mlstm_speed_c32.md

Shapes: batch (both directions stacked) x heads x padded steps x head dim, bf16 q/k/v/upstream gradient, gates
``i ~ N(0, 1)``, ``f ~ 3 + N(0, 1)`` (as ``kernel_tuning.py``). Times: ``triton.testing.do_bench`` (median, ms) of
a forward under ``torch.no_grad`` and of forward+backward. TFLA runs through the library's call
(``kernels.mlstm_sequence``): ``eps=1e-6``, chunk ``min(128, steps)``, inputs and gates cast to bf16, head dims it
cannot tile zero-padded (96 -> 128, ``kernels.kernel_head_dim``; the pad copies are in its time; before 2026-11-30 it
was called directly, with float32 gates, and ran unpadded, and wrong, at 96). TFLA is timed once a shape (the first row;
later rows of the shape, which vary our kernel's settings only, reuse its figures). Agreement: relative L2 error
``|ours - tfla| / |tfla|`` of the output and of each input gradient (both kernels in bf16, so ~1e-2 is rounding; the
kernels' stabilisers differ only where ``eps`` matters, see the module docstring of
``seisbench_xlstm/triton_mlstm.py``). Peak memory (:func:`call_peak_gib`): the inputs and upstream gradient plus the
most a forward+backward allocated at once; until 2026-11-30 (thirteenth session) the device's whole peak, which also
counted the outputs kept for the agreement columns, so the earlier tables' figures grow from row to row of a shape.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
from functools import partial
from pathlib import Path

os.environ.setdefault("DISABLE_LLVM_OPT", "1")  # Triton 3.6 aborts compiling xl_chunk without it (GPU.md)

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO, constants_label, forward_backward, library_constants, machine, parse_call_shapes, parse_kernel_warps,
    patch_constants, random_mlstm_inputs, relative_error, write_report,
)

sys.path.insert(0, str(REPO))

NAMES = ("h", "dq", "dk", "dv", "di", "df")
FIELDS = ["device", "shape", "chunk", "block_v", "warps", "stages", "kernel_warps", "settings", "ours_fwd_ms",
          "tfla_fwd_ms", "fwd_speedup", "ours_fwbw_ms", "tfla_fwbw_ms", "fwbw_speedup", "ours_peak_gib",
          "tfla_peak_gib"] + [
          f"rel_err_{n}" for n in NAMES] + [
          f"{k}_vs_{ref}" for k in ("ours", "tfla") for ref in ("exact", "constant")] + ["note"]
DEVICE = "cuda"
#: Our kernel's gradient convention (--constant-normaliser: TFLA's, else the exact gradient).
CONSTANT_NORMALISER = False
#: Sequences of each shape checked against the float32 quadratic reference (its memory grows with steps squared).
REFERENCE_SEQUENCES = 4
#: Longest sequence checked against that reference: 4 x 4,096^2 float32 is 256 MiB a matrix; 65,536 steps would
#: need 64 GiB a matrix. Longer shapes get speed figures only (the kernel's tests cover long sequences).
REFERENCE_MAX_STEPS = 4096


def kernels(steps: int, chunk_size: int, block_v: int | None) -> dict:
    """``name -> fn(q, k, v, i, f) -> h`` for our kernel and TFLA at this length."""
    from seisbench_xlstm.kernels import TRITON_KERNEL, mlstm_sequence
    from seisbench_xlstm.triton_mlstm import mlstm_chunkwise_triton

    return {
        "ours": lambda *x: mlstm_chunkwise_triton(*x, chunk_size=min(chunk_size, steps), eps=1e-6, block_v=block_v,
                                                  constant_normaliser=CONSTANT_NORMALISER),
        # the library's own call: its length rule, head-dim padding (96 -> 128, queries rescaled) and casts
        "tfla": lambda *x: mlstm_sequence(*x, kernel=TRITON_KERNEL),
    }


def measure(shape, chunk_size: int, block_v: int | None, warmup: int, rep: int,
            tfla: dict | None = None) -> tuple[dict, dict | None]:
    """One row: both kernels at ``shape``; returns the row and the TFLA figures it used (its ``tfla_*`` fields and
    outputs; None if TFLA failed). ``tfla``: the figures of an earlier row of the same shape, reused instead of
    timing TFLA again when only our kernel's settings differ between rows."""
    from triton.testing import do_bench

    inputs, grad = random_mlstm_inputs(shape)
    from seisbench_xlstm import triton_mlstm

    bd, bv = triton_mlstm._tiles(shape[3], shape[3], block_v)
    launch = triton_mlstm._launch_config(bd, bv)  # what the kernels are launched with
    row = {"device": machine(), "shape": "x".join(map(str, shape)), "chunk": min(chunk_size, shape[2]), "note": "",
           "block_v": block_v or f"default ({bv})", "warps": launch["num_warps"], "stages": launch["num_stages"]}
    outputs = {}
    runs = kernels(shape[2], chunk_size, block_v)
    if tfla is not None:
        del runs["tfla"]
        row.update(tfla["fields"])
        outputs["tfla"] = tfla["outputs"]
    for name, fn in runs.items():
        try:
            outputs[name] = forward_backward(fn, inputs, grad)
            torch.cuda.synchronize()

            def forward(fn=fn):
                with torch.no_grad():
                    fn(*inputs)

            row[f"{name}_fwd_ms"] = round(do_bench(forward, warmup=warmup, rep=rep), 3)
            row[f"{name}_fwbw_ms"] = round(do_bench(lambda fn=fn: forward_backward(fn, inputs, grad), warmup=warmup,
                                                    rep=rep), 3)
            for t in inputs:
                t.grad = None
            row[f"{name}_peak_gib"] = call_peak_gib(lambda fn=fn: forward_backward(fn, inputs, grad), [*inputs, grad])
        except Exception as err:  # record and go on: one failing kernel or shape must not hide the others
            row["note"] += f"{name}: {type(err).__name__}: {str(err)[:120]} "
            print(f"  {shape} {name} failed: {err}", flush=True)
    for kind in ("fwd", "fwbw"):
        if f"ours_{kind}_ms" in row and f"tfla_{kind}_ms" in row:
            row[f"{kind}_speedup"] = round(row[f"tfla_{kind}_ms"] / row[f"ours_{kind}_ms"], 2)
    if len(outputs) == 2:
        for n, a, b in zip(NAMES, outputs["ours"], outputs["tfla"]):
            row[f"rel_err_{n}"] = f"{relative_error(a, b):.1e}"
    row.update(against_reference(shape, chunk_size, block_v, runs))
    if tfla is None and "tfla" in outputs:
        tfla = {"outputs": outputs["tfla"], "fields": {k: v for k, v in row.items() if k.startswith("tfla_")}}
    return row, tfla


def call_peak_gib(call, tensors: list) -> float:
    """GiB that ``call()`` needs at its peak: ``tensors`` (what it reads: the inputs and the upstream gradient) plus
    the most it allocated at once (its outputs and gradients included), whatever else the process holds (the
    outputs this script keeps for the agreement columns)."""
    torch.cuda.synchronize()
    held_before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    read = sum(t.numel() * t.element_size() for t in tensors)
    return round((torch.cuda.max_memory_allocated() - held_before + read) / 2**30, 2)


def against_reference(shape, chunk_size: int, block_v: int | None, runs: dict | None = None) -> dict:
    """Both kernels (bf16) against the quadratic mLSTM in float32 on the same rounded inputs, for
    :data:`REFERENCE_SEQUENCES` sequences of ``shape``, with each of its two gradients
    (:func:`seisbench_xlstm.kernels.quadratic_mlstm`: exact, or stabiliser and normaliser constant as in TFLA):
    the largest relative error over the output and the five input gradients, and which tensor it was. ``runs``:
    the kernels to check (``name -> fn``; default both, :func:`kernels`)."""
    from seisbench_xlstm.kernels import quadratic_mlstm

    if shape[2] > REFERENCE_MAX_STEPS:
        return {f"{k}_vs_{ref}": "not checked" for k in ("ours", "tfla") for ref in ("exact", "constant")}
    inputs, grad = random_mlstm_inputs((1, REFERENCE_SEQUENCES, *shape[2:]), seed=1, device=DEVICE)
    as_float = [t.detach().float().requires_grad_() for t in inputs]
    references = {}
    for ref in ("exact", "constant"):
        quadratic = partial(quadratic_mlstm, constant_normaliser=ref == "constant")
        references[ref] = forward_backward(quadratic, as_float, grad.float())
    row = {}
    for name, fn in (runs or kernels(shape[2], chunk_size, block_v)).items():
        try:
            got = forward_backward(fn, inputs, grad)
        except Exception as err:
            print(f"  {shape} {name} against the reference failed: {err}", flush=True)
            continue
        for ref, expected in references.items():
            worst = max((relative_error(a, b), n) for n, a, b in zip(NAMES, got, expected))
            row[f"{name}_vs_{ref}"] = f"{worst[0]:.1e} ({worst[1]})"
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk-size", type=int, default=64, help="chunk size of our kernel (capped at the length)")
    parser.add_argument("--constant-normaliser", action="store_true",
                        help="our kernel with TFLA's gradient convention (stabiliser and normaliser constant)")
    parser.add_argument("--block-v", type=int, nargs="+", default=[None],
                        help="value columns per program of our kernel (several: each is measured)")
    parser.add_argument("--warps", type=int, nargs="+", default=[None],
                        help="num_warps of our kernels (seisbench_xlstm.triton_mlstm.LAUNCH; several: each is "
                             "measured)")
    parser.add_argument("--stages", type=int, nargs="+", default=[None], help="num_stages, the same way")
    parser.add_argument("--kernel-warps", nargs="+", default=[None], metavar="KERNEL=WARPS[,KERNEL=WARPS]",
                        help="num_warps of single kernels (seisbench_xlstm.triton_mlstm.KERNEL_WARPS; the kernels "
                             "of triton_mlstm.KERNELS), e.g. "
                             "backward_chunks=4 forward_states=4,backward_states=4 "
                             "(several: each is measured; 'none' for the library's)")
    parser.add_argument("--setting", action="append", default=[], metavar="MODULE.NAME=VALUE[,VALUE]",
                        help="library constants to measure at each of their values, e.g. "
                             "triton_mlstm.STATE_PASS=loop,scan (every combination is measured)")
    parser.add_argument("--shapes", nargs="*", default=None, metavar="BxHxSxD",
                        help="shapes to run instead of the project's, e.g. 256x4x1024x96")
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warm-up time (ms)")
    parser.add_argument("--first-warmup", type=int, default=500,
                        help="do_bench warm-up time (ms) of the first row of each shape: on 2026-11-30 the first row "
                             "was slower than later rows with the same settings (1.54 against 1.38 ms at "
                             "128x4x256x128) after 25 ms of warm-up")
    parser.add_argument("--rep", type=int, default=100, help="do_bench measuring time (ms)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "triton_mlstm_speed.md")
    args = parser.parse_args(argv)
    global CONSTANT_NORMALISER
    CONSTANT_NORMALISER = args.constant_normaliser
    try:
        shapes = parse_call_shapes(args.shapes)
    except ValueError as err:
        parser.error(str(err))
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device (the Triton kernels are compiled for the GPU)")
    from seisbench_xlstm import triton_mlstm

    default_launch, tuned, rows = dict(triton_mlstm.LAUNCH), dict(triton_mlstm.TUNED_LAUNCH), []
    library_kernel_warps = dict(triton_mlstm.KERNEL_WARPS)
    settings = [(b, w, st, kw, c) for b in args.block_v for w in args.warps for st in args.stages
                for kw in args.kernel_warps for c in library_constants(args.setting)]
    stack = contextlib.ExitStack()  # the --setting constants of the current setting
    for shape in shapes:
        tfla = None  # TFLA does not depend on our settings: timed once a shape
        for index, (block_v, warps, stages, kernel_warps, constants) in enumerate(settings):
            patch_constants(stack, constants)
            given = warps is not None or stages is not None  # given settings replace the tuned ones
            triton_mlstm.TUNED_LAUNCH = {} if given else tuned
            triton_mlstm.LAUNCH = {"num_warps": warps or default_launch["num_warps"],
                                   "num_stages": stages or default_launch["num_stages"]}
            triton_mlstm.KERNEL_WARPS = parse_kernel_warps(kernel_warps, library_kernel_warps)
            print(f"shape {shape}, block_v {block_v}, launch {triton_mlstm.LAUNCH}"
                  f"{'' if given else ' (or TUNED_LAUNCH)'}, per kernel {triton_mlstm.KERNEL_WARPS}", flush=True)
            warmup = max(args.warmup, args.first_warmup) if index == 0 else args.warmup
            row, tfla = measure(shape, args.chunk_size, block_v, warmup, args.rep, tfla)
            rows.append(row)
            rows[-1]["kernel_warps"] = ",".join(f"{k}={v}" for k, v in triton_mlstm.KERNEL_WARPS.items())
            rows[-1]["settings"] = ", ".join(constants_label(constants))
            print(rows[-1], flush=True)
    stack.close()
    triton_mlstm.LAUNCH, triton_mlstm.TUNED_LAUNCH = default_launch, tuned
    triton_mlstm.KERNEL_WARPS = library_kernel_warps
    lines = ["# Chunkwise Triton mLSTM (ours) vs TFLA `chunkwise--triton_xl_chunk`", "",
             f"`benchmarks/triton_mlstm_speed.py` (see its docstring), {machine()}: median ms "
             "(`triton.testing.do_bench`) of a forward (no grad) and of forward+backward, bf16 inputs; shape = batch "
             "(both directions) x heads x padded steps x head dim; speedup = TFLA time / our time; rel_err = relative "
             f"L2 error of ours against TFLA; `*_vs_exact`, `*_vs_constant`: each kernel's largest relative error "
             f"(output and five gradients) against the quadratic mLSTM in float32 on {REFERENCE_SEQUENCES} sequences "
             f"of the shape (up to {REFERENCE_MAX_STEPS:,} steps), same rounded inputs, with the exact gradient or "
             "with stabiliser and normaliser constant "
             "(TFLA's convention; `seisbench_xlstm.kernels.quadratic_mlstm`); `*_peak_gib`: the inputs and upstream "
             "gradient plus the most a forward+backward allocated at once; our chunk size "
             f"{args.chunk_size}, block_v and launch settings per row, gradient "
             f"{'constant normaliser (as TFLA)' if args.constant_normaliser else 'exact'}.",
             ""]
    lines += ["| " + " | ".join(FIELDS[1:]) + " |", "|" + "---|" * (len(FIELDS) - 1)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in FIELDS[1:]) + " |" for r in rows]
    write_report(lines, args.out)
    with open(args.out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return 1 if any(r["note"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
