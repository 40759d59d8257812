"""Registers and spills of this project's Triton mLSTM kernels, compiled for a GPU without one.

Compiles each kernel of ``seisbench_xlstm/triton_mlstm.py`` that the library launches at a shape (the forward and
backward passes, with the state passes and the backward's split that ``STATE_PASS`` and ``BACKWARD_DQ`` choose) and of
``seisbench_xlstm/triton_mlstm_scalars.py`` for a CUDA target (default sm_90, the H200) with Triton's compiler, as
the library launches them (bf16 inputs, ``DISABLE_LLVM_OPT=1``), and reads what ``ptxas -v`` (shipped with triton)
reports: registers per thread, stack frame, spill stores and loads, and counts the assembled kernel's machine
instructions (``nvdisasm``, static). With ``--input-stage`` also the kernels of ``seisbench_xlstm/triton_input_stage.py``
at each shape's layer. It needs triton but no GPU, so tile and warp settings can be screened here before their time
is measured on a GPU (``triton_mlstm_speed.py``). Spills and counts are not times: a setting with fewer spills can
still be slower.

    PYTHONPATH=/path/to/triton python benchmarks/triton_mlstm_registers.py               # the defaults
    PYTHONPATH=/path/to/triton python benchmarks/triton_mlstm_registers.py --warps 4 8 --block-v 64 128 \\
        --shapes 256x4x1024x96 --out benchmarks/results/triton_mlstm_registers.md

Shapes as ``triton_mlstm_speed.py`` (batch x heads x steps x head dim; only the head dim and the chunk matter
here). ``--warps`` sets ``num_warps`` of all the mLSTM kernels; the library's defaults (``LAUNCH``,
``TUNED_LAUNCH``, ``KERNEL_WARPS``) when not given. ``--setting MODULE.NAME=V1,V2`` compiles at each value of library
constants, e.g. ``--setting triton_mlstm.STATE_PASS=scan --block-v 32 64 128`` (the chunk-states kernels at value
blocks the library does not scan at).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("DISABLE_LLVM_OPT", "1")  # as the library compiles its kernels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MLSTM_CALL_SHAPES, REPO, constants_label, library_constants, parse_call_shapes, patch_constants, write_report,
)

sys.path.insert(0, str(REPO))

FIELDS = ["target", "shape", "chunk", "block_v", "settings", "kernel", "warps", "registers", "stack_bytes",
          "spill_store_bytes", "spill_load_bytes", "instructions"]
PTXAS_LINE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


#: a machine instruction in ``nvdisasm``'s listing (an address comment, an optional predicate, an opcode)
SASS_LINE = re.compile(r"\s+/\*[0-9a-f]{4}\*/\s+(@!?U?P\w+\s+)?[A-Z]")


def ptxas_report(ptx: str, arch: int) -> dict:
    """``ptxas -v`` of one kernel's PTX: registers, stack frame and spill bytes; and the number of machine
    instructions of the assembled kernel (``nvdisasm``; static: a loop's body counts once)."""
    import triton

    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        path, cubin = Path(tmp) / "kernel.ptx", Path(tmp) / "kernel.cubin"
        path.write_text(ptx)
        out = subprocess.run([str(tools / "ptxas"), "-v", f"--gpu-name=sm_{arch}a", str(path), "-o", str(cubin)],
                             capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([str(tools / "nvdisasm"), str(cubin)], capture_output=True, text=True).stdout
    frame = PTXAS_LINE.search(out)
    registers = re.search(r"Used (\d+) registers", out)
    return {"registers": int(registers.group(1)), "stack_bytes": int(frame.group(1)),
            "spill_store_bytes": int(frame.group(2)), "spill_load_bytes": int(frame.group(3)),
            "instructions": sum(1 for line in sass.splitlines() if SASS_LINE.match(line)) or ""}


def compile_kernel(fn, signature: dict, constexprs: dict, warps: int, arch: int, ints: dict) -> dict:
    """Compiles ``fn`` specialised as Triton's launcher would at a call: pointers 16-byte aligned, integer arguments
    of the values ``ints`` marked divisible by 16 where they are, and made constants where they are 1."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = {k: v for k, v in {**constexprs, **{k: 1 for k, v in ints.items() if v == 1}}.items()
                  if k in fn.arg_names}
    signature = {k: v for k, v in signature.items() if k not in constexprs}
    signature = {k: signature.get(k, "constexpr") for k in fn.arg_names}
    divisible = [k for k, v in signature.items() if v.startswith("*") or (k in ints and ints[k] % 16 == 0)]
    attrs = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k in divisible}
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                            target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": 1})
    return ptxas_report(kernel.asm["ptx"], arch)


def mlstm_kernels(shape: tuple, chunk: int, block_v: int | None, warps: int | None, arch: int) -> list[dict]:
    """The mLSTM kernels the library launches for training at one call shape (head dims of q/k and v equal), as
    ``mlstm_chunkwise_triton`` launches them in bf16."""
    import torch

    from seisbench_xlstm import triton_mlstm as tm

    batch, heads, steps, head_dim = shape
    ints = {"S": steps, "NC": steps // chunk, "BHS": batch * heads * steps}
    BD, BV = tm._tiles(head_dim, head_dim, block_v)
    launch = tm._launch_config(BD, BV)
    constexprs = dict(D=head_dim, DV=head_dim, L=chunk, BD=BD, BV=BV, PREC=tm._prec(torch.bfloat16), QK_ROW=0)
    bf, f32 = "*bf16", "*fp32"
    forward = dict(Q=bf, K=bf, V=bf, I=f32, Fg=f32, H=bf, M_out=f32, N_out=f32, C_states=bf, N_states=f32,
                   scale="fp32", eps="fp32", S="i32", NC="i32")
    part = bf if -(-head_dim // BV) == 1 else f32  # dq, dk: float32 parts with several value blocks
    scalars = dict(I=f32, Fg=f32, DH=bf, M_in=f32, DEN=f32, DNT=f32)
    later = ints["NC"] > 1  # as the library: the state passes run from 2 chunks on
    two_pass = tm._two_pass_forward(ints["NC"], BD, BV)
    scan = tm._resolved("STATE_PASS", BD, BV) == "scan"
    dq_apart = tm._resolved("BACKWARD_DQ", BD, BV) == "separate"
    stages = {"STAGES": tm.STATE_PASS_STAGES}  # as the library launches the state passes on a GPU
    contributions = dict(DELTA_C=bf, DELTA_N=f32, S="i32", NC="i32")
    scan_args = dict(C_states=bf, N_states=f32, M_states=f32, DELTA_C=bf, DELTA_N=f32, SCAL_A=f32, SCAL_B=f32,
                     NC="i32")
    scan_constexprs = {"RB": min(tm.SCAN_ROWS, BD), **stages}
    bwd_chunks = dict(Q=bf, K=bf, V=bf, **scalars, C_states=bf, N_states=f32, DC_states=bf, DN_states=f32, DQ=part,
                      DK=part, DVout=bf, DI=f32, scale="fp32", S="i32", NC="i32", BHS="i32")
    # (row label, name in KERNEL_WARPS, kernel, argument types, constexprs beyond the common ones, launched)
    kernels = [
        ("forward_states", "forward_states", tm._mlstm_fwd_states_kernel,
         dict(K=bf, V=bf, I=f32, Fg=f32, C_states=bf, N_states=f32, M_states=f32, S="i32", NC="i32"), stages,
         two_pass and not scan),
        ("forward_chunk_states", "forward_chunk_states", tm._mlstm_fwd_chunk_states_kernel,
         dict(K=bf, V=bf, I=f32, Fg=f32, F_LAST=f32, M_LOC=f32, **contributions), {}, two_pass and scan),
        ("state_scan (forward)", "state_scan", tm._state_scan_kernel, scan_args,
         {**scan_constexprs, "REVERSE": False, "STABILISED": True}, two_pass and scan),
        ("forward_chunks", "forward_chunks", tm._mlstm_fwd_chunk_kernel, {**forward, "M_states": f32}, {"SAVE": True},
         two_pass),
        ("forward", "forward", tm._mlstm_fwd_kernel, forward, {"SAVE": True}, not two_pass),
        ("backward_states", "backward_states", tm._mlstm_bwd_states_kernel,
         dict(Q=bf, **scalars, DC_states=bf, DN_states=f32, scale="fp32", S="i32", NC="i32"), stages,
         later and not scan),
        ("backward_chunk_states", "backward_chunk_states", tm._mlstm_bwd_chunk_states_kernel,
         dict(Q=bf, **scalars, G=f32, scale="fp32", **contributions), {}, later and scan),
        ("state_scan (backward)", "state_scan", tm._state_scan_kernel, scan_args,
         {**scan_constexprs, "REVERSE": True, "STABILISED": False}, later and scan),
        ("backward_dq", "backward_dq", tm._mlstm_bwd_dq_kernel,
         {k: v for k, v in bwd_chunks.items() if k not in ("Q", "DC_states", "DN_states", "DK", "DVout", "DI")}, {},
         dq_apart),
        ("backward_chunks", "backward_chunks", tm._mlstm_bwd_chunk_kernel, bwd_chunks,
         {"LATER": later, "DQ_HERE": not dq_apart}, True),
    ]
    rows = []
    for label, name, fn, signature, extra, launched in kernels:
        if not launched:
            continue
        base = tm.SCAN_WARPS if name == "state_scan" else launch["num_warps"]
        n_warps = warps or tm._kernel_meta({**launch, "num_warps": base, "BD": BD, "BV": BV}, name)["num_warps"]
        rows.append({"kernel": label, "warps": n_warps, "block_v": BV,
                     **compile_kernel(fn, signature, {**constexprs, **extra}, n_warps, arch,
                                      {k: v for k, v in ints.items() if k in signature})})
    return rows


def scalar_kernels(arch: int, shape: tuple = MLSTM_CALL_SHAPES[0]) -> list[dict]:
    """The two kernels of the per-step scalar work (``triton_mlstm_scalars``), exact gradient, one value block."""
    batch, heads, steps, _ = shape
    from seisbench_xlstm import triton_mlstm_scalars as sc

    gate = {n: "*fp32" for n in ("DELTA", "M", "NT", "I", "Fg", "DI_parts", "DI", "DF")}
    gate.update(S="i32", BHS="i32", eps="fp32")
    norm = {n: "*fp32" for n in ("DELTA", "M", "NT", "DEN", "DNT")}
    norm.update(N="i32", eps="fp32")
    return [
        {"kernel": "scalars_normaliser", "warps": 4,
         **compile_kernel(sc._normaliser_kernel, norm, {"CONSTANT": False, "BLOCK": sc.BLOCK}, 4, arch,
                          {"N": batch * heads * steps})},
        {"kernel": "scalars_gates", "warps": 4,
         **compile_kernel(sc._gate_kernel, gate, {"NVB": 1, "CONSTANT": False, "BLOCK": sc.BLOCK}, 4, arch,
                          {"S": steps, "BHS": batch * heads * steps})},
    ]


def input_stage_kernels(shape: tuple, arch: int) -> list[dict]:
    """The three kernels of ``triton_input_stage`` (the branches' conv, q/k/v and gates) for the layer whose mLSTM call
    has ``shape`` (its batch: two directions times the windows; projection blocks of 8 at head dim 96, else 4, as the
    backbones), in bf16, at each launch setting of their tuning lists."""
    import torch

    from seisbench_xlstm import triton_input_stage as ti

    calls, heads, steps, head_dim = shape
    batch = max(1, calls // 2)
    channels, block = heads * head_dim, 8 if head_dim == 96 else 4
    if not ti.sub_channels(head_dim, block):
        return []
    token = steps * channels
    ints = dict(n_dir=2, batch=batch, steps=steps, channels=channels, heads=heads, sx_d=batch * token, sx_b=token,
                sx_t=channels, sd_d=batch * token, sd_b=token, sd_t=channels)
    constexprs = dict(**ti.launch_constants(torch.bfloat16, head_dim, block, 2 * heads), BS=block,
                      ROWS=ti.BACKWARD_ROWS)
    bf, f32 = "*bf16", "*fp32"
    weights = dict(CW=f32, CB=f32, WT=bf, GT=bf)
    kernels = [("input_forward", ti._input_fwd_kernel, dict(X=bf, **weights, XC=bf, QK=bf, V=bf, GPART=f32),
                ti.FORWARD_TUNING),
               ("input_backward_conv", ti._input_bwd_conv_kernel,
                dict(DXC=bf, DQK=bf, DG=f32, X=bf, **weights, DPRE=f32, PART=f32), ti.BACKWARD_CONV_TUNING),
               ("input_backward_x", ti._input_bwd_x_kernel, dict(DPRE=f32, DV=bf, DG=f32, X=bf, **weights, DX=bf,
                                                                 PART=f32), ti.BACKWARD_X_TUNING)]
    rows = []
    for label, fn, pointers, tuning in kernels:
        signature = {**pointers, **{k: "i32" for k in ints if k in fn.arg_names}}
        for setting in tuning:
            rows.append({"kernel": f"{label} ({setting['BLOCK_T']} steps)", "warps": setting["num_warps"],
                         **compile_kernel(fn, signature, {**constexprs, "BLOCK_T": setting["BLOCK_T"]},
                                          setting["num_warps"], arch, {k: v for k, v in ints.items()
                                                                       if k in fn.arg_names})})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="*", default=None, metavar="BxHxSxD")
    parser.add_argument("--chunk-size", type=int, nargs="+", default=[64])
    parser.add_argument("--block-v", type=int, nargs="+", default=[None])
    parser.add_argument("--warps", type=int, nargs="+", default=[None])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability (90: H100/H200)")
    parser.add_argument("--input-stage", action="store_true",
                        help="also the input stage's kernels (triton_input_stage) at each shape's layer")
    parser.add_argument("--setting", action="append", default=[], metavar="MODULE.NAME=VALUE[,VALUE]",
                        help="library constants to compile at each of their values, e.g. "
                             "triton_mlstm.STATE_PASS=loop,scan (every combination)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown report (and its CSV next to it)")
    args = parser.parse_args(argv)
    try:
        import triton  # noqa: F401 (checked here: every kernel needs it)
    except ImportError:
        parser.error("needs the 'triton' package (no GPU needed)")
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("compiles for a GPU target, which Triton's interpreter does not: unset TRITON_INTERPRET")
    try:
        shapes = parse_call_shapes(args.shapes)
    except ValueError as err:
        parser.error(str(err))
    rows = []

    def add(shape_text, row, **fields):
        rows.append({"target": f"sm_{args.arch}", "shape": shape_text, "chunk": "", "block_v": "", **fields, **row})
        print(rows[-1], flush=True)

    for shape in shapes:
        shape_text, steps = "x".join(map(str, shape)), shape[2]
        with contextlib.ExitStack() as stack:
            for constants in library_constants(args.setting):
                patch_constants(stack, constants)
                label = ", ".join(constants_label(constants)) or "library"
                for chunk, block_v, warps in itertools.product(args.chunk_size, args.block_v, args.warps):
                    for row in mlstm_kernels(shape, min(chunk, steps), block_v, warps, args.arch):
                        add(shape_text, row, chunk=min(chunk, steps), settings=label)
        for row in input_stage_kernels(shape, args.arch) if args.input_stage else []:
            add(shape_text, row)
    for row in scalar_kernels(args.arch):
        add("any", row)
    lines = ["# Registers and spills of the Triton mLSTM kernels", "",
             "`benchmarks/triton_mlstm_registers.py` (see its docstring): each kernel compiled by Triton for "
             f"sm_{args.arch} without a GPU, bf16, `DISABLE_LLVM_OPT=1`; figures from `ptxas -v`, instructions counted "
             "in `nvdisasm`'s listing (static: a loop's body once). Spills and counts are not times.", "",
             "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in FIELDS) + " |" for r in rows]
    write_report(lines, args.out)
    if args.out:
        with open(args.out.with_suffix(".csv"), "w", newline="") as fh:
            writer = csv.DictWriter(fh, FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
