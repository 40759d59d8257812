"""Windows per second of the pretraining and picking loaders, per DataLoader worker count.

Usage::

    python benchmarks/loader_speed.py                      # synthetic INSTANCE-like set in a temp dir
    python benchmarks/loader_speed.py --dataset ../shared/data/ncedc154
    python benchmarks/loader_speed.py --dataset stead --workers 0 2 4 8 --batches 50

The default data are written to a temporary folder (deleted afterwards): ``--traces`` traces of
3 x 12000 samples (120 s at 100 Hz, like INSTANCE) in SeisBench format, uncompressed like the published
datasets. Reads are lazy (``cache=None``, the streaming set-up) unless ``--cache full``. Each
configuration is timed over ``--batches`` batches of ``--batch-size`` windows after two warm-up
batches; the figure is windows (samples of 3 x 4096) per second. The picking loader runs with the
training augmentations on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_synthetic(path: Path, n_traces: int, npts: int = 12000, seed: int = 0) -> None:
    import seisbench.data as sbd

    rng = np.random.default_rng(seed)
    with sbd.WaveformDataWriter(path / "metadata.csv", path / "waveforms.hdf5") as w:
        w.data_format = {"dimension_order": "CW", "component_order": "ZNE", "sampling_rate": 100.0}
        for i in range(n_traces):
            noise = i % 10 == 0
            p = np.nan if noise else float(rng.integers(1000, 8000))
            s = np.nan if noise else p + float(rng.integers(100, 1500))
            x = rng.normal(0, 1, (3, npts)).astype(np.float32)
            meta = {
                "trace_name": f"t{i}",
                "source_id": None if noise else f"ev{i // 3}",
                "trace_category": "noise" if noise else "earthquake",
                "trace_P_arrival_sample": p,
                "trace_S_arrival_sample": s,
                "trace_sampling_rate_hz": 100.0,
                "split": "train",
            }
            w.add_trace(meta, x)


def time_loader(generator, batch_size: int, workers: int, batches: int, seed: int = 0) -> float:
    import torch

    from seisbench_xlstm.data import make_loader

    sampler = torch.utils.data.RandomSampler(
        range(len(generator)), replacement=True, num_samples=batch_size * (batches + 2),
        generator=torch.Generator().manual_seed(seed),
    )
    loader = make_loader(generator, batch_size=batch_size, num_workers=workers, sampler=sampler,
                         persistent_workers=False)
    it = iter(loader)
    for _ in range(2):  # warm-up: worker start, first HDF5 opens
        next(it)
    t = time.perf_counter()
    n = 0
    for batch in it:
        n += batch["X"].shape[0]
    dt = time.perf_counter() - t
    del it, loader
    return n / dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=None, help="name or path (default: synthetic, see --traces)")
    ap.add_argument("--traces", type=int, default=1500, help="traces of the synthetic set")
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="worker counts (default 0..cores)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--cache", choices=("none", "trace", "full"), default="none")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import torch

    from seisbench_xlstm.data import open_dataset, picking_generator, pretraining_generator

    torch.set_num_threads(1)
    cores = len(os.sched_getaffinity(0))
    workers = args.workers if args.workers is not None else list(range(0, cores + 1))
    cache = None if args.cache == "none" else args.cache

    tmp = None
    if args.dataset is None:
        tmp = tempfile.TemporaryDirectory(prefix="loader-speed-")
        path = Path(tmp.name) / "synthetic"
        t = time.perf_counter()
        write_synthetic(path, args.traces)
        print(f"wrote {args.traces} synthetic traces (3 x 12000 float32) in {time.perf_counter() - t:.1f} s")
        source = path
    else:
        source = args.dataset
    ds = open_dataset(source, cache=cache)
    if cache is not None:
        ds.preload_waveforms()
    print(f"dataset: {source} ({len(ds)} traces), cache={cache}, batch size {args.batch_size}, "
          f"{args.batches} batches, {cores} CPU cores, torch threads 1")

    loaders = {
        "pretraining": pretraining_generator(ds),
        "picking (train augm.)": picking_generator(ds, train=True),
    }
    results = {}
    print(f"{'loader':24s} " + " ".join(f"{f'w={w}':>10s}" for w in workers) + "   windows/s")
    for name, gen in loaders.items():
        row = {}
        for w in workers:
            row[w] = time_loader(gen, args.batch_size, w, args.batches)
        results[name] = row
        print(f"{name:24s} " + " ".join(f"{row[w]:10.0f}" for w in workers))
    for name, row in results.items():
        best = max(row, key=row.get)
        ms = 1000 * args.batch_size / row[best]
        print(f"best for {name}: {best} worker(s), {row[best]:.0f} windows/s "
              f"(a batch of {args.batch_size} every {ms:.0f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps({"dataset": str(source), "cache": cache, "cores": cores,
                                               "batch_size": args.batch_size, "results": results}, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
