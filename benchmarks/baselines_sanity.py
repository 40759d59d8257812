"""Sanity check of the converted baselines on real data: SeisBench ``classify`` on whole NCEDC-154 traces.

    python -m seisbench_xlstm.baselines install --cache-root /tmp/sb-cache
    SEISBENCH_CACHE_ROOT=/tmp/sb-cache python benchmarks/baselines_sanity.py --split test \
        --out benchmarks/results/baselines_sanity.md

Each 90 s trace of the split (../shared/data/ncedc154, read with ``seisbench_xlstm.data.open_dataset``) becomes a
3-component ObsPy stream; each installed baseline runs ``classify`` with its default thresholds, and a trace
counts as recovered for a phase when a pick of that phase lies within the tolerance of the analyst pick. This is
a check that the conversions pick real phases, not the pick-benchmark protocol. Rows marked "original
normalisation" replace SeisBench's window normalisation by the originals' (each channel divided by its own
population standard deviation) to show how much that preprocessing difference matters.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import obspy
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, write_report  # noqa: E402

import seisbench.models as sbm  # noqa: E402

from seisbench_xlstm.data import open_dataset  # noqa: E402

T0 = obspy.UTCDateTime(2000, 1, 1)
MODELS = [
    ("PhaseNet", "original"),
    ("EQTransformer", "original"),
    ("EQTransformer", "conservative"),
    ("PhaseNetLight", "ethz"),
]


def per_channel_std(batch: torch.Tensor, argdict) -> torch.Tensor:
    """The originals' window normalisation: demean, divide each channel by its population std (1 if 0)."""
    batch = batch - batch.mean(dim=-1, keepdim=True)
    std = batch.std(dim=-1, keepdim=True, correction=0)
    return batch / torch.where(std == 0, torch.ones_like(std), std)


def trace_streams(split: str):
    ds = open_dataset(SHARED_DATA / "ncedc154", component_order="ZNE")
    ds.filter(ds.metadata["split"] == split, inplace=True)
    for i in range(len(ds)):
        x = ds.get_waveforms(i)  # (3, samples), Z N E
        row = ds.metadata.iloc[i]
        st = obspy.Stream()
        for c, data in zip("ZNE", x):
            tr = obspy.Trace(data.astype(np.float32))
            tr.stats.update(dict(network=row["station_network_code"], station=row["station_code"], location="",
                                 channel=f"{row['trace_channel']}{c}", sampling_rate=100.0, starttime=T0))
            st += tr
        picks = {p: T0 + row[f"trace_{p.lower()}_arrival_sample"] / 100.0 for p in "PS"}
        yield st, picks


def evaluate(model, streams, tolerances=(0.1, 0.5)) -> dict:
    hits = {(p, t): 0 for p in "PS" for t in tolerances}
    residuals = {"P": [], "S": []}
    n_picks = {"P": 0, "S": 0}
    for st, truth in streams:
        picks = model.classify(st).picks
        for phase in "PS":
            times = [p.peak_time for p in picks if p.phase == phase]
            n_picks[phase] += len(times)
            if not times:
                continue
            res = min((t - truth[phase] for t in times), key=abs)
            if abs(res) <= 0.5:
                residuals[phase].append(res)
            for tol in tolerances:
                hits[(phase, tol)] += abs(res) <= tol
    return {"hits": hits, "residuals": residuals, "n_picks": n_picks}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    streams = list(trace_streams(args.split))
    rows = []
    for cls_name, name in MODELS:
        cls = getattr(sbm, cls_name)
        variants = [("SeisBench normalisation", None)]
        if cls_name != "PhaseNetLight":
            variants.append(("original normalisation", per_channel_std))
        for label, pre in variants:
            model = cls.from_pretrained(name)
            if pre is not None:
                model.annotate_batch_pre = pre
            t = time.perf_counter()
            r = evaluate(model, streams)
            wall = time.perf_counter() - t
            row = [f"{cls_name} {name}", label]
            for phase in "PS":
                res = np.array(r["residuals"][phase])
                row += [
                    f"{r['hits'][(phase, 0.1)]}/{len(streams)}",
                    f"{r['hits'][(phase, 0.5)]}/{len(streams)}",
                    str(r["n_picks"][phase]),
                    f"{res.mean():+.3f}" if len(res) else "-",
                ]
            row.append(f"{wall:.1f}")
            rows.append(row)
            print(" | ".join(row), flush=True)
    header = ["model", "preprocessing", "P within 0.1 s", "P within 0.5 s", "P picks", "P mean residual (s)",
              "S within 0.1 s", "S within 0.5 s", "S picks", "S mean residual (s)", "wall s"]
    intro = (
        f"Converted baselines, SeisBench `classify` (default thresholds of each weight) on the {len(streams)} "
        f"whole 90 s traces of the NCEDC-154 `{args.split}` split (in-distribution for PhaseNet). A trace counts "
        "when the pick of that phase nearest the analyst pick lies within the tolerance; 'picks' counts all picks "
        "of the phase; the mean residual (pick minus analyst) is over picks within 0.5 s. "
        "Made by `benchmarks/baselines_sanity.py`."
    )
    lines = ["# Baselines on NCEDC-154: sanity check", "", intro, "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
