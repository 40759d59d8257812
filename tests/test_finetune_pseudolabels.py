"""seisbench_xlstm.pseudolabels: the combination rule, ensemble curves and picks, pseudo-labelled datasets."""

import json

import numpy as np
import obspy
import pandas as pd
import pytest

from seisbench_xlstm.data import open_dataset, picking_generator, PickingConfig
from seisbench_xlstm.evaluation import TRACE_T0, dataset_traces
from seisbench_xlstm.pseudolabels import (
    PseudoLabelConfig,
    TeacherNotAvailableError,
    add_pseudo_columns,
    combine_picks,
    ensemble_curves,
    ensemble_picks,
    load_teacher,
    pseudo_pick_columns,
    pseudo_picks_for_traces,
    read_teacher_picks,
    write_continuous_dataset,
)
from test_data_synth import write_dataset

T0 = obspy.UTCDateTime(2024, 2, 3, 5, 0, 0)


def test_combination_rule_on_a_hand_made_trace():
    analyst = {"P": [10.0], "S": [18.0]}
    teacher = {
        "P": [10.12,  # same phase within 1 s: the analyst's time wins -> dropped
              17.5,   # a P within 1 s of the analyst's S: the analyst's phase wins -> dropped
              40.0],  # a second event -> kept
        "S": [18.9,   # dropped (same phase, 0.9 s)
              19.2,   # kept (1.2 s from the analyst S, 9.2 s from the P)
              41.0],  # kept
    }
    kept = combine_picks(analyst, teacher, tolerance=1.0)
    assert kept == {"P": [40.0], "S": [19.2, 41.0]}
    # the boundary: exactly the tolerance away counts as "within"
    assert combine_picks({"P": [10.0]}, {"P": [11.0], "S": []}, 1.0) == {"P": [], "S": []}
    # no analyst picks: every teacher pick is kept; no S analyst pick: the teacher's S fills it
    assert combine_picks({}, teacher, 1.0) == {p: list(map(float, v)) for p, v in teacher.items()}
    assert combine_picks({"P": [10.0]}, {"S": [15.0]}, 1.0) == {"P": [], "S": [15.0]}
    with pytest.raises(ValueError):
        combine_picks(analyst, teacher, -1)


class FakeTeacher:
    """annotate() returns fixed P/S Gaussian curves per instrument (peaks at the given times)."""

    def __init__(self, name, peaks, start_offset=0.0, height=1.0):
        self.name, self.peaks, self.start_offset, self.height = name, peaks, start_offset, height

    def annotate(self, stream, batch_size=64):
        out = obspy.Stream()
        for inst in sorted({f"{t.stats.network}.{t.stats.station}.{t.stats.location}" for t in stream}):
            net, sta, loc = inst.split(".")
            tr0 = stream.select(network=net, station=sta, location=loc)[0]
            t0 = tr0.stats.starttime + self.start_offset
            n = int((tr0.stats.endtime - t0) * 100) + 1
            t = t0.timestamp + np.arange(n) / 100.0
            for phase in "PS":
                y = np.zeros(n)
                for p in self.peaks.get((inst, phase), []):
                    y += self.height * np.exp(-0.5 * ((t - p) / 0.2) ** 2)
                out += obspy.Trace(y.astype(np.float32), header=dict(network=net, station=sta, location=loc,
                                                                     channel=f"{self.name}_{phase}",
                                                                     sampling_rate=100.0, starttime=t0))
        return out


def _record(minutes=10, station="WILZ"):
    rng = np.random.default_rng(1)
    n = int(minutes * 60 * 100)
    st = obspy.Stream()
    for c in "ZNE":
        st += obspy.Trace(rng.normal(size=n).astype(np.float32) + 500.0,
                          header=dict(network="O2", station=station, channel=f"EH{c}", sampling_rate=100.0,
                                      starttime=T0))
    return st


def test_ensemble_curves_average_the_teachers_and_pick_agreement():
    st = _record(2)
    inst = "O2.WILZ."
    a = FakeTeacher("A", {(inst, "P"): [(T0 + 20).timestamp, (T0 + 60).timestamp], (inst, "S"): [(T0 + 25).timestamp]})
    b = FakeTeacher("B", {(inst, "P"): [(T0 + 20).timestamp], (inst, "S"): []}, start_offset=5.0)
    curves = ensemble_curves([a, b], st)
    p = curves.select(channel="Ensemble_P")[0]
    assert p.stats.starttime == T0 and p.stats.npts == 12000
    assert p.data[2000] == pytest.approx(1.0)  # both at 1.0
    assert p.data[6000] == pytest.approx(0.5)  # only A: mean 0.5
    assert p.data[200] == pytest.approx(0.0)  # before B's output: A's value alone (0 here)
    picks = ensemble_picks(curves, {"P": 0.6, "S": 0.3})
    got = sorted((pk.phase, round(pk.peak_time - T0, 2)) for pk in picks)
    assert got == [("P", 20.0), ("S", 25.0)]  # the P seen by one teacher (0.5) is below 0.6; S 0.5 >= 0.3


