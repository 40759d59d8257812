"""TFLA (Triton) vs native mLSTM kernels on both full backbones: agreement and time per batch.

Run on a CUDA machine (see ../shared/GPU.md for carrying the wheels)::

    python benchmarks/gpu_kernels.py --out benchmarks/results/gpu_kernels.md

For each backbone (seed configuration):
- agreement: features of 8 random windows with TFLA ``chunkwise--triton_xl_chunk`` (bf16 kernel) vs the native
  chunkwise kernel in fp32; relative L2 error and max abs error;
- time per batch of 128 windows (4096 samples): forward (no grad) and forward+backward, model under bf16 autocast,
  for TFLA and for the native chunkwise kernel; peak GPU memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, timed, write_report  # noqa: E402

from seisbench_xlstm.backbones import build_backbone, count_parameters  # noqa: E402

KERNELS = ("chunkwise--triton_xl_chunk", "chunkwise--native_autograd")


def agreement(backbone, x):
    with torch.no_grad():
        backbone.set_kernel("chunkwise--native_autograd")
        ref = backbone(x)
        backbone.set_kernel("chunkwise--triton_xl_chunk")
        out = backbone(x)
    rel = ((out - ref).norm() / ref.norm()).item()
    return rel, (out - ref).abs().max().item(), ref.abs().max().item()


def step_times(backbone, kernel, batch, checkpointing):
    backbone.set_kernel(kernel)
    x = torch.randn(batch, 3, 4096, device="cuda")

    def fwd():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            backbone(x)

    def fwd_bwd():
        backbone.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = backbone(x)
        y.float().pow(2).mean().backward()

    backbone.eval()
    t_fwd = timed(fwd, repeats=5)
    backbone.train()
    backbone.gradient_checkpointing = checkpointing
    torch.cuda.reset_peak_memory_stats()
    try:
        t_bwd = timed(fwd_bwd, repeats=3)
        mem = torch.cuda.max_memory_allocated() / 2**30
    except torch.OutOfMemoryError:
        t_bwd, mem = float("nan"), float("nan")
        torch.cuda.empty_cache()
    backbone.gradient_checkpointing = False
    backbone.eval()
    return t_fwd, t_bwd, mem


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_kernels.py needs CUDA")
    torch.manual_seed(0)
    lines = [f"# TFLA vs native mLSTM kernels ({machine()})", ""]
    lines += ["| backbone | params | rel. L2 error TFLA(bf16) vs native(fp32) | max abs err / max abs |", "|---|---|---|---|"]
    rows = []
    for name in ("sequential", "unet"):
        backbone = build_backbone(name).cuda().eval()
        x = torch.randn(8, 3, 4096, device="cuda")
        rel, max_err, max_ref = agreement(backbone, x)
        lines.append(f"| {name} | {count_parameters(backbone):,} | {rel:.2e} | {max_err:.2e} / {max_ref:.2e} |")
        for kernel in KERNELS:
            for ckpt in (False, True):
                t_fwd, t_bwd, mem = step_times(backbone, kernel, args.batch, ckpt)
                rows.append((name, kernel, ckpt, t_fwd, t_bwd, mem))
                print(rows[-1], flush=True)
        del backbone
        torch.cuda.empty_cache()
    lines += ["", f"Batch of {args.batch} windows x 3 x 4096 samples, model under bf16 autocast; median of 5 (forward) / 3 (forward+backward) runs.", ""]
    lines += ["| backbone | kernel | activation checkpointing | forward ms | windows/s | forward+backward ms | peak GiB (fwd+bwd) |", "|---|---|---|---|---|---|---|"]
    for name, kernel, ckpt, t_fwd, t_bwd, mem in rows:
        lines.append(
            f"| {name} | {kernel} | {'yes' if ckpt else 'no'} | {1e3 * t_fwd:.1f} | {args.batch / t_fwd:,.0f} | "
            f"{1e3 * t_bwd:.1f} | {mem:.1f} |"
        )
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
