"""The seisbench-xlstm console command: grouping by instrument, pieces equal to a direct run, errors."""

import json

import numpy as np
import obspy
import pandas as pd
import pytest
import torch

from fakes import T0, noise_stream
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


def _write_per_component(stream, folder, pieces_s=None):
    """One file per channel (``NET.STA.LOC.CHA.mseed``), or per channel and piece of ``pieces_s`` seconds."""
    folder.mkdir(exist_ok=True)
    for tr in stream:
        if pieces_s is None:
            tr.write(str(folder / f"{tr.id}.mseed"), format="MSEED")
            continue
        t = tr.stats.starttime
        while t < tr.stats.endtime:
            piece = tr.slice(t, t + pieces_s - 0.5 / tr.stats.sampling_rate)
            if piece.stats.npts:
                piece.write(str(folder / f"{tr.id}.{t.strftime('%H%M%S')}.mseed"), format="MSEED")
            t += pieces_s
    return folder


def _assert_same_annotations(written, direct):
    """Every written trace (PR? channels, float32) equals the direct annotation trace starting at the same time."""
    assert len(written) == len(direct)
    for tr in written:
        (ref,) = [r for r in direct.select(channel=f"*_{tr.stats.channel[-1]}")
                  if abs(r.stats.starttime - tr.stats.starttime) < 1e-4]
        assert tr.stats.npts == ref.stats.npts
        np.testing.assert_allclose(tr.data, ref.data.astype(np.float32), rtol=0, atol=1e-6)


def test_pick_writes_csv_and_reports_unreadable_files(saved_model, waveform_folder, tmp_path, capsys):
    out = tmp_path / "picks.csv"
    rc = main(["pick", str(waveform_folder), "--weights", str(saved_model), "-o", str(out), "-q",
               "--p-threshold", "0.0001", "--s-threshold", "0.0001"])
    assert rc == 0
    picks = pd.read_csv(out)
    assert {"station", "time", "probability", "phase"} <= set(picks.columns)
    assert len(picks) > 0 and set(picks["phase"]) <= {"P", "S"}
    assert "broken.mseed" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", ["", ".pt", ".json"])
def test_annotate_writes_miniseed_with_any_weights_path(saved_model, waveform_folder, tmp_path, suffix):
    out = tmp_path / "ann"
    weights = str(saved_model) + suffix
    assert main(["annotate", str(waveform_folder / "example.mseed"), "--weights", weights, "-o", str(out), "-q"]) == 0
    (written,) = out.glob("*.mseed")
    assert written.name.startswith("BW_RJOB__EH_") and written.name.endswith("_XLSTMSeqPicker.mseed")
    st = obspy.read(str(written))
    assert sorted(tr.stats.channel for tr in st) == ["PRN", "PRP", "PRS"]
    _assert_same_annotations(st, XLSTMSeqPicker.load(saved_model).annotate(obspy.read()))


def test_one_file_per_component_gives_one_annotation_per_instrument(saved_model, tmp_path):
    """NET.STA..EHE/EHN/EHZ files: one output for the instrument, equal to annotating the three together."""
    st = noise_stream(12000, channel_prefix="EH", station="WILZ", seed=5, offset=300)
    folder = _write_per_component(st, tmp_path / "wf")
    out = tmp_path / "ann"
    assert main(["annotate", str(folder), "--weights", str(saved_model), "-o", str(out), "-q"]) == 0
    (written,) = out.glob("*.mseed")
    _assert_same_annotations(obspy.read(str(written)), XLSTMSeqPicker.load(saved_model).annotate(st))


