"""Ingest of a network's own waveforms and picks (CSV, QuakeML, Nordic), bad input, splits, CLI, nz-dfdp."""

import argparse
import json

import h5py
import numpy as np
import pandas as pd
import pytest
from obspy import Stream, Trace, UTCDateTime
from obspy.core.event import Catalog, Event, Magnitude, Origin, Pick, WaveformStreamID

from seisbench_xlstm.data import open_dataset
from seisbench_xlstm.data.ingest import ingest
from seisbench_xlstm.data.ingest import add_ingest_subcommand

T0 = UTCDateTime(2021, 3, 4, 5, 0, 0)
NET = "XX"
#: The expectations below (P 30 s into the window, 6201 samples at A, ...) were made for 30 s before the first
#: pick, the old default; the default is now 60 s (room for a noise window, see test_default_window_*).
BEFORE = 30


def _tr(sta, cha, start, sr, n, data=None, seed=0):
    rng = np.random.default_rng(seed)
    if data is None:
        data = rng.normal(0, 1, n).astype(np.float32)
    tr = Trace(np.asarray(data, dtype=np.float32))
    tr.stats.network, tr.stats.station, tr.stats.channel = NET, sta, cha
    tr.stats.starttime, tr.stats.sampling_rate = start, sr
    return tr


def _zne(sta, band, start, sr, seconds, comps="ZNE", seed=0):
    n = int(seconds * sr) + 1
    return [_tr(sta, band + c, start, sr, n, seed=seed + i) for i, c in enumerate(comps)]


# Event 1 (origin T0+60): picks at stations with every kind of record; event 3 overlaps it in time;
# event 2 is separate. Expected: 3 events, 8 traces, 8 P, 3 S.
PICKS = {
    "E1": (
        T0 + 60,
        [("A", "HHZ", "P", 62.0), ("A", "HHN", "S", 64.0), ("A", "HHZ", "IAML", 65.0), ("B", "HHZ", "P", 63.0),
         ("C", "HHZ", "P", 63.5), ("D", "HHZ", "P", 62.5), ("E", "EHZ", "P", 62.0), ("F", "HHZ", "P", 62.2),
         ("F", "HHE", "S", 64.1), ("G", "HHZ", "P", 62.7), ("H", "HHZ", "P", 62.0), ("Q", "HHZ", "P", 62.0)],
    ),
    "E2": (T0 + 1000, [("A", "HHZ", "P", 1002.0), ("A", "HHE", "Sg", 1004.0), ("B", "HHZ", "Pg", 1003.0)]),
    "E3": (T0 + 75, [("A", "HHZ", "P", 77.0)]),
}


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    """Waveform folder with good and bad records, in miniSEED; returns the folder."""
    root = tmp_path_factory.mktemp("net")
    wav = root / "wav"
    wav.mkdir()
    traces = []
    a_z = np.random.default_rng(42).normal(0, 1, 18001).astype(np.float32)
    traces.append(_tr("A", "HHZ", T0, 100, 18001, data=a_z))
    traces += _zne("A", "HH", T0, 100, 180, comps="NE", seed=1)
    # B: Z/1/2 at 200 Hz; 1 = 1 Hz sine, 2 = 1 Hz cosine
    t = np.arange(36001) / 200.0
    traces += [_tr("B", "HHZ", T0, 200, 36001, seed=3), _tr("B", "HH1", T0, 200, 36001, data=100 * np.sin(2 * np.pi * t)),
               _tr("B", "HH2", T0, 200, 36001, data=100 * np.cos(2 * np.pi * t))]
    traces += _zne("C", "HH", T0, 250, 180, seed=4)
    traces += _zne("D", "HH", T0, 100, 180, comps="Z", seed=5)
    # E: gap of 2 s in Z inside the window
    traces += [_tr("E", "EHZ", T0, 100, 7001, seed=6), _tr("E", "EHZ", T0 + 72, 100, 10801, seed=7)]
    traces += _zne("E", "EH", T0, 100, 180, comps="NE", seed=8)
    # F: every channel in two overlapping records with identical samples in the overlap
    for i, c in enumerate("ZNE"):
        full = np.random.default_rng(10 + i).normal(0, 1, 18001).astype(np.float32)
        traces += [_tr("F", "HH" + c, T0, 100, 6001, data=full[:6001]),
                   _tr("F", "HH" + c, T0 + 50, 100, 13001, data=full[5000:])]
    # G: Z at 100 Hz, horizontals at 200 Hz (mixed rates across components)
    traces += _zne("G", "HH", T0, 100, 180, comps="Z", seed=13) + _zne("G", "HH", T0, 200, 180, comps="NE", seed=14)
    # H: Z changes sampling rate inside the window
    traces += [_tr("H", "HHZ", T0, 100, 8001, seed=15), _tr("H", "HHZ", T0 + 80.02, 50, 5000, seed=16)]
    traces += _zne("H", "HH", T0, 100, 180, comps="NE", seed=17)
    # W: recorded, never picked
    traces += _zne("W", "HH", T0, 100, 180, seed=18)
    Stream(traces).write(str(wav / "2021-03-04-0500-00.SYN___010"), format="MSEED")
    ev2 = _zne("A", "HH", T0 + 900, 100, 200, seed=20) + [
        _tr("B", "HHZ", T0 + 900, 200, 40001, seed=23), _tr("B", "HH1", T0 + 900, 200, 40001, seed=24),
        _tr("B", "HH2", T0 + 900, 200, 40001, seed=25)]
    Stream(ev2).write(str(wav / "2021-03-04-0515-00.SYN___006"), format="MSEED")
    Stream(_zne("A", "HH", T0 + 5000, 100, 60, seed=30)).write(str(wav / "unused.mseed"), format="MSEED")
    (wav / "notes.txt").write_text("not a waveform\n")
    return {"root": root, "wav": wav, "a_z": a_z}


