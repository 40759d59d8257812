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
  passes gradients to q, k, v and the gates. The count runs the q/k/v projections as per-block products (the
  ``einsum`` form), their model FLOPs (the other forms multiply by block-diagonal matrices, whose zero blocks are not
  model FLOPs);
* the mLSTM cell (chunkwise form, chunk ``L`` as the kernel runs: 128 for TFLA, natively 32 or 64 by head width,
  per head of width ``d`` over ``S`` padded steps) is counted analytically: forward ``4 S d^2`` (state updates
  ``K^T V`` and inter-chunk outputs ``Q C``) ``+ 4 S L d`` (intra-chunk ``Q K^T`` and its product with ``V``), backward twice the
  forward, per head, direction, layer and window. Recomputation inside the kernels is not counted (model FLOPs).

Peak: 989 TFLOP/s dense bf16 for H100/H200 SXM (``--peak-tflops`` to change); on CPUs MFU is not reported.

**Several devices (DDP mode, ``--devices 1 2 [4]``)**, written to ``benchmarks/results/pretrain_ddp.md`` and ``.csv``
on CUDA::

    python benchmarks/pretrain_speed.py --devices 1 2 --compile yes --label h200x2       # both recipes, seed batches
    python benchmarks/pretrain_speed.py --devices 1 2 --recipe masked --batch 128 --compile yes
    python benchmarks/pretrain_speed.py --label h200x2 --run-dir runs/xlstm_large/...     # add a real run's figures
    python benchmarks/pretrain_speed.py --tiny --devices 1 2 --steps 2 --warmup 1 --samples 1024   # CPU, gloo

For every number of devices N one group of N processes is spawned (one per GPU, NCCL; on a CPU gloo with one thread
each) and measures every configuration: the same step as above at the same batch per device, the recipe wrapped in
``DistributedDataParallel`` with Lightning's default settings for N > 1 (N = 1: no wrapper, as the single-device
trainer), plus what the trainer's ``training_step`` adds per step (the loss and statistics all-reduced in one call,
the finite check on the host). Per configuration and N: the step time (the slowest rank), the step under DDP's
``no_sync`` (no gradient all-reduce), the step around DDP with no collective at all (every device at once: the
shared host's cost), the gradients' all-reduce alone (float32, as DDP sends them), peak memory per device;
windows/s, scaling efficiency against N = 1 of the same invocation, and the data-loading need: windows/s per
device / ``--loader-rate`` (default 800 windows/s per loader core, docs/data.md) against the CPU cores per device.
The gap to N x splits into the exposed all-reduce (synced minus no-sync step) and the rest (no-sync step minus one
device). ``--run-dir`` adds runs of ``python -m pretrain`` on real data: windows/s from their ``train/windows_per_s``
logs (all logging intervals but the first, which holds compilation), losses and code statistics. NVLink multicast
is kept off (``pretrain.train.multicast_off``) in the environment the processes inherit.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    NO_YES_BOTH, REPO, backbone_kernel, constants_label, library_constants, machine, parse_kernel_warps,
    patch_constants, set_qkv_form, synchronize, write_report,
)
from ddp_report import RUN_FIELDS, ddp_report, summarise_run  # noqa: E402
from mlstm_stand_in import mlstm_stand_in  # noqa: E402
from profile_report import write_profile  # noqa: E402

sys.path.insert(0, str(REPO))
from omegaconf import OmegaConf  # noqa: E402

from pretrain.config import DDPConfig, compose_config  # noqa: E402
from pretrain.module import PretrainModule  # noqa: E402
from pretrain.train import multicast_off  # noqa: E402
from seisbench_xlstm import bimlstm, triton_mlstm, triton_mlstm_scalars  # noqa: E402
from seisbench_xlstm.backbones import count_parameters  # noqa: E402
from seisbench_xlstm.kernels import kernel_chunk_size, kernel_shape  # noqa: E402

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