def test_teachers_are_loaded_offline_or_fail_with_the_install_command(tmp_path):
    with pytest.raises(TeacherNotAvailableError, match="seisbench_xlstm.baselines install"):
        load_teacher("PhaseNet:original", tmp_path)
    with pytest.raises(ValueError, match="Class:name"):
        load_teacher("PhaseNet", tmp_path)
    import seisbench.models as sbm

    folder = tmp_path / "models" / "v3" / "phasenet"
    folder.mkdir(parents=True)
    sbm.PhaseNet(phases="PSN").save(folder / "mine", version_str="2")
    model = load_teacher("PhaseNet:mine", tmp_path)
    assert isinstance(model, sbm.PhaseNet) and model.labels == "PSN"


def test_continuous_dataset_chunks_splits_and_pick_columns(tmp_path):
    st = _record(10)
    inst = "O2.WILZ."
    p_times = [T0 + 30.0, T0 + 200.0, T0 + 500.0]
    peaks = {(inst, "P"): [t.timestamp for t in p_times], (inst, "S"): [(T0 + 205.0).timestamp]}
    config = PseudoLabelConfig(chunk_len=12000, min_chunk_len=6000, train_fraction=0.7)
    summary = write_continuous_dataset(st, tmp_path / "cont", config, teachers=[FakeTeacher("A", peaks),
                                                                                 FakeTeacher("B", peaks)])
    md = pd.read_csv(tmp_path / "cont" / "metadata.csv")
    # 600 s: cut at 420 s -> train chunks of 120 s: 0-120, 120-240, 240-360, 360-420 (60 s = 6000 samples);
    # test: 420-540, 540-600 (6000 samples)
    assert summary["chunks"] == {"train": 4, "test": 2}
    assert list(md["split"]) == ["train"] * 4 + ["test"] * 2
    assert summary["picks"] == {"train_P": 2, "train_S": 1, "test_P": 1, "test_S": 0}
    cols = pseudo_pick_columns(md.columns)
    assert cols == {"trace_pseudoP0_arrival_sample": "P", "trace_pseudoS0_arrival_sample": "S"}
    assert md.loc[0, "trace_pseudoP0_arrival_sample"] == pytest.approx(3000)
    assert md.loc[1, "trace_pseudoP0_arrival_sample"] == pytest.approx(8000)  # 200 s - 120 s
    assert md.loc[1, "trace_pseudoS0_arrival_sample"] == pytest.approx(8500)
    assert md.loc[4, "trace_pseudoP0_arrival_sample"] == pytest.approx(8000)  # 500 s - 420 s
    assert read_teacher_picks(tmp_path / "cont", "test")["phase"].tolist() == ["P"]
    assert json.loads((tmp_path / "cont" / "pseudolabels.json").read_text())["config"]["chunk_len"] == 12000
    # the data layer reads it, and the picking generator labels the pseudo picks
    ds = open_dataset(tmp_path / "cont")
    ds.filter((ds.metadata["split"] == "train").to_numpy(), inplace=True)
    gen = picking_generator(ds, PickingConfig(noise_window_p=0.0, augment=None, extra_pick_columns=cols), train=False)
    np.random.seed(0)
    sample = gen[1]
    assert sample["X"].shape == (3, 4096)
    assert sample["y"][0].max() > 0.99 and sample["y"][1].max() > 0.99  # a P and an S label in the window
    # the chunk waveforms are the record as annotate prepares it (demeaned), not padded
    from seisbench_xlstm.data.continuous import segments_from_stream

    (segment,), _ = segments_from_stream(st)
    np.testing.assert_array_equal(ds.get_waveforms(1), segment.data[:, 12000:24000])  # 500 counts offset removed


def test_pseudo_picks_for_labelled_traces(tmp_path):
    write_dataset(tmp_path / "d", n_events=3, traces_per_event=1, n_noise=0, npts=6000)
    ds = open_dataset(tmp_path / "d")
    traces = dataset_traces(ds)
    md = ds.metadata
    # teacher: the analyst's P 0.1 s late (dropped), plus an extra P 15 s after the analyst's S (kept)
    peaks = {}
    for k, tid in enumerate(traces.trace_ids):
        p = TRACE_T0.timestamp + md["trace_p_arrival_sample"].iloc[k] / 100.0
        s = TRACE_T0.timestamp + md["trace_s_arrival_sample"].iloc[k] / 100.0
        peaks[(tid, "P")] = [p + 0.1, s + 15.0] if s + 15.0 < TRACE_T0.timestamp + 59 else [p + 0.1]
        peaks[(tid, "S")] = [s]
    frame = pseudo_picks_for_traces([FakeTeacher("A", peaks)], traces, PseudoLabelConfig(P_threshold=0.3))
    cols = add_pseudo_columns(ds, frame)
    assert set(cols) <= {"trace_pseudoP0_arrival_sample"}
    for k in range(len(ds)):
        s = md["trace_s_arrival_sample"].iloc[k]
        extra = md["trace_pseudoP0_arrival_sample"].iloc[k] if cols else np.nan
        if s + 1500 < 5900:
            assert extra == pytest.approx(s + 1500, abs=1)
        else:
            assert np.isnan(extra)
