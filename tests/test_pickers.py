import json
import time

import numpy as np
import obspy
import pytest
import torch

from seisbench_xlstm import CorruptWeightsError, WeightsNotFoundError, XLSTMSeqPicker, XLSTMUNetPicker
from seisbench_xlstm import pickers as pickers_module
from seisbench_xlstm.pickers import load_picker, normalize_windows
from tiny import TINY_SEQUENTIAL, TINY_UNET


@pytest.fixture(params=["sequential", "unet"])
def model(request):
    torch.manual_seed(0)
    if request.param == "sequential":
        return XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL).eval()
    return XLSTMUNetPicker(backbone_config=TINY_UNET).eval()


def _synthetic_stream(n_samples=30000, rate=100.0, components="ZNE", seed=0, station="A"):
    rng = np.random.default_rng(seed)
    return obspy.Stream(
        [
            obspy.Trace(
                rng.normal(size=n_samples).astype(np.float32),
                header=dict(network="XX", station=station, channel=f"HH{c}", sampling_rate=rate,
                            starttime=obspy.UTCDateTime(2024, 1, 1)),
            )
            for c in components
        ]
    )


def _check_probabilities(annotations, name):
    """P, S and noise traces for every annotated segment; probabilities in [0, 1] summing to one."""
    assert {tr.stats.channel for tr in annotations} == {f"{name}_{p}" for p in "PSN"}
    for p_trace in annotations.select(channel=f"{name}_P"):
        t0 = p_trace.stats.starttime
        segment = [annotations.select(channel=f"{name}_{p}") for p in "PSN"]
        stacked = np.stack([next(tr.data for tr in traces if tr.stats.starttime == t0) for traces in segment])
        valid = ~np.isnan(stacked).any(axis=0)
        assert valid.any()
        assert np.all((stacked[:, valid] >= 0) & (stacked[:, valid] <= 1))
        np.testing.assert_allclose(stacked[:, valid].sum(axis=0), 1.0, atol=1e-4)


def test_forward_shapes_and_softmax(model):
    x = torch.randn(2, 3, 4096)
    with torch.no_grad():
        y = model(x)
        logits = model(x, logits=True)
    assert y.shape == (2, 3, 4096)
    torch.testing.assert_close(y.sum(1), torch.ones(2, 4096))
    torch.testing.assert_close(torch.softmax(logits, 1), y)


def test_annotate_short_example_stream(model):
    """obspy.read() holds 3000 samples, less than one 4096-sample window: it is padded, output cut back."""
    st = obspy.read()
    annotations = model.annotate(st)
    _check_probabilities(annotations, model.name)
    for tr in annotations:
        assert tr.stats.sampling_rate == 100
        assert tr.stats.starttime >= st[0].stats.starttime
        assert tr.stats.endtime <= st[0].stats.endtime
        assert tr.stats.endtime - st[0].stats.endtime > -0.011  # output reaches the end of the record
    out = model.classify(st)
    assert hasattr(out, "picks") and hasattr(out, "detections")
    assert all(p.phase in "PS" for p in out.picks)


def test_annotate_long_stream_with_gap(model):
    st = _synthetic_stream(30000)
    t0 = st[0].stats.starttime
    st.cutout(t0 + 100, t0 + 130)
    annotations = model.annotate(st, batch_size=8)
    _check_probabilities(annotations, model.name)
    p_traces = annotations.select(channel="*_P")
    assert len(p_traces) == 2  # one annotation trace per contiguous segment
    for tr in p_traces:
        assert not (tr.stats.starttime < t0 + 130 and tr.stats.endtime > t0 + 100), "annotation inside the gap"


def test_blinding_and_overlap_arguments(model):
    st = _synthetic_stream(12000)
    a = model.annotate(st, blinding=(0, 0), overlap=2048)
    b = model.annotate(st, blinding=(500, 500))
    assert a[0].stats.starttime == st[0].stats.starttime
    assert b[0].stats.starttime == st[0].stats.starttime + 5.0


def test_wrong_sampling_rate_is_resampled(model):
    st = _synthetic_stream(6000, rate=50.0)
    annotations = model.annotate(st)
    assert all(tr.stats.sampling_rate == 100 for tr in annotations)


def test_single_component_is_zero_filled(model):
    st = _synthetic_stream(6000, components="Z")
    _check_probabilities(model.annotate(st), model.name)
    assert len(model.annotate(st, strict=True)) == 0  # strict: only stations with all components


def test_empty_stream(model):
    assert len(model.annotate(obspy.Stream())) == 0
    assert len(model.classify(obspy.Stream()).picks) == 0


def test_nan_samples_raise_or_become_gaps(model):
    st = _synthetic_stream(12000)
    st[0].data[5000:5100] = np.nan
    st[1].data[7000] = np.inf
    with pytest.raises(ValueError, match="NaN or inf.*XX.A..HHZ"):
        model.annotate(st)
    annotations = model.annotate(st, nan_policy="gap")
    _check_probabilities(annotations, model.name)
    strict = model.annotate(st, nan_policy="gap", strict=True)
    assert len(strict.select(channel="*_P")) >= 2  # split at the non-finite samples
    with pytest.raises(ValueError, match="nan_policy"):
        model.annotate(st, nan_policy="ignore")


