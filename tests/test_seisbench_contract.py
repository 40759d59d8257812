"""SeisBench's own generic WaveformModel tests, adapted to both pickers.

Our versions of the tests in ``tests/test_models.py`` of the seisbench 0.12.6 source distribution that check
behaviour every WaveformModel subclass inherits or overrides (stream handling, stacking, annotate/classify,
saving and loading, weight lookup), written for :class:`XLSTMSeqPicker` and :class:`XLSTMUNetPicker` with the
tiny configurations. Each test names the SeisBench test it follows. Not taken: tests of one model's architecture,
point-prediction models, the GroupingHelper internals, WaveformPipeline, downloads (``_ensure_weight_files``) and
dynamic window sizes, which these pickers do not have.

Documented deviations, where the pickers differ from SeisBench by design (each test says so):

- short records are zero-padded to one window and annotated, not dropped with "Output might be empty";
- unknown annotate arguments raise ``ValueError`` instead of being logged and ignored;
- ``phases=None`` gives the default labels "PSN" (SeisBench: ``None``, then ``[0, 1, 2]``);
- grouping is always "instrument";
- weight lookup never contacts SeisBench's remote repository (``remote``/``update`` do not download).
"""

import asyncio
import inspect
import logging
from pathlib import Path
from unittest.mock import patch

import numpy as np
import obspy
import pytest
import seisbench
import seisbench.util as sbu
import torch
from obspy import UTCDateTime
from seisbench.models.utils import GroupedTraceData, PredictionSegment, PredictionsStacked, TraceSegment

from seisbench_xlstm import XLSTMSeqPicker, XLSTMUNetPicker
from seisbench_xlstm import weight_lookup as weights_module
from tiny import TINY_SEQUENTIAL, TINY_UNET

CONFIGS = {XLSTMSeqPicker: TINY_SEQUENTIAL, XLSTMUNetPicker: TINY_UNET}


@pytest.fixture(params=[XLSTMSeqPicker, XLSTMUNetPicker], ids=["sequential", "unet"])
def cls(request):
    return request.param


def make(cls, **kwargs):
    torch.manual_seed(0)
    return cls(backbone_config=CONFIGS[cls], **kwargs).eval()


@pytest.fixture
def weight_dirs(cls, tmp_path, monkeypatch):
    """Empty cache and package weight folders for ``cls``; returns the cache folder."""
    monkeypatch.setattr(seisbench, "cache_model_root", tmp_path / "cache")
    monkeypatch.setattr(weights_module, "PACKAGE_WEIGHTS_ROOT", tmp_path / "package")
    folder = cls._model_path()
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def remote():
    """SeisBench's remote listing and download, mocked; the tests assert that they are never called."""
    with patch("seisbench.util.ls_webdav") as ls_webdav, patch("seisbench.util.download_http") as download:
        ls_webdav.return_value = ["test.json.v3", "test.pt.v3", "foo.json", "foo.pt"]
        yield ls_webdav, download
        ls_webdav.assert_not_called()
        download.assert_not_called()


def get_input_args(obj):
    signature = inspect.signature(obj)
    args = {k: v.default for k, v in signature.parameters.items()}
    args.pop("kwargs", None)
    return args


def _stats(channel, station="TEST"):
    return {"network": "SB", "station": station, "channel": channel, "sampling_rate": 100, "starttime": UTCDateTime(0)}


def _create_versions(folder, name, versions, contents):
    for version, content in zip(versions, contents):
        for suffix in ("json", "pt"):
            filename = f"{name}.{suffix}" if version == "" else f"{name}.{suffix}.v{version}"
            (folder / filename).write_text(content)


# ---------------------------------------------------------------------- metadata and weights
def test_weights_docstring(cls, weight_dirs):  # test_weights_docstring
    model = make(cls)
    assert model.weights_docstring is None
    model.save(weight_dirs / "net", weights_docstring="trained on X", version_str="1")
    assert isinstance(cls.from_pretrained("net").weights_docstring, str)


def test_parse_seisbench_requirements(cls):  # test_parse_seisbench_requirements
    model = make(cls)
    with patch("seisbench.__version__", "1.2.3"):
        model._check_version_requirement({"seisbench_requirement": "1.2.3"})
        with pytest.raises(ValueError):
            model._check_version_requirement({"seisbench_requirement": "1.2.31"})
        model._check_version_requirement({"seisbench_requirement": "1.2.2"})


