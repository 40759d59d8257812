import obspy
import pandas as pd
import pytest
import torch

from seisbench_xlstm import XLSTMSeqPicker
from seisbench_xlstm.cli import main
from tiny import TINY_SEQUENTIAL


@pytest.fixture
def saved_model(tmp_path):
    torch.manual_seed(0)
    XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL).save(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def waveform_folder(tmp_path):
    folder = tmp_path / "waveforms"
    folder.mkdir()
    obspy.read().write(str(folder / "example.mseed"), format="MSEED")
    (folder / "broken.mseed").write_bytes(b"not a waveform")
    return folder


def test_pick_writes_csv_and_reports_unreadable_files(saved_model, waveform_folder, tmp_path, capsys):
    out = tmp_path / "picks.csv"
    rc = main(["pick", str(waveform_folder), "--weights", str(saved_model), "-o", str(out), "-q",
               "--p-threshold", "0.0001", "--s-threshold", "0.0001"])
    assert rc == 0
    picks = pd.read_csv(out)
    assert {"station", "time", "probability", "phase"} <= set(picks.columns)
    assert len(picks) > 0 and set(picks["phase"]) <= {"P", "S"}
    assert "broken.mseed" in capsys.readouterr().err


def test_annotate_writes_miniseed(saved_model, waveform_folder, tmp_path):
    out = tmp_path / "ann"
    assert main(["annotate", str(waveform_folder / "example.mseed"), "--weights", str(saved_model),
                 "-o", str(out), "-q"]) == 0
    (written,) = out.glob("*.mseed")
    st = obspy.read(str(written))
    assert sorted(tr.stats.channel for tr in st) == ["PRN", "PRP", "PRS"]


def test_pick_without_weights_says_so(waveform_folder):
    with pytest.raises(SystemExit, match="no trained weights ship"):
        main(["pick", str(waveform_folder)])


def test_unknown_weights_and_missing_input(waveform_folder, capsys):
    assert main(["pick", str(waveform_folder), "--weights", "nope", "--backbone", "unet"]) == 2
    assert "Looked in" in capsys.readouterr().err
    assert main(["pick", "/no/such/folder", "--weights", "x", "--backbone", "unet"]) == 2


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "XLSTMSeqPicker" in out and "chunkwise--native_autograd" in out


def test_long_records_are_processed_in_pieces_without_seams(saved_model, tmp_path, monkeypatch):
    import numpy as np

    from seisbench_xlstm import cli

    monkeypatch.setattr(cli, "CHUNK_SECONDS", 100.0)
    monkeypatch.setattr(cli, "CHUNK_MARGIN_SECONDS", 50.0)
    rng = np.random.default_rng(1)
    st = obspy.Stream([obspy.Trace(rng.normal(size=40000).astype(np.float32),
                                   header=dict(network="XX", station="L", channel=f"HH{c}", sampling_rate=100.0))
                       for c in "ZNE"])
    path = tmp_path / "long.mseed"
    st.write(str(path), format="MSEED")
    pieces = cli.time_chunks(st, 100.0, 50.0)
    assert len(pieces) == 4
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))  # cores tile the record

    out = tmp_path / "ann"
    assert main(["annotate", str(path), "--weights", str(saved_model), "-o", str(out), "-q"]) == 0
    (written,) = out.glob("*.mseed")
    ann = obspy.read(str(written))
    assert len(ann) == 3  # one seamless trace per channel
    direct = XLSTMSeqPicker.load(saved_model).annotate(st)
    for tr in ann:
        ref = direct.select(channel=f"*_{tr.stats.channel[-1]}")[0]
        assert abs(tr.stats.starttime - ref.stats.starttime) < 0.011
        assert abs(tr.stats.endtime - ref.stats.endtime) < 0.011

    csv = tmp_path / "p.csv"
    assert main(["pick", str(path), "--weights", str(saved_model), "-o", str(csv), "-q",
                 "--p-threshold", "0.0001", "--s-threshold", "0.0001"]) == 0
    picks = pd.read_csv(csv)
    assert not picks.duplicated(subset=["time", "phase"]).any()
