"""Ingest: sample alignment that a half-sample shift would break, noise-window room, split chains, and
multi-event Nordic files equal to the same events in separate S-files."""

import warnings

import numpy as np
import pandas as pd
import pytest
from obspy import Stream, UTCDateTime

from seisbench_xlstm.data import open_dataset
from seisbench_xlstm.data.ingest import ingest
from test_data_ingest import NET, T0, _tr, _zne

FREQS = np.array([0.7, 1.3, 2.9, 4.1, 6.3, 8.7, 11.9, 14.3, 17.1, 19.7])  # Hz, all below 0.4 x 50 Hz
PHASES = np.random.default_rng(5).uniform(0, 2 * np.pi, len(FREQS))


def broadband(t):
    """A broadband signal known at any time ``t`` (seconds after T0)."""
    return 100.0 * np.sin(2 * np.pi * FREQS[:, None] * np.asarray(t)[None] + PHASES[:, None]).sum(axis=0)


def subsample_lag(x, ref) -> float:
    """Lag of ``x`` behind ``ref`` in samples (cross-correlation peak, parabolic interpolation)."""
    c = np.correlate(x - x.mean(), ref - ref.mean(), mode="full")
    k = int(np.argmax(c))
    y0, y1, y2 = c[k - 1], c[k], c[k + 1]
    return (k - (len(ref) - 1)) + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)


def alignment_errors(x, start, sr=100.0, shift=0.0):
    """(sub-sample lag, max |error| / std) of ``x`` against the signal at its sample times (+ ``shift`` samples)."""
    t = UTCDateTime(start) - T0 + (np.arange(len(x)) + shift) / sr
    ref = broadband(t)
    inner = slice(50, -50)
    return subsample_lag(x[inner], ref[inner]), np.abs(x[inner] - ref[inner]).max() / ref.std()


@pytest.fixture(scope="module")
def aligned_net(tmp_path_factory):
    """Stations R1 (100 Hz), R2 (200 Hz), R3 (250 Hz): the same broadband signal on every component."""
    root = tmp_path_factory.mktemp("align")
    (root / "wav").mkdir()
    traces = []
    for sta, sr in (("R1", 100.0), ("R2", 200.0), ("R3", 250.0)):
        n = int(180 * sr) + 1
        data = broadband(np.arange(n) / sr)
        traces += [_tr(sta, "HH" + c, T0, sr, n, data=data) for c in "ZNE"]
    Stream(traces).write(str(root / "wav" / "r.mseed"), format="MSEED")
    rows = [{"event_id": "E1", "network": NET, "station": s, "channel": "HHZ", "phase": "P",
             "time": str(T0 + 70.013)} for s in ("R1", "R2", "R3")]
    pd.DataFrame(rows).to_csv(root / "picks.csv", index=False)
    return root


def test_samples_sit_at_their_times(aligned_net, tmp_path):
    s = ingest(aligned_net / "wav", aligned_net / "picks.csv", "csv", tmp_path / "o", progress=False)
    assert s.traces == 3
    ds = open_dataset(tmp_path / "o")
    md = ds.metadata
    for i in range(len(ds)):
        x = ds.get_waveforms(i)[0].astype(np.float64)
        start = md["trace_start_time"].iloc[i]
        lag, err = alignment_errors(x, start)
        assert abs(lag) < 0.05, (md["station_code"].iloc[i], lag)
        if md["trace_original_sampling_rate_hz"].iloc[i] != 250:  # FFT resampling (Hann) damps the amplitudes
            assert err < 0.02, (md["station_code"].iloc[i], err)
        # the check is sharp: the same data read half a sample off fail it
        lag_half, err_half = alignment_errors(x, start, shift=0.5)
        assert abs(lag_half) > 0.4 and err_half > 0.2
        # the pick column agrees with the start time
        p = md["trace_P_arrival_sample"].iloc[i]
        assert float((UTCDateTime(start) + p / 100.0) - (T0 + 70.013)) == pytest.approx(0.0, abs=1e-4)


def test_default_window_has_room_for_noise_windows(aligned_net, tmp_path):
    s = ingest(aligned_net / "wav", aligned_net / "picks.csv", "csv", tmp_path / "o", progress=False)
    assert s.training_windows["eligible_event_traces"] == 3  # 60 s before the pick: room for 4096 + 100 samples
    s30 = ingest(aligned_net / "wav", aligned_net / "picks.csv", "csv", tmp_path / "o30", progress=False,
                 window_before=30)
    assert s30.training_windows["eligible_event_traces"] == 0
    assert any(n["what"] == "training windows" and "needs 42 s" in n["reason"] for n in s30.notes)