def test_parse_default_args(cls):  # test_parse_default_args
    """Deviation: SeisBench's example default args ("dummy", "stride") are not annotate arguments of these
    pickers and are rejected when weights are loaded (tests/test_weights.py); valid ones are used here."""
    model = make(cls)
    default_args = {"overlap": 1024, "P_threshold": 0.5}
    model._weights_metadata = {"default_args": default_args}
    model._parse_metadata()
    for key, value in default_args.items():
        assert model.default_args[key] == value


def test_default_labels(cls):  # test_default_labels
    """Deviation: phases=None gives the default labels "PSN" (picks need phase names), not None / [0, 1, 2]."""
    model = make(cls, phases=None)
    assert model.labels == "PSN"
    output = model.classify(obspy.read())
    assert model.labels == "PSN" and isinstance(output.picks, sbu.PickList)


def test_save_load(cls, tmp_path):  # test_save_load_phasenet and the other per-model save/load tests
    model_orig = make(cls, norm="peak", sampling_rate=50)
    args_orig = get_input_args(model_orig.__class__)
    model_orig.save(tmp_path / "picker")
    assert (tmp_path / "picker.json").exists() and (tmp_path / "picker.pt").exists()
    model_load = cls.load(tmp_path / "picker")
    stream = obspy.read()
    pred_orig, pred_load = model_orig.annotate(stream), model_load.annotate(stream)
    assert len(pred_orig) == len(pred_load) == 3
    for a, b in zip(pred_orig, pred_load):
        np.testing.assert_allclose(a.data, b.data)
    assert args_orig == get_input_args(model_load.__class__)
    assert (model_load.norm, model_load.sampling_rate) == ("peak", 50)


def test_save_load_model_updated_after_construction(cls, tmp_path):  # same name
    model_orig = make(cls)
    args = get_input_args(model_orig.__class__)
    assert model_orig.in_samples == args["in_samples"] and model_orig.sampling_rate == args["sampling_rate"]
    model_orig.in_samples = 8192  # SeisBench uses 10000; the window must be a multiple of 64 here
    model_orig.sampling_rate = 500
    model_orig.filter_kwargs = {"freqmin": 1, "freqmax": 10, "zerophase": True}
    model_orig.save(tmp_path / "changed")
    model_load = cls.load(tmp_path / "changed")
    assert (model_load.in_samples, model_load.sampling_rate) == (8192, 500)
    assert model_load.filter_kwargs == {"freqmin": 1, "freqmax": 10, "zerophase": True}


def test_save_load_model_updated_after_construction_inheritence_compatible(cls, tmp_path):  # same name
    model_orig = make(cls, component_order="NZE")
    model_orig.save(tmp_path / "changed")
    assert cls.load(tmp_path / "changed").component_order == model_orig.component_order


def test_save_load_with_version(cls, tmp_path):  # same name
    make(cls).save(tmp_path / "mymodel", version_str="1")
    assert (tmp_path / "mymodel.json.v1").is_file() and (tmp_path / "mymodel.pt.v1").is_file()
    assert not (tmp_path / "mymodel.json").is_file() and not (tmp_path / "mymodel.pt").is_file()
    with pytest.raises(FileNotFoundError):
        cls.load(tmp_path / "mymodel")
    cls.load(tmp_path / "mymodel", version_str="1")


def test_get_weights_file_paths(cls):  # same name
    assert cls._get_weights_file_paths("path", version_str=None) == (Path("path.json"), Path("path.pt"))
    assert cls._get_weights_file_paths("path", version_str="3rc2") == (Path("path.json.v3rc2"), Path("path.pt.v3rc2"))


def test_get_versions_from_files(cls):  # same name
    assert cls._get_versions_from_files("original", files=["original.pt", "original.json"]) == [""]
    assert cls._get_versions_from_files("something", files=[]) == []
    assert cls._get_versions_from_files("something", files=["original.pt", "original.json"]) == []
    files = ["original.pt", "original.json", "original.pt.v1", "original.json.v1", "something.pt.v1",
             "something.json.v1"]
    assert cls._get_versions_from_files("original", files=files) == ["", "1"]
    assert cls._get_versions_from_files("something", files=files) == ["1"]


