"""Saving, loading and offline lookup of picker weights (seisbench_xlstm.weight_lookup)."""

import configparser
import fnmatch
import json
import socket
import subprocess
from pathlib import Path

import obspy
import pytest
import seisbench

from seisbench_xlstm import CorruptWeightsError, WeightsNotFoundError, XLSTMSeqPicker, XLSTMUNetPicker
from seisbench_xlstm import weight_lookup as weights_module
from seisbench_xlstm.pickers import load_picker
from tiny import TINY_SEQUENTIAL, TINY_UNET

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Fresh, empty weight folders: (cache folder, package folder) of XLSTMSeqPicker / XLSTMUNetPicker."""
    monkeypatch.setattr(seisbench, "cache_model_root", tmp_path / "cache" / "models" / "v3")
    monkeypatch.setattr(weights_module, "PACKAGE_WEIGHTS_ROOT", tmp_path / "package")

    def get(cls):
        cache, package = cls._weight_dirs()
        cache.mkdir(parents=True, exist_ok=True)
        package.mkdir(parents=True, exist_ok=True)
        return cache, package

    return get


@pytest.fixture
def no_network(monkeypatch):
    """Records every host name lookup and refuses it: a test with this fixture sees any attempt to go online."""
    lookups = []

    def refuse(host, *args, **kwargs):
        lookups.append(host)
        raise OSError(f"network access attempted: {host}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return lookups


def _edit_json(path, edit):
    meta = json.loads(Path(path).read_text())
    edit(meta)
    Path(path).write_text(json.dumps(meta))


# ---------------------------------------------------------------------- save and load
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
        assert a.data.tobytes() == b.data.tobytes()
    for path in ("picker", "picker.pt", "picker.json"):
        assert load_picker(tmp_path / path).name == model.name


def test_save_writes_the_version(model, tmp_path):
    model.save(tmp_path / "m", version_str="2")
    assert json.loads((tmp_path / "m.json.v2").read_text())["version"] == "2"
    assert type(model).load(tmp_path / "m", version_str="2").weights_version == "2"
    model.save(tmp_path / "plain")
    assert "version" not in json.loads((tmp_path / "plain.json").read_text())
    assert type(model).load(tmp_path / "plain").weights_version == "1"  # SeisBench's default


def test_a_typo_in_a_top_level_key_is_rejected(tmp_path):
    """'modelargs' used to load silently with defaults: a norm='peak', 50 Hz model came back as std, 100 Hz."""
    XLSTMUNetPicker(backbone_config=TINY_UNET, norm="peak", sampling_rate=50).save(tmp_path / "p")
    _edit_json(tmp_path / "p.json", lambda m: m.update(modelargs=m.pop("model_args")))
    with pytest.raises(CorruptWeightsError, match=r"unknown top-level key\(s\) \['modelargs'\].*'model_args'"):
        XLSTMUNetPicker.load(tmp_path / "p")


def test_a_typo_inside_model_args_is_rejected(tmp_path):
    XLSTMUNetPicker(backbone_config=TINY_UNET).save(tmp_path / "p")
    _edit_json(tmp_path / "p.json", lambda m: m["model_args"].update(sampling_rat=50))
    with pytest.raises(CorruptWeightsError, match=r"unknown model_args key\(s\) \['sampling_rat'\].*'sampling_rate'"):
        XLSTMUNetPicker.load(tmp_path / "p")
    _edit_json(tmp_path / "p.json", lambda m: (m["model_args"].pop("sampling_rat"),
                                              m["model_args"]["backbone_config"].update(dim=[1])))
    with pytest.raises(CorruptWeightsError, match=r"Unknown UNetBackboneConfig option\(s\) \['dim'\]"):
        XLSTMUNetPicker.load(tmp_path / "p")


def test_a_typo_in_default_args_is_rejected(tmp_path):
    XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL).save(tmp_path / "p")
    _edit_json(tmp_path / "p.json", lambda m: m.update(default_args={"p_threshold": 0.5}))
    with pytest.raises(CorruptWeightsError, match=r"default_args: Unknown .*'p_threshold'.*'P_threshold'"):
        XLSTMSeqPicker.load(tmp_path / "p")
    _edit_json(tmp_path / "p.json", lambda m: m.update(default_args={"P_threshold": 0.5, "overlap": 1024}))
    assert XLSTMSeqPicker.load(tmp_path / "p").default_args == {"P_threshold": 0.5, "overlap": 1024}


def test_weights_of_another_architecture_are_rejected(tmp_path):
    XLSTMUNetPicker(backbone_config=TINY_UNET).save(tmp_path / "unet")
    with pytest.raises(CorruptWeightsError, match="is that of XLSTMUNetPicker"):
        XLSTMSeqPicker.load(tmp_path / "unet")
    XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL).save(tmp_path / "seq")
    with pytest.raises(CorruptWeightsError, match="is that of XLSTMSeqPicker"):
        XLSTMUNetPicker.load(tmp_path / "seq")
    _edit_json(tmp_path / "seq.json", lambda m: m["model_args"]["backbone_config"].update(num_layers=3))
    with pytest.raises(CorruptWeightsError, match="seq.pt"):  # state dict of another size
        XLSTMSeqPicker.load(tmp_path / "seq")


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
    (tmp_path / "j.json").write_text("[1, 2]")
    with pytest.raises(CorruptWeightsError, match="not a JSON object"):
        type(model).load(tmp_path / "j")
    with pytest.raises(WeightsNotFoundError):
        type(model).load(tmp_path / "missing")


# ---------------------------------------------------------------------- named weights, offline
def test_newest_version_across_folders(model, folders, no_network):
    """v1 shipped in the package no longer hides v2 in the cache, nor the reverse; equal versions: cache wins."""
    cls = type(model)
    cache, package = folders(cls)
    model.save(package / "net", version_str="1", weights_docstring="package v1")
    model.save(cache / "net", version_str="2", weights_docstring="cache v2")
    loaded = cls.from_pretrained("net")
    assert (loaded.weights_version, loaded.weights_docstring) == ("2", "cache v2")
    model.save(package / "net", version_str="3", weights_docstring="package v3")
    assert cls.from_pretrained("net").weights_docstring == "package v3"
    model.save(cache / "net", version_str="3", weights_docstring="cache v3")
    assert cls.from_pretrained("net").weights_docstring == "cache v3"
    assert cls.from_pretrained("net", version_str="1").weights_docstring == "package v1"
    assert cls.list_versions("net") == ["1", "2", "3"]
    assert cls.list_pretrained(details=True) == {"net": "cache v3"}
    assert load_picker("net", backbone=model.backbone_name).weights_docstring == "cache v3"
    assert no_network == []


def test_unsuffixed_files_count_as_their_json_version(folders):
    cache, package = folders(XLSTMSeqPicker)
    model = XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL)
    model.save(package / "old", weights_docstring="unsuffixed, version 4 in its JSON")
    _edit_json(package / "old.json", lambda m: m.update(version="4"))
    model.save(cache / "old", version_str="3")
    loaded = XLSTMSeqPicker.from_pretrained("old")
    assert (loaded.weights_version, loaded.weights_docstring) == ("4", "unsuffixed, version 4 in its JSON")
    assert XLSTMSeqPicker.list_versions("old") == ["3", "4"]


def test_list_versions_and_list_pretrained_never_go_online(folders, no_network):
    """SeisBench's list_versions looks up its remote twice for an unknown name; these never look anything up."""
    folders(XLSTMSeqPicker)
    assert XLSTMSeqPicker.list_versions("nosuch") == []
    assert XLSTMSeqPicker.list_versions("nosuch", remote=True) == []
    assert XLSTMSeqPicker.list_pretrained(remote=True) == []
    with pytest.raises(WeightsNotFoundError, match="Looked in:.*never downloads"):
        XLSTMSeqPicker.from_pretrained("nosuch")
    with pytest.raises(ValueError, match="not supported"):
        XLSTMSeqPicker.from_pretrained("nosuch", update=True)
    assert no_network == []