def test_real_per_component_folder(saved_model, shared_data, tmp_path):
    """Ten minutes of ../shared/data/continuous-ok (O2.WILZ..EH?, one file per component): one output."""
    files = sorted((shared_data / "continuous-ok").glob("*.mseed"))
    if len(files) != 3:
        pytest.skip("continuous-ok miniSEED files absent")
    st = obspy.Stream()
    for f in files:
        st += obspy.read(str(f))
    t0 = max(tr.stats.starttime for tr in st)
    st.trim(t0, t0 + 600)
    folder = _write_per_component(st, tmp_path / "wf")  # a temporary, trimmed copy
    out = tmp_path / "ann"
    assert main(["annotate", str(folder), "--weights", str(saved_model), "-o", str(out), "-q"]) == 0
    (written,) = out.glob("*.mseed")
    assert written.name.startswith("O2_WILZ__EH_")
    _assert_same_annotations(obspy.read(str(written)), XLSTMSeqPicker.load(saved_model).annotate(st))


def test_hourly_files_in_pieces_equal_a_direct_run(saved_model, tmp_path):
    """A 10 min record in 100 s files per component, with a short gap in all components (bridged) and a longer
    one in N only, annotated in pieces of about 80 s: the output equals a direct annotate of the whole record
    value by value, across every piece border, and the picks equal a direct classify."""
    st = noise_stream(60000, seed=1, offset=1000, dtype=np.int32)
    st.cutout(T0 + 200, T0 + 205)
    north = st.select(channel="HHN")
    for tr in north:
        st.remove(tr)
    north.cutout(T0 + 400, T0 + 420)
    st += north
    folder = _write_per_component(st, tmp_path / "wf", pieces_s=100)
    assert len(list(folder.glob("*.mseed"))) == 18
    merged = obspy.read(str(folder / "*.mseed"))
    merged.merge()
    model = XLSTMSeqPicker.load(saved_model)
    direct = model.annotate(merged)
    out = tmp_path / "ann"
    args = ["--weights", str(saved_model), "-q", "--piece-seconds", "80"]  # pieces of 2 window steps, 9 borders
    assert main(["annotate", str(folder), "-o", str(out), *args]) == 0
    (written,) = out.glob("*.mseed")
    _assert_same_annotations(obspy.read(str(written)), direct)

    csv = tmp_path / "p.csv"
    assert main(["pick", str(folder), "-o", str(csv), "--p-threshold", "0.01", "--s-threshold", "0.01", *args]) == 0
    picks = pd.read_csv(csv)
    expected = model.classify(merged, P_threshold=0.01, S_threshold=0.01).picks
    assert len(expected) > 0 and len(picks) == len(expected)
    got = sorted(obspy.UTCDateTime(t) for t in picks["time"])
    assert all(abs(a - p.peak_time) < 1e-3 for a, p in zip(got, sorted(expected, key=lambda p: p.peak_time)))