def make_step(module: PretrainModule, x: torch.Tensor, ddp=None, statistics: bool = False, around_ddp: bool = False):
    """One training step as the trainer runs it (autocast, loss, backward, clipping, AdamW, schedule).

    :param ddp: the recipe wrapped in ``DistributedDataParallel`` (gradients all-reduced in the backward pass);
        the returned step then takes ``sync=False`` for a step under ``no_sync`` (no gradient all-reduce)
    :param statistics: also what the trainer's ``training_step`` does per step: the loss and the recipe's
        statistics all-reduced over the devices in one call, and the finite check on the host (a device sync)
        once the backward pass is queued
    :param around_ddp: the forward pass through the wrapped recipe itself, not DDP's (no buffer broadcast, no
        reducer set-up; with ``sync=False`` and no ``statistics``, a step with no collective at all)
    """
    setup = module.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    cuda = x.is_cuda
    forward = ddp if ddp is not None and not around_ddp else module.recipe

    def step(sync: bool = True):
        with contextlib.nullcontext() if sync or ddp is None else ddp.no_sync():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                out = forward(x)
            loss = out["loss"]
            if statistics:
                local = torch.stack([v.detach().float() for v in out.values()])
                if ddp is not None:
                    torch.distributed.all_reduce(local)
            loss.backward()
            if statistics and not bool(torch.isfinite(local[0])):
                raise FloatingPointError("non-finite loss")
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def cell_flops(calls: list, kernel: str) -> float:
    """Analytic model FLOPs (forward + backward) of the recorded mLSTM cell calls run with ``kernel``."""
    total = 0.0
    for batch, heads, steps, d in calls:
        shape = kernel_shape(steps, kernel_chunk_size(kernel, d))
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
    with mlstm_stand_in(calls), mock.patch.object(bimlstm, "CPU_QKV_FORM", "einsum"), \
            FlopCounterMode(display=False) as counter:  # model FLOPs: per-block products, whatever the form
        step()
    return counter.get_total_flops() + cell_flops(calls, kernel)


def measure(args, recipe: str, batch: int, checkpointing: bool, device: torch.device, compiled: bool = False) -> dict:
    torch.manual_seed(0)
    module = build(recipe, args.tiny, checkpointing, args.kernel).to(device).train()
    kernel = backbone_kernel(module.backbone, batch, device)
    flops = batch * flops_per_window(recipe, args.tiny, args.samples, kernel)
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
    if args.profile and seconds == seconds:
        write_profile(step, args.profile / f"profile_{recipe}_b{batch}{'_compiled' if compiled else ''}.txt")
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


def _key(r: dict) -> tuple:
    return (r["label"], r["device"], r["recipe"], str(r["batch"]), r["checkpointing"], r.get("compiled", "no"))


def update_csv(path: Path, rows: list[dict], fields: list[str] = FIELDS, key=_key) -> list[dict]:
    """Adds rows to the CSV, replacing earlier rows with the same ``key`` (default: label, device, recipe, batch,
    checkpointing and compilation)."""
    old = list(csv.DictReader(path.open())) if path.is_file() else []
    new_keys = {key(r) for r in rows}
    merged = [r for r in old if key(r) not in new_keys] + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
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
            f"| {r.get('compiled') or 'no'} | {r['kernel']} | {r['step_ms']} | {r['windows_per_s']} | {r['peak_gib']} "
            f"| {r['tflop_per_step']} | {r['tflops']} | {r['mfu'] or 'n/a'} |"
        )
    return lines


# ----------------------------------------------------------------------------------- several devices (DDP)
DDP_FIELDS = ["label", "device", "recipe", "backbone", "params", "batch", "devices", "compiled", "kernel", "step_ms",
              "no_sync_step_ms", "local_step_ms", "allreduce_ms", "grad_mib", "windows_per_s",
              "windows_per_s_per_device", "efficiency", "peak_gib", "loader_cores_per_device", "cpu_cores_per_device",
              "timed_steps"]


