"""One split algorithm (mixing.assign_splits and ingest): by event, existing splits kept, overlaps grouped per
station without chaining everything, warnings for empty or tiny splits."""

import warnings

import numpy as np
import pandas as pd
import pytest
import seisbench.data as sbd

from seisbench_xlstm.data import assign_splits, open_dataset
from seisbench_xlstm.data.splits import split_by_event
from test_data_synth import synth_waveform

T0 = pd.Timestamp("2021-03-04T05:00:00Z")


def write_events(path, rows, npts=3000, seed=0):
    """rows: dicts with source_id, station_code, start (s after T0), split (or None)."""
    rng = np.random.default_rng(seed)
    with sbd.WaveformDataWriter(path / "metadata.csv", path / "waveforms.hdf5") as w:
        w.data_format = {"dimension_order": "CW", "component_order": "ZNE", "sampling_rate": 100.0}
        for i, r in enumerate(rows):
            meta = {
                "trace_name": f"t{i}",
                "source_id": r["source_id"],
                "station_network_code": "XX",
                "station_code": r["station_code"],
                "trace_start_time": str(T0 + pd.Timedelta(seconds=r["start"])),
                "trace_sampling_rate_hz": 100.0,
                "trace_P_arrival_sample": 1000.0,
                "split": r.get("split"),
            }
            w.add_trace(meta, synth_waveform(rng, npts, 1000.0))
    return open_dataset(path)


def events_in_two_splits(md) -> int:
    return int((md.groupby("source_id")["split"].nunique() > 1).sum())


def test_partially_split_events_stay_in_one_split(tmp_path):
    # 30 events x 4 stations, far apart in time; one trace of each event already has a split
    rng = np.random.default_rng(0)
    rows = []
    for e in range(30):
        pre = ["train", "dev", "test"][rng.integers(3)]
        for k in range(4):
            rows.append({"source_id": f"ev{e}", "station_code": f"S{k}", "start": 1000.0 * e,
                         "split": pre if k == 0 else None})
    ds = write_events(tmp_path, rows)
    before = ds.metadata["split"].copy()
    assign_splits(ds, seed=1)
    md = ds.metadata
    assert md["split"].notna().all()
    assert events_in_two_splits(md) == 0  # the old fill put 21 of these 30 events in two splits
    assert (md.loc[before.notna(), "split"] == before[before.notna()]).all()  # existing splits kept


def test_conflicting_existing_splits_warn_and_follow_the_majority():
    events = ["a", "a", "a", "a", "b", "b"]
    existing = ["train", "train", "dev", None, None, None]
    with pytest.warns(UserWarning, match="several splits"):
        split, rep = split_by_event(events, existing=existing, seed=0, warn=True)
    assert list(split[:4]) == ["train", "train", "dev", "train"]
    assert rep.conflicting_events == 1


def test_overlap_groups_only_at_shared_stations():
    # e0/e1 overlap at station A: one group. e2 overlaps e1 in time but at station B only: independent.
    events = ["e0", "e1", "e2"] + [f"x{i}" for i in range(20)]
    stations = ["A", "A", "B"] + ["C"] * 20
    starts = [0.0, 30.0, 40.0] + [1000.0 + 100 * i for i in range(20)]
    ends = [60.0, 90.0, 100.0] + [1060.0 + 100 * i for i in range(20)]
    for seed in range(10):
        split, rep = split_by_event(events, seed=seed, stations=stations, starts=starts, ends=ends, warn=False)
        assert split[0] == split[1]
        assert rep.groups == 22 and rep.overlaps_across_splits == 0


def test_a_chain_at_one_station_is_cut_with_a_warning():
    # 40 events every 40 s with 60 s windows at one station: every event overlaps the next
    n = 40
    events = [f"e{i}" for i in range(n)]
    starts = [40.0 * i for i in range(n)]
    ends = [s + 60.0 for s in starts]
    with pytest.warns(UserWarning, match="chain"):
        split, rep = split_by_event(events, seed=0, stations=["A"] * n, starts=starts, ends=ends)
    assert rep.chains_cut == 1 and rep.largest_group <= 4
    assert all(rep.events_per_split[s] > 0 for s in ("train", "dev", "test"))
    assert 0 < rep.overlaps_across_splits < n


def test_tiny_or_empty_splits_warn():
    with pytest.warns(UserWarning, match="split 'dev' holds"):
        split_by_event(["a", "b", "c"], (0.7, 0.15, 0.15), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split, rep = split_by_event([f"e{i}" for i in range(40)], (0.7, 0.15, 0.15), seed=0)
    assert rep.events_per_split == {"train": 28, "dev": 6, "test": 6}
    # fractions of 0 are allowed and never warned about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split, rep = split_by_event([f"e{i}" for i in range(10)], (1, 0, 0), seed=0)
    assert set(split) == {"train"}