def test_parse_weight_filename(cls):  # same name
    assert cls._parse_weight_filename("test.json") == ("test", "json", None)
    assert cls._parse_weight_filename("test.json.v1") == ("test", "json", "1")
    assert cls._parse_weight_filename("test.pt") == ("test", "pt", None)
    assert cls._parse_weight_filename("test.pt.v1") == ("test", "pt", "1")
    assert cls._parse_weight_filename("test.jasd") == (None, None, None)


def test_cleanup_local_repository(cls, weight_dirs):  # same name (inherited, unused by the offline lookup)
    _create_versions(weight_dirs, "test", ["", "2"], ["{}\n", "{}\n"])
    _create_versions(weight_dirs, "original", [""], ['{"version": "1.2.3"}\n'])
    cls._cleanup_local_repository()
    assert sorted(x.name for x in weight_dirs.iterdir()) == [
        "original.json.v1.2.3", "original.pt.v1.2.3", "test.json.v1", "test.json.v2", "test.pt.v1", "test.pt.v2"]


def test_list_versions(cls, weight_dirs, remote):  # test_list_versions
    """Deviation: remote=True lists the same offline versions; SeisBench's remote is never asked."""
    _create_versions(weight_dirs, "test", ["", "2"], ["{}\n", "{}\n"])
    assert cls.list_versions("test", remote=False) == ["1", "2"]
    assert cls.list_versions("test", remote=True) == ["1", "2"]
    assert cls.list_versions("other") == []


def test_list_pretrained(cls, weight_dirs, remote):  # test_list_pretrained and test_list_pretrained404
    """Deviation: remote=True lists the offline weights only; SeisBench's remote is never asked."""
    _create_versions(weight_dirs, "test", ["1", "2"], ['{"docstring": "d1"}\n', '{"docstring": "d2"}\n'])
    _create_versions(weight_dirs, "bla", ["1", "2"], ['{"docstring": "b1"}\n', '{"docstring": "b2"}\n'])
    assert cls.list_pretrained(details=False, remote=False) == ["bla", "test"]
    assert cls.list_pretrained(details=True, remote=False) == {"bla": "b2", "test": "d2"}
    assert cls.list_pretrained(details=False, remote=True) == ["bla", "test"]
    remote[0].side_effect = ValueError("Invalid URL. Request returned status code 404.")
    assert cls.list_pretrained(details=False, remote=True) == ["bla", "test"]


def test_get_latest_docstring(cls, weight_dirs, remote):  # same name
    _create_versions(weight_dirs, "test", ["1", "2"], ['{"docstring": "d1"}\n', '{"docstring": "d2"}\n'])
    assert cls._get_latest_docstring("test", remote=False) == "d2"
    assert cls._get_latest_docstring("test", remote=True) == "d2"


@pytest.mark.parametrize("prefill_cache, update", [(False, False), (False, True), (True, False), (True, True)])
def test_from_pretrained(cls, weight_dirs, remote, prefill_cache, update):  # same name
    """Deviation: nothing is downloaded; update=True raises, an empty cache raises WeightsNotFoundError."""
    if prefill_cache:
        make(cls).save(weight_dirs / "test", version_str="1")
    if update:
        with pytest.raises(ValueError, match="update=True is not supported"):
            cls.from_pretrained("test", update=update)
    elif prefill_cache:
        assert cls.from_pretrained("test", update=update).weights_version == "1"
    else:
        with pytest.raises(FileNotFoundError, match="never downloads"):
            cls.from_pretrained("test", update=update)


def test_list_pretrained_version_empty_cache(cls, tmp_path, monkeypatch):  # same name, no package weights either
    monkeypatch.setattr(weights_module, "PACKAGE_WEIGHTS_ROOT", tmp_path / "package")
    with patch("seisbench.cache_model_root", tmp_path / "list_pretrained"):
        assert cls.list_pretrained(details=True, remote=False) == {}
    with patch("seisbench.cache_model_root", tmp_path / "list_versions"):
        assert cls.list_versions("original", remote=False) == []