def test_nothing_processed_exits_nonzero_and_every_station_is_reported(saved_model, tmp_path, capsys):
    folder = tmp_path / "wf"
    _write_per_component(noise_stream(6000, components="XYW", station="UNK"), folder)
    bad = noise_stream(6000, station="NAN")
    bad[0].data[100] = np.nan
    _write_per_component(bad, folder)
    assert main(["annotate", str(folder), "--weights", str(saved_model), "-o", str(tmp_path / "ann"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "XX.UNK.: skipped channel(s) XX.UNK..HHW, XX.UNK..HHX, XX.UNK..HHY" in err
    assert "skipped XX.NAN..HH: ValueError: Traces with NaN or inf samples: XX.NAN..HHZ" in err
    assert "nothing was annotated" in err
    _write_per_component(noise_stream(6000, station="OK"), folder)
    assert main(["annotate", str(folder), "--weights", str(saved_model), "-o", str(tmp_path / "ann"), "-q"]) == 0


def test_a_typo_in_the_weights_json_is_one_line(saved_model, waveform_folder, capsys):
    meta = json.loads(saved_model.with_suffix(".json").read_text())
    meta["model_args"]["norms"] = meta["model_args"].pop("norm")
    saved_model.with_suffix(".json").write_text(json.dumps(meta))
    assert main(["pick", str(waveform_folder), "--weights", str(saved_model), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unknown model_args key(s) ['norms']" in err and "'norm'" in err


@pytest.mark.parametrize("option,message", [(["--batch-size", "0"], "batch_size must be an integer >= 1"),
                                            (["--overlap", "0"], "least overlap that covers every sample is 512"),
                                            (["--overlap", "5000"], "less than the window length"),
                                            (["--p-threshold", "0"], "--p-threshold must be in")])
def test_bad_arguments_are_one_line_errors(saved_model, waveform_folder, capsys, option, message):
    assert main(["pick", str(waveform_folder), "--weights", str(saved_model), "-q", *option]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unknown_stacking_is_refused_by_the_parser(saved_model, waveform_folder):
    with pytest.raises(SystemExit) as e:
        main(["pick", str(waveform_folder), "--weights", str(saved_model), "--stacking", "median"])
    assert e.value.code == 2


def test_pick_without_weights_uses_the_shipped_picker_on_the_example(tmp_path, capsys):
    out = tmp_path / "picks.csv"
    assert main(["pick", "--example", "-o", str(out)]) == 0
    assert "XLSTMUNetPicker 'ncedc_dfdp' (shipped" in capsys.readouterr().err
    picks = pd.read_csv(out)
    assert sorted(picks["phase"]) == ["P", "S"] and set(picks["station"]) == {"BW.RJOB."}


def test_no_input_is_a_usage_error():
    with pytest.raises(SystemExit) as e:
        main(["pick"])
    assert e.value.code == 2


def test_the_shipped_picker_is_a_unet_picker(waveform_folder):
    with pytest.raises(SystemExit, match="is a 'unet' picker"):
        main(["pick", str(waveform_folder), "--backbone", "sequential"])


def test_unknown_weights_and_missing_input(waveform_folder, capsys):
    assert main(["pick", str(waveform_folder), "--weights", "nope", "--backbone", "unet"]) == 2
    assert "Looked in" in capsys.readouterr().err
    assert main(["pick", "/no/such/folder", "--weights", "x", "--backbone", "unet"]) == 2
    assert main(["pick", str(waveform_folder), "--weights", "/no/such/model.pt"]) == 2
    assert "No saved model at /no/such/model.pt" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "XLSTMSeqPicker" in out and "chunkwise--native_autograd" in out


def test_pick_uses_the_models_thresholds_unless_given(tmp_path, waveform_folder):
    """Tuned thresholds ship in the weights' default_args: the console command uses them unless --p-threshold /
    --s-threshold are given (it used to pass 0.3 always, overriding them)."""
    torch.manual_seed(0)
    model = XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL, default_args={"P_threshold": 1.0, "S_threshold": 1.0})
    model.save(tmp_path / "strict")
    out = tmp_path / "picks.csv"
    assert main(["pick", str(waveform_folder), "--weights", str(tmp_path / "strict"), "-o", str(out), "-q"]) == 0
    assert len(pd.read_csv(out)) == 0  # softmax probabilities never reach 1.0
    assert main(["pick", str(waveform_folder), "--weights", str(tmp_path / "strict"), "-o", str(out), "-q",
                 "--p-threshold", "0.01", "--s-threshold", "0.01"]) == 0
    assert len(pd.read_csv(out)) > 0


def test_baselines_subcommand_passes_its_arguments_on(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["baselines", "install", "--help"])
    assert exit_info.value.code == 0
    assert "--cache-root" in capsys.readouterr().out


def test_compile_flag_compiles_the_mlstm_layers(saved_model, waveform_folder, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(XLSTMSeqPicker, "set_compile", lambda self, enabled=True: calls.append(enabled) or self)
    assert main(["pick", str(waveform_folder), "--weights", str(saved_model), "-q", "--compile",
                 "-o", str(tmp_path / "p.csv")]) == 0
    assert calls == [True]
    calls.clear()
    assert main(["pick", str(waveform_folder), "--weights", str(saved_model), "-q", "-o", str(tmp_path / "q.csv")]) == 0
    assert calls == []
