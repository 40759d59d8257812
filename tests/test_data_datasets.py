"""Datasets by name or path: offline errors, 100 Hz / ZNE / channels-first, chunks, the shared ncedc154 set."""

import socket
import time

import pytest
import seisbench
import seisbench.data as sbd

from seisbench_xlstm.data import (
    DATASET_NAMES,
    DatasetNotAvailableError,
    check_available,
    open_dataset,
    shared_data_dir,
)
from test_data_synth import write_dataset

EIGHT = ("ethz", "geofon", "stead", "instance", "mlaapde", "iquique", "pnw", "obst2024")


@pytest.fixture
def no_network(monkeypatch):
    """Any socket use fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """SeisBench's dataset cache pointed at an empty folder."""
    monkeypatch.setattr(seisbench, "cache_root", tmp_path)
    monkeypatch.setattr(seisbench, "cache_data_root", tmp_path / "datasets")
    return tmp_path / "datasets"


def test_the_eight_names():
    assert DATASET_NAMES == EIGHT


@pytest.mark.parametrize("name", EIGHT)
def test_missing_dataset_raises_at_once(name, empty_cache, no_network):
    t = time.perf_counter()
    with pytest.raises(DatasetNotAvailableError) as info:
        open_dataset(name)
    assert time.perf_counter() - t < 2.0
    msg = str(info.value)
    assert str(empty_cache) in msg  # the path looked at
    assert "SEISBENCH_CACHE_ROOT" in msg and "open_dataset('/path/to/" in msg  # how to provide it
    assert isinstance(info.value, FileNotFoundError)
    # nothing was created or downloaded in the cache
    assert not any(p.is_file() for p in empty_cache.parent.rglob("*"))


def test_missing_local_folder(tmp_path):
    with pytest.raises(DatasetNotAvailableError, match="metadata.csv"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="Unknown dataset"):
        open_dataset("not-a-dataset-name")


def test_half_present_dataset_is_reported(empty_cache, no_network):
    write_dataset(empty_cache / "ethz", n_events=1, n_noise=0)
    (empty_cache / "ethz" / "waveforms.hdf5").rename(empty_cache / "ethz" / "waveforms.hdf5.partial")
    with pytest.raises(DatasetNotAvailableError, match="unfinished download"):
        open_dataset("ethz")


def test_named_dataset_in_cache_loads_offline(empty_cache, no_network):
    # an ETHZ-like set at 200 Hz in ENZ order: comes out at 100 Hz, ZNE, channels-first
    write_dataset(empty_cache / "ethz", n_events=2, n_noise=1, sampling_rate=200.0, npts=4000,
                  component_order="ENZ", p_col="trace_P1_arrival_sample", s_col="trace_Sg_arrival_sample")
    ds = open_dataset("ETHZ")
    assert isinstance(ds, sbd.WaveformDataset) and ds.name == "ETHZ"
    assert ds.sampling_rate == 100 and ds.component_order == "ZNE"
    x, meta = ds.get_sample(0)
    assert x.shape == (3, 2000)
    assert meta["trace_P1_arrival_sample"] == pytest.approx(ds.metadata["trace_P1_arrival_sample"].iloc[0] / 2)
    assert ds.cache is None  # lazy by default
    assert open_dataset("ethz", cache="full").cache == "full"
    # the SeisBench class itself also opens it offline once the files are there
    ds2 = open_dataset("ethz", allow_download=True)
    assert isinstance(ds2, sbd.ETHZ) and len(ds2) == len(ds)


def test_instance_is_counts_plus_noise(empty_cache, no_network):
    with pytest.raises(DatasetNotAvailableError, match="instancecounts"):
        open_dataset("instance")
    write_dataset(empty_cache / "instancecounts", n_events=2, n_noise=0, p_col="trace_P_arrival_sample",
                  s_col="trace_S_arrival_sample")
    with pytest.raises(DatasetNotAvailableError, match="instancenoise"):
        open_dataset("instance")
    write_dataset(empty_cache / "instancenoise", n_events=0, n_noise=3, name_prefix="n")
    ds = open_dataset("instance")
    assert isinstance(ds, sbd.MultiWaveformDataset)
    assert len(ds) == 4 + 3
    assert (ds.metadata["trace_category"] == "noise").sum() == 3


def test_chunked_dataset(empty_cache, no_network):
    # MLAAPDE lists its chunks statically; only two months are here
    for chunk in ("_201307", "_201308"):
        write_dataset(empty_cache / "mlaapde", chunk=chunk, n_events=1, n_noise=0, name_prefix=chunk)
    with pytest.raises(DatasetNotAvailableError, match="chunks='available'"):
        open_dataset("mlaapde")
    ds = open_dataset("mlaapde", chunks="available")
    assert sorted(ds.metadata["trace_chunk"].unique()) == ["_201307", "_201308"]
    assert len(open_dataset("mlaapde", chunks=["_201308"])) == 2
    with pytest.raises(DatasetNotAvailableError, match="_201309"):
        open_dataset("mlaapde", chunks=["_201308", "_201309"])


def test_chunks_file_for_local_folder(tmp_path):
    for chunk in ("a", "b"):
        write_dataset(tmp_path / "loc", chunk=chunk, n_events=1, n_noise=0, name_prefix=chunk)
    (tmp_path / "loc" / "chunks").write_text("a\nb\nc\n")
    locs = check_available(tmp_path / "loc")  # a local folder uses the chunks present
    assert locs[0].chunks == ["a", "b"]
    assert len(open_dataset(tmp_path / "loc")) == 4


def test_ncedc154_through_the_same_code_path(shared_data, no_network):
    path = shared_data / "ncedc154"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    ds = open_dataset(path)
    assert type(ds) is sbd.WaveformDataset and ds.name == "ncedc154"
    assert len(ds) == 154
    assert ds.sampling_rate == 100 and ds.component_order == "ZNE"
    x = ds.get_waveforms(0)
    assert x.shape == (3, 9001)
    assert ds.metadata["split"].value_counts().to_dict() == {"train": 93, "dev": 31, "test": 30}
    assert ds.metadata["trace_p_arrival_sample"].notna().sum() == 154
    assert shared_data_dir().resolve() == shared_data.resolve() or shared_data_dir().is_dir()