def test_version_warnings(cls, weight_dirs, caplog):  # same name, plus from_pretrained issuing the warning
    class MockModel(cls):
        _weight_warnings = [("abc|def", "2", "MYWARN"), ("xyz", "3", "MYWARN")]

    for name, version, warns in [("abc", "2", True), ("def", "2", True), ("xyz", "3", True),
                                 ("abc", "1", False), ("def", "3", False), ("xyz", "2", False)]:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            MockModel._version_warnings(name, version)
        assert ("MYWARN" in caplog.text) == warns
    folder = MockModel._model_path()
    folder.mkdir(parents=True)
    MockModel(backbone_config=CONFIGS[cls]).save(folder / "abc", version_str="2")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        MockModel.from_pretrained("abc")
    assert "MYWARN" in caplog.text


# ---------------------------------------------------------------------- stream handling
def test_sanitize_mismatching_records(cls, caplog):  # test_sanitize_mismatching_records (abridged)
    t0 = UTCDateTime(0)
    stats = {"network": "SB", "station": "TEST", "channel": "HHZ", "sampling_rate": 20, "starttime": t0}
    trace0, trace1 = obspy.Trace(np.zeros(1000), stats), obspy.Trace(np.ones(1000), stats)
    cases = [
        ([trace0.slice(t0, t0 + 10), trace0.slice(t0 + 5, t0 + 15)], 1, False),
        ([trace0.slice(t0, t0 + 10), trace1.slice(t0 + 5, t0 + 15)], 0, True),
        ([trace0.slice(t0, t0 + 15), trace0.slice(t0 + 5, t0 + 10)], 1, False),
        ([trace0.slice(t0, t0 + 15), trace1.slice(t0 + 5, t0 + 10)], 0, True),
        ([trace0.slice(t0, t0 + 10), trace0.slice(t0 + 15, t0 + 20)], 2, False),
        ([trace0.slice(t0, t0 + 10), trace1.slice(t0 + 15, t0 + 20)], 2, False),
    ]
    for traces, n, warns in cases:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert len(cls.sanitize_mismatching_overlapping_records(obspy.Stream(traces))) == n
        assert ("All mismatching traces will be ignored." in caplog.text) == warns


def test_stream_to_arrays_instrument(cls):  # same name
    model = make(cls)
    traces = [obspy.Trace((i + 1) * np.ones(1000), _stats(f"HH{c}")) for i, c in enumerate("ZNE")]
    grouped = model.stream_to_array(obspy.Stream(traces), {})
    assert grouped.start_time == UTCDateTime(0) and grouped.stations == ["SB.TEST."]
    assert grouped.data.shape == (3, 1000)
    for i in range(3):
        assert (grouped.data[i] == traces[i].data).all()


def test_stream_to_arrays_channel(cls):  # test_stream_to_arrays_channel
    """Deviation: the pickers read three components per instrument; grouping="channel" is refused."""
    with pytest.raises(ValueError, match="grouping must be 'instrument'"):
        make(cls, grouping="channel")


def test_flexible_horizontal_components(cls, caplog):  # same name
    model = make(cls)
    z, n, e, one, two = (obspy.Trace(v * np.ones(1000), _stats(f"HH{c}")) for v, c in zip(range(1, 6), "ZNE12"))
    two_other = obspy.Trace(5 * np.ones(1000), _stats("HH2", station="TEST2"))
    grouped = model.stream_to_array(obspy.Stream([z, one, two]), {"flexible_horizontal_components": False})
    np.testing.assert_allclose(grouped.data, [[1] * 1000, [0] * 1000, [0] * 1000])
    grouped = model.stream_to_array(obspy.Stream([z, one, two]), {"flexible_horizontal_components": True})
    np.testing.assert_allclose(grouped.data, [[1] * 1000, [4] * 1000, [5] * 1000])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model.stream_to_array(obspy.Stream([z, n, e, one, two]), {"flexible_horizontal_components": True})
    assert "This might lead to undefined behavior." in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model.stream_to_array(obspy.Stream([z, n, e, two_other]), {"flexible_horizontal_components": True})
    assert "This might lead to undefined behavior." not in caplog.text


