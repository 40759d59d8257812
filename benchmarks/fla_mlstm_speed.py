"""The mLSTM through flash-linear-attention's ``chunk_simple_gla`` against this project's Triton kernel, at the
project's call shapes: speed and agreement with the quadratic mLSTM.

The mLSTM is a linear attention with a scalar decay per head and step (the log-sigmoid forget gate) and an
exponential input gate. Written without its stabiliser, ``h_t = H_t / (max(|N_t|, 1) + eps * exp(m_t))`` with
``H_t = sum_j exp(F_t - F_j + i_j) (q_t.k_j / sqrt(d)) v_j``, ``N_t`` the same sum with ``v_j = 1``, ``F`` the
cumulative log-sigmoid forget gates and ``m_t = F_t + max_{j<=t} (i_j - F_j)`` the stabiliser (this is
:func:`seisbench_xlstm.kernels.quadratic_mlstm`'s formula divided through by ``exp(-m_t)``). So one
``chunk_simple_gla`` call (decay ``g = logsigmoid(f)``, keys scaled by ``exp(i_j - M)``, values with a column of
ones for ``N``) gives ``H`` and ``N`` times ``exp(-M)``; ``M``, the largest input gate of the sequence and head,
keeps every key weight at most 1 and cancels in the quotient. Unlike the stabilised kernels this cannot represent a
sequence whose input gates span more than about 80 (float32's exponent range).

Run on a CUDA machine with ``fla-core`` installed (writes ``benchmarks/results/fla_mlstm_speed.md``)::

    python benchmarks/fla_mlstm_speed.py [--shapes 256x4x1024x96 ...]

Times: ``triton.testing.do_bench`` medians (ms) of a forward (no grad) and of forward+backward, bf16 q/k/v, float32
gates, q/k/v of FLA already in its ``(batch, steps, heads, dim)`` layout (the layer's projections can write either
layout). ``fla kernel``: ``chunk_simple_gla`` alone on the prepared inputs; ``fla mlstm``: with the element-wise
work before and after it, eager. Agreement: largest relative L2 error of the output and the five input gradients
against the float32 quadratic mLSTM (exact gradient) on 4 sequences of the shape.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("DISABLE_LLVM_OPT", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO, forward_backward, machine, parse_call_shapes, random_mlstm_inputs, relative_error, write_report,
)

sys.path.insert(0, str(REPO))

NAMES = ("h", "dq", "dk", "dv", "di", "df")
REFERENCE_SEQUENCES = 4


def fla_mlstm(q, k, v, i, f, eps: float = 1e-6, simple_gla=None):
    """The mLSTM through ``chunk_simple_gla`` (module docstring).

    :param q: ``(batch, steps, heads, head_dim)``; k alike; v ``(batch, steps, heads, head_dim_v)``
    :param i: input-gate pre-activations ``(batch, steps, heads)`` (float32); f: forget-gate pre-activations
    :param simple_gla: ``fn(q, k, v, g=..., scale=...) -> (o, state)`` with FLA's ``chunk_simple_gla``'s meaning
        (default: that function; the tests pass a reference written out in PyTorch)
    :return: ``(batch, steps, heads, head_dim_v)`` in v's dtype
    """
    if simple_gla is None:
        from fla.ops.simple_gla import chunk_simple_gla as simple_gla

    wide = torch.promote_types(i.dtype, torch.float32)  # the gates' and the quotient's dtype
    log_f = F.logsigmoid(f.to(wide))
    shift = i.detach().amax(dim=1, keepdim=True)
    keys = (k.to(wide) * torch.exp(i - shift)[..., None]).to(k.dtype)
    values = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    out, _ = simple_gla(q, keys, values, g=log_f, scale=q.shape[-1] ** -0.5)
    cum_f = log_f.cumsum(1)
    stabiliser = cum_f + torch.cummax(i - cum_f, dim=1).values
    den = torch.maximum(out[..., -1:].to(wide).abs(), torch.exp(-shift)[..., None]) + eps * torch.exp(
        stabiliser - shift)[..., None]
    return (out[..., :-1].to(wide) / den).to(v.dtype)


def steps_first(t):
    """``(batch, heads, steps, ...)`` -> ``(batch, steps, heads, ...)``, contiguous."""
    return t.transpose(1, 2).contiguous()


def heads_first(t):
    return t.transpose(1, 2)


def fla_in_project_layout(q, k, v, i, f):
    """:func:`fla_mlstm` called with the project's ``(batch, heads, steps, dim)`` tensors (for the agreement
    check)."""
    return heads_first(fla_mlstm(*(steps_first(t) for t in (q, k, v, i, f))))


def fla_backward_refusal() -> str:
    """Why FLA will not run the gated backward here ('' if it will): FLA 0.6.0 refuses it on Hopper GPUs with
    Triton 3.4.0 to 3.7.0 (wrong results, FLA issue #640) unless TileLang is installed. Checked before timing, so
    that no forward is autotuned for a backward that then fails (the first run of this script spent 476 s so)."""
    from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_4_0, TRITON_ABOVE_3_7_1

    if IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1 and not importlib.util.find_spec("tilelang"):
        import triton

        return f"FLA refuses its gated backward on Hopper with Triton {triton.__version__} (< 3.7.1, no TileLang)"
    return ""


def agreement(shape, with_fla: bool = True) -> dict:
    """Largest relative error of our kernel (and FLA's mapping, ``with_fla``) against the float32 quadratic mLSTM on
    :data:`REFERENCE_SEQUENCES` sequences of ``shape``'s length and head dim."""
    from seisbench_xlstm.kernels import quadratic_mlstm
    from seisbench_xlstm.triton_mlstm import mlstm_chunkwise_triton

    inputs, grad = random_mlstm_inputs((1, REFERENCE_SEQUENCES, *shape[2:]), seed=1, device=str(bench_device()))
    as_float = [t.detach().float().requires_grad_() for t in inputs]
    expected = forward_backward(quadratic_mlstm, as_float, grad.float())
    row = {}
    runs = [("ours", lambda *x: mlstm_chunkwise_triton(*x, chunk_size=min(64, shape[2])))]
    for name, fn in runs + ([("fla", fla_in_project_layout)] if with_fla else []):
        got = forward_backward(fn, inputs, grad)
        worst = max((relative_error(a, b), n) for n, a, b in zip(NAMES, got, expected))
        row[f"{name}_vs_exact"] = f"{worst[0]:.1e} ({worst[1]})"
    return row


def bench_device():
    """CUDA where there is one (the figures), else the CPU (no FLA kernels there)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def measure(shape, warmup: int, rep: int) -> dict:
    from fla.ops.simple_gla import chunk_simple_gla
    from triton.testing import do_bench

    from seisbench_xlstm.triton_mlstm import mlstm_chunkwise_triton

    inputs, grad = random_mlstm_inputs(shape, device=str(bench_device()))
    fla_inputs = [steps_first(t.detach()).requires_grad_() for t in inputs]
    fla_grad = steps_first(grad)
    q, k, v, i, f = (t.detach() for t in fla_inputs)
    kernel_inputs = [q.clone().requires_grad_(), k.clone().requires_grad_(),
                     torch.cat([v, torch.ones_like(v[..., :1])], -1).requires_grad_(),
                     F.logsigmoid(f).requires_grad_()]
    kernel_grad = torch.cat([fla_grad, torch.zeros_like(fla_grad[..., :1])], -1)
    runs = {
        "ours": (lambda *x: mlstm_chunkwise_triton(*x, chunk_size=min(64, shape[2])), inputs, grad),
        "fla_mlstm": (fla_mlstm, fla_inputs, fla_grad),
        "fla_kernel": (lambda q, k, v, g: chunk_simple_gla(q, k, v, g=g, scale=q.shape[-1] ** -0.5)[0],
                       kernel_inputs, kernel_grad),
    }
    row = {"device": machine(), "shape": "x".join(map(str, shape)), "note": ""}
    refusal = fla_backward_refusal()
    if refusal:
        row["note"] = f"FLA forward only: {refusal}"
    for name, (fn, args, g) in runs.items():
        try:
            def forward(fn=fn, args=args):
                with torch.no_grad():
                    fn(*args)

            row[f"{name}_fwd_ms"] = round(do_bench(forward, warmup=warmup, rep=rep), 3)
            if name == "ours" or not refusal:
                row[f"{name}_fwbw_ms"] = round(
                    do_bench(lambda fn=fn, args=args, g=g: forward_backward(fn, args, g), warmup=warmup, rep=rep), 3)
        except Exception as err:  # one failing run must not hide the others
            row["note"] += f"{name}: {type(err).__name__}: {str(err)[:160]} "
            print(f"  {shape} {name} failed: {err}", flush=True)
    for kind in ("fwd", "fwbw"):
        if f"ours_{kind}_ms" in row and f"fla_mlstm_{kind}_ms" in row:
            row[f"{kind}_ours_over_fla"] = round(row[f"ours_{kind}_ms"] / row[f"fla_mlstm_{kind}_ms"], 2)
    try:
        row.update(agreement(shape, with_fla=not refusal))
    except Exception as err:
        row["note"] += f"agreement: {type(err).__name__}: {str(err)[:160]}"
    return row


FIELDS = ["device", "shape", "ours_fwd_ms", "fla_mlstm_fwd_ms", "fla_kernel_fwd_ms", "fwd_ours_over_fla",
          "ours_fwbw_ms", "fla_mlstm_fwbw_ms", "fla_kernel_fwbw_ms", "fwbw_ours_over_fla", "ours_vs_exact",
          "fla_vs_exact", "note"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="*", default=None, metavar="BxHxSxD")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rep", type=int, default=200)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fla_mlstm_speed.md")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("fla") is None:
        parser.error("needs flash-linear-attention's kernels: pip install fla-core")
    if not torch.cuda.is_available():
        parser.error("times CUDA kernels: run it on a machine with a GPU")
    rows = []
    for shape in parse_call_shapes(args.shapes):
        rows.append(measure(shape, args.warmup, args.rep))
        print(rows[-1], flush=True)
    lines = ["# The mLSTM through flash-linear-attention's chunk_simple_gla against this project's Triton kernel", "",
             "`benchmarks/fla_mlstm_speed.py` (see its docstring).", "",
             "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in FIELDS) + " |" for r in rows]
    print(write_report(lines, args.out))


if __name__ == "__main__":
    main()