def _catalog():
    cat = Catalog()
    for eid, (otime, picks) in PICKS.items():
        ev = Event(resource_id=f"smi:test/{eid}")
        ev.origins = [Origin(time=otime, latitude=-43.3, longitude=170.4, depth=8000.0)]
        ev.magnitudes = [Magnitude(mag=1.5, magnitude_type="ML")]
        for sta, cha, phase, dt in picks:
            ev.picks.append(Pick(time=T0 + dt, waveform_id=WaveformStreamID(NET, sta, "", cha), phase_hint=phase,
                                 evaluation_mode="manual"))
        cat.append(ev)
    return cat


def _check_output(out, summary, fmt):
    assert summary.events == 3
    assert summary.traces == 8
    assert summary.p_picks == 8 and summary.s_picks == 3
    ds = open_dataset(out)
    md = ds.metadata
    assert len(ds) == 8 and ds.sampling_rate == 100 and ds.component_order == "ZNE"
    # one trace per station and event, event id in source_id
    assert not md.duplicated(["source_id", "station_code"]).any()
    assert md["source_id"].nunique() == 3
    # splits by event; E1 and E3 overlap in time, so they share a split
    assert (md.groupby("source_id")["split"].nunique() == 1).all()
    split = md.groupby("source_id")["split"].first()
    n_traces = md["source_id"].value_counts()
    e1 = n_traces.index[n_traces == 5][0]  # A, B, C, F, G
    e3 = n_traces.index[n_traces == 1][0]  # A
    assert split[e1] == split[e3]
    # skipped and why
    sk = pd.DataFrame(summary.skipped)
    reasons = " | ".join(sk["item"] + ": " + sk["reason"])
    assert "Q P: no waveform data" in reasons  # pick without waveforms
    assert "D P: no channel set with Z and two horizontals" in reasons
    assert {"E", "H"} == set(sk.loc[sk["what"] == "trace", "item"].str.split().str[-1].str.split(".").str[-1])
    assert "gap of 1.99 s" in reasons  # 70.01 .. 71.99 s missing
    assert "mixed sampling rates [50.0, 100.0] within channel" in reasons
    notes = pd.DataFrame(summary.notes)
    assert ((notes["what"] == "waveforms without picks") & notes["item"].str.endswith("XX.W")).any()
    assert ((notes["what"] == "waveforms without picks") & notes["item"].str.endswith("unused.mseed")).any()
    assert ((notes["what"] == "records merged/filled") & notes["reason"].str.contains("overlaps identical")).any()
    assert ((notes["what"] == "mixed sampling rates") & notes["item"].str.endswith("G")).any()
    assert summary.skipped_counts.get("waveform file") == 1  # notes.txt
    assert summary.ignored_phases.get("IAML", 0) + summary.ignored_phases.get("AML", 0) == 1
    # station A: exact samples (100 Hz, no resampling), P 30 s into the window
    a = md[(md["station_code"] == "A") & (md["source_id"] == e1)].iloc[0]
    assert a["trace_P_arrival_sample"] == pytest.approx(3000.0, abs=0.01)
    assert a["trace_S_arrival_sample"] == pytest.approx(3200.0, abs=0.01)
    idx = int(np.flatnonzero(((md["station_code"] == "A") & (md["source_id"] == e1)).to_numpy())[0])
    x = ds.get_waveforms(idx)
    assert x.shape == (3, 6201) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], _NETWORK["a_z"][3200:3200 + 6201], rtol=1e-6)
    # station B: Z/1/2 at 200 Hz -> 100 Hz, 1 -> N, 2 -> E unrotated
    bi = int(np.flatnonzero(((md["station_code"] == "B") & (md["source_id"] == e1)).to_numpy())[0])
    b = md.iloc[bi]
    assert b["trace_orientation"] == "Z12 unrotated" and b["trace_original_sampling_rate_hz"] == 200
    xb = ds.get_waveforms(bi)
    tt = UTCDateTime(b["trace_start_time"]) - T0 + np.arange(xb.shape[1]) / 100.0
    assert np.corrcoef(xb[1, 100:-100], np.sin(2 * np.pi * tt[100:-100]))[0, 1] > 0.999
    assert np.corrcoef(xb[2, 100:-100], np.cos(2 * np.pi * tt[100:-100]))[0, 1] > 0.999
    # compressed HDF5, one chunk per trace
    with h5py.File(out / "waveforms.hdf5") as f:
        for name, d in f["data"].items():
            assert d.compression == "gzip" and d.chunks[0] == 1
    saved = json.loads((out / "ingest_summary.json").read_text())
    assert saved["traces"] == 8
    return ds