@pytest.fixture(scope="module")
def busy_net(tmp_path_factory):
    """12 events every 40 s, picked alternately at stations A and B only (continuous records)."""
    root = tmp_path_factory.mktemp("busy")
    (root / "wav").mkdir()
    Stream(_zne("A", "HH", T0, 100, 600, seed=1) + _zne("B", "HH", T0, 100, 600, seed=4)).write(
        str(root / "wav" / "ab.mseed"), format="MSEED")
    rows = [{"event_id": f"E{k:02d}", "network": NET, "station": "AB"[k % 2], "channel": "HHZ", "phase": "P",
             "time": str(T0 + 70 + 40 * k)} for k in range(12)]
    pd.DataFrame(rows).to_csv(root / "picks.csv", index=False)
    return root


def test_events_overlapping_at_other_stations_do_not_chain(busy_net, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        s = ingest(busy_net / "wav", busy_net / "picks.csv", "csv", tmp_path / "o", progress=False,
                   window_before=30)
    # every event overlaps the next in time, but at the other station: no grouping, all splits filled
    assert s.events == 12 and s.events_per_split == {"train": 8, "dev": 2, "test": 2}


def test_a_chain_at_one_station_warns(busy_net, tmp_path):
    # with 60 s before the pick, events 80 s apart at the same station share samples: a chain of 6 per station
    with pytest.warns(UserWarning, match="chain"):
        s = ingest(busy_net / "wav", busy_net / "picks.csv", "csv", tmp_path / "o", progress=False)
    assert all(v > 0 for v in s.events_per_split.values())
    assert any(n["what"] == "split" and "chain" in n["reason"] for n in s.notes)


SFILES = ["01-0411-15L", "01-0411-16L", "02-0715-42L", "05-0208-14L", "05-0208-15L", "05-0208-16L",
          "11-2209-24L", "11-2209-25L", "18-2350-07L", "18-2350-08L", "26-1517-03L", "26-1517-4L"]


def test_multi_event_nordic_equals_separate_sfiles(shared_data, tmp_path):
    nz = shared_data / "nz-dfdp"
    if not nz.is_dir():
        pytest.skip(f"{nz} is absent")
    single = tmp_path / "REA"
    single.mkdir()
    text = []
    for name in SFILES:
        data = (nz / "REA" / f"{name}.S201309").read_bytes()
        (single / f"{name}.S201309").write_bytes(data)
        body = data.decode("latin-1").rstrip() + "\n" + " " * 80 + "\n"  # events end with a blank line
        text.append(body)
    select = tmp_path / "select.out"
    select.write_bytes("".join(text).encode("latin-1"))

    a = ingest(nz / "WAV", single, "nordic", tmp_path / "a", progress=False)
    b = ingest(nz / "WAV", select, "nordic", tmp_path / "b", progress=False)
    counts = lambda s: (s.events, s.traces, s.p_picks, s.s_picks, s.stations, s.skipped_counts)  # noqa: E731
    assert counts(b) == counts(a)
    assert a.events == 10  # 12 S-files, two pairs of duplicates (same wave file, origins < 1 s apart)
    assert b.events_read == 12 and sum(n["what"] == "duplicate event" for n in b.notes) == 2
    da, db = open_dataset(tmp_path / "a"), open_dataset(tmp_path / "b")
    key = ["source_origin_time", "station_code"]
    ma = da.metadata.reset_index().sort_values(key).reset_index(drop=True)
    mb = db.metadata.reset_index().sort_values(key).reset_index(drop=True)
    ignore = ["index", "source_id", "source_files", "trace_name"]
    pd.testing.assert_frame_equal(ma.drop(columns=ignore), mb.drop(columns=ignore))
    for i, j in zip(ma["index"], mb["index"]):
        np.testing.assert_array_equal(da.get_waveforms(int(i)), db.get_waveforms(int(j)))
    # each event keeps the wave files of its own type-6 lines: no event of the file names another's file
    assert set(mb["source_id"].str.split("#").str[0]) == {"select.out"}
