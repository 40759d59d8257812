"""annotate at the edges: record starts and ends, gaps, masked arrays, odd components and bad arguments.

Most tests use :class:`fakes.SpikePicker`, whose output the test controls: P wherever the window holds a spike.
"""

import numpy as np
import obspy
import pytest
import torch

from fakes import T0, FailingPicker, SpikePicker, noise_stream, run_with_timeout
from seisbench_xlstm import AnnotateWarning, XLSTMSeqPicker, normalize_windows
from tiny import TINY_SEQUENTIAL


def _spikes(st, samples, channel="HHZ"):
    for s in samples:
        st.select(channel=channel)[0].data[s] = 1000.0
    return st


def _p_peaks(model, st, **kwargs):
    picks = model.classify(st, P_threshold=0.5, S_threshold=0.5, **kwargs).picks
    return sorted(round((p.peak_time - T0) * 100) for p in picks if p.phase == "P")


# ---------------------------------------------------------------------- record edges
@pytest.mark.parametrize("blinding,overlap", [((256, 256), 512), ((500, 700), 1200), ((0, 0), 0)])
def test_arrivals_one_second_from_the_record_edges_are_picked(blinding, overlap):
    """A 300 s record with spikes 1 s after its start and 1 s before its end: both picked, at the spike sample.
    With SeisBench's blinding of every window edge, the first and last 2.56 s were never annotated."""
    st = _spikes(noise_stream(30000), [100, 29900, 15000])
    assert _p_peaks(SpikePicker().eval(), st, blinding=blinding, overlap=overlap) == [100, 15000, 29900]


def test_record_edges_after_and_before_a_long_gap_are_picked():
    """Each contiguous record is annotated to its edges, also where a long gap separates two records."""
    st = _spikes(noise_stream(30000), [100, 9900, 20100, 29900])
    st.cutout(T0 + 100, T0 + 200)  # 100 s gap: longer than one window, so two records
    model = SpikePicker().eval()
    assert _p_peaks(model, st) == [100, 9900, 20100, 29900]
    starts = sorted(tr.stats.starttime - T0 for tr in model.annotate(st).select(channel="*_P"))
    assert starts == [0, 200]


def test_records_shorter_than_the_blinding_are_annotated():
    """A 2 s record (shorter than the 2.56 s blinding) is annotated over its whole length, spike picked."""
    st = _spikes(noise_stream(200), [50])
    model = SpikePicker().eval()
    (p,) = model.annotate(st).select(channel="*_P")
    assert (p.stats.starttime, p.stats.npts) == (T0, 200)
    assert _p_peaks(model, st) == [50]


# ---------------------------------------------------------------------- argument validation
BAD_ARGUMENTS = [
    ("classify", {"blinding": 100}, "blinding must be a pair"),
    ("annotate", {"blinding": (-1, 0)}, "blinding must be a pair"),
    ("annotate", {"overlap": 4096}, "must be less than the window length"),
    ("annotate", {"overlap": 5000}, "must be less than the window length"),
    ("annotate", {"overlap": 0}, "least overlap that covers every sample is 512"),
    ("annotate", {"overlap": 256}, "least overlap that covers every sample is 512"),
    ("annotate", {"overlap": 600.5}, "whole number of samples"),
    ("annotate", {"batch_size": 0}, "batch_size must be an integer >= 1"),
    ("annotate", {"batch_size": 2.5}, "batch_size must be an integer >= 1"),
    ("annotate", {"stacking": "median"}, r"stacking must be one of \['avg', 'max'\]"),
    ("classify", {"stacking": "median"}, r"stacking must be one of"),
    ("classify", {"p_threshold": 0.99}, r"Unknown annotate/classify argument\(s\) \['p_threshold'\].*'P_threshold'"),
    ("classify", {"N_threshold": 0.5}, r"Unknown .*'N_threshold'"),
    ("annotate", {"stride": 10}, r"Unknown .*'stride'"),
    ("classify", {"P_threshold": 1.5}, r"P_threshold must be a number in \(0, 1\]"),
    ("classify", {"S_threshold": 0}, r"S_threshold must be a number in \(0, 1\]"),
    ("classify", {"detection_threshold": -0.1}, r"detection_threshold must be a number in \(0, 1\]"),
    ("annotate", {"strict": "yes"}, "strict must be True or False"),
    ("annotate", {"nan_policy": "ignore"}, "nan_policy must be 'raise' or 'gap'"),
]


