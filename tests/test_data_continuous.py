"""Continuous records as pretraining windows (seisbench_xlstm.data.continuous)."""

import numpy as np
import obspy
import pytest
import torch

from seisbench_xlstm.data.continuous import ContinuousConfig, ContinuousWindows, segments_from_stream
from seisbench_xlstm.pickers import normalize_windows

T0 = obspy.UTCDateTime(2024, 1, 1)
W = 512


def _trace(channel, data, start=T0, rate=100.0, station="STA"):
    return obspy.Trace(
        np.asarray(data, dtype=np.float64),
        header=dict(network="XX", station=station, location="", channel=channel, starttime=start, sampling_rate=rate),
    )


def _stream(n=6000, gap=None, components="ZNE", seed=0, offset=5000.0):
    rng = np.random.default_rng(seed)
    st = obspy.Stream()
    for c in components:
        data = rng.normal(size=n) * 100 + offset  # large DC offset in counts
        if gap is None:
            st += _trace(f"HH{c}", data)
        else:
            a, b = gap
            st += _trace(f"HH{c}", data[:a])
            st += _trace(f"HH{c}", data[b:], start=T0 + b / 100.0)
    return st


def _raw(stream, comp, start, n):
    tr = stream.select(component=comp).copy().merge(fill_value=np.nan)[0]
    i0 = int(round((start - tr.stats.starttime) * 100))
    return tr.data[i0 : i0 + n]


def test_windows_are_normalised_like_annotate_and_never_padded():
    st = _stream()
    ds = ContinuousWindows(st, ContinuousConfig(window_len=W))
    assert len(ds) == 6000 // W
    for i in range(len(ds)):
        x = ds[i]["X"]
        assert x.shape == (3, W) and x.dtype == np.float32
        _, start = ds.window_info(i)
        raw = np.stack([_raw(st, c, start, W) for c in "ZNE"])
        assert np.isfinite(raw).all()  # inside the record: no padding
        expected = normalize_windows(torch.from_numpy(raw[None]).float())[0].numpy()
        np.testing.assert_allclose(x, expected, atol=1e-5)
        np.testing.assert_allclose(x.std(axis=1), 1.0, rtol=1e-4)


def test_segments_are_demeaned_in_counts():
    (seg,), _ = segments_from_stream(_stream(offset=1e6))
    assert seg.data.shape == (3, 6000)
    np.testing.assert_allclose(seg.data.mean(axis=1), 0.0, atol=1e-2)


def test_gaps_split_segments_and_windows_respect_them():
    st = _stream(n=6000, gap=(2000, 2600))
    segs, _ = segments_from_stream(st)
    assert [(s.starttime - T0, s.data.shape[1]) for s in segs] == [(0.0, 2000), (26.0, 3400)]
    ds = ContinuousWindows(st, ContinuousConfig(window_len=W))
    assert len(ds) == 2000 // W + 3400 // W
    for epoch in range(3):
        for i in range(len(ds)):
            _, start = ds.window_info(i, epoch)
            t0, t1 = start - T0, start - T0 + (W - 1) / 100
            assert t1 < 20.0 or t0 >= 26.0  # never across the gap
            raw = np.stack([_raw(st, c, start, W) for c in "ZNE"])
            assert np.isfinite(raw).all()


def test_masked_and_nan_samples_are_gaps():
    st = _stream(n=4000, components="ZNE")
    st.select(component="N")[0].data[1500:1510] = np.nan  # one component's bad samples cut all components
    segs, _ = segments_from_stream(st)
    assert [(s.starttime - T0, s.data.shape[1]) for s in segs] == [(0.0, 1500), (15.1, 2490)]


def test_missing_components_are_zero_and_one_two_map_to_north_east():
    z_only = _stream(components="Z")
    (seg,), _ = segments_from_stream(z_only)
    assert seg.components == "Z"
    assert not seg.data[1:].any() and seg.data[0].any()
    ds = ContinuousWindows(z_only, ContinuousConfig(window_len=W))
    x = ds[0]["X"]
    assert not x[1:].any() and np.isclose(x[0].std(), 1.0, rtol=1e-4)

    z12 = _stream(components="Z12")
    (seg,), skipped = segments_from_stream(z12)
    assert seg.components == "ZNE" and not skipped


