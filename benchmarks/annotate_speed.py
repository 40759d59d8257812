"""SeisBench ``annotate`` throughput of the xLSTM pickers next to PhaseNet and EQTransformer, side by side in one run.

    python benchmarks/annotate_speed.py --hours 24 --stations 4 --out benchmarks/results/annotate_gpu.md   # H200
    python benchmarks/annotate_speed.py --hours 0.25 --stations 2 --out benchmarks/results/annotate_cpu.md  # CPU
    python benchmarks/annotate_speed.py --hours 0.05 --stations 2 --tiny --repeats 1                        # smoke

The stream holds ``--stations`` stations of ``--hours`` each, made from one real station (O2.WILZ, 3 channels,
100 Hz, ../shared/data/continuous-ok): station k starts k/stations of the way into the 2 h record, tiled in time.
Models have random weights: speed does not depend on the weights (``--tiny``: tiny xLSTM backbones, for a smoke
run only). The xLSTM pickers run with the kernel and precision chosen at run time (TFLA Triton + bf16 autocast
on CUDA, native chunkwise fp32 on CPU). Every model annotates the whole stream in one call; for each model the
best of the listed batch sizes is reported, each the best of ``--repeats`` runs (``--baseline-repeats`` for
PhaseNet and EQTransformer; the first run at a new batch shape also compiles Triton kernels), the xLSTM pickers at
each of ``--overlaps`` (512 is the default, the least overlap that covers every sample with the default blinding
of 256) and ``--kernels`` (default: the run-time choice, ``seisbench_xlstm.kernels.resolve_kernel``; the report names the
kernel it took at the batch size).

Reported: seconds, throughput in hours of 3-component 100 Hz data per second of wall time (stations x hours /
seconds) and the time as a multiple of PhaseNet's in the same run. On a CPU the load average is reported
before and after (others may share the machine: compare ratios, not absolute times). ``--profile`` adds where
one annotate call of each xLSTM picker spends its time (model forward vs the rest of SeisBench's pipeline), the
top operators, and for every model when each step of the pipeline ran (``pipeline_timeline.py``). Writes ``OUT``
(markdown) and ``OUT`` with suffix ``.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    NO_YES_BOTH, TINY_BACKBONES, backbone_kernel, constants_label, continuous_stations, library_constants,
    load_average, machine, patch_constants, set_qkv_form, synchronize, write_report,
)

from pipeline_timeline import pipeline_timeline, timeline_table  # noqa: E402

import seisbench.models as sbm  # noqa: E402

from seisbench_xlstm import XLSTMSeqPicker, XLSTMUNetPicker  # noqa: E402

MODELS = ("PhaseNet", "EQTransformer", "XLSTMSeqPicker", "XLSTMUNetPicker")


def annotate_seconds(model, stream, repeats: int = 2, **kwargs) -> float:
    """Best of ``repeats`` annotate runs: the first run at a new batch shape also compiles Triton kernels."""
    times = []
    for _ in range(repeats):
        synchronize()
        t = time.perf_counter()
        out = model.annotate(stream, **kwargs)
        synchronize()
        if len(out) == 0:
            raise RuntimeError(f"{type(model).__name__} annotated nothing")
        times.append(time.perf_counter() - t)
    return min(times)


def forward_seconds(model, n_windows, batch, in_samples):
    """Pure model time for n_windows windows (no SeisBench pipeline): full batches and one remainder batch."""
    sizes = [batch] * (n_windows // batch) + ([n_windows % batch] if n_windows % batch else [])
    inputs = {n: torch.randn(n, 3, in_samples, device=model.device) for n in set(sizes)}
    with torch.no_grad():
        for x in inputs.values():
            model(x)
        synchronize()
        t = time.perf_counter()
        for n in sizes:
            model(inputs[n])
        synchronize()
    return time.perf_counter() - t


def build(name: str, tiny: bool):
    if name == "PhaseNet":
        return sbm.PhaseNet()
    if name == "EQTransformer":
        return sbm.EQTransformer()
    if name == "XLSTMSeqPicker":
        return XLSTMSeqPicker(backbone_config=TINY_BACKBONES["sequential"] if tiny else None)
    if name == "XLSTMUNetPicker":
        return XLSTMUNetPicker(backbone_config=TINY_BACKBONES["unet"] if tiny else None)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def kernel_label(model, kernel: str | None, batch: int, device: str) -> str:
    """The mLSTM kernel an xLSTM picker's layers ran for ``kernel`` at ``batch`` windows: a kernel asked for by name,
    or what ``"auto"`` (``None``) took there."""
    from seisbench_xlstm.kernels import NATIVE_KERNEL, TRITON_KERNEL

    if kernel not in (None, "auto"):
        return kernel
    model.backbone.set_kernel("auto")
    resolved = backbone_kernel(model.backbone, batch, torch.device(device))
    return {TRITON_KERNEL: "TFLA+bf16", NATIVE_KERNEL: "native fp32"}.get(resolved, resolved)


_LIBRARY_NATIVE = None


def set_native_kernel_compiled(value: bool | None) -> None:
    """Sets ``kernels.COMPILE_NATIVE_KERNEL`` (None: the library's value) and drops compiled graphs that read it."""
    global _LIBRARY_NATIVE
    import torch._dynamo

    from seisbench_xlstm import kernels

    if _LIBRARY_NATIVE is None:
        _LIBRARY_NATIVE = kernels.COMPILE_NATIVE_KERNEL
    wanted = _LIBRARY_NATIVE if value is None else value
    if kernels.COMPILE_NATIVE_KERNEL != wanted:
        kernels.COMPILE_NATIVE_KERNEL = wanted
        torch._dynamo.reset()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=1.0, help="hours per station")
    parser.add_argument("--stations", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="xLSTM pickers (default 256 1024 on CUDA, 64)")
    parser.add_argument("--baseline-batch", type=int, help="PhaseNet, EQTransformer (default 2048 on CUDA, 256)")
    parser.add_argument("--overlaps", type=int, nargs="+", default=[512], help="xLSTM pickers' overlaps")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting of the xLSTM pickers")
    parser.add_argument("--compile", choices=["no", "yes", "both"], default="no",
                        help="xLSTM pickers with their mLSTM layers through torch.compile (set_compile); the best "
                             "of --repeats runs excludes the compilation of shapes seen before")
    parser.add_argument("--compile-native-kernel", choices=["library", "yes", "no", "both"], default="library",
                        help="with compiled layers on a CPU: compile the native mLSTM kernel with them "
                             "(seisbench_xlstm.kernels.COMPILE_NATIVE_KERNEL; both: each measured)")
    parser.add_argument("--qkv-form", nargs="+", default=[None], choices=["einsum", "dense", "per_head", "fused"],
                        help="xLSTM pickers: forms of the q/k/v projections to compare in this run "
                             "(seisbench_xlstm.bimlstm: GPU_QKV_FORM on GPUs, CPU_QKV_FORM on CPUs; default: the "
                             "library's)")
    parser.add_argument("--kernels", nargs="+", default=[None],
                        help="mLSTM kernels of the xLSTM pickers, each measured (default: the library's run-time "
                             "choice; e.g. chunkwise--seisbench_triton, this project's Triton kernel)")
    parser.add_argument("--baseline-repeats", type=int, default=5, help="runs of PhaseNet and EQTransformer (fast)")
    parser.add_argument("--tiny", action="store_true", help="tiny xLSTM backbones (smoke run, not a measurement)")
    parser.add_argument("--setting", action="append", default=[], metavar="MODULE.NAME=VALUE[,VALUE]",
                        help="a constant of a seisbench_xlstm module (e.g. bimlstm.OUTPUT_STAGE=torch,auto): the "
                             "xLSTM pickers run with each value in turn; repeatable (every combination)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if "PhaseNet" not in args.models:
        args.models = ["PhaseNet"] + list(args.models)  # the reference of every ratio
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    batch_sizes = args.batch_sizes or ([256, 1024] if cuda else [64])
    baseline_batch = args.baseline_batch or (2048 if cuda else 256)
    torch.manual_seed(0)
    stream = continuous_stations(args.hours, args.stations)
    warm = continuous_stations(0.05, 1)
    station_hours = args.hours * args.stations
    load_before = load_average()

    results = []  # dict rows
    profiles = []
    timelines = []  # (model, markdown lines) of --profile
    constants = library_constants(args.setting)  # every combination of the --setting values; [()] without any
    stack = contextlib.ExitStack()  # the constants of the current setting, restored after each
    for name in args.models:
        model = build(name, args.tiny).to(device).eval()
        xlstm = name.startswith("XLSTM")
        batches = batch_sizes if xlstm else [baseline_batch]
        natives = {"library": [None], "yes": [True], "no": [False], "both": [True, False]}[args.compile_native_kernel]
        compiles = [(c, n if c else None) for c in NO_YES_BOTH[args.compile]
                    for n in (natives if c else [None])] if xlstm else [(False, None)]
        settings = [(c, o, b, f, k, cs) for cs in constants for k in args.kernels for f in args.qkv_form
                    for c in compiles for o in args.overlaps for b in batches]
        if not xlstm:
            settings = [((False, None), None, baseline_batch, None, None, ())]
        best: dict = {}
        for compile_setting, overlap, batch, form, kern, cs in settings:
            patch_constants(stack, cs)
            if xlstm:
                model.backbone.set_kernel(kern or "auto")
                model.set_compile(compile_setting[0])
                set_qkv_form(form)
                set_native_kernel_compiled(compile_setting[1])
            key = (compile_setting, overlap, form, kern, cs)
            if key not in best:  # warm-up (compiles Triton kernels, and layers if compiled)
                annotate_seconds(model, warm, repeats=1, batch_size=batches[0])
            kwargs = {"batch_size": batch} | ({"overlap": overlap} if overlap is not None else {})
            seconds = annotate_seconds(model, stream, repeats=args.repeats if xlstm else args.baseline_repeats,
                                       **kwargs)
            print((name, compile_setting, overlap, batch, form, kern, round(seconds, 3)), flush=True)
            if key not in best or seconds < best[key][1]:
                best[key] = (batch, seconds)
        stack.close()
        set_qkv_form(None)
        set_native_kernel_compiled(None)
        for ((compiled, native), overlap, form, kern, cs), (batch, seconds) in best.items():
            kernel = f", kernel {kernel_label(model, kern, batch, device)}" if xlstm else ""
            kernel += "".join(f", {c}" for c in constants_label(cs))
            kernel += f", q/k/v {form}" if form else ""
            kernel += ", compiled layers" if compiled else ""
            kernel += {None: "", True: " with the native kernel", False: " around the native kernel"}[native]
            results.append({"model": name + (" (tiny)" if xlstm and args.tiny else ""), "batch": batch,
                            "overlap": overlap if overlap is not None else "default",
                            "settings": f"batch {batch}, overlap {overlap if overlap is not None else 'default'}"
                                        f"{kernel}",
                            "seconds": seconds, "station_hours_per_s": station_hours / seconds})
        if args.profile:
            batch = batch_sizes[-1] if xlstm else baseline_batch
            with pipeline_timeline(model) as calls:
                t_all = annotate_seconds(model, stream, repeats=1, batch_size=batch)
            timelines.append((name, timeline_table(calls, t_all)))
        if args.profile and xlstm:
            per_station = int(np.ceil((len(stream[0]) - 4096) / (4096 - 512))) + 1
            n_windows = per_station * args.stations
            t_fwd = forward_seconds(model, n_windows, batch_sizes[-1], 4096)
            activities = [torch.profiler.ProfilerActivity.CPU]
            activities += [torch.profiler.ProfilerActivity.CUDA] if cuda else []
            x = torch.randn(batch_sizes[-1] if cuda else 8, 3, 4096, device=device)
            with torch.no_grad(), torch.profiler.profile(activities=activities) as prof:
                model(x)
                synchronize()
            key = "cuda_time_total" if cuda else "cpu_time_total"
            table = prof.key_averages().table(sort_by=key, row_limit=12)
            profiles.append((name, n_windows, t_fwd, t_all, len(x), table))
        del model
        if cuda:
            torch.cuda.empty_cache()

    phasenet = next(r["seconds"] for r in results if r["model"] == "PhaseNet")
    for r in results:
        r["ratio_to_phasenet"] = r["seconds"] / phasenet
    load_after = load_average()
    where = machine() + ("" if cuda else f"; {load_before} before, {load_after} after")
    lines = [f"# annotate throughput: {args.stations} stations x {args.hours:g} h, 3 components, 100 Hz ({where})", "",
             "Made by `benchmarks/annotate_speed.py` (random weights; one annotate call over all stations; best of "
             f"{args.repeats} runs per setting of the xLSTM pickers, of {args.baseline_repeats} of the others). "
             "Throughput: hours of 3-component 100 Hz data per second of wall time. Ratio: time as a multiple of "
             "PhaseNet's in this run." + (" **Tiny xLSTM backbones: a smoke run, not a measurement.**"
                                          if args.tiny else ""), "",
             "| model | settings | seconds | station-hours per second | time / PhaseNet's |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['settings']} | {r['seconds']:.2f} | {r['station_hours_per_s']:.3g} | "
                     f"{r['ratio_to_phasenet']:.1f}x |")
    if profiles:
        lines += ["", "## Where the time goes", ""]
        for name, n_windows, t_fwd, t_all, batch, table in profiles:
            lines += [f"- {name}: {n_windows} windows; model forward alone {t_fwd:.2f} s of {t_all:.2f} s annotate "
                      f"({100 * t_fwd / t_all:.0f}%); the rest is SeisBench's stream handling, windowing and stacking.",
                      "", f"Top operators, one forward batch ({batch} windows) of {name}:", "", "```", table, "```"]
    if timelines:
        lines += ["", "## The pipeline's steps (`pipeline_timeline.py`)", "",
                  "When each step of one annotate call ran. `_predict_windows` holds the model's forward; its first "
                  "start is when the model first gets work.", ""]
        for name, table in timelines:
            lines += [f"{name}:", "", *table, ""]
    write_report(lines, args.out)
    if args.out:
        with open(args.out.with_suffix(".csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["model", "batch", "overlap", "seconds", "station_hours_per_s",
                                              "ratio_to_phasenet", "settings", "stations", "hours", "machine"])
            w.writeheader()
            for r in results:
                w.writerow(r | {"stations": args.stations, "hours": args.hours, "machine": where})
    return 0


if __name__ == "__main__":
    sys.exit(main())