@pytest.mark.parametrize("method,kwargs,message", BAD_ARGUMENTS)
def test_bad_arguments_raise_at_once(method, kwargs, message):
    """Each of these hung forever inside SeisBench's pipeline, was silently ignored or gave no output."""
    model = XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL).eval()
    st = noise_stream(8000)
    with pytest.raises(ValueError, match=message):
        run_with_timeout(lambda: getattr(model, method)(st, **kwargs), timeout=60)


def test_valid_edge_arguments_are_accepted():
    model = XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL).eval()
    st = noise_stream(4600)
    for kwargs in ({"overlap": 0.5}, {"overlap": 4000, "batch_size": 64}, {"blinding": [0, 0], "overlap": 0},
                   {"stacking": "MAX"}, {"P_threshold": 1.0, "S_threshold": 0.01}, {"strict": np.True_}):
        ann = run_with_timeout(lambda: model.annotate(st, **kwargs), timeout=120)
        assert len(ann) == 3


def test_errors_inside_the_pipeline_are_raised_not_waited_on():
    """SeisBench's workers fail silently and leave annotate waiting forever; the pickers raise the error."""
    st = noise_stream(9000)
    with pytest.raises(RuntimeError, match="forward failed on purpose"):
        run_with_timeout(lambda: FailingPicker().annotate(st), timeout=60)
    with pytest.raises(RuntimeError, match="forward failed on purpose"):
        run_with_timeout(lambda: FailingPicker().classify(st), timeout=60)



@pytest.mark.parametrize("convert_in_threads", [False, True])
def test_errors_while_converting_an_instrument_are_raised(monkeypatch, convert_in_threads):
    """An error in SeisBench's conversion of an instrument's traces (here the second of three) is raised, whether
    the conversion runs in the event loop or in a worker thread."""
    from seisbench_xlstm import pickers

    monkeypatch.setattr(pickers, "CONVERT_IN_THREADS", convert_in_threads)
    st = sum((noise_stream(9000, station=f"S{k}", seed=k) for k in range(3)), obspy.Stream())
    model = XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL).eval()
    convert = pickers.WaveformModel.stream_to_array

    def fails_on_s1(self, traces, argdict):
        if traces[0].stats.station == "S1":
            raise RuntimeError("conversion failed on purpose")
        return convert(self, traces, argdict)

    monkeypatch.setattr(pickers.WaveformModel, "stream_to_array", fails_on_s1)
    with pytest.raises(RuntimeError, match="conversion failed on purpose"):
        run_with_timeout(lambda: model.annotate(st), timeout=60)


def test_the_pipelines_order_of_work_changes_no_annotation(monkeypatch):
    """Three stations, one with a gap, small batches: the same annotation traces and values whether each
    instrument's arrays are made before the first prediction (SeisBench's order) or in worker threads, and with
    one, two or three batches predicted at a time."""
    from seisbench_xlstm import pickers

    st = obspy.Stream()
    for k in range(3):
        st += noise_stream(20000, station=f"S{k}", seed=k, offset=100.0 * k)
    st += noise_stream(9000, station="S1", seed=7, start=T0 + 260.0)
    model = XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL).eval()
    out = {}
    for threads, in_flight in [(False, 1), (True, 1), (True, 2), (False, 3)]:
        monkeypatch.setattr(pickers, "CONVERT_IN_THREADS", threads)
        monkeypatch.setattr(pickers, "PREDICTIONS_IN_FLIGHT", in_flight)
        out[threads, in_flight] = sorted(model.annotate(st, batch_size=3), key=lambda t: (t.id, t.stats.starttime))
    reference = out.pop((False, 1))
    assert len(reference) == 12  # 3 labels, 3 stations, S1 in two records
    for traces in out.values():
        assert [(t.id, t.stats.starttime, t.stats.npts) for t in traces] == [
            (t.id, t.stats.starttime, t.stats.npts) for t in reference]
        for a, b in zip(reference, traces):
            np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_model_errors_are_raised_with_any_number_of_batches_at_a_time(monkeypatch, in_flight):
    from seisbench_xlstm import pickers

    monkeypatch.setattr(pickers, "PREDICTIONS_IN_FLIGHT", in_flight)
    st = sum((noise_stream(9000, station=f"S{k}", seed=k) for k in range(3)), obspy.Stream())
    with pytest.raises(RuntimeError, match="forward failed on purpose"):
        run_with_timeout(lambda: FailingPicker().annotate(st, batch_size=2), timeout=60)