_NETWORK = {}


@pytest.fixture(autouse=True)
def _remember(network):
    _NETWORK.update(network)


def test_ingest_quakeml(network, tmp_path):
    qml = tmp_path / "picks.xml"
    _catalog().write(str(qml), format="QUAKEML")
    s = ingest(network["wav"], qml, "quakeml", tmp_path / "out", progress=False, window_before=BEFORE)
    ds = _check_output(tmp_path / "out", s, "quakeml")
    assert set(ds.metadata["source_id"]) == {"smi:test/E1", "smi:test/E2", "smi:test/E3"}


def test_ingest_csv_with_a_malformed_row(network, tmp_path):
    rows = []
    for eid, (otime, picks) in PICKS.items():
        for sta, cha, phase, dt in picks:
            rows.append({"event_id": eid, "network": NET, "station": sta, "channel": cha,
                         "phase": "AML" if phase == "IAML" else phase, "time": str(T0 + dt),
                         "origin_time": str(otime), "latitude": -43.3, "longitude": 170.4, "depth_km": 8,
                         "magnitude": 1.5})
    csv = tmp_path / "picks.csv"
    df = pd.DataFrame(rows)
    text = df.to_csv(index=False) + "E2,XX,A,HHZ,P,not-a-time,,,,,\n"
    csv.write_text(text)
    s = ingest(network["wav"], csv, "csv", tmp_path / "out", progress=False, window_before=BEFORE)
    _check_output(tmp_path / "out", s, "csv")
    assert s.skipped_counts["malformed line"] == 1
    bad = csv.with_name("bad.csv")
    bad.write_text("station,time\nA,2021-01-01\n")
    s2 = ingest(network["wav"], bad, "csv", tmp_path / "out2", progress=False)
    assert s2.traces == 0 and s2.skipped_counts["pick file"] == 1
    assert not (tmp_path / "out2" / "waveforms.hdf5").exists()


