"""Scores of the pick-benchmark tasks from per-window predictions (see :mod:`.predict`).

* Task 1 (detection): ROC-AUC of ``score_detection`` on the test windows (earthquake = positive), and precision,
  recall and F1 on the test windows at the threshold that maximises F1 on the dev windows.
* Task 2 (phase identification): ``score_p_or_s`` (P = positive); MCC and F1 (of P) on the test windows at the
  threshold that maximises MCC on the dev windows (the paper's metric is the MCC), plus the ROC-AUC.
* Task 3 (onset regression): residuals ``(predicted sample - onset) / sampling rate`` in seconds of the P
  windows (``p_sample_pred``) and of the S windows (``s_sample_pred``): mean, RMSE, MAE and the fraction beyond
  0.5 s (:func:`seisbench_xlstm.evaluation.residual_stats`).

A window counts as positive when ``score >= threshold``. Candidate thresholds are the distinct dev scores (and
one above the highest, where nothing is positive); among equally good candidates the middle one is taken (the
rule of :func:`seisbench_xlstm.evaluation.tune_threshold`). Windows with a NaN score are left out of tasks 1 and 2
and counted; infinite scores (a zero maximum S probability) are clipped to +-1e100 as in the protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..evaluation import residual_stats

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed trapz

__all__ = ["BinaryCurve", "binary_curve", "roc_auc", "f1_score", "mcc_score", "tune_binary_threshold",
           "binary_scores", "onset_residuals", "task1_scores", "task2_scores", "task3_scores", "task_scores"]


@dataclass
class BinaryCurve:
    """Confusion counts at every candidate threshold, highest threshold first (``score >= threshold``).

    :ivar thresholds: ``(k,)``; ``thresholds[0]`` is above every score (nothing positive)
    :ivar tp: ``(k,)`` true positives; likewise ``fp``, ``fn``, ``tn``
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    @property
    def precision(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.tp / (self.tp + self.fp)

    @property
    def recall(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.tp / (self.tp + self.fn)


def _clean(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=bool).ravel()
    s = np.clip(np.asarray(scores, dtype=float).ravel(), -1e100, 1e100)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if np.isnan(s).any():
        raise ValueError("NaN scores: drop those windows first")
    return y, s


def binary_curve(labels, scores) -> BinaryCurve:
    """:class:`BinaryCurve` of binary ``labels`` (True = positive) against ``scores`` (higher = more positive)."""
    y, s = _clean(labels, scores)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    distinct = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if s.size else np.zeros(0, dtype=int)
    tp = np.r_[0, np.cumsum(y)[distinct]]
    fp = np.r_[0, np.cumsum(~y)[distinct]]
    top = np.nextafter(s[0], np.inf) if s.size else np.inf
    thresholds = np.r_[top, s[distinct]]
    pos, neg = int(y.sum()), int((~y).sum())
    return BinaryCurve(thresholds, tp, fp, pos - tp, neg - fp)


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (ties count half); NaN when one class is missing."""
    c = binary_curve(labels, scores)
    pos, neg = c.tp[-1], c.fp[-1]
    if pos == 0 or neg == 0:
        return math.nan
    return float(_trapezoid(c.tp / pos, c.fp / neg))


def f1_score(tp, fp, fn) -> np.ndarray | float:
    """F1 from counts (NaN where there are neither predictions nor positives)."""
    tp, fp, fn = (np.asarray(v, dtype=float) for v in (tp, fp, fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 2 * tp / (2 * tp + fp + fn)
    return float(out) if out.ndim == 0 else out


def mcc_score(tp, fp, fn, tn) -> np.ndarray | float:
    """Matthews correlation coefficient from counts (0 where a margin is empty, the usual convention)."""
    tp, fp, fn, tn = (np.asarray(v, dtype=float) for v in (tp, fp, fn, tn))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(denominator > 0, (tp * tn - fp * fn) / np.where(denominator > 0, denominator, 1), 0.0)
    return float(out) if out.ndim == 0 else out


def tune_binary_threshold(labels, scores, metric: str = "f1") -> tuple[float, float]:
    """Threshold on ``scores`` that maximises ``metric`` (``"f1"`` or ``"mcc"``) and that best value."""
    c = binary_curve(labels, scores)
    if metric == "f1":
        values = f1_score(c.tp, c.fp, c.fn)
    elif metric == "mcc":
        values = mcc_score(c.tp, c.fp, c.fn, c.tn)
    else:
        raise ValueError(f"metric must be 'f1' or 'mcc', got {metric!r}")
    values = np.where(np.isnan(values), -np.inf, values)
    best = values.max()
    if best == -np.inf:
        return math.nan, math.nan
    tied = np.flatnonzero(values == best)
    # thresholds descend: the middle of the tied ones (the lower middle one of the values, as tune_threshold)
    chosen = tied[len(tied) // 2]
    return float(c.thresholds[chosen]), float(best)


def binary_scores(labels, scores, threshold: float) -> dict:
    """Counts, precision, recall, F1 and MCC of ``scores >= threshold`` against ``labels``."""
    y, s = _clean(labels, scores)
    p = s >= threshold
    tp, fp = int((p & y).sum()), int((p & ~y).sum())
    fn, tn = int((~p & y).sum()), int((~p & ~y).sum())
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": tp / (tp + fp) if tp + fp else math.nan,
            "recall": tp / (tp + fn) if tp + fn else math.nan,
            "f1": f1_score(tp, fp, fn), "mcc": mcc_score(tp, fp, fn, tn)}


def _usable(frame: pd.DataFrame, column: str) -> tuple[pd.DataFrame, int]:
    ok = ~np.isnan(frame[column].to_numpy(dtype=float))
    return frame[ok], int((~ok).sum())


def _binary_task(dev: pd.DataFrame, test: pd.DataFrame, label: np.ndarray, dev_label: np.ndarray, column: str,
                 metric: str, prefix: str) -> dict:
    out = {f"{prefix}_n_test": len(test), f"{prefix}_n_dev": len(dev)}
    if len(set(label)) < 2 or len(set(dev_label)) < 2:
        out[f"{prefix}_note"] = "one class only in dev or test: no threshold, no AUC"
        return out
    threshold, dev_value = tune_binary_threshold(dev_label, dev[column], metric)
    scores = binary_scores(label, test[column], threshold)
    out.update({f"{prefix}_threshold": threshold, f"{prefix}_dev_{metric}": dev_value,
                f"{prefix}_auc": roc_auc(label, test[column])})
    out.update({f"{prefix}_{k}": v for k, v in scores.items()})
    return out


def task1_scores(dev: pd.DataFrame, test: pd.DataFrame) -> dict:
    """Task 1 scores (keys ``det_*``) from the predictions of the dev and test task-1 windows."""
    dev, dev_nan = _usable(dev, "score_detection")
    test, test_nan = _usable(test, "score_detection")
    out = _binary_task(dev, test, (test["trace_type"] == "earthquake").to_numpy(),
                       (dev["trace_type"] == "earthquake").to_numpy(), "score_detection", "f1", "det")
    out["det_n_nan"] = dev_nan + test_nan
    return out


def task2_scores(dev: pd.DataFrame, test: pd.DataFrame) -> dict:
    """Task 2 scores (keys ``phase_*``) from the predictions of the dev and test task-2/3 windows."""
    dev, dev_nan = _usable(dev, "score_p_or_s")
    test, test_nan = _usable(test, "score_p_or_s")
    out = _binary_task(dev, test, (test["phase_label"] == "P").to_numpy(), (dev["phase_label"] == "P").to_numpy(),
                       "score_p_or_s", "mcc", "phase")
    out["phase_n_nan"] = dev_nan + test_nan
    return out


def onset_residuals(frame: pd.DataFrame, phase: str) -> np.ndarray:
    """Residuals in seconds of the ``phase`` windows: ``(<phase>_sample_pred - phase_onset) / sampling_rate``."""
    part = frame[frame["phase_label"] == phase]
    pred = part[f"{phase.lower()}_sample_pred"].to_numpy(dtype=float)
    return (pred - part["phase_onset"].to_numpy(dtype=float)) / part["sampling_rate"].to_numpy(dtype=float)


def task3_scores(test: pd.DataFrame, beyond: float = 0.5) -> dict:
    """Task 3 scores (keys ``P_*``, ``S_*``) of the test task-2/3 windows: residual statistics in seconds."""
    out = {}
    for phase in "PS":
        r = onset_residuals(test, phase)
        stats = residual_stats(r[np.isfinite(r)], beyond=beyond)
        out.update({f"{phase}_n": stats.n, f"{phase}_mean_s": stats.mean, f"{phase}_rmse_s": stats.rmse,
                    f"{phase}_mae_s": stats.mae, f"{phase}_frac_beyond": stats.frac_beyond})
    return out


def task_scores(predictions: dict[str, pd.DataFrame]) -> dict:
    """All scores from ``{"task1": frame, "task23": frame}`` of predicted windows (both splits; column
    ``trace_split``). A task whose frame is missing or empty is left out."""
    out = {}
    t1 = predictions.get("task1")
    if t1 is not None and len(t1):
        out.update(task1_scores(t1[t1["trace_split"] == "dev"], t1[t1["trace_split"] == "test"]))
    t23 = predictions.get("task23")
    if t23 is not None and len(t23):
        out.update(task2_scores(t23[t23["trace_split"] == "dev"], t23[t23["trace_split"] == "test"]))
        out.update(task3_scores(t23[t23["trace_split"] == "test"]))
    return out
