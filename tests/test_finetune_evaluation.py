"""seisbench_xlstm.evaluation on hand-made cases: matching at the tolerance boundary, scores, residuals, tuning."""

import math

import numpy as np
import obspy
import pytest

from seisbench_xlstm.evaluation import (
    PickScore,
    classify_picks,
    evaluate_model,
    match_picks,
    residual_stats,
    score_picks,
    score_traces,
    tune_pick_thresholds,
    tune_threshold,
)


def test_match_at_the_tolerance_boundary():
    # 0.5 s apart matches at 0.5 s, 0.501 s does not; 0.1 s tolerance matches neither
    assert match_picks([10.5], [10.0], 0.5) == [(0, 0)]
    assert match_picks([10.501], [10.0], 0.5) == []
    assert match_picks([9.5], [10.0], 0.5) == [(0, 0)]
    assert match_picks([10.5], [10.0], 0.1) == []
    # UTCDateTime differences as floats: 0.5 s exactly on a real time scale
    t = obspy.UTCDateTime(2013, 9, 18, 23, 50, 7.37)
    assert match_picks([(t + 0.5).timestamp], [t.timestamp], 0.5) == [(0, 0)]
    assert match_picks([(t + 0.51).timestamp], [t.timestamp], 0.5) == []
    with pytest.raises(ValueError):
        match_picks([1.0], [1.0], -0.1)


def test_matching_is_one_to_one_and_nearest_first():
    # two predictions near one reference: the nearer one matches, the other is a false positive
    s = score_picks([10.3, 10.05], [10.0], 0.5)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    assert s.residuals == pytest.approx([0.05])
    # one prediction between two references: matches the nearer one only
    s = score_picks([10.2], [10.0, 10.5], 0.5)
    assert (s.tp, s.fp, s.fn) == (1, 0, 1)
    assert s.residuals == pytest.approx([0.2])
    # greedy by distance: 10.45 takes 10.5 (0.05), then 10.2 takes 10.0 (0.2)
    assert match_picks([10.2, 10.45], [10.0, 10.5], 0.5) == [(0, 0), (1, 1)]


def test_scores_and_residuals_with_a_known_offset():
    reference = {f"tr{i}": [100.0 + i] for i in range(10)}
    predicted = {f"tr{i}": [100.0 + i + 0.08] for i in range(8)}  # 8 picks 0.08 s late, 2 traces missed
    predicted["tr0"].append(130.0)  # one false pick
    s = score_traces(predicted, reference, 0.1)
    assert (s.tp, s.fp, s.fn) == (8, 1, 2)
    assert s.precision == pytest.approx(8 / 9) and s.recall == pytest.approx(0.8)
    assert s.f1 == pytest.approx(2 * 8 / (2 * 8 + 1 + 2))
    r = s.residual_stats()
    assert r.n == 8 and r.mean == pytest.approx(0.08) and r.rmse == pytest.approx(0.08) and r.mae == pytest.approx(0.08)
    # at 0.05 s nothing matches
    s = score_traces(predicted, reference, 0.05)
    assert (s.tp, s.fp, s.fn) == (0, 9, 10) and s.f1 == 0


def test_residual_stats_by_hand():
    r = residual_stats([0.1, -0.3, 0.6, -0.8])
    assert r.mean == pytest.approx(-0.1)
    assert r.rmse == pytest.approx(np.sqrt((0.01 + 0.09 + 0.36 + 0.64) / 4))
    assert r.mae == pytest.approx(0.45)
    assert r.frac_beyond == 0.5  # 0.6 and 0.8 exceed 0.5 s
    assert residual_stats([0.5]).frac_beyond == 0.0  # exactly 0.5 is not beyond
    assert math.isnan(residual_stats([]).mean)


def test_undefined_scores_are_nan():
    assert math.isnan(PickScore().f1)
    assert math.isnan(PickScore(fn=3).precision) and PickScore(fn=3).f1 == 0
    assert (PickScore(1, 2, 3, [0.1]) + PickScore(1, 0, 0, [0.2])).as_dict()["tp"] == 2


def test_tune_threshold_takes_the_middle_of_the_best_plateau():
    f1 = {0.1: 0.2, 0.2: 0.6, 0.3: 0.8, 0.4: 0.8, 0.5: 0.8, 0.6: 0.5, 0.7: math.nan}
    t, best, table = tune_threshold(list(f1), lambda t: f1[t])
    assert (t, best) == (0.4, 0.8) and len(table) == 7
    f1[0.6] = 0.8  # four tied thresholds: the lower middle one
    assert tune_threshold(list(f1), lambda t: f1[t])[0] == 0.4
    with pytest.raises(ValueError):
        tune_threshold([], lambda t: 0.0)