def _write_nordic(cat, folder, wavefiles):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ev, name, wf in zip(cat, ("04-0501-00L.S202103", "04-0516-40L.S202103", "04-0501-15L.S202103"), wavefiles):
        p = folder / name
        Catalog([ev]).write(str(p), format="NORDIC", userid="TEST", evtype="L", wavefiles=[wf])
        paths.append(p)
    return paths


def test_ingest_nordic_duplicates_and_malformed_line(network, tmp_path):
    rea = tmp_path / "REA"
    cat = _catalog()
    w1, w2 = "2021-03-04-0500-00.SYN___010", "2021-03-04-0515-00.SYN___006"
    paths = _write_nordic(cat, rea, [w1, w2, w1])
    # an identical copy of an S-file in a SEISAN-style subfolder: read once
    (rea / "2021" / "03").mkdir(parents=True)
    (rea / "2021" / "03" / paths[0].name).write_bytes(paths[0].read_bytes())
    # a second S-file for event 2 (relocated: origin +0.3 s), same wave file: one event
    dup = cat[1].copy()
    dup.origins[0].time += 0.3
    dup.picks = [Pick(time=T0 + 1002.01, waveform_id=WaveformStreamID("", "A", "", "HHZ"), phase_hint="P",
                      evaluation_mode="manual")]
    Catalog([dup]).write(str(rea / "04-0516-41L.S202103"), format="NORDIC", userid="TEST", evtype="L",
                         wavefiles=[w2])
    # a malformed phase line in event 2's S-file
    lines = paths[1].read_text().splitlines(keepends=True)
    i = next(k for k, line in enumerate(lines) if line.startswith(" A ") or line[1:6].strip() == "A")
    lines.insert(i + 1, " B    HZ IP        0 1X:3.000".ljust(80) + "\n")
    paths[1].write_text("".join(lines))

    s = ingest(network["wav"], rea, "nordic", tmp_path / "out", progress=False, window_before=BEFORE)
    _check_output(tmp_path / "out", s, "nordic")
    assert s.pick_files == 4 and s.events_read == 4
    assert s.skipped_counts["malformed line"] == 1
    assert s.note_counts["duplicate pick file"] == 1
    assert s.note_counts["duplicate event"] == 1
    ds = open_dataset(tmp_path / "out")
    assert set(ds.metadata["source_id"]) == {p.name for p in paths}
    assert ds.metadata["source_files"].str.contains("04-0516-41L").any()


def test_options_fill_gaps_incomplete_and_rates(network, tmp_path):
    qml = tmp_path / "picks.xml"
    _catalog().write(str(qml), format="QUAKEML")
    s = ingest(network["wav"], qml, "quakeml", tmp_path / "o1", progress=False, fill_gaps=True,
               allow_incomplete=True, sampling_rate=50.0, window_before=10, window_after=10)
    # + E (gap zero-filled), D (Z only) and H (its 20 s window now lies within the 100 Hz record)
    assert s.traces == 11
    ds = open_dataset(tmp_path / "o1", sampling_rate=50)
    md = ds.metadata
    assert (md["trace_sampling_rate_hz"] == 50).all()
    d = int(np.flatnonzero((md["station_code"] == "D").to_numpy())[0])
    x = ds.get_waveforms(d)
    assert (x[1:] == 0).all() and x[0].any()
    assert any("filled with zeros" in n["reason"] for n in s.notes)
    # existing output is protected
    with pytest.raises(FileExistsError):
        ingest(network["wav"], qml, "quakeml", tmp_path / "o1", progress=False)
    assert ingest(network["wav"], qml, "quakeml", tmp_path / "o1", progress=False, window_before=BEFORE, overwrite=True).traces == 8
    with pytest.raises(ValueError):
        ingest(network["wav"], qml, "sac", tmp_path / "o2")
    with pytest.raises(FileNotFoundError):
        ingest(network["wav"] / "missing", qml, "quakeml", tmp_path / "o3")


