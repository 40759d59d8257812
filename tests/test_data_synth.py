"""Synthetic SeisBench-format datasets for the data-layer tests (helpers, plus checks of the helpers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def synth_waveform(rng, npts, p=None, s=None, n_comp=3, amp=10.0):
    """Noise plus a P burst (strong on Z) and an S burst (strong on horizontals); float32 (n_comp, npts)."""
    x = rng.normal(0, 1.0, size=(n_comp, npts)).astype(np.float32)
    t = np.arange(npts)
    for onset, gains in ((p, (1.0, 0.3, 0.3)), (s, (0.4, 1.0, 1.0))):
        if onset is None or not np.isfinite(onset):
            continue
        env = np.where(t >= onset, np.exp(-(t - onset) / 150.0), 0.0)
        burst = amp * env * np.sin(2 * np.pi * 5.0 * t / 100.0)
        for c in range(min(n_comp, 3)):
            x[c] += (gains[c] * burst).astype(np.float32)
    return x


def write_dataset(
    path: Path,
    n_events: int = 6,
    traces_per_event: int = 2,
    n_noise: int = 3,
    sampling_rate: float = 100.0,
    npts: int = 6000,
    component_order: str = "ZNE",
    p_col: str = "trace_p_arrival_sample",
    s_col: str = "trace_s_arrival_sample",
    with_split: bool = True,
    chunk: str = "",
    seed: int = 0,
    name_prefix: str = "",
) -> pd.DataFrame:
    """Write a small dataset in SeisBench format with ``seisbench.data.WaveformDataWriter``.

    Event traces have P at a random sample and S 200-800 samples later (``p_col``/``s_col``); noise traces
    have ``trace_category == "noise"`` and no picks. Returns the metadata as written (before bucketing).
    """
    import seisbench.data as sbd

    rng = np.random.default_rng(seed)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rows = []
    splits = ["train", "dev", "test"]
    with sbd.WaveformDataWriter(path / f"metadata{chunk}.csv", path / f"waveforms{chunk}.hdf5") as w:
        w.data_format = {
            "dimension_order": "CW",
            "component_order": component_order,
            "sampling_rate": sampling_rate,
        }
        for e in range(n_events):
            for k in range(traces_per_event):
                p = float(rng.integers(int(0.2 * npts), int(0.6 * npts)))
                s = p + float(rng.integers(200, 800)) * sampling_rate / 100.0
                x = synth_waveform(rng, npts, p, s)
                row = {
                    "trace_name": f"{name_prefix}ev{e}_st{k}",
                    "source_id": f"{name_prefix}ev{e}",
                    "station_code": f"ST{k}",
                    "trace_category": "earthquake",
                    p_col: p,
                    s_col: s,
                    "trace_sampling_rate_hz": sampling_rate,
                }
                if with_split:
                    row["split"] = splits[e % 3]
                rows.append(row)
                w.add_trace(dict(row), x)
        for j in range(n_noise):
            x = synth_waveform(rng, npts)
            row = {
                "trace_name": f"{name_prefix}noise{j}",
                "station_code": "NS",
                "trace_category": "noise",
                "trace_sampling_rate_hz": sampling_rate,
            }
            if with_split:
                row["split"] = splits[j % 3]
            rows.append(row)
            w.add_trace(dict(row), x)
    return pd.DataFrame(rows)


def test_write_dataset_roundtrip(tmp_path):
    import seisbench.data as sbd

    md = write_dataset(tmp_path / "d", n_events=2, traces_per_event=1, n_noise=1)
    ds = sbd.WaveformDataset(tmp_path / "d", sampling_rate=100, component_order="ZNE")
    assert len(ds) == len(md) == 3
    assert ds.get_waveforms(0).shape == (3, 6000)
    assert (ds.metadata["trace_category"] == "noise").sum() == 1