class _CurvesModel:
    """A stand-in for a SeisBench model with fixed annotations: classify_aggregate of WaveformModel."""

    labels = "PSN"
    default_args = {"P_threshold": 0.3, "S_threshold": 0.3}

    def classify_aggregate(self, annotations, argdict):
        from seisbench.models import WaveformModel
        import seisbench.util as sbu

        picks = sbu.PickList()
        for phase in "PS":
            picks += WaveformModel.picks_from_annotations(
                annotations.select(channel=f"X_{phase}"), argdict[f"{phase}_threshold"], phase
            )
        return sbu.ClassifyOutput("X", picks=sbu.PickList(sorted(picks)))


def _annotations():
    """P curve: a true peak of 0.9 at 10 s and a spurious one of 0.4 at 20 s; S curve: a weak true peak of 0.25
    at 15 s. The best P threshold lies above 0.4, the best S threshold at or below 0.25."""
    t0 = obspy.UTCDateTime(2020, 1, 1)
    n = 3000
    t = np.arange(n) / 100.0
    curves = {
        "P": 0.9 * np.exp(-0.5 * ((t - 10) / 0.2) ** 2) + 0.4 * np.exp(-0.5 * ((t - 20) / 0.2) ** 2),
        "S": 0.25 * np.exp(-0.5 * ((t - 15) / 0.2) ** 2),
    }
    st = obspy.Stream()
    for phase, data in curves.items():
        st += obspy.Trace(data.astype(np.float32), header=dict(network="XX", station="A", channel=f"X_{phase}",
                                                               sampling_rate=100.0, starttime=t0))
    reference = {"P": {"XX.A.": [(t0 + 10).timestamp]}, "S": {"XX.A.": [(t0 + 15).timestamp]}}
    return st, reference


def test_tune_pick_thresholds_on_a_hand_made_case():
    model = _CurvesModel()
    annotations, reference = _annotations()
    tuned = tune_pick_thresholds(model, annotations, reference, thresholds=[0.1, 0.2, 0.3, 0.5, 0.7, 0.95])
    (tp, f1p, _), (ts, f1s, _) = tuned["P"], tuned["S"]
    assert f1p == 1.0 and tp == 0.5  # 0.5 and 0.7 separate the peaks; ties -> lower middle of (0.5, 0.7)
    assert f1s == 1.0 and ts == 0.1  # 0.1 and 0.2 catch the weak S
    # at the defaults (0.3): P has a false pick, S is missed
    scores = evaluate_model(model, annotations, reference, tolerances=(0.5,))
    assert (scores[("P", 0.5)].tp, scores[("P", 0.5)].fp) == (1, 1)
    assert (scores[("S", 0.5)].tp, scores[("S", 0.5)].fn) == (0, 1)
    scores = evaluate_model(model, annotations, reference, tolerances=(0.5,), thresholds={"P": tp, "S": ts})
    assert scores[("P", 0.5)].f1 == scores[("S", 0.5)].f1 == 1.0
    assert len(classify_picks(model, annotations, {"P": 0.95})) == 0  # no P above 0.95, S below its default 0.3
    assert len(classify_picks(model, annotations, {"P": 0.95, "S": 0.2})) == 1


def test_dataset_traces_cut_stored_padding_and_keep_pick_times(tmp_path):
    import seisbench.data as sbd

    from seisbench_xlstm.evaluation import TRACE_T0, dataset_traces

    rng = np.random.default_rng(0)
    with sbd.WaveformDataWriter(tmp_path / "metadata.csv", tmp_path / "waveforms.hdf5") as w:
        w.data_format = {"dimension_order": "CW", "component_order": "ZNE", "sampling_rate": 100}
        for k, pad in enumerate((0, 300)):
            x = rng.normal(size=(3, 5000)).astype(np.float32)
            x[:, :pad] = 0.0  # stored padding at the start
            w.add_trace({"trace_name": f"t{k}", "trace_P_arrival_sample": 1000.0 + pad, "trace_S_arrival_sample": 100.0,
                         "trace_channel": "EH", "trace_sampling_rate_hz": 100.0}, x)
    ds = sbd.WaveformDataset(tmp_path, sampling_rate=100, component_order="ZNE")
    ts = dataset_traces(ds)
    assert ts.trace_ids == ["XX.T0.", "XX.T1."] and ts.offsets == [0, 300] and ts.lengths == [5000, 4700]
    assert [tr.stats.channel for tr in ts.stream.select(station="T1")] == ["EHZ", "EHN", "EHE"]
    # the P pick is 10 s after the first kept sample in both; the S of trace 1 lies in the cut padding
    assert ts.reference["P"] == {"XX.T0.": [TRACE_T0.timestamp + 10.0], "XX.T1.": [TRACE_T0.timestamp + 10.0]}
    assert ts.reference["S"] == {"XX.T0.": [TRACE_T0.timestamp + 1.0]} and ts.outside == 1
    assert ts.time_to_sample(1, TRACE_T0.timestamp + 10.0) == pytest.approx(1300.0)
    assert dataset_traces(ds, trim_flat=False).offsets == [0, 0]