def test_unknown_version_names_the_available_ones(folders):
    cache, _ = folders(XLSTMSeqPicker)
    XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL).save(cache / "net", version_str="1")
    with pytest.raises(WeightsNotFoundError, match=r"No version 7 of 'net'.*available offline: \['1'\]"):
        XLSTMSeqPicker.from_pretrained("net", version_str="7")


# ---------------------------------------------------------------------- shipping weights
def test_shipped_weights_are_neither_ignored_by_git_nor_left_out_of_the_package():
    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=REPO, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    for cls in (XLSTMSeqPicker, XLSTMUNetPicker):
        folder = f"seisbench_xlstm/weights/{cls.__name__.lower()}"
        for name in ("base.pt.v1", "base.json.v1", "base.pt", "base.json"):
            result = subprocess.run(["git", "check-ignore", "-q", f"{folder}/{name}"], cwd=REPO)
            assert result.returncode == 1, f"{folder}/{name} is ignored by git"
            config = configparser.ConfigParser()
            config.read(REPO / "setup.cfg")
            patterns = [p.strip() for p in config["options.package_data"]["seisbench_xlstm"].split(",")]
            relative = f"weights/{cls.__name__.lower()}/{name}"
            assert any(fnmatch.fnmatch(relative, p) for p in patterns), f"{relative} not in package_data"
    assert subprocess.run(["git", "check-ignore", "-q", "model.pt"], cwd=REPO).returncode == 0  # others still are