def test_normalisation():
    x = torch.randn(2, 3, 1000) * 1e6 + 5.0
    x[1, 2] = 0.0
    y = normalize_windows(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y[0].std(-1, correction=0), torch.ones(3), atol=1e-4, rtol=0)
    assert torch.all(y[1, 2] == 0)
    assert normalize_windows(x, "peak").abs().amax() <= 1.0


def test_normalisation_matches_the_training_pipeline():
    import seisbench.generate as sbg

    from seisbench_xlstm.data import NormalizeConfig

    x = np.random.default_rng(0).normal(size=(3, 4096)).astype(np.float32) * 300 + 7
    state = {"X": (x.copy(), {})}
    NormalizeConfig().build()(state)
    expected = state["X"][0]
    np.testing.assert_allclose(normalize_windows(torch.from_numpy(x)[None])[0].numpy(), expected, rtol=1e-4, atol=1e-5)
    assert isinstance(NormalizeConfig().build(), sbg.Normalize)


def test_save_load_round_trip_is_exact(model, tmp_path):
    st = obspy.read()
    before = model.annotate(st)
    model.save(tmp_path / "picker")
    meta = json.loads((tmp_path / "picker.json").read_text())
    assert "chunkwise" not in json.dumps(meta) and "triton" not in json.dumps(meta)  # kernel is a run-time choice
    for key in ("output_type", "pred_sample", "labels", "citation"):
        assert key not in meta["model_args"]  # passed by __init__ itself
    loaded = type(model).load(tmp_path / "picker").eval()
    after = loaded.annotate(st)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.data, b.data)
    assert load_picker(tmp_path / "picker").name == model.name


def test_from_pretrained_offline_from_cache(model, cache_root):
    folder = cache_root / "models" / "v3" / model.name.lower()
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "unit", version_str="1")
    model.save(folder / "unit", version_str="2", weights_docstring="second")
    loaded = type(model).from_pretrained("unit")
    assert loaded.weights_docstring == "second"
    assert "unit" in type(model).list_pretrained()
    assert type(model).from_pretrained("unit", version_str="1").weights_version == "1"


def test_from_pretrained_from_package_weights(model, tmp_path, monkeypatch):
    monkeypatch.setattr(pickers_module, "PACKAGE_WEIGHTS_ROOT", tmp_path)
    folder = tmp_path / model.name.lower()
    folder.mkdir()
    model.save(folder / "shipped", version_str="1")
    assert type(model).from_pretrained("shipped").name == model.name
    assert load_picker("shipped", backbone=model.backbone_name).name == model.name


def test_unknown_pretrained_name_fails_at_once(model):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="Looked in:.*SEISBENCH_CACHE_ROOT|Looked in"):
        type(model).from_pretrained("no-such-weights")
    assert time.perf_counter() - start < 2.0
    with pytest.raises(ValueError, match="not supported"):
        type(model).from_pretrained("no-such-weights", update=True)


def test_corrupt_weight_files(model, tmp_path):
    model.save(tmp_path / "m")
    pt = tmp_path / "m.pt"
    pt.write_bytes(pt.read_bytes()[:1000])
    with pytest.raises(CorruptWeightsError, match="m.pt"):
        type(model).load(tmp_path / "m")
    model.save(tmp_path / "j")
    (tmp_path / "j.json").write_text("{not json")
    with pytest.raises(CorruptWeightsError, match="not valid JSON"):
        type(model).load(tmp_path / "j")
    with pytest.raises(WeightsNotFoundError):
        type(model).load(tmp_path / "missing")


def test_weights_of_another_architecture_are_rejected(tmp_path):
    XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL).save(tmp_path / "seq")
    meta = json.loads((tmp_path / "seq.json").read_text())
    meta["model_args"]["backbone_config"]["num_layers"] = 3
    (tmp_path / "seq.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptWeightsError):
        XLSTMSeqPicker.load(tmp_path / "seq")


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_layer"):
        XLSTMSeqPicker(backbone_config={"num_layer": 2})
    with pytest.raises(ValueError, match="norm"):
        XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL, norm="minmax")
    with pytest.raises(ValueError, match="multiple of 64"):
        XLSTMUNetPicker(backbone_config=TINY_UNET, in_samples=4000)


def test_real_continuous_data(shared_data):
    """A tiny untrained picker runs over 10 minutes of real continuous data (shape and range checks only)."""
    files = sorted((shared_data / "continuous-ok").glob("*.mseed"))
    if not files:
        pytest.skip("continuous-ok miniSEED files absent")
    st = obspy.Stream()
    for f in files:
        st += obspy.read(str(f))
    t0 = st[0].stats.starttime
    st.trim(t0, t0 + 600)
    model = XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL).eval()
    annotations = model.annotate(st)
    _check_probabilities(annotations, model.name)
    assert annotations[0].stats.endtime - annotations[0].stats.starttime > 590
