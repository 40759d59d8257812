"""Training windows are real data end to end: no zero/constant padded parts, short traces skipped and counted.

Noise windows are cut only from traces with at least ``window_len`` samples before (first pick - margin);
other event traces give pick windows. Traces shorter than one window are skipped (counted), never padded.
"""

import warnings

import numpy as np
import pytest
import seisbench.data as sbd

from seisbench_xlstm.data import (
    PickingConfig,
    mix_datasets,
    open_dataset,
    picking_generator,
    pretraining_generator,
    window_eligibility,
)
from seisbench_xlstm.data.generators import PreArrivalNoiseWindow
from test_data_synth import synth_waveform

W = 4096
MARGIN = 100  # 5 sigma of the default labels


def write_traces(path, specs, sampling_rate=100.0, seed=0):
    """specs: list of (npts, p_sample or None, s_sample or None); P/S in lower-case STEAD spelling."""
    rng = np.random.default_rng(seed)
    with sbd.WaveformDataWriter(path / "metadata.csv", path / "waveforms.hdf5") as w:
        w.data_format = {"dimension_order": "CW", "component_order": "ZNE", "sampling_rate": sampling_rate}
        for i, (npts, p, s) in enumerate(specs):
            x = synth_waveform(rng, npts, p, s) + 500.0  # a DC offset: padding would be a flat level
            w.add_trace(
                {
                    "trace_name": f"t{i}",
                    "source_id": None if p is None else f"ev{i}",
                    "trace_category": "noise" if p is None else "earthquake",
                    "trace_p_arrival_sample": np.nan if p is None else p,
                    "trace_s_arrival_sample": np.nan if s is None else s,
                    "trace_sampling_rate_hz": sampling_rate,
                    "split": "train",
                },
                x,
            )
    return path


def flat_edge(x) -> int:
    """Longest run of identical samples (all channels at once) at the start or the end of a window."""
    x = np.asarray(x)
    runs = []
    for seq in (x, x[:, ::-1]):
        same = (seq == seq[:, :1]).all(axis=0)
        runs.append(int(np.argmin(same)) if not same.all() else seq.shape[1])
    return max(runs)


@pytest.fixture
def ncedc_like(tmp_path):
    """Like NCEDC-154: 90 s traces with P at sample 3000 (less than a window of pre-arrival noise)."""
    return open_dataset(write_traces(tmp_path / "nc", [(9001, 3000.0, 3300.0)] * 8))


@pytest.fixture
def mixed_lengths(tmp_path):
    specs = (
        [(12000, 5000.0, 5600.0)] * 3  # 4900 samples before (P - margin): eligible for noise windows
        + [(9001, 3000.0, 3300.0)] * 4  # 2900: pick windows only
        + [(6000, None, None)] * 2  # noise traces, longer than a window: eligible
        + [(3000, 1500.0, 1800.0)] * 2  # shorter than a window: skipped
        + [(2000, None, None)]  # short noise trace: skipped
    )
    return open_dataset(write_traces(tmp_path / "mix", specs))


def test_noise_windows_never_padded_on_short_pre_arrival(ncedc_like):
    with pytest.warns(UserWarning, match="noise windows"):
        gen = picking_generator(ncedc_like, PickingConfig(noise_window_p=1.0), train=False)
    np.random.seed(0)
    for i in range(len(ncedc_like)):
        for _ in range(3):
            s = gen[i]
            assert flat_edge(s["X"]) < 10, "padded (constant) part in a training window"
            # not enough pre-arrival noise: a pick window instead of a padded noise window
            assert s["y"][:2].max() > 0.5


def test_eligibility_is_counted(mixed_lengths):
    e = window_eligibility(mixed_lengths, window_len=W, margin=MARGIN)
    assert (e.traces, e.short, e.usable) == (12, 3, 9)
    assert (e.noise_traces, e.eligible_event_traces, e.ineligible_event_traces) == (2, 3, 4)
    assert e.noise_eligible == 5
    # uniform sampling of the 9 usable traces, noise_window_p 0.1: noise traces always give noise
    assert e.expected_noise_fraction(0.1) == pytest.approx((2 + 0.1 * 3) / 9)
    assert "3 of 12 traces shorter than 4096" in e.report()
    with pytest.warns(UserWarning, match="3 of 12 traces"):
        gen = picking_generator(mixed_lengths, PickingConfig(noise_window_p=0.5), train=False)
    assert len(gen) == 9 and gen.eligibility == e
    np.random.seed(1)
    noise_windows = 0
    for i in range(len(gen)):
        for _ in range(4):
            s = gen[i]
            assert flat_edge(s["X"]) < 10
            noise_windows += s["y"][:2].max() < 1e-3
    assert noise_windows > 0


def test_short_pretraining_traces_skipped_not_padded(mixed_lengths):
    with pytest.warns(UserWarning, match="3 of 12 traces"):
        gen = pretraining_generator(mixed_lengths)
    assert len(gen) == 9 and gen.eligibility.short == 3
    np.random.seed(2)
    for i in range(len(gen)):
        x = gen[i]["X"]
        assert x.shape == (3, W) and flat_edge(x) < 10


def test_pre_arrival_noise_window_refuses_to_pad():
    x = np.random.default_rng(0).normal(size=(3, 10000)).astype(np.float32)
    win = PreArrivalNoiseWindow(["trace_P_arrival_sample"], 1000, margin=100)
    state = {"X": (x, {"trace_P_arrival_sample": 300.0})}
    with pytest.raises(ValueError, match="pre-arrival"):
        win(state)


def test_mixing_drops_short_traces(mixed_lengths, tmp_path):
    mixed = mix_datasets([mixed_lengths])
    assert len(mixed) == 9
    assert mixed.summary()["short_dropped"].tolist() == [3]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing short left to warn about
        gen = picking_generator(mixed.train(), PickingConfig(noise_window_p=0.1), train=False)
    assert len(gen) == len(mixed.train())


def test_ncedc154_noise_eligibility(shared_data):
    path = shared_data / "ncedc154"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    ds = open_dataset(path)
    e = window_eligibility(ds, window_len=W, margin=MARGIN)
    # P at sample 3000 everywhere: no trace has a window of pre-arrival noise
    assert (e.traces, e.short, e.eligible_event_traces, e.noise_traces) == (154, 0, 0, 0)
    with pytest.warns(UserWarning, match="noise windows"):
        gen = picking_generator(ds, train=True)
    np.random.seed(3)
    for i in range(0, len(ds), 7):
        assert flat_edge(gen[i]["X"]) < 10


def test_picks_outside_the_trace(tmp_path):
    # picks all before the start: the trace holds the event's coda, neither noise nor a pick window -> skipped;
    # an S after the trace's end is ignored when choosing the pick window (no window past the end)
    specs = [(6000, -500.0, -100.0), (6000, 3000.0, 7000.0), (6000, 5000.0, None)]
    ds = open_dataset(write_traces(tmp_path / "out", specs))
    e = window_eligibility(ds, window_len=W, margin=MARGIN)
    assert (e.picks_outside, e.usable, e.eligible_event_traces, e.ineligible_event_traces) == (1, 2, 1, 1)
    with pytest.warns(UserWarning, match="1 with all picks before the trace start"):
        gen = picking_generator(ds, PickingConfig(noise_window_p=0.0), train=False)
    np.random.seed(4)
    for _ in range(20):
        s = gen[0]
        assert flat_edge(s["X"]) < 10 and s["y"][0].max() > 0.5