def test_console_subcommand(network, tmp_path, capsys):
    qml = tmp_path / "picks.xml"
    _catalog().write(str(qml), format="QUAKEML")
    parser = argparse.ArgumentParser(prog="seisbench-xlstm")
    add_ingest_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ingest", "--before", "30", "--waveforms", str(network["wav"]), "--picks", str(qml), "--format",
                              "quakeml", "--out", str(tmp_path / "cli"), "--no-progress", "--split", "1", "0", "0"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "traces written: 8" in out and "pick without waveforms" in out
    assert set(open_dataset(tmp_path / "cli").metadata["split"]) == {"train"}
    args = parser.parse_args(["ingest", "--waveforms", str(network["wav"]), "--picks", str(qml), "--format",
                              "quakeml", "--out", str(tmp_path / "cli"), "--no-progress"])
    assert args.func(args) == 2  # exists, no --overwrite
    assert "already holds a dataset" in capsys.readouterr().err


def test_relative_paths_and_empty_pick_folder(network, tmp_path, monkeypatch):
    qml = tmp_path / "picks" / "picks.xml"
    qml.parent.mkdir()
    _catalog().write(str(qml), format="QUAKEML")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    rel_wav = "../" + str(network["wav"].relative_to(network["wav"].parents[1]))
    (tmp_path / network["wav"].parent.name).symlink_to(network["wav"].parent)
    s = ingest(rel_wav, "../picks", "quakeml", "out", progress=False, window_before=BEFORE)  # ".." must not count as hidden
    assert s.traces == 8 and s.pick_files == 1
    (tmp_path / "empty").mkdir()
    s = ingest(rel_wav, "../empty", "quakeml", "out2", progress=False)
    assert s.traces == 0 and s.skipped_counts["pick file"] == 1


def test_cli_main_knows_ingest(network, tmp_path):
    cli = pytest.importorskip("seisbench_xlstm.cli")
    qml = tmp_path / "picks.xml"
    _catalog().write(str(qml), format="QUAKEML")
    rc = cli.main(["ingest", "--waveforms", str(network["wav"]), "--picks", str(qml), "--format", "quakeml",
                   "--out", str(tmp_path / "main"), "--no-progress"])
    assert rc == 0 and (tmp_path / "main" / "metadata.csv").is_file()


def test_nz_dfdp(shared_data, tmp_path):
    nz = shared_data / "nz-dfdp"
    if not nz.is_dir():
        pytest.skip(f"{nz} is absent")
    s = ingest(nz / "WAV", nz / "REA", "nordic", tmp_path / "nz", progress=False)
    # 48 distinct events as counted; 5 more traces/P and 2 more S than the reference conversion because the
    # picks of the two duplicate S-files (18-2350-08L, 26-1517-4L) are merged in rather than dropped
    assert (s.events, s.traces, s.p_picks, s.s_picks, s.stations) == (48, 320, 224, 206, 21)
    assert s.skipped_counts == {"pick without waveforms": 5, "conflicting pick": 1}
    assert s.ignored_phases == {"IAML": 265}
    md = open_dataset(tmp_path / "nz").metadata
    assert (md.groupby("source_id")["split"].nunique() == 1).all()
    assert set(md["split"]) == {"train", "dev", "test"}
    assert set(md["trace_orientation"]) == {"ZNE", "Z12 unrotated"}
    first = ingest(nz / "WAV", nz / "REA", "nordic", tmp_path / "nz1", progress=False, duplicate_events="first")
    assert (first.events, first.traces, first.p_picks, first.s_picks) == (48, 315, 219, 204)
