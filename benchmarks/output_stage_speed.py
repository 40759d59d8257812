"""Speed of the mLSTM branches' output stage (each head's norm, its weight, the skip and the SiLU gate) on a GPU: the
PyTorch stage compiled by ``torch.compile`` (``bimlstm.OUTPUT_STAGE = "torch"``, as the compiled layers run it)
against the Triton kernels (``seisbench_xlstm.triton_output_gate``), each of its launch settings forced in turn and
the autotuner's choice; with ``--stage conv`` the same for the causal conv and its SiLU (``bimlstm.CONV_STAGE``,
``seisbench_xlstm.triton_conv``); with ``--stage input`` for the per-head input stage (conv, SiLU, q/k/v and gates:
``bimlstm.INPUT_STAGE``, ``seisbench_xlstm.triton_input_stage``; the PyTorch stage with the library's conv stage).

Run on a CUDA machine (writes ``benchmarks/results/output_stage_speed.md``, ``conv_stage_speed.md``)::

    python benchmarks/output_stage_speed.py
    python benchmarks/output_stage_speed.py --stage conv
    python benchmarks/output_stage_speed.py --stage input
    python benchmarks/output_stage_speed.py --shapes 2x4x128x1024x96 --only triton   # e.g. under ncu

Shapes: directions x heads x batch x steps x head dim, bf16 ``h`` (the kernel's layout), ``x_conv``, ``z`` and
upstream gradient, the norm weights and skips as the layer holds them (float32). Times: median ms of
``triton.testing.do_bench`` of a forward under ``torch.no_grad`` and of forward+backward (``y.backward(dy)``);
``GB/s``: the bytes the fused kernels must move (forward: read h, x_conv, z, write y; backward: read dy, h, x_conv, z,
write the three gradients) over the forward+backward time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, write_report  # noqa: E402

sys.path.insert(0, str(REPO))
from seisbench_xlstm import bimlstm, triton_conv, triton_input_stage, triton_layout, triton_output_gate  # noqa: E402

#: the recipe-1 layer (batch 128) and the U-Net's three levels at recipe 2's batch 256
SHAPES = [(2, 4, 128, 1024, 96), (2, 4, 256, 1024, 64), (2, 4, 256, 256, 128), (2, 4, 256, 64, 256)]


def stage_inputs(shape, device, block: int = 4):
    """``h``, ``x_conv``, ``z``, the upstream gradient and two directions' modules (q/k/v projection blocks of
    ``block``) for one shape."""
    n_dir, heads, batch, steps, hd = shape
    config = bimlstm.BiMLSTMLayerConfig(embedding_dim=heads * hd // 2, num_heads=heads, round_inner_to=16,
                                        qkv_proj_blocksize=block)
    assert config.inner_dim == heads * hd, (config.inner_dim, heads * hd)
    directions = [bimlstm.MLSTMDirection(config).to(device) for _ in range(n_dir)]
    g = torch.Generator(device=device).manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    h = torch.randn(n_dir * heads, batch, steps, hd, device=device, generator=g, dtype=dtype)
    x_conv, z, dy = (torch.randn(n_dir, batch, steps, heads * hd, device=device, generator=g, dtype=dtype)
                     for _ in range(3))
    return h, x_conv, z, dy, directions


def timings(call, inputs, dy, warmup: int, rep: int) -> tuple[float, float]:
    """Median ms of ``call(*inputs)`` without gradients and of it with its backward pass from ``dy`` (a tensor, or
    one per output where ``call`` returns several)."""
    if inputs[0].is_cuda:
        from triton.testing import do_bench
    else:  # the wiring check on a CPU under Triton's interpreter: one call each
        def do_bench(fn, warmup, rep):
            start = time.perf_counter()
            fn()
            return 1e3 * (time.perf_counter() - start)

    args = [t.detach().requires_grad_() for t in inputs]

    def forward():
        with torch.no_grad():
            call(*args)

    return (do_bench(forward, warmup=warmup, rep=rep),
            do_bench(lambda: torch.autograd.backward(call(*args), dy), warmup=warmup, rep=rep))


def settings(only: str, rows_per_program: list[int]) -> list[tuple[str, int | None, list | None]]:
    """(name, ROWS_PER_PROGRAM, TUNING to force; None, None for PyTorch) of every stage to time."""
    rows = [] if only == "triton" else [("torch (compiled)", None, None)]
    for n in rows_per_program if only != "torch" else []:
        rows.append((f"triton, {n} rows a program, autotuned", n, list(triton_output_gate.TUNING)))
        rows += [(f"triton, {n} rows a program, {s['BLOCK_T']} a step, {s['num_warps']} warps, {s['num_stages']} "
                  f"stages", n, [s]) for s in triton_output_gate.TUNING]
    return rows


def output_rows(shape, device, args):
    """(setting, fwd ms, fwd+bwd ms, bytes a fused stage moves) of the output stage at one shape."""
    h, x_conv, z, dy, directions = stage_inputs(shape, device)
    heads = shape[1]
    moved = 11 * x_conv.numel() * x_conv.element_size()  # 4 + 7 activation-sized tensors
    compiled = torch.compile(bimlstm._output_stage)
    library = bimlstm.OUTPUT_STAGE, triton_output_gate.TUNING, triton_output_gate.ROWS_PER_PROGRAM
    rows = []
    try:
        for name, per_program, tuning in settings(args.only, args.rows):
            bimlstm.OUTPUT_STAGE = "torch" if tuning is None else "triton"
            if tuning is not None:  # the launchers as the library builds them, from this setting list
                triton_output_gate.TUNING, triton_output_gate.ROWS_PER_PROGRAM = tuning, per_program
                triton_output_gate.build_launchers()
            stage = compiled if tuning is None else bimlstm._output_stage
            fwd, fwbw = timings(lambda a, b, c: stage(a.unflatten(0, (-1, heads)), b, c, directions), (h, x_conv, z),
                                dy, args.warmup, args.rep)
            rows.append((name, fwd, fwbw, moved))
    finally:
        bimlstm.OUTPUT_STAGE, triton_output_gate.TUNING, triton_output_gate.ROWS_PER_PROGRAM = library
        triton_output_gate.build_launchers()
    return rows


def conv_rows(shape, device, args):
    """The same for the causal conv and its SiLU (``bimlstm.CONV_STAGE``): input ``(directions, batch, steps, heads *
    head_dim)``; a fused stage reads x, writes y, then reads dy and x and writes dx. The Triton forward with the
    PyTorch backward (``triton_conv.BACKWARD = "pytorch"``, compiled), and with the backward kernel, autotuned and
    with each of its launch settings forced."""
    _, x_conv, _, dy, directions = stage_inputs(shape, device)
    moved = 5 * x_conv.numel() * x_conv.element_size()
    compiled = torch.compile(bimlstm._conv_stage)
    library = bimlstm.CONV_STAGE, triton_conv.BACKWARD, triton_conv.BACKWARD_TUNING
    # (name, CONV_STAGE, BACKWARD, backward kernel settings, compiled)
    stages = [("torch (compiled)", "torch", None, None, True),
              ("triton forward, PyTorch backward (compiled)", "triton", "pytorch", None, True),
              ("triton, backward kernel autotuned", "triton", "triton", list(library[2]), False)]
    stages += [(f"triton, backward kernel {s['BLOCK_T']} steps x {s['BLOCK_C']} channels, {s['num_warps']} warps",
                "triton", "triton", [s], False) for s in library[2]]
    rows = []
    try:
        for name, setting, backward, tuning, use_compiled in stages:
            if args.only not in ("both", setting):
                continue
            bimlstm.CONV_STAGE, triton_conv.BACKWARD = setting, backward or library[1]
            if tuning is not None:
                triton_conv.BACKWARD_TUNING = tuning
                triton_conv.build_launchers()
            stage = compiled if use_compiled else bimlstm._conv_stage
            fwd, fwbw = timings(lambda x: stage(x, directions)[0], (x_conv,), dy, args.warmup, args.rep)
            rows.append((name, fwd, fwbw, moved))
    finally:
        bimlstm.CONV_STAGE, triton_conv.BACKWARD, triton_conv.BACKWARD_TUNING = library
        triton_conv.build_launchers()
    return rows


def input_rows(shape, device, args):
    """The same for the per-head input stage (``bimlstm.per_head_inputs``): input ``(directions, batch, steps, heads *
    head_dim)``; a fused stage reads x and writes x_conv, q, k, v (forward), then reads their gradients and x and
    writes dx and the conv's pre-activation gradient (float32) and reads it back (backward). The PyTorch stage
    compiled; the Triton stage autotuned, then each launch setting of its forward kernel forced (backward autotuned).
    The backward pass starts from random gradients of all five outputs (as in the layer, where each has one)."""
    # the branches as the backbones build them: projection blocks of 8 (sequential, head dim 96) or 4 (U-Net)
    _, x_conv, _, _, directions = stage_inputs(shape, device, block=8 if shape[-1] == 96 else 4)
    moved = (6 + 8 + 2) * x_conv.numel() * x_conv.element_size()
    compiled = torch.compile(bimlstm.per_head_inputs)
    library = bimlstm.INPUT_STAGE, triton_input_stage.FORWARD_TUNING
    stages = [("torch (compiled)", "torch", None), ("triton, autotuned (compiled graph)", "triton", list(library[1]))]
    stages += [(f"triton, forward {s['BLOCK_T']} steps, {s['num_warps']} warps", "triton", [s]) for s in library[1]]
    rows = []

    def call(x):  # x_conv, q (with k), v, i, f: the outputs the layer uses
        return tuple(t for t in compiled(x, directions) if t is not None)

    try:
        for name, setting, tuning in stages:
            if args.only not in ("both", setting):
                continue
            bimlstm.INPUT_STAGE = setting
            if tuning is not None:
                triton_input_stage.FORWARD_TUNING = tuning
                triton_input_stage.build_launchers()
            torch._dynamo.reset()
            grads = tuple(torch.randn_like(t) for t in call(x_conv))
            fwd, fwbw = timings(call, (x_conv,), grads, args.warmup, args.rep)
            rows.append((name, fwd, fwbw, moved))
    finally:
        bimlstm.INPUT_STAGE, triton_input_stage.FORWARD_TUNING = library
        triton_input_stage.build_launchers()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", metavar="DxHxBxSxD", help="directions x heads x batch x steps x dim")
    parser.add_argument("--stage", choices=["output", "conv", "input"], default="output",
                        help="the output stage (default), the causal conv and SiLU, or the per-head input stage")
    parser.add_argument("--only", choices=["torch", "triton", "both"], default="both")
    parser.add_argument("--rows", type=int, nargs="+", default=[triton_output_gate.ROWS_PER_PROGRAM],
                        help="ROWS_PER_PROGRAM values to time")
    parser.add_argument("--warmup", type=int, default=25)
    parser.add_argument("--rep", type=int, default=100)
    parser.add_argument("--out", type=Path, help="default benchmarks/results/STAGE_stage_speed.md")
    args = parser.parse_args(argv)
    results = REPO / "benchmarks" / "results"
    args.out = args.out or results / f"{args.stage}_stage_speed.md"
    interpreted = triton_layout.interpreted()
    if not (torch.cuda.is_available() or interpreted):
        raise SystemExit("output_stage_speed.py needs a CUDA GPU (or TRITON_INTERPRET=1 and tiny --shapes, a check)")
    device = torch.device("cpu" if interpreted else "cuda")
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    if any(len(s) != 5 for s in shapes):
        raise SystemExit("shapes are directions x heads x batch x steps x head_dim, e.g. 2x4x128x1024x96")
    title = {"conv": "Causal conv and SiLU", "output": "Output stage", "input": "Input stage"}[args.stage]
    lines = [f"# {title} of the mLSTM branches: "
             "PyTorch (compiled) against the Triton kernels", "",
             f"`benchmarks/output_stage_speed.py --stage {args.stage}` (see its docstring), {machine()}.", "",
             "| shape | stage | fwd ms | fwd+bwd ms | GB/s (fwd+bwd, fused bytes) |", "|---|---|---|---|---|"]
    measure = {"conv": conv_rows, "output": output_rows, "input": input_rows}[args.stage]
    for shape in shapes:
        for name, fwd, fwbw, moved in measure(shape, device, args):
            shape_text = "x".join(map(str, shape))
            lines.append(f"| {shape_text} | {name} | {fwd:.3f} | {fwbw:.3f} | {moved / fwbw / 1e6:.0f} |")
            print(lines[-1], flush=True)
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
