"""Window generators: shapes, dtypes, label sums, pick positions, noise windows, augmentations, loaders."""

import numpy as np
import pytest
import seisbench.generate as sbg

from seisbench_xlstm.data import (
    AugmentationConfig,
    NormalizeConfig,
    PickingConfig,
    PretrainConfig,
    make_loader,
    open_dataset,
    picking_generator,
    pretraining_generator,
)
from seisbench_xlstm.data.generators import (
    SUPERIMPOSED_P,
    SUPERIMPOSED_S,
    PreArrivalNoiseWindow,
    RandomAmplitudeScale,
    SuperimposeEvent,
)
from test_data_synth import write_dataset

W = 4096


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "d"
    # 200 Hz, 12000 samples -> 6000 samples at 100 Hz; P/S columns in two spellings across traces
    write_dataset(path, n_events=6, traces_per_event=2, n_noise=3, sampling_rate=200.0, npts=12000)
    return open_dataset(path)


@pytest.fixture(scope="module")
def short_ds(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "short"
    write_dataset(path, n_events=2, traces_per_event=1, n_noise=1, npts=3000)
    return open_dataset(path)


def test_pretraining_windows(ds, short_ds):
    gen = pretraining_generator(ds)
    assert len(gen) == len(ds)
    for i in range(len(ds)):
        x = gen[i]["X"]
        assert x.shape == (3, W) and x.dtype == np.float32
        # default normalisation: per-channel zero mean, unit std
        np.testing.assert_allclose(x.mean(axis=-1), 0, atol=1e-4)
        np.testing.assert_allclose(x.std(axis=-1), 1, atol=1e-3)
    # traces shorter than the window are skipped and counted, never zero-padded (they were padded before)
    with pytest.warns(UserWarning, match="3 of 3 traces shorter than 4096"):
        gen = pretraining_generator(short_ds)
    assert len(gen) == 0 and gen.eligibility.short == 3


def test_pretraining_with_augmentation_and_peak_norm(ds):
    # (global-std normalisation was tested here; annotate cannot reproduce it, so NormalizeConfig refuses it)
    cfg = PretrainConfig(normalize=NormalizeConfig(amp_norm_type="peak"),
                         augment=AugmentationConfig(amplitude_scale_p=0.0))
    np.random.seed(0)
    for i in range(5):
        x = pretraining_generator(ds, cfg)[i]["X"]
        assert x.shape == (3, W) and x.dtype == np.float32 and np.isfinite(x).all()
        assert np.abs(x).max(axis=-1) == pytest.approx(1.0, abs=1e-3)


def _check_labels(y):
    assert y.shape == (3, W) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(axis=0), 1.0, atol=1e-5)
    assert y.min() >= 0 and y.max() <= 1 + 1e-6


def test_picking_windows_contain_a_pick(ds):
    np.random.seed(1)
    gen = picking_generator(ds, PickingConfig(noise_window_p=0.0, sigma=20), train=False)
    md = ds.metadata
    events = np.flatnonzero(md["trace_category"].to_numpy() != "noise")
    positions = []
    for i in events:
        for _ in range(3):
            s = gen[int(i)]
            assert set(s) == {"X", "y"}
            assert s["X"].shape == (3, W) and s["X"].dtype == np.float32
            _check_labels(s["y"])
            peak = s["y"][:2].max()
            assert peak > 0.9  # the chosen pick lies inside the window
            positions.append(int(np.argmax(s["y"][:2].max(axis=0))))
    # random offsets: picks land all over the window, not at a fixed sample
    assert np.ptp(positions) > W / 4


def test_label_width_and_position(ds):
    np.random.seed(2)
    gen = picking_generator(ds, PickingConfig(noise_window_p=0.0, sigma=10), train=False)
    y = gen[0]["y"]
    row = int(np.argmax(y[:2].max(axis=1)))
    k = int(np.argmax(y[row]))
    # gaussian of sigma 10 samples: exp(-0.5) at 10 samples from the peak
    if 10 <= k < W - 10:
        assert y[row, k + 10] == pytest.approx(np.exp(-0.5), rel=0.05)


def test_noise_windows_are_pure_noise(ds):
    np.random.seed(3)
    # P at 1200-3600 samples (100 Hz): no event trace holds a 4096-sample noise window before its first pick
    with pytest.warns(UserWarning, match="noise windows"):
        gen = picking_generator(ds, PickingConfig(noise_window_p=1.0), train=False)
    assert gen.eligibility.eligible_event_traces == 0 and gen.eligibility.noise_traces == 3
    noise = (ds.metadata["trace_category"] == "noise").to_numpy()
    for i in range(len(ds)):
        y = gen[i]["y"]
        _check_labels(y)
        if noise[i]:
            assert y[:2].max() < 1e-3
            np.testing.assert_allclose(y[2], 1.0, atol=1e-3)
        else:  # a pick window instead of a padded noise window
            assert y[:2].max() > 0.5