def test_instruments_are_grouped_by_band_and_instrument_code():
    st = _stream(components="ZNE")
    accel = _stream(components="ZNE", seed=1)
    for tr in accel:
        tr.stats.channel = "HN" + tr.stats.channel[-1]
    other = _stream(components="Z", seed=2)
    for tr in other:
        tr.stats.station = "OTHER"
    segs, _ = segments_from_stream(st + accel + other)
    assert [s.instrument for s in segs] == ["XX.OTHER..HH", "XX.STA..HH", "XX.STA..HN"]


def test_unmergeable_records_are_skipped_and_listed():
    st = _stream(n=3000)
    st += _trace("HHZ", np.zeros(3000), start=T0 + 10, rate=50.0)  # the same channel at another rate
    st += _stream(n=3000, seed=1).select(component="Z")[0].copy()
    st[-1].stats.station = "GOOD"
    segs, skipped = segments_from_stream(st)
    assert [s.instrument for s in segs] == ["XX.GOOD..HH"]
    assert ("XX.STA..HH", "instrument not used: a component could not be read as one record") in skipped
    assert any(item == "XX.STA..HHZ" and "cannot be merged" in reason for item, reason in skipped)


def test_resampled_to_100_hz():
    st = obspy.Stream(
        [_trace(f"HH{c}", np.random.default_rng(0).normal(size=8000), rate=200.0) for c in "ZNE"]
    )
    (seg,), _ = segments_from_stream(st)
    assert seg.data.shape == (3, 4000)


def test_window_positions_are_deterministic_per_seed_and_epoch():
    st = _stream(n=6000)
    ds = ContinuousWindows(st, ContinuousConfig(window_len=W, seed=3))
    again = ContinuousWindows(st, ContinuousConfig(window_len=W, seed=3))
    starts = lambda d, e: [d.window_info(i, e)[1].timestamp for i in range(len(d))]  # noqa: E731
    assert starts(ds, 0) == starts(again, 0)
    assert len({tuple(starts(ds, e)) for e in range(10)}) > 1  # offsets change between epochs
    ds.set_epoch(4)
    np.testing.assert_array_equal(ds[1]["X"], again.window(1, epoch=4))
    # windows of one epoch do not overlap
    s = starts(ds, 2)
    assert all(b - a >= W / 100 - 1e-6 for a, b in zip(s, s[1:]))


def test_span_splits_segments_by_time():
    st = _stream(n=10000)
    train = ContinuousWindows(st, ContinuousConfig(window_len=W, span=(0.0, 0.8)))
    val = ContinuousWindows(st, ContinuousConfig(window_len=W, span=(0.8, 1.0)))
    assert len(train) == 8000 // W and len(val) == 2000 // W
    last_train = max(train.window_info(i, e)[1] for i in range(len(train)) for e in range(5)) + (W - 1) / 100
    first_val = min(val.window_info(i, e)[1] for i in range(len(val)) for e in range(5))
    assert last_train < T0 + 80.0 <= first_val
    with pytest.raises(ValueError):
        ContinuousWindows(st, ContinuousConfig(span=(0.5, 0.5)))


def test_unreadable_files_are_listed(tmp_path):
    _stream(n=5000).write(str(tmp_path / "ok.mseed"), format="MSEED")
    (tmp_path / "notes.txt").write_text("not a waveform")
    ds = ContinuousWindows(tmp_path, ContinuousConfig(window_len=W))
    assert len(ds) == 5000 // W
    assert [f for f, _ in ds.skipped] == [str(tmp_path / "notes.txt")]


def test_shared_continuous_data(shared_data):
    ds = ContinuousWindows(shared_data / "continuous-ok")
    assert [s.instrument for s in ds.segments] == ["O2.WILZ..EH"]
    assert ds.segments[0].data.shape == (3, 720000)
    assert len(ds) == 720000 // 4096
    x = ds[len(ds) - 1]["X"]
    assert x.shape == (3, 4096) and np.isfinite(x).all()
    np.testing.assert_allclose(x.std(axis=1), 1.0, rtol=1e-4)