def test_group_stream_by_instrument(cls):  # same name, with the model's own grouping helper
    stream = obspy.Stream([obspy.Trace(np.ones(100), header={"network": net, "station": sta, "channel": cha})
                           for net, sta, cha in [("SB", "ABC1", "BHZ"), ("SB", "ABC1", "BHN"), ("SB", "ABC1", "BHE"),
                                                 ("SB", "ABC1", "HHZ"), ("HB", "ABC1", "BHZ"), ("SB", "ABC2", "BHZ")]])
    groups = make(cls)._grouping.group_stream(stream, False, 0, {"Z": 0, "N": 1, "E": 2})
    assert sorted(len(x) for x in groups) == [1, 1, 4]


def test_resample(cls):  # test_resample
    for zerophase in (True, False):
        s = obspy.Stream([obspy.Trace(np.random.rand(1000), header={"sampling_rate": r}) for r in (100, 25, 40)])
        cls.resample(s, 25, zerophase=zerophase)
        assert [(t.stats.sampling_rate, len(t)) for t in s] == [(25, 250), (25, 1000), (25, 625)]


def test_annotate_filter(cls):  # same name
    model = make(cls)
    stream_org = obspy.read()
    stream = stream_org.copy()
    model._filter_stream(stream)
    for a, b in zip(stream_org, stream):
        np.testing.assert_allclose(a.data, b.data)
    model.filter_args, model.filter_kwargs = ["highpass"], {"freq": 1}
    stream = stream_org.copy()
    model._filter_stream(stream)
    assert all(not np.allclose(a.data, b.data) for a, b in zip(stream_org, stream))
    model.filter_args, model.filter_kwargs = {"??Z": ["highpass"]}, {"??Z": {"freq": 1}}
    stream = stream_org.copy()
    model._filter_stream(stream)
    for a, b in zip(stream_org, stream):
        assert np.allclose(a.data, b.data) == (a.stats.channel[-1] != "Z")
    model.filter_args, model.filter_kwargs = {"??Z": ["highpass"]}, {"??Y": {"freq": 1}}
    with pytest.raises(ValueError, match="Invalid filter definition"):
        model._filter_stream(stream)


def test_verify_argdict(cls, caplog):  # test_verify_argdict
    """Deviation: unknown arguments raise ValueError naming the valid ones instead of a logged warning."""
    model = make(cls)
    model._verify_argdict({"overlap": 1024})
    model._verify_argdict({"P_threshold": 0.4})  # the wildcard *_threshold, for the model's phases
    for bad in ({"not_param": 3}, {"my_threshold": 0.3}):
        with pytest.raises(ValueError, match="Unknown annotate/classify argument"):
            model._verify_argdict(bad)


def test_argdict_get_with_default(cls):  # same name
    model = make(cls)
    model._annotate_args = {**model._annotate_args, "testarg": ("Test docstr", 1)}
    assert model._argdict_get_with_default({"testarg": 2}, "testarg") == 2
    assert model._argdict_get_with_default({"not_testarg": 2}, "testarg") == 1


# ---------------------------------------------------------------------- windows, batches and stacking
def test_recursive_torch_to_numpy(cls):  # same name
    model = make(cls)
    x = np.random.rand(5, 3)
    assert (model._recursive_torch_to_numpy(torch.tensor(x)) == x).all()
    xt = torch.tensor(x)
    result = model._recursive_torch_to_numpy([[xt, xt, xt], (xt, xt, xt, xt)])
    assert isinstance(result, list) and isinstance(result[0], list) and isinstance(result[1], tuple)
    assert (len(result[0]), len(result[1])) == (3, 4)


def test_recursive_slice_pred(cls):  # same name
    model = make(cls)
    xs = [np.random.rand(5, 3) for _ in range(5)]
    y = model._recursive_slice_pred([[xs[0], xs[1]], (xs[2], xs[3], xs[4])])
    for i in range(5):
        [p1, p2], (p3, p4, p5) = y[i]
        for p, x in zip((p1, p2, p3, p4, p5), xs):
            assert (p == x[i]).all()


def test_predictions_to_stream(cls):  # same name
    model = make(cls)
    data = np.random.rand(1000, 3).astype(np.float32)
    data[:100] = np.nan
    t0 = UTCDateTime()
    preds = [PredictionsStacked(data=data, stations=["SB.ABC1."], start_time=t0, sampling_rate=100),
             PredictionsStacked(data=np.random.rand(2000, 3).astype(np.float32), stations=["SB.ABC1."],
                                start_time=t0, sampling_rate=50)]
    stream = model._predictions_to_stream(preds[0]) + model._predictions_to_stream(preds[1])
    assert [tr.stats.starttime for tr in stream] == [t0 + 1] * 3 + [t0] * 3
    assert [tr.id for tr in stream] == [f"SB.ABC1..{cls.__name__}_{p}" for p in "PSN"] * 2
    assert [tr.stats.sampling_rate for tr in stream] == [100] * 3 + [50] * 3