# ---------------------------------------------------------------------- gaps
def test_gap_window_is_demeaned_per_segment_before_the_gap_is_zero_filled():
    """One window (4096 samples) at a 2,000-count offset with a 10 s gap in all components: the model receives
    the window built by hand as training builds it (each segment minus its mean, gap zeros, normalize_windows)."""
    rng = np.random.default_rng(3)
    full = rng.normal(size=(3, 4096)) * 5 + 2000 + np.arange(3)[:, None] * 100
    gap = slice(1500, 2500)
    st = obspy.Stream()
    for c, data in zip("ZNE", full):
        header = dict(network="XX", station="G", channel=f"HH{c}", sampling_rate=100.0)
        st += obspy.Trace(data[:1500].copy(), header={**header, "starttime": T0})
        st += obspy.Trace(data[2500:].copy(), header={**header, "starttime": T0 + 25.0})

    model = XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL).eval()
    raw = []
    model.annotate_batch_pre = lambda batch, argdict: (raw.append(batch.clone()), normalize_windows(batch))[1]
    received = []
    model.register_forward_pre_hook(lambda module, args: received.append(args[0].clone()))
    ann = model.annotate(st)

    hand = np.zeros_like(full)
    for segment in (slice(0, 1500), slice(2500, 4096)):
        hand[:, segment] = full[:, segment] - full[:, segment].mean(axis=-1, keepdims=True)
    (window,) = torch.cat(raw)
    assert torch.all(window[:, gap] == 0)
    np.testing.assert_array_equal(window.numpy(), hand.astype(np.float32))
    (x,) = torch.cat(received)
    torch.testing.assert_close(x, normalize_windows(torch.as_tensor(hand, dtype=torch.float32)[None])[0])
    # the gap itself is not annotated: one annotation trace per segment
    segments = sorted((tr.stats.starttime - T0, tr.stats.npts) for tr in ann.select(channel="*_P"))
    assert segments == [(0, 1500), (25, 1596)]


@pytest.mark.parametrize("dtype,kwargs", [
    (np.int32, {}), (np.float64, {}), (np.float64, {"prepared": True}), (np.float32, {"filter": True}),
    ("masked", {}), (np.float64, {"overlap": 1024, "stacking": "max"}), (np.int32, {"rate": 50.0}),
])
def test_annotate_leaves_the_callers_stream_as_it_was(dtype, kwargs):
    """annotate's copy of the stream shares the caller's data arrays (records.headers_copy): the caller's traces
    keep their headers, arrays and values, whatever the dtype, gaps, filter or stacking."""
    kwargs = dict(kwargs)
    model = XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL).eval()
    if kwargs.pop("filter", False):  # SeisBench's filter works in place, after the segments are demeaned
        model.filter_args, model.filter_kwargs = ("highpass",), {"freq": 1.0}
    rate = kwargs.pop("rate", 100.0)
    dtype_made = np.float64 if dtype == "masked" else dtype
    st = noise_stream(6000, offset=5000, dtype=dtype_made, rate=rate)
    st += noise_stream(6000, offset=5000, start=T0 + 6000 / rate + 1 / rate, seed=1, dtype=dtype_made, rate=rate)
    if dtype == "masked":
        st.merge()  # one missing sample between the two: masked arrays
        assert np.ma.isMaskedArray(st[0].data)
    before = [(tr.data, tr.data.copy(), tr.stats.copy()) for tr in st]
    model.annotate(st, **kwargs)
    for tr, (array, values, stats) in zip(st, before):
        assert tr.data is array and tr.stats == stats
        np.testing.assert_array_equal(tr.data, values)


