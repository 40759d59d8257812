"""SeisBench ``annotate`` speed of the xLSTM pickers next to PhaseNet and EQTransformer, in one run.

    python benchmarks/annotate_speed.py --hours 24 --out benchmarks/results/annotate_gpu.md   # on the H200
    python benchmarks/annotate_speed.py --hours 1 --out benchmarks/results/annotate_cpu.md    # on a CPU

The stream is one real station (O2.WILZ, 3 channels, 100 Hz) tiled to the requested length. Models have random
weights: speed does not depend on the weights. The xLSTM pickers run with the kernel and precision chosen at run
time (TFLA Triton + bf16 autocast on CUDA, native chunkwise fp32 on CPU). For each model the best of the listed
batch sizes is reported (each the best of two runs, since the first run at a new batch shape also compiles
Triton kernels), and the xLSTM pickers at two overlaps (the default 512, the least overlap that still
covers every sample with the default blinding of 256, and 1024). ``--profile`` adds a breakdown of where one
annotate call of each xLSTM picker spends its time (model forward vs the rest of SeisBench's pipeline) and the
top operators.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import continuous_station, machine, synchronize, write_report  # noqa: E402

import seisbench.models as sbm  # noqa: E402

from seisbench_xlstm import XLSTMSeqPicker, XLSTMUNetPicker  # noqa: E402


def annotate_seconds(model, stream, repeats: int = 2, **kwargs) -> float:
    """Best of ``repeats`` annotate runs: the first run at a new batch shape also compiles Triton kernels."""
    times = []
    for _ in range(repeats):
        synchronize()
        t = time.perf_counter()
        out = model.annotate(stream, **kwargs)
        synchronize()
        assert len(out) > 0
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument("--baseline-batch", type=int)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    batch_sizes = args.batch_sizes or ([256, 1024] if cuda else [64])
    baseline_batch = args.baseline_batch or (2048 if cuda else 256)
    torch.manual_seed(0)
    stream = continuous_station(args.hours)
    warm = continuous_station(0.2)

    results = []  # (model, settings, seconds)
    baselines = {"PhaseNet": sbm.PhaseNet(), "EQTransformer": sbm.EQTransformer()}
    for name, model in baselines.items():
        model.to(device).eval()
        annotate_seconds(model, warm, repeats=1, batch_size=baseline_batch)
        results.append((name, f"batch {baseline_batch}, default overlap", annotate_seconds(model, stream, batch_size=baseline_batch)))
        print(results[-1], flush=True)

    pickers = {"XLSTMSeqPicker": XLSTMSeqPicker(), "XLSTMUNetPicker": XLSTMUNetPicker()}
    profiles = []
    for name, model in pickers.items():
        model.to(device).eval()
        annotate_seconds(model, warm, repeats=1, batch_size=batch_sizes[0])  # compiles the Triton kernels
        for overlap in (512, 1024):
            best = None
            for batch in batch_sizes:
                seconds = annotate_seconds(model, stream, batch_size=batch, overlap=overlap)
                print((name, overlap, batch, seconds), flush=True)
                if best is None or seconds < best[1]:
                    best = (batch, seconds)
            results.append((name, f"batch {best[0]}, overlap {overlap}, kernel {model.backbone.kernel} -> "
                            f"{'TFLA+bf16' if cuda else 'native fp32'}", best[1]))
        if args.profile:
            n_windows = int(np.ceil((len(stream[0]) - 4096) / (4096 - 512))) + 1
            t_fwd = forward_seconds(model, n_windows, batch_sizes[-1], 4096)
            t_all = annotate_seconds(model, stream, batch_size=batch_sizes[-1])
            profiles.append((name, n_windows, t_fwd, t_all))
            activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
            x = torch.randn(batch_sizes[-1] if cuda else 8, 3, 4096, device=device)
            with torch.no_grad(), torch.profiler.profile(activities=activities) as prof:
                model(x)
                synchronize()
            key = "cuda_time_total" if cuda else "cpu_time_total"
            profiles.append((name, prof.key_averages().table(sort_by=key, row_limit=12)))

    phasenet = results[0][2]
    lines = [f"# annotate speed: {args.hours:g} h of one 3-component 100 Hz station ({machine()})", ""]
    lines += ["| model | settings | seconds | ratio to PhaseNet |", "|---|---|---|---|"]
    for name, settings, seconds in results:
        lines.append(f"| {name} | {settings} | {seconds:.2f} | {seconds / phasenet:.1f}x |")
    if profiles:
        lines += ["", "## Where the time goes", ""]
        for item in profiles:
            if len(item) == 4:
                name, n_windows, t_fwd, t_all = item
                lines.append(
                    f"- {name}: {n_windows} windows; model forward alone {t_fwd:.2f} s of {t_all:.2f} s annotate "
                    f"({100 * t_fwd / t_all:.0f}%); the rest is SeisBench's stream handling, windowing and stacking."
                )
            else:
                lines += ["", f"Top operators, one forward batch ({'%d' % (batch_sizes[-1] if cuda else 8)} windows) of "
                          f"{item[0]}:", "", "```", item[1], "```"]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
