"""Cost of one backbone forward against the window length, per mLSTM kernel: time and peak GPU memory.

    python benchmarks/window_cost.py --out benchmarks/results/window_cost_gpu.md              # H200, about 5 min
    python benchmarks/window_cost.py --tiny --lengths 256 1024 4096 --out /tmp/window_cost.md  # CPU smoke run

Both backbones (seed configurations; ``--tiny``: tiny ones) at batch ``--batch`` (1) for window lengths from
4,096 to 1,048,576 samples (doubling; ``--lengths`` to choose), forward without gradients under bf16 autocast
on CUDA (``--train``: also forward + backward), with each kernel of ``--kernels``:

- ``chunkwise--triton_xl_chunk`` (TFLA, the CUDA default; bf16 kernel) and ``chunkwise--native_autograd`` (the
  CPU default; float32): chunkwise kernels, cost linear in the length;
- ``parallel--native_autograd``: the quadratic parallel form (float32), a reference, run until it runs out of
  memory (or past ``--max-seconds`` per call), after which longer windows are not tried for that kernel.

Time: median of ``--repeats`` calls after one warm-up call (which also compiles Triton kernels for the shape).
Memory: peak allocated GPU memory during the timed calls, minus the memory held before (weights, input). On a CPU
only times are reported. Every finished measurement is appended to ``OUT.csv`` at once, and ``OUT`` (markdown)
is rewritten, so a run cut short still leaves its results.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TINY_BACKBONES, machine, synchronize, timed, write_report  # noqa: E402

from seisbench_xlstm.backbones import build_backbone, count_parameters  # noqa: E402

KERNELS = ("chunkwise--triton_xl_chunk", "chunkwise--native_autograd", "parallel--native_autograd")
LENGTHS = tuple(4096 * 2**k for k in range(9))  # 4,096 ... 1,048,576
FIELDS = ["backbone", "params", "kernel", "mode", "batch", "samples", "tokens", "status", "ms", "peak_gib",
          "ms_per_1k_samples"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=["sequential", "unet"], choices=["sequential", "unet"])
    ap.add_argument("--kernels", nargs="+", default=None, help=f"default: {', '.join(KERNELS)} (no Triton on CPU)")
    ap.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train", action="store_true", help="also time forward + backward")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop growing a kernel after a slower call")
    ap.add_argument("--tiny", action="store_true", help="tiny backbones (smoke run, not a measurement)")
    ap.add_argument("--out", type=Path)
    return ap.parse_args(argv)


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def measure(backbone, x: torch.Tensor, mode: str, repeats: int) -> tuple[float, float]:
    """Median seconds of one call and peak GiB above the memory held before (NaN on a CPU)."""
    cuda = x.is_cuda

    def call():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            if mode == "forward":
                with torch.no_grad():
                    backbone(x)
            else:
                backbone.zero_grad(set_to_none=True)
                backbone(x).float().pow(2).mean().backward()

    call()  # warm-up (Triton compilation for this shape)
    synchronize()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    seconds = timed(call, repeats=repeats, warmup=0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else math.nan
    return seconds, peak


def report(rows: list[dict], args) -> list[str]:
    lines = [f"# Backbone cost against window length ({machine()})", "",
             f"Made by `benchmarks/window_cost.py`: batch {args.batch}, "
             f"{'bf16 autocast, ' if torch.cuda.is_available() else ''}median of {args.repeats} calls after a warm-up; "
             "memory = peak allocated GPU memory above weights and input. OOM: out of memory (longer windows not "
             f"tried); slow: a call took more than {args.max_seconds:g} s (longer windows not tried)."
             + (" **Tiny backbones: a smoke run, not a measurement.**" if args.tiny else ""), "",
             "| backbone | kernel | mode | samples | tokens | ms | peak GiB | ms per 1k samples |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "ok":
            peak = "-" if math.isnan(r["peak_gib"]) else f"{r['peak_gib']:.2f}"
            lines.append(f"| {r['backbone']} | {r['kernel']} | {r['mode']} | {r['samples']:,} | {r['tokens']:,} | "
                         f"{r['ms']:.1f} | {peak} | {r['ms_per_1k_samples']:.3f} |")
        else:
            lines.append(f"| {r['backbone']} | {r['kernel']} | {r['mode']} | {r['samples']:,} | {r['tokens']:,} | "
                         f"{r['status']} | | |")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    kernels = args.kernels or [k for k in KERNELS if cuda or "triton" not in k]
    if not cuda and not args.tiny and max(args.lengths) > 65536:
        print("window_cost.py: full backbones on long windows are meant for a GPU; on a CPU use --tiny and "
              "short --lengths", file=sys.stderr)
    torch.manual_seed(0)
    rows: list[dict] = []
    csv_path = args.out.with_suffix(".csv") if args.out else None
    if csv_path:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            csv.DictWriter(f, fieldnames=FIELDS).writeheader()

    def record(row: dict) -> None:
        rows.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        if csv_path:
            with open(csv_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=FIELDS).writerow(row)
            args.out.write_text("\n".join(report(rows, args)) + "\n")

    modes = ["forward"] + (["forward+backward"] if args.train else [])
    for name in args.backbones:
        backbone = build_backbone(name, TINY_BACKBONES[name] if args.tiny else None).to(device)
        params = count_parameters(backbone)
        label = name + (" (tiny)" if args.tiny else "")
        for kernel in kernels:
            backbone.set_kernel(kernel)
            for mode in modes:
                backbone.train(mode != "forward")
                stopped = None
                for n in sorted(args.lengths):
                    base = {"backbone": label, "params": params, "kernel": kernel, "mode": mode, "batch": args.batch,
                            "samples": n, "tokens": n // backbone.token_stride}
                    if n % backbone.sample_multiple:
                        record(base | {"status": f"not a multiple of {backbone.sample_multiple}", "ms": math.nan,
                                       "peak_gib": math.nan, "ms_per_1k_samples": math.nan})
                        continue
                    if stopped:
                        record(base | {"status": f"not tried ({stopped} before)", "ms": math.nan,
                                       "peak_gib": math.nan, "ms_per_1k_samples": math.nan})
                        continue
                    x = torch.randn(args.batch, 3, n, device=device)
                    try:
                        seconds, peak = measure(backbone, x, mode, args.repeats)
                    except (torch.OutOfMemoryError, RuntimeError) as e:
                        if not is_oom(e):
                            raise
                        seconds = peak = math.nan
                    finally:
                        del x
                        if cuda:
                            torch.cuda.empty_cache()
                    if math.isnan(seconds):
                        stopped = "OOM"
                        record(base | {"status": "OOM", "ms": math.nan, "peak_gib": math.nan,
                                       "ms_per_1k_samples": math.nan})
                        continue
                    record(base | {"status": "ok", "ms": 1e3 * seconds, "peak_gib": peak,
                                   "ms_per_1k_samples": 1e6 * seconds / n})
                    if seconds > args.max_seconds:
                        stopped = "slow"
        del backbone
        if cuda:
            torch.cuda.empty_cache()
    write_report(report(rows, args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