def test_pre_arrival_noise_window_cuts_before_the_pick():
    x = np.arange(10000, dtype=np.float32)[None].repeat(3, 0)
    win = PreArrivalNoiseWindow(["trace_P_arrival_sample", "trace_S_arrival_sample"], 1000, margin=100)
    for _ in range(20):
        state = {"X": (x, {"trace_P_arrival_sample": 5000.0, "trace_S_arrival_sample": 6000.0})}
        win(state)
        w, meta = state["X"]
        assert w.shape == (3, 1000) and w.max() < 5000 - 100
        assert np.isnan(meta["trace_P_arrival_sample"]) and np.isnan(meta["trace_S_arrival_sample"])
    # short pre-arrival noise: no longer zero-padded but refused (tests/test_data_windows.py)


def test_training_augmentations_keep_invariants(ds):
    np.random.seed(4)
    aug = AugmentationConfig(gaussian_noise_p=1.0, gap_p=1.0, channel_dropout_p=1.0, amplitude_scale_p=1.0,
                             superposition_p=1.0)
    gen = picking_generator(ds, PickingConfig(augment=aug, noise_window_p=0.2), train=True)
    kinds = [type(a).__name__ for a in gen._augmentations]
    for name in ("NoiseOrPickWindow", "GaussianNoise", "SegmentDemeanedGap", "ChannelDropout", "Normalize",
                 "RandomAmplitudeScale", "SuperimposeEvent", "ProbabilisticLabeller"):
        assert name in kinds
    for i in range(len(ds)):
        s = gen[i]
        assert s["X"].shape == (3, W) and s["X"].dtype == np.float32 and np.isfinite(s["X"]).all()
        _check_labels(s["y"])


def test_superposition_adds_a_labelled_event(ds):
    np.random.seed(5)
    from seisbench_xlstm.data.generators import label_columns_for

    cols = {c: l for c, l in label_columns_for(ds).items() if c in ds.metadata.columns}
    sup = SuperimposeEvent(ds, cols, W, scale=(1.0, 1.0))
    assert len(sup.candidates) == 12  # noise traces are never superimposed
    x = np.random.normal(size=(3, W)).astype(np.float32)
    state = {"X": (x.copy(), {"trace_p_arrival_sample": 1000.0})}
    sup(state)
    x2, meta = state["X"]
    assert not np.allclose(x2, x)
    assert np.isfinite(meta[SUPERIMPOSED_P]) or np.isfinite(meta[SUPERIMPOSED_S])
    labeller = sbg.ProbabilisticLabeller(label_columns=label_columns_for(ds), model_labels="PSN", dim=0)
    labeller(state)
    y = state["y"][0]
    assert (y[0] > 0.5).sum() + (y[1] > 0.5).sum() > 1
    # a pure-noise window stays pure
    state = {"X": (x.copy(), {"trace_p_arrival_sample": np.nan})}
    sup(state)
    np.testing.assert_array_equal(state["X"][0], x)


def test_amplitude_scale():
    np.random.seed(6)
    x = np.ones((3, 10), dtype=np.float32)
    for per_channel in (False, True):
        state = {"X": (x, {})}
        RandomAmplitudeScale((0.5, 2.0), per_channel=per_channel)(state)
        f = state["X"][0][:, 0]
        assert ((f >= 0.5) & (f <= 2.0)).all() and state["X"][0].dtype == np.float32
        assert (len(set(f.tolist())) == 1) != per_channel
    with pytest.raises(ValueError):
        RandomAmplitudeScale((0.0, 1.0))


def test_loader_batches(ds):
    gen = picking_generator(ds, train=True)
    loader = make_loader(gen, batch_size=4, num_workers=0, seed=0)
    batch = next(iter(loader))
    assert tuple(batch["X"].shape) == (4, 3, W) and tuple(batch["y"].shape) == (4, 3, W)
    assert str(batch["X"].dtype) == "torch.float32" and str(batch["y"].dtype) == "torch.float32"
    loader = make_loader(pretraining_generator(ds), batch_size=5, num_workers=1, seed=0)
    batch = next(iter(loader))
    assert tuple(batch["X"].shape) == (5, 3, W)


def test_ncedc154_picking_windows(shared_data):
    path = shared_data / "ncedc154"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    ds = open_dataset(path).train()
    gen = picking_generator(ds, train=True)
    np.random.seed(7)
    for i in range(0, len(ds), 15):
        s = gen[i]
        assert s["X"].shape == (3, W) and np.isfinite(s["X"]).all()
        _check_labels(s["y"])
