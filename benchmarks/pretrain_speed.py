"""Speed of the full pretraining step of both recipes: windows/s, step time, peak memory, model FLOPs utilisation.

Run on a CUDA machine (results are added to the CSV and the Markdown report regenerated from it)::

    python benchmarks/pretrain_speed.py --label before                    # both recipes at their seed batch sizes
    python benchmarks/pretrain_speed.py --recipe masked --batch 128 256 --checkpointing both --label after

CPU smoke test (tiny backbones, nothing written unless --out is given)::

    python benchmarks/pretrain_speed.py --tiny --steps 2 --warmup 1

One step = what the trainer does per batch: masking, the model forward (bf16 autocast on CUDA), the loss, the
backward pass, gradient clipping (norm 1) and the AdamW step with its schedule; inputs are random normalised
windows already on the device (data loading is not timed). Times are the mean over ``--steps`` steps after
``--warmup`` steps, with CUDA synchronisation; peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps.

FLOPs per step, for the model FLOPs utilisation (MFU = FLOPs per step / step time / peak bf16 FLOP/s):

* everything except the mLSTM cell is counted by ``torch.utils.flop_counter.FlopCounterMode`` over one full step
  of one window on a CPU copy of the model, times the batch size (forward and backward: matmuls, convolutions,
  batched products; elementwise operations count 0). The mLSTM cell is replaced by a stand-in without matmuls that
  passes gradients to q, k, v and the gates. On the CPU the headwise q/k/v projections are per-head products, their
  model FLOPs (the GPU path multiplies by block-diagonal matrices, whose zero blocks are not model FLOPs);
* the mLSTM cell (chunkwise form, chunk ``L`` as the kernel runs: 128 for TFLA, 64 natively, per head of width
  ``d`` over ``S`` padded steps) is counted analytically: forward ``4 S d^2`` (state updates ``K^T V`` and
  inter-chunk outputs ``Q C``) ``+ 4 S L d`` (intra-chunk ``Q K^T`` and its product with ``V``), backward twice the
  forward, per head, direction, layer and window. Recomputation inside the kernels is not counted (model FLOPs).

Peak: 989 TFLOP/s dense bf16 for H100/H200 SXM (``--peak-tflops`` to change); on CPUs MFU is not reported.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, synchronize, write_report  # noqa: E402

sys.path.insert(0, str(REPO))
from pretrain.config import compose_config  # noqa: E402
from pretrain.module import PretrainModule  # noqa: E402
from seisbench_xlstm import bimlstm  # noqa: E402
from seisbench_xlstm.backbones import count_parameters  # noqa: E402
from seisbench_xlstm.kernels import kernel_shape, resolve_kernel  # noqa: E402

EXPERIMENTS = {
    "masked": "xlstm_large/pure_mlstm_sequential_12m_foundation",
    "contrastive": "contrastive/xlstm_unet_seisbench",
}
SEED_BATCH = {"masked": 128, "contrastive": 64}
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
FIELDS = ["label", "device", "recipe", "backbone", "params", "batch", "checkpointing", "compiled", "kernel", "step_ms",
          "windows_per_s", "peak_gib", "tflop_per_step", "tflops", "mfu"]
TINY_BACKBONE = {
    "masked": dict(d_model=32, num_layers=2, qkv_proj_blocksize=4, stem_channels=[8, 16], decoder_channels=[16, 16]),
    "contrastive": dict(dims=[16, 32, 64], layers_per_stage=1, stem_channels=[8, 16], decoder_channels=[16, 16]),
}


def build(recipe: str, tiny: bool, checkpointing: bool, kernel: str) -> PretrainModule:
    overrides = [f"experiment={EXPERIMENTS[recipe]}", f"model.gradient_checkpointing={checkpointing}",
                 f"model.kernel={kernel}"]
    if tiny:
        for key, value in TINY_BACKBONE[recipe].items():
            value = "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else value
            overrides.append(f"backbone.{key}={value}")
        if recipe == "contrastive":
            overrides += ["recipe.num_codes=16", "recipe.final_dim=32", "recipe.codevector_dim=32",
                          "recipe.num_negatives=10"]
    return PretrainModule(compose_config(overrides))


def make_step(module: PretrainModule, x: torch.Tensor):
    """One training step as the trainer runs it (autocast, loss, backward, clipping, AdamW, schedule)."""
    setup = module.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    cuda = x.is_cuda

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = module.recipe(x)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return step


@contextmanager
def cell_standin(calls: list):
    """Replaces the mLSTM cell by a matmul-free stand-in that records the call shapes."""

    def standin(q, k, v, i, f, kernel="auto"):
        calls.append(tuple(q.shape))
        gates = (i + f)[..., None]
        return v + 0.0 * (q + k + gates)

    with mock.patch.object(bimlstm, "mlstm_sequence", standin):
        yield


def cell_flops(calls: list, kernel: str) -> float:
    """Analytic model FLOPs (forward + backward) of the recorded mLSTM cell calls run with ``kernel``."""
    total = 0.0
    for batch, heads, steps, d in calls:
        shape = kernel_shape(steps, 128 if "triton" in kernel else 64)
        s, chunk = shape.padded_length, shape.chunk_size
        forward = 4 * s * d * d + 4 * s * chunk * d
        total += 3 * forward * batch * heads
    return total


def flops_per_window(recipe: str, tiny: bool, samples: int, kernel: str) -> float:
    """Model FLOPs of one training step per window, counted on a CPU copy with one window.

    On the CPU the headwise q/k/v projections run as per-head products (their model FLOPs); on GPUs they run as one
    block-diagonal GEMM whose zero blocks a FLOP counter would count too.
    """
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    module = build(recipe, tiny, False, "auto").train()
    step = make_step(module, torch.randn(1, 3, samples))
    calls: list = []
    with cell_standin(calls), FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() + cell_flops(calls, kernel)


def measure(args, recipe: str, batch: int, checkpointing: bool, device: torch.device, compiled: bool = False) -> dict:
    kernel = resolve_kernel(args.kernel, device)
    flops = batch * flops_per_window(recipe, args.tiny, args.samples, kernel)
    torch.manual_seed(0)
    module = build(recipe, args.tiny, checkpointing, args.kernel).to(device).train()
    module.backbone.set_compile(compiled)
    x = torch.randn(batch, 3, args.samples, device=device)
    step = make_step(module, x)
    for _ in range(args.warmup):
        step()
    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize()
        seconds = (time.perf_counter() - t0) / args.steps
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    except torch.OutOfMemoryError:
        seconds, peak = float("nan"), float("nan")
    peak_tflops = args.peak_tflops or next(
        (v for k, v in PEAK_TFLOPS.items() if device.type == "cuda" and k in torch.cuda.get_device_name()), None
    )
    row = {
        "label": args.label,
        "device": machine(),
        "recipe": recipe,
        "backbone": module.backbone_name + (" (tiny)" if args.tiny else ""),
        "params": count_parameters(module),
        "batch": batch,
        "checkpointing": "yes" if checkpointing else "no",
        "compiled": "yes" if compiled else "no",
        "kernel": kernel,
        "step_ms": round(1e3 * seconds, 1),
        "windows_per_s": round(batch / seconds, 1),
        "peak_gib": round(peak, 2),
        "tflop_per_step": float(f"{flops / 1e12:.4g}"),
        "tflops": float(f"{flops / seconds / 1e12:.4g}"),
        "mfu": "" if peak_tflops is None else f"{100 * flops / seconds / 1e12 / peak_tflops:.1f}%",
    }
    print(row, flush=True)
    del module, step, x
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def update_csv(path: Path, rows: list[dict]) -> list[dict]:
    """Adds rows to the CSV, replacing earlier rows of the same label, device, recipe, batch and checkpointing."""
    key = lambda r: (r["label"], r["device"], r["recipe"], str(r["batch"]), r["checkpointing"], r.get("compiled", "no"))  # noqa: E731
    old = list(csv.DictReader(path.open())) if path.is_file() else []
    new_keys = {key(r) for r in rows}
    merged = [r for r in old if key(r) not in new_keys] + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(merged)
    return merged


def report(rows: list[dict], args) -> list[str]:
    lines = ["# Pretraining step speed", "", f"`benchmarks/pretrain_speed.py` (see its docstring for the method); "
             f"{args.steps} timed steps after {args.warmup} warm-up steps, {args.samples}-sample windows.", ""]
    lines += ["| label | device | recipe | backbone | batch | act. ckpt | compiled | kernel | step ms | windows/s | "
              "peak GiB | TFLOP/step | TFLOP/s | MFU |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['device']} | {r['recipe']} | {r['backbone']} | {r['batch']} | {r['checkpointing']} "
            f"| {r.get('compiled') or 'no'} | {r['kernel']} | {r['step_ms']} | {r['windows_per_s']} | {r['peak_gib']} | {r['tflop_per_step']} | "
            f"{r['tflops']} | {r['mfu'] or 'n/a'} |"
        )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=["masked", "contrastive", "both"], default="both")
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes (default: the seed's, 128 / 64)")
    parser.add_argument("--checkpointing", choices=["no", "yes", "both"], default="no",
                        help="activation checkpointing of the mLSTM layers")
    parser.add_argument("--compile", choices=["no", "yes", "both"], default="no",
                        help="torch.compile of the mLSTM layers (backbone.set_compile)")
    parser.add_argument("--compiled-qkv", choices=["fused", "dense"], default=None,
                        help="form of q/k/v inside torch.compile (seisbench_xlstm.bimlstm.COMPILED_QKV_FORM); "
                             "the label gets a suffix")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--kernel", default="auto", help="mLSTM kernel (default: TFLA on CUDA, native on CPU)")
    parser.add_argument("--tiny", action="store_true", help="tiny backbones (CPU smoke test)")
    parser.add_argument("--label", default="current", help="label of these rows in the report (e.g. before/after)")
    parser.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s of the device for the MFU")
    parser.add_argument("--out", type=Path, help="Markdown report (default on CUDA: benchmarks/results/pretrain_gpu.md;"
                        " the CSV next to it keeps all labels)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.compiled_qkv:
        bimlstm.COMPILED_QKV_FORM = args.compiled_qkv
        args.label = f"{args.label} (qkv {args.compiled_qkv})"
    out = args.out
    if out is None and device.type == "cuda" and not args.tiny:
        out = REPO / "benchmarks" / "results" / "pretrain_gpu.md"
    recipes = ["masked", "contrastive"] if args.recipe == "both" else [args.recipe]
    modes = {"no": [False], "yes": [True], "both": [False, True]}[args.checkpointing]
    modes_compile = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    rows = []
    for recipe in recipes:
        for batch in args.batch or [SEED_BATCH[recipe]]:
            for ckpt in modes:
                for compiled in modes_compile:
                    rows.append(measure(args, recipe, batch, ckpt, device, compiled))
    if out is not None:
        rows = update_csv(out.with_suffix(".csv"), rows)
    write_report(report(rows, args), out)
    return rows


if __name__ == "__main__":
    main()
