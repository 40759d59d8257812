"""Agreement of the library's GPU mLSTM path (``kernels.mlstm_sequence``, TFLA in bf16) with the quadratic reference
in float32, over batch sizes, head dims and lengths: the relative L2 error of the output, per shape.

    python benchmarks/tfla_agreement.py --out benchmarks/results/tfla_agreement.md     # CUDA only

The inputs are those of ``tests/test_kernels.py`` (unit-normal q, k, v rounded to bf16; input-gate pre-activations
N(0, 1), forget-gate pre-activations N(3, 1)); rounding the gate-weighted scores to bf16 alone gives about 2e-3 on
them (computed in float64 on a CPU), so errors far above 1e-2 are kernel errors, not precision.

``--unpadded`` runs the kernels at the head dim given even where the library pads it (``kernels.kernel_head_dim``):
the kernels' own behaviour at head dims they do not support.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, relative_error  # noqa: E402

sys.path.insert(0, str(REPO))
from seisbench_xlstm import kernels  # noqa: E402
from seisbench_xlstm.kernels import mlstm_sequence, quadratic_mlstm  # noqa: E402


def random_inputs(shape, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    qkv = [torch.randn(shape, generator=gen, device=device).bfloat16().float() for _ in range(3)]
    gates = [torch.randn(shape[:3], generator=gen, device=device),
             3 + torch.randn(shape[:3], generator=gen, device=device)]
    return qkv + gates


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 86, 128])
    ap.add_argument("--head-dims", nargs="+", type=int, default=[64, 96, 128])
    ap.add_argument("--lengths", nargs="+", type=int, default=[256, 1024])
    ap.add_argument("--kernels", nargs="+", default=["chunkwise--triton_xl_chunk", "chunkwise--triton_limit_chunk"])
    ap.add_argument("--unpadded", action="store_true", help="no head-dim padding (the kernels' own behaviour)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tfla_agreement.md")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("tfla_agreement.py needs CUDA (the TFLA kernels are Triton kernels)")
    if a.unpadded:
        kernels.kernel_head_dim = lambda head_dim, kernel: head_dim
    rows = []
    for kernel in a.kernels:
        for d in a.head_dims:
            for t in a.lengths:
                for b in a.batches:
                    x = random_inputs((b, 4, t, d), "cuda")
                    with torch.no_grad():
                        ref = quadratic_mlstm(*x)
                        try:
                            out = mlstm_sequence(*x, kernel=kernel).float()
                            err = f"{relative_error(out, ref):.3g}"
                        except Exception as e:  # noqa: BLE001 - reported in the table
                            err = f"error: {type(e).__name__}: {str(e)[:80]}"
                    rows.append(dict(kernel=kernel, head_dim=d, steps=t, batch=b, rel_error=err))
                    print(rows[-1], flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with open(a.out.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"# TFLA against the quadratic mLSTM ({torch.cuda.get_device_name()}, torch {torch.__version__})", "",
             "Made by `benchmarks/tfla_agreement.py` (see its docstring): relative L2 error of the forward output, "
             f"4 heads; head dims {'as given (--unpadded)' if a.unpadded else 'padded as the library pads them'}.", "", "| kernel | head dim | steps | " + " | ".join(f"batch {b}" for b in a.batches) + " |",
             "|---|---|---|" + "---|" * len(a.batches)]
    for kernel in a.kernels:
        for d in a.head_dims:
            for t in a.lengths:
                errs = [r["rel_error"] for r in rows if (r["kernel"], r["head_dim"], r["steps"]) == (kernel, d, t)]
                lines.append(f"| {kernel} | {d} | {t} | " + " | ".join(errs) + " |")
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