def test_cut_fragments_array(cls):  # same name, with the pickers' 4096-sample window
    model = make(cls)
    group = GroupedTraceData(data=np.ones((3, 40001)), stations=["A"], component_order="ZNE",
                             start_time=UTCDateTime(), sampling_rate=100, grouping="instrument")
    out = model._cut_fragments_array(group, {"overlap": 512, "sampling_rate": 100})
    assert len(out) == 12 and out[0].data.shape == (3, 4096)
    assert [s.window_offset for s in out] == [3584 * i for i in range(11)] + [40001 - 4096]


def _segments(values, offsets=None):
    offsets = offsets or [3584 * i for i in range(11)] + [40001 - 4096]
    return [PredictionSegment(data=np.ones((4096, 3), dtype=np.float32) * v, key=(0.0, "key"),
                              start_time=UTCDateTime(0), window_offset=o, n_windows=len(offsets), stations=["SB.ABC1."], in_samples=4096,
                              pred_sample=(0, 4096)) for v, o in zip(values, offsets)]


def test_reassemble_blocks_array(cls):  # same name; also: the pickers' blinding leaves no hole
    model = make(cls)
    for stack in (model._stack_predictions_array, model._stack_predictions_array_ext):
        stacked = stack(_segments([1] * 12), {"sampling_rate": 100})
        assert stacked.sampling_rate == 100.0 and stacked.data.shape == (40001, 3)
        assert not np.isnan(stacked.data).any() and (stacked.data == 1).all()


def test_reassemble_blocks_array_stack_options(cls):  # same name, without blinding as SeisBench's dummy model
    model = make(cls)
    for stacking in ("max", "avg"):
        argdict = {"overlap": 512, "stacking": stacking, "sampling_rate": 100, "blinding": (0, 0)}
        stacked = model._stack_predictions_array(_segments(range(1, 13)), argdict)
        assert stacked.data.shape == (40001, 3) and stacked.data.min() == 1 and stacked.data.max() == 12
        if stacking == "max":
            assert np.all(stacked.data[-4096:] == 12)
        else:  # only the last two windows, values 11 and 12, cover 36352 to 39936
            assert np.all(stacked.data[36352:39936] == 11.5)


def test_predict_buffer_padding(cls):  # same name, with window lengths the backbones accept
    model = make(cls)
    segments = [TraceSegment(data=np.random.rand(3, n), start_time=UTCDateTime(), pred_sample=(0, n),
                             window_offset=0, key=(0.0, ""), stations=["TEST"], n_windows=3, in_samples=n)
                for n in (3968, 4032, 4096)]
    model.allow_padding = False
    with pytest.raises(ValueError):
        model._predict_windows(segments, {})
    model.allow_padding = True
    assert len(model._predict_windows(segments, {})) == 3


def test_model_normalize(cls):  # same name
    model = make(cls)
    for norm, stat in (("std", lambda x: np.std(x, axis=-1)), ("peak", lambda x: np.max(np.abs(x), axis=-1))):
        model.norm = norm
        x_norm = model.annotate_batch_pre(torch.tensor(np.random.rand(5, 3, 100000)), {}).numpy()
        np.testing.assert_allclose(stat(x_norm), 1, atol=1e-2, rtol=1e-2)


def test_forward(cls):  # test_phasenet_forward and the other per-model forward tests
    model = make(cls)
    x = torch.rand((2, 3, 4096))
    with torch.no_grad():
        np.testing.assert_allclose(np.sum(model(x).numpy(), axis=1), 1, rtol=1e-5)
        with pytest.raises(AssertionError):
            np.testing.assert_allclose(np.sum(model(x, logits=True).numpy(), axis=1), 1, rtol=1e-5)


