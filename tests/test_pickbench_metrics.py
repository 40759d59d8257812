"""Pick-benchmark scores (seisbench_xlstm.pickbench.metrics) on hand-made cases with known answers."""

import math

import numpy as np
import pandas as pd
import pytest

from seisbench_xlstm.evaluation import tune_threshold
from seisbench_xlstm.pickbench import (
    binary_curve,
    binary_scores,
    mcc_score,
    roc_auc,
    task1_scores,
    task2_scores,
    task3_scores,
    tune_binary_threshold,
)


def test_roc_auc_known_values():
    # pairs (positive, negative): (0.35, 0.1) yes, (0.35, 0.4) no, (0.8, *) yes -> 3 of 4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.75)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.0)
    # ties between classes count half: one positive and one negative at the same score
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([0, 1, 1], [0.5, 0.5, 0.9]) == pytest.approx(0.75)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_roc_auc_equals_the_pair_count_on_random_scores():
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.4
    s = np.round(rng.random(300), 2)  # many ties
    pos, neg = s[y], s[~y]
    expected = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert roc_auc(y, s) == pytest.approx(expected)


def test_mcc_and_binary_scores_known_values():
    # tp 6, fp 2, fn 1, tn 3: (18 - 2) / sqrt(8 * 7 * 5 * 4)
    assert mcc_score(6, 2, 1, 3) == pytest.approx(16 / math.sqrt(1120))
    assert mcc_score(5, 0, 0, 5) == pytest.approx(1.0)
    assert mcc_score(0, 5, 5, 0) == pytest.approx(-1.0)
    assert mcc_score(4, 4, 0, 0) == 0.0  # no negatives predicted or present: empty margin
    labels = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    scores = [.9, .8, .8, .7, .6, .6, .1, .9, .7, .2, .2, .1]
    s = binary_scores(labels, scores, 0.6)  # score >= threshold is positive
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (6, 2, 1, 3)
    assert s["precision"] == pytest.approx(0.75) and s["recall"] == pytest.approx(6 / 7)
    assert s["f1"] == pytest.approx(12 / 15) and s["mcc"] == pytest.approx(16 / math.sqrt(1120))


def test_curve_counts_at_each_threshold():
    c = binary_curve([1, 0, 1, 0], [0.9, 0.5, 0.5, 0.1])
    assert c.thresholds[1:].tolist() == [0.9, 0.5, 0.1] and c.thresholds[0] > 0.9
    assert c.tp.tolist() == [0, 1, 2, 2] and c.fp.tolist() == [0, 0, 1, 2]
    assert c.fn.tolist() == [2, 1, 0, 0] and c.tn.tolist() == [2, 2, 1, 0]


def test_threshold_tuning_known_optimum():
    labels = [1, 1, 0, 1, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.6, 0.3, 0.2]
    # F1 at 0.9, 0.8, 0.7, 0.6, 0.3, 0.2: 0.5, 0.8, 0.667, 0.857, 0.75, 0.667
    assert tune_binary_threshold(labels, scores, "f1") == pytest.approx((0.6, 6 / 7))
    thr, best = tune_binary_threshold(labels, scores, "mcc")
    assert thr == pytest.approx(0.6) and best == pytest.approx(mcc_score(3, 1, 0, 2))
    with pytest.raises(ValueError, match="metric"):
        tune_binary_threshold(labels, scores, "accuracy")


def test_threshold_ties_follow_the_evaluation_rule():
    # F1 2/3 at 0.9 and at 0.6: the same choice as seisbench_xlstm.evaluation.tune_threshold (lower middle)
    labels = np.array([1, 0, 0, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    thr, f1 = tune_binary_threshold(labels, scores, "f1")

    def f1_at(t):
        return binary_scores(labels, scores, t)["f1"]

    expected, expected_f1, _ = tune_threshold(scores, f1_at)
    assert (thr, f1) == pytest.approx((expected, expected_f1)) and thr == pytest.approx(0.6)


def test_task1_threshold_from_dev_applied_to_test():
    dev = pd.DataFrame({"trace_type": ["earthquake"] * 3 + ["noise"] * 3,
                        "score_detection": [0.9, 0.8, 0.55, 0.5, 0.2, 0.1]})
    # dev optimum: 0.55 (F1 1); on test, 0.56 is below it (a miss) and 0.6 a false alarm
    test = pd.DataFrame({"trace_type": ["earthquake"] * 3 + ["noise"] * 3,
                         "score_detection": [0.95, 0.7, 0.54, 0.6, 0.3, np.nan]})
    s = task1_scores(dev, test)
    assert s["det_threshold"] == pytest.approx(0.55) and s["det_dev_f1"] == pytest.approx(1.0)
    assert (s["det_tp"], s["det_fp"], s["det_fn"], s["det_tn"]) == (2, 1, 1, 1)
    assert s["det_f1"] == pytest.approx(4 / 6) and s["det_n_nan"] == 1
    # AUC over the 5 scored test windows: pairs (pos, neg) won: 0.95 > both, 0.7 > both, 0.54 > 0.3 -> 5 / 6
    assert s["det_auc"] == pytest.approx(5 / 6)


def test_task1_one_class_gives_no_scores():
    frame = pd.DataFrame({"trace_type": ["earthquake"] * 3, "score_detection": [0.9, 0.8, 0.7]})
    s = task1_scores(frame, frame)
    assert "det_auc" not in s and "one class" in s["det_note"]


def test_task2_mcc_threshold_and_infinite_ratio():
    dev = pd.DataFrame({"phase_label": ["P", "P", "S", "S"], "score_p_or_s": [5.0, 2.0, 0.5, 0.2]})
    test = pd.DataFrame({"phase_label": ["P", "P", "S", "S"], "score_p_or_s": [np.inf, 1.5, 3.0, 0.1]})
    s = task2_scores(dev, test)
    assert s["phase_threshold"] == pytest.approx(2.0) and s["phase_dev_mcc"] == pytest.approx(1.0)
    assert (s["phase_tp"], s["phase_fp"], s["phase_fn"], s["phase_tn"]) == (1, 1, 1, 1)
    assert s["phase_mcc"] == pytest.approx(0.0) and s["phase_f1"] == pytest.approx(0.5)


def test_task3_residuals_with_a_known_offset():
    onsets = np.array([1000.0, 2000.0, 3000.0, 4000.0])
    test = pd.DataFrame({
        "phase_label": ["P", "P", "S", "S"], "phase_onset": onsets, "sampling_rate": 100.0,
        "p_sample_pred": onsets + [25, 25, 0, 0],          # P: 0.25 s late
        "s_sample_pred": onsets + [0, 0, -10, -70],         # S: 0.1 s and 0.7 s early
    })
    s = task3_scores(test)
    assert s["P_n"] == 2 and s["P_mean_s"] == pytest.approx(0.25) and s["P_rmse_s"] == pytest.approx(0.25)
    assert s["P_mae_s"] == pytest.approx(0.25) and s["P_frac_beyond"] == 0.0
    assert s["S_mean_s"] == pytest.approx(-0.4) and s["S_mae_s"] == pytest.approx(0.4)
    assert s["S_rmse_s"] == pytest.approx(math.sqrt((0.01 + 0.49) / 2)) and s["S_frac_beyond"] == 0.5