def _ddp_key(r: dict) -> tuple:
    return (r["label"], r["device"], r["recipe"], str(r["batch"]), str(r["devices"]), r["compiled"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _timed_steps(fn, steps: int) -> float:
    synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize()
    return (time.perf_counter() - t0) / steps


def ddp_measure(config: dict, opts: dict, rank: int, world: int, device: torch.device) -> dict:
    """One configuration in one process of a group of ``world``: synced steps, ``no_sync`` steps, the gradients'
    all-reduce alone, peak memory. ``world`` 1 runs without the DDP wrapper (the single-device trainer)."""
    torch.manual_seed(0)
    module = build(config["recipe"], opts["tiny"], False, opts["kernel"]).to(device).train()
    module.backbone.set_compile(config["compiled"])
    ddp = None
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel(module.recipe, device_ids=ids, **opts["ddp_options"])
    g = torch.Generator(device=device).manual_seed(rank)
    x = torch.randn(config["batch"], 3, opts["samples"], device=device, generator=g)
    step = make_step(module, x, ddp, statistics=True)
    for _ in range(opts["warmup"]):
        step()
    if ddp is not None:
        step(sync=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = {"step_s": _timed_steps(step, opts["steps"])}
    result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    result["grad_mib"] = trained * 4 / 2**20  # float32 gradients (parameters stay float32 under autocast)
    result["no_sync_s"] = _timed_steps(lambda: step(sync=False), opts["steps"]) if ddp else result["step_s"]
    result["local_s"] = result["step_s"]
    if ddp is not None:  # no collective at all: what the devices' shared host and the other processes cost
        local = make_step(module, x, ddp, around_ddp=True)
        local(sync=False)  # its own optimizer's first step
        result["local_s"] = _timed_steps(lambda: local(sync=False), opts["steps"])
        del local  # (its optimizer's state)
    result["allreduce_s"] = 0.0
    if ddp is not None:  # the gradients' all-reduce alone (as DDP sends them, float32)
        buffer = torch.zeros(trained, device=device)
        torch.distributed.all_reduce(buffer)
        result["allreduce_s"] = _timed_steps(lambda: torch.distributed.all_reduce(buffer), opts["steps"])
    result.update(params=count_parameters(module), backbone=module.backbone_name,
                  kernel=backbone_kernel(module.backbone, config["batch"], device))
    del module, ddp, step, x
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def ddp_worker(rank: int, world: int, port: int, configs: list[dict], opts: dict, out_dir: str) -> None:
    """Process ``rank`` of ``world`` (one per device; NCCL on GPUs, gloo on CPUs): every configuration in turn,
    results to ``out_dir/rank<r>.json``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    bimlstm.GPU_QKV_FORM, bimlstm.CPU_QKV_FORM = opts["qkv_forms"]
    if opts["cuda"]:
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        torch.set_num_threads(opts["threads"])
        device = torch.device("cpu")
    if world > 1:
        backend = "nccl" if opts["cuda"] else "gloo"
        torch.distributed.init_process_group(backend, rank=rank, world_size=world,
                                             device_id=device if opts["cuda"] else None)
    try:
        results = [ddp_measure(c, opts, rank, world, device) for c in configs]
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))


def run_group(world: int, configs: list[dict], opts: dict) -> list[list[dict]]:
    """Starts ``world`` processes (spawned: fresh CUDA contexts) that measure ``configs``; results per rank."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.start_processes(ddp_worker, args=(world, _free_port(), configs, opts, tmp),
                                              nprocs=world, start_method="spawn")
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def ddp_options(dotlist: list[str]) -> dict:
    """``--ddp static_graph=true ...``, checked against the runner's ``trainer.ddp`` schema: DDP keyword arguments."""
    merged = OmegaConf.merge(OmegaConf.structured(DDPConfig), OmegaConf.from_dotlist(dotlist))
    return OmegaConf.to_object(merged).options()


def measure_ddp(args, configs: list[dict], cuda: bool) -> list[dict]:
    """Every configuration on each number of devices in ``args.devices`` (same batch per device); rows with the
    scaling efficiency against one device of the same invocation."""
    if cuda and max(args.devices) > torch.cuda.device_count():
        raise SystemExit(f"--devices {args.devices}: only {torch.cuda.device_count()} GPU(s) here")
    multicast_off()  # inherited by the spawned processes, before NCCL starts
    opts = dict(cuda=cuda, tiny=args.tiny, kernel=args.kernel, samples=args.samples, steps=args.steps,
                qkv_forms=(bimlstm.GPU_QKV_FORM, bimlstm.CPU_QKV_FORM),  # spawned processes start from the defaults
                warmup=args.warmup, threads=1, ddp_options=ddp_options(args.ddp))
    label = args.label + (f" (DDP {opts['ddp_options']})" if opts["ddp_options"] else "")
    groups = {n: run_group(n, configs, opts) for n in args.devices}
    rows = []
    for i, config in enumerate(configs):
        single = None
        for n in args.devices:
            ranks = [groups[n][r][i] for r in range(n)]
            step = max(r["step_s"] for r in ranks)  # the slowest rank sets the pace
            if n == 1:
                single = step
            per_device = config["batch"] / step
            rows.append({
                "label": label, "device": machine(), "recipe": config["recipe"],
                "backbone": ranks[0]["backbone"] + (" (tiny)" if args.tiny else ""), "params": ranks[0]["params"],
                "batch": config["batch"], "devices": n, "compiled": "yes" if config["compiled"] else "no",
                "kernel": ranks[0]["kernel"], "step_ms": round(1e3 * step, 1),
                "no_sync_step_ms": round(1e3 * max(r["no_sync_s"] for r in ranks), 1),
                "local_step_ms": round(1e3 * max(r["local_s"] for r in ranks), 1),
                "allreduce_ms": round(1e3 * max(r["allreduce_s"] for r in ranks), 2),
                "grad_mib": round(ranks[0]["grad_mib"], 1), "windows_per_s": round(n * per_device, 1),
                "windows_per_s_per_device": round(per_device, 1),
                "efficiency": "" if single is None else f"{100 * single / step:.1f}%",
                "peak_gib": round(max(r["peak_gib"] for r in ranks), 2),
                "loader_cores_per_device": round(per_device / args.loader_rate, 2),
                "cpu_cores_per_device": _cores() // n, "timed_steps": f"{args.steps} after {args.warmup}",
            })
            print(rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=["masked", "contrastive", "both"], default="both")
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes per device (default: the seed's, 128 / 64)")
    parser.add_argument("--checkpointing", choices=["no", "yes", "both"], default="no",
                        help="activation checkpointing of the mLSTM layers")
    parser.add_argument("--compile", choices=["no", "yes", "both"], default="no",
                        help="torch.compile of the mLSTM layers (backbone.set_compile)")
    parser.add_argument("--qkv-form", nargs="+", choices=["dense", "per_head", "fused"], default=None,
                        help="forms of the q/k/v projections (seisbench_xlstm.bimlstm.GPU_QKV_FORM), measured one "
                             "after the other in this run (DDP mode: the first); each label gets a suffix")
    parser.add_argument("--head-pad", nargs="+", choices=["layout", "kernel"], default=None,
                        help="where head dims TFLA cannot take are padded (seisbench_xlstm.bimlstm.HEAD_PAD_IN_LAYOUT: "
                             "layout = in the layer's layout copies, kernel = padded copies in mlstm_sequence), "
                             "measured one after the other for each q/k/v form; each label gets a suffix")
    parser.add_argument("--scalar-work", nargs="+", choices=["torch", "triton"], default=None,
                        help="implementations of the own Triton kernel's per-step scalar work in its backward pass "
                             "(seisbench_xlstm.triton_mlstm_scalars.IMPLEMENTATION), measured one after the other "
                             "for each q/k/v form and padding; each label gets a suffix")
    parser.add_argument("--kernel-warps", nargs="+", default=None, metavar="KERNEL=WARPS[,KERNEL=WARPS]",
                        help="num_warps of single kernels of the own Triton kernel (seisbench_xlstm.triton_mlstm."
                             "KERNEL_WARPS), e.g. none backward_chunks=4, measured one after the other")
    parser.add_argument("--tokens-per-group", type=int, nargs="+", default=None,
                        help="tokens per group of the projections' products on GPUs (seisbench_xlstm.bimlstm."
                             "GPU_TOKENS_PER_GROUP; 0: one product), measured one after the other")
    parser.add_argument("--setting", action="append", default=[], metavar="MODULE.NAME=VALUE[,VALUE]",
                        help="a constant of a seisbench_xlstm module (e.g. bimlstm.OUTPUT_STAGE=torch,triton), each "
                             "value measured one after the other for every other setting; repeatable")
    parser.add_argument("--mlstm-stand-in", choices=["no", "yes", "both"], default="no",
                        help="yes: the mLSTM kernels replaced by a stand-in that costs a copy (benchmarks/"
                             "mlstm_stand_in.py): the step less its kernels; both: with and without, in turns")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every setting this many times, in turns (A B A B ...), so that a difference "
                             "between settings can be told from an order effect")
    parser.add_argument("--profile", type=Path, help="folder for a profiler table of each configuration (one device)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--kernel", default="auto", help="mLSTM kernel (default: TFLA on CUDA, native on CPU)")
    parser.add_argument("--tiny", action="store_true", help="tiny backbones (CPU smoke test)")
    parser.add_argument("--label", default="current", help="label of these rows in the report (e.g. before/after)")
    parser.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s of the device for the MFU")
    parser.add_argument("--devices", type=int, nargs="+",
                        help="DDP mode: numbers of devices (GPUs; CPU processes with gloo), e.g. 1 2")
    parser.add_argument("--ddp", nargs="*", default=[], metavar="KEY=VALUE",
                        help="DDP mode: DistributedDataParallel settings, the keys of the runner's trainer.ddp "
                             "(static_graph, bucket_cap_mb, gradient_as_bucket_view); default Lightning's")
    parser.add_argument("--loader-rate", type=float, default=800.0,
                        help="DDP mode: windows/s one loader core delivers (docs/data.md: ~800 augmented)")
    parser.add_argument("--run-dir", type=Path, nargs="+", default=[],
                        help="DDP mode: also summarise these pretraining runs (runs/<name>) in the report")
    parser.add_argument("--regenerate", action="store_true",
                        help="DDP mode: only rewrite the report from its CSVs (default: benchmarks/results/)")
    parser.add_argument("--out", type=Path, help="Markdown report (default on CUDA: benchmarks/results/pretrain_gpu.md,"
                        " pretrain_ddp.md in DDP mode; the CSV next to it keeps all labels)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    forms = args.qkv_form or [None]
    if forms[0]:
        set_qkv_form(forms[0])
    single_report = args.out is not None and args.out.stem == "pretrain_gpu"
    ddp_mode = bool(args.devices or args.run_dir or (args.regenerate and not single_report))
    out = args.out
    if out is None and args.regenerate:
        out = REPO / "benchmarks" / "results" / "pretrain_ddp.md"
    if out is None and device.type == "cuda" and not args.tiny:
        out = REPO / "benchmarks" / "results" / ("pretrain_ddp.md" if ddp_mode else "pretrain_gpu.md")
    recipes = ["masked", "contrastive"] if args.recipe == "both" else [args.recipe]
    modes = NO_YES_BOTH[args.checkpointing]
    modes_compile = NO_YES_BOTH[args.compile]
    if ddp_mode:
        configs = [{"recipe": recipe, "batch": batch, "compiled": compiled} for recipe in recipes
                   for batch in args.batch or [SEED_BATCH[recipe]] for compiled in modes_compile]
        rows = measure_ddp(args, configs, device.type == "cuda") if args.devices and not args.regenerate else []
        runs = [summarise_run(d, args.label) for d in args.run_dir]
        if out is not None:
            rows = update_csv(out.with_suffix(".csv"), rows, DDP_FIELDS, _ddp_key)
            runs_csv = out.with_name(out.stem + "_runs.csv")
            runs = update_csv(runs_csv, runs, RUN_FIELDS, lambda r: (r["label"], r["device"], r["experiment"]))
        write_report(ddp_report(rows, runs, args), out)
        return rows + runs
    rows, label, library_pad = [], args.label, bimlstm.HEAD_PAD_IN_LAYOUT
    library_scalars, library_warps = triton_mlstm_scalars.IMPLEMENTATION, dict(triton_mlstm.KERNEL_WARPS)
    library_groups = bimlstm.GPU_TOKENS_PER_GROUP
    pads, scalar_work = args.head_pad or [None], args.scalar_work or [None]
    stack = contextlib.ExitStack()  # the --setting constants of the current setting
    try:  # the library's settings come back afterwards (tests call main in their own process)
        settings = [(f, p, w, kw, g, c, stand_in) for f in forms for p in pads for w in scalar_work
                    for kw in args.kernel_warps or [None] for g in args.tokens_per_group or [None]
                    for c in library_constants(args.setting)
                    for stand_in in NO_YES_BOTH[args.mlstm_stand_in]]
        rounds = [(r, s) for r in range(args.rounds) for s in settings] if not args.regenerate else []
        for round_, (form, pad, work, warps, groups, constants, stand_in) in rounds:
            patch_constants(stack, constants)
            if form:
                set_qkv_form(form)
            bimlstm.HEAD_PAD_IN_LAYOUT = library_pad if pad is None else pad == "layout"
            triton_mlstm_scalars.IMPLEMENTATION = work or library_scalars
            triton_mlstm.KERNEL_WARPS = parse_kernel_warps(warps, library_warps)
            bimlstm.GPU_TOKENS_PER_GROUP = library_groups if groups is None else groups
            suffix = ", ".join(x for x in (form and f"qkv {form}", pad and f"head pad in {pad}",
                                           work and f"scalar work {work}", warps and f"kernel warps {warps}",
                                           groups is not None and f"tokens per group {groups}",
                                           *constants_label(constants), stand_in and "mLSTM stand-in",
                                           args.rounds > 1 and f"round {round_ + 1}") if x)
            args.label = f"{label} ({suffix})" if suffix else label
            with mlstm_stand_in() if stand_in else contextlib.nullcontext():
                for recipe in recipes:
                    for batch in args.batch or [SEED_BATCH[recipe]]:
                        for ckpt in modes:
                            for compiled in modes_compile:
                                rows.append(measure(args, recipe, batch, ckpt, device, compiled))
    finally:
        stack.close()
        set_qkv_form(None)
        bimlstm.HEAD_PAD_IN_LAYOUT = library_pad
        triton_mlstm_scalars.IMPLEMENTATION = library_scalars
        triton_mlstm.KERNEL_WARPS = library_warps
        bimlstm.GPU_TOKENS_PER_GROUP = library_groups
    if out is not None:
        rows = update_csv(out.with_suffix(".csv"), rows)
    write_report(report(rows, args), out)
    return rows


if __name__ == "__main__":
    main()