# ---------------------------------------------------------------------- annotate and classify
def test_annotate(cls):  # test_annotate_phasenet, test_annotate_eqtransformer and the other annotate tests
    model = make(cls)
    stream = obspy.read()
    assert len(model.annotate(stream)) > 0
    output = model.classify(stream)
    assert isinstance(output, sbu.ClassifyOutput)
    assert isinstance(output.picks, sbu.PickList) and isinstance(output.detections, sbu.DetectionList)
    assert output.creator == model.name


def test_annotate_async(cls):  # test_phasenet_async
    model = make(cls)
    stream = obspy.read()
    assert len(asyncio.run(model.annotate_async(stream))) > 0
    output = asyncio.run(model.classify_async(stream))
    assert isinstance(output, sbu.ClassifyOutput) and isinstance(output.picks, sbu.PickList)
    assert output.creator == model.name


def test_annotate_overlap(cls):  # same name
    model = make(cls)
    stream = obspy.read()
    a, b = model.annotate(stream, overlap=0.5), model.annotate(stream, overlap=int(0.5 * model.in_samples))
    assert len(a) == len(b)
    for t1, t2 in zip(a, b):
        assert (t1.data == t2.data).all()


def test_short_traces(cls, caplog):  # test_short_traces
    """Deviation: SeisBench drops records shorter than a window with "Output might be empty."; the pickers
    zero-pad them to one window and annotate the whole record (here 1 s), without a warning."""
    stream = obspy.read()
    t0 = stream[0].stats.starttime
    stream = stream.slice(t0, t0 + 1)
    with caplog.at_level(logging.WARNING):
        ann = make(cls).annotate(stream)
    assert "Output might be empty." not in caplog.text
    assert len(ann) == 3 and all((tr.stats.starttime, tr.stats.npts) == (t0, 101) for tr in ann)


def test_annotate_empty(cls):  # same name
    assert len(make(cls).annotate(obspy.Stream())) == 0


def test_overlap_mismatching_records_empty(cls):  # same name
    header = {"network": "XX", "station": "STA", "location": "00", "channel": "HHZ", "sampling_rate": 100.0}
    stream = obspy.Stream([obspy.Trace(np.ones(10000), header=header), obspy.Trace(np.zeros(10000), header=header)])
    assert len(make(cls).annotate(stream)) == 0


def test_fractional_sample_handling(cls):  # same name
    t0 = UTCDateTime("2000-01-01 00:00:00")
    header = {"network": "XX", "station": "YYY", "location": "", "sampling_rate": 100}
    stream = obspy.Stream([obspy.Trace(np.ones(10000), header={"starttime": t0 + i / 1000.0, "channel": f"HH{c}",
                                                                **header}) for i, c in enumerate("ZNE")])
    ann = make(cls).annotate(stream, blinding=(0, 0))
    assert len(ann) == 3
    for trace in ann:
        assert trace.stats.starttime == t0 + 1.0 / 1000.0


def test_picks_from_annotations(cls):  # same name
    data = np.zeros(1000)
    data[100:201], data[300:401], data[500:701], data[600] = 0.7, 0.1, 0.5, 0.6
    t0 = UTCDateTime()
    trace = obspy.Trace(data, header={"network": "SB", "station": "ABC1", "starttime": t0, "sampling_rate": 100})
    picks = sorted(cls.picks_from_annotations(obspy.Stream([trace]), 0.3, "P"))
    assert [(p.trace_id, p.start_time, p.end_time, p.peak_value, p.phase) for p in picks] == [
        ("SB.ABC1.", t0 + 1, t0 + 2, 0.7, "P"), ("SB.ABC1.", t0 + 5, t0 + 7, 0.6, "P")]
    assert picks[1].peak_time == t0 + 6


def test_detections_from_annotations(cls):  # same name
    data = np.zeros(1000)
    data[100:201], data[300:401], data[500:701], data[600] = 0.7, 0.1, 0.5, 0.6
    t0 = UTCDateTime()
    trace = obspy.Trace(data, header={"network": "SB", "station": "ABC1", "starttime": t0, "sampling_rate": 100})
    detections = sorted(cls.detections_from_annotations(obspy.Stream([trace]), 0.3))
    assert [(d.trace_id, d.start_time, d.end_time, d.peak_value) for d in detections] == [
        ("SB.ABC1.", t0 + 1, t0 + 2, 0.7), ("SB.ABC1.", t0 + 5, t0 + 7, 0.6)]