@pytest.mark.parametrize("dtype", [np.int32, np.float64, "read-only"])
def test_demean_segments_in_float64_kept_in_float32(dtype):
    """Every dtype ends as a new float32 array: minus its own mean in float64, rounded once (a 1e8-count offset
    would leave nothing of a 1-count signal if it were subtracted in float32); the array given is not written to."""
    from seisbench_xlstm.records import demean_segments

    values = np.arange(10) * 3 + 100_000_000
    data = values.astype(np.float64 if dtype == "read-only" else dtype)
    if dtype == "read-only":
        data.flags.writeable = False
    st = obspy.Stream([obspy.Trace(data), obspy.Trace(np.array([], dtype=np.float64))])
    demean_segments(st)
    assert st[0].data.dtype == np.float32 and st[1].data.size == 0
    np.testing.assert_array_equal(st[0].data, (values - values.mean()).astype(np.float32))
    assert st[0].data is not data
    np.testing.assert_array_equal(data, values)


@pytest.mark.parametrize("dtype", [np.int32, np.float64])
def test_masked_gaps_after_merge_are_gaps(dtype):
    """Two 60 s pieces per component 20 s apart, merged by ObsPy into masked arrays: the fill value never reaches
    the model, nothing is annotated inside the gap, and both sides are annotated up to the gap."""
    parts = noise_stream(14000, offset=5000, dtype=dtype, seed=4)
    st = parts.slice(T0, T0 + 59.995) + parts.slice(T0 + 80, T0 + 139.995)
    st.merge()
    assert all(np.ma.isMaskedArray(tr.data) for tr in st)
    model = SpikePicker().eval()
    for kwargs in ({}, {"nan_policy": "gap"}):
        model.inputs.clear()
        ann = model.annotate(st, **kwargs)
        assert max(float(x.abs().max()) for x in model.inputs) < 100  # normalised noise, not a fill value
        spans = sorted((round(tr.stats.starttime - T0, 2), round(tr.stats.endtime - T0, 2))
                       for tr in ann.select(channel="*_P"))
        assert spans == [(0, 59.99), (80, 139.99)]


def test_nan_samples_as_gaps_are_not_annotated():
    st = noise_stream(12000)
    for tr in st:
        tr.data[5000:5100] = np.nan
    ann = SpikePicker().eval().annotate(st, nan_policy="gap")
    p = ann.select(channel="*_P")
    assert sorted((round(tr.stats.starttime - T0, 2), round(tr.stats.endtime - T0, 2)) for tr in p) == [
        (0, 49.99), (51, 119.99)]


# ---------------------------------------------------------------------- components
def test_unrotated_and_third_components_are_reported():
    """BH1/BH2/BH3: 1/2 read as N/E with a warning; 3 is skipped with a warning, Z zero-filled with a warning."""
    st = noise_stream(6000, components="123", channel_prefix="BH")
    with pytest.warns(AnnotateWarning) as record:
        ann = SpikePicker().eval().annotate(st)
    messages = "\n".join(str(w.message) for w in record)
    assert "XX.A.: skipped channel(s) XX.A..BH3" in messages and "rename its channel to end in Z" in messages
    assert "XX.A.: components 1/2 read as N/E (unrotated" in messages
    assert "XX.A.: no Z component: zero-filled" in messages
    assert len(ann) == 3


def test_unknown_components_and_strict_missing_components_are_reported():
    model = SpikePicker().eval()
    with pytest.warns(AnnotateWarning, match=r"XX\.A\.: skipped channel\(s\) XX\.A\.\.HHW, XX\.A\.\.HHX, XX\.A\.\.HHY"):
        assert len(model.annotate(noise_stream(6000, components="XYW"))) == 0
    with pytest.warns(AnnotateWarning, match=r"XX\.A\.: skipped: no E component and strict=True"):
        assert len(model.annotate(noise_stream(6000, components="ZN"), strict=True)) == 0
    with pytest.warns(AnnotateWarning, match=r"XX\.A\.: skipped channel\(s\) XX\.A\.\.HH1, XX\.A\.\.HH2"):
        model.annotate(noise_stream(6000, components="Z12"), flexible_horizontal_components=False)
