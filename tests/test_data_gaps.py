"""Gap augmentation reproduces annotate's gap handling: per-segment demeaning, exact-zero gap, window norm.

Annotate (pickers.py) demeans every contiguous segment of a record by its own mean in raw counts before
SeisBench merges the segments and fills the gaps with zeros; each window is then demeaned and divided by its
population std per channel (``normalize_windows``). Training must give the same window for the same data.
"""

import numpy as np
import pytest
import seisbench.data as sbd
import torch

from seisbench_xlstm.data import AugmentationConfig, PickingConfig, open_dataset, picking_generator
from seisbench_xlstm.data.generators import SegmentDemeanedGap
from seisbench_xlstm.pickers import normalize_windows
from test_data_synth import synth_waveform

W = 4096
GAP = (1200, 2200)  # 10 s at 100 Hz
P = 2800.0


def one_window_record(seed=0):
    """(3, 4096) float32 ZNE: noise + a synthetic arrival at sample 2800, on a 2,000-count DC offset."""
    rng = np.random.default_rng(seed)
    return (synth_waveform(rng, W, p=P, s=None, amp=20.0) * 30.0 + 2000.0).astype(np.float32)


def annotate_side(x, gap):
    """The window annotate builds: segments demeaned in raw counts, gap zero-filled, then normalize_windows."""
    y = x.astype(np.float64).copy()
    a, b = gap
    for seg in (slice(0, a), slice(b, None)):
        y[:, seg] -= y[:, seg].mean(axis=-1, keepdims=True)
    y[:, a:b] = 0.0
    return normalize_windows(torch.from_numpy(y)[None], "std")[0].numpy()


@pytest.fixture
def record_ds(tmp_path):
    x = one_window_record()
    with sbd.WaveformDataWriter(tmp_path / "metadata.csv", tmp_path / "waveforms.hdf5") as w:
        w.data_format = {"dimension_order": "CW", "component_order": "ZNE", "sampling_rate": 100.0}
        w.add_trace({"trace_name": "r", "source_id": "ev", "trace_P_arrival_sample": P,
                     "trace_sampling_rate_hz": 100.0, "split": "train"}, x)
    return open_dataset(tmp_path), x


def test_gap_window_equals_annotate_window(record_ds):
    ds, x = record_ds
    only_gaps = AugmentationConfig(gaussian_noise_p=0, gap_p=1.0, channel_dropout_p=0, amplitude_scale_p=0,
                                   superposition_p=0)
    gen = picking_generator(ds, PickingConfig(noise_window_p=0.0, augment=only_gaps), train=True)
    gaps = [a for a in gen._augmentations if isinstance(a, SegmentDemeanedGap)]
    assert len(gaps) == 1
    gaps[0].gap = GAP  # force the gap position of this test
    out = gen[0]["X"]
    expected = annotate_side(x, GAP)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5)
    assert np.abs(out[:, GAP[0]:GAP[1]]).max() < 1e-6  # 0 before the window normalisation (float32 mean ~1e-8)
    # not the old behaviour: the real noise keeps unit-order amplitude next to the gap
    assert 0.3 < out[0, :GAP[0]].std() < 3.0


def test_gap_removes_picks_inside_and_keeps_others():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (3, 1000)) + 50.0
    aug = SegmentDemeanedGap(gap=(100, 300))
    meta = {"trace_P_arrival_sample": 150.0, "trace_S_arrival_sample": 600.0}
    state = {"X": (x.copy(), dict(meta))}
    aug(state)
    y, m = state["X"]
    assert np.isnan(m["trace_P_arrival_sample"]) and m["trace_S_arrival_sample"] == 600.0
    assert (y[:, 100:300] == 0).all()
    np.testing.assert_allclose(y[:, :100].mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(y[:, 300:].mean(axis=-1), 0, atol=1e-12)
    # random gaps: the library's distribution (start uniform, end uniform after it), always inside the window
    aug = SegmentDemeanedGap()
    np.random.seed(0)
    for _ in range(50):
        state = {"X": (x.copy(), dict(meta))}
        aug(state)
        y = state["X"][0]
        zero = (y == 0).all(axis=0)
        assert np.isfinite(y).all() and zero.sum() < 1000


def test_training_gap_window_equals_what_annotate_feeds_the_model(record_ds):
    """End to end: the same one-window record with the same 10 s gap, once through the training generator
    (gap augmentation forced there) and once as an ObsPy stream with the gap cut out, through ``annotate``
    (the model records the windows it receives): the two normalised windows agree."""
    import obspy

    from fakes import SpikePicker

    ds, x = record_ds
    only_gaps = AugmentationConfig(gaussian_noise_p=0, gap_p=1.0, channel_dropout_p=0, amplitude_scale_p=0,
                                   superposition_p=0)
    gen = picking_generator(ds, PickingConfig(noise_window_p=0.0, augment=only_gaps), train=True)
    (gap_aug,) = [a for a in gen._augmentations if isinstance(a, SegmentDemeanedGap)]
    gap_aug.gap = GAP
    training = gen[0]["X"]

    t0 = obspy.UTCDateTime(2024, 1, 1)
    stream = obspy.Stream()
    for c, data in zip("ZNE", x.astype(np.float64)):
        header = dict(network="XX", station="GAP", channel=f"HH{c}", sampling_rate=100.0)
        stream += obspy.Trace(data[: GAP[0]].copy(), header={**header, "starttime": t0})
        stream += obspy.Trace(data[GAP[1]:].copy(), header={**header, "starttime": t0 + GAP[1] / 100.0})
    model = SpikePicker().eval()
    model.annotate(stream)
    (received,) = torch.cat(model.inputs)
    np.testing.assert_allclose(received.numpy(), training, rtol=0, atol=5e-5)
