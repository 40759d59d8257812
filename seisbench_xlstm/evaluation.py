"""Pick evaluation: matching picks at a tolerance, precision / recall / F1, residuals, threshold tuning.

Times are seconds (floats, e.g. ``UTCDateTime.timestamp``) throughout. The functions that run a model take any
SeisBench ``WaveformModel`` (the xLSTM pickers, PhaseNet, EQTransformer, ...) and use its own ``annotate`` and
``classify_aggregate``, so a pick here is exactly a pick of ``model.classify(stream, **thresholds)``.

Matching (:func:`match_picks`): predicted and reference picks of one phase on one trace are paired one to one,
greedily by increasing ``|predicted - reference|`` (ties: earlier reference, then earlier prediction); a pair
counts when ``|predicted - reference| <= tolerance`` (plus 1 microsecond of slack for float rounding, far below
a sample). Matched pairs are true positives; unmatched predictions false positives; unmatched references false
negatives. Residuals are ``predicted - reference`` of the matched pairs.

Threshold tuning (:func:`tune_threshold`, :func:`tune_pick_thresholds`): the F1 of each phase on a grid of trigger
thresholds; the best F1 wins, and among thresholds with the same best F1 the middle one (the median of the tied
grid values) is taken, so a plateau does not push the choice to its edge.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np
import obspy

__all__ = [
    "MATCH_SLACK_S",
    "DEFAULT_THRESHOLDS",
    "ResidualStats",
    "PickScore",
    "match_picks",
    "score_picks",
    "score_traces",
    "residual_stats",
    "tune_threshold",
    "picks_by_trace",
    "classify_picks",
    "tune_pick_thresholds",
    "evaluate_model",
    "TraceSet",
    "dataset_traces",
]

#: Slack added to the tolerance when comparing float times (seconds).
MATCH_SLACK_S = 1e-6
#: Default grid of trigger thresholds for tuning: 0.05, 0.10, ..., 0.95.
DEFAULT_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


@dataclass
class ResidualStats:
    """Statistics of residuals (seconds): count, mean, RMSE, MAE and the fraction with ``|r| > beyond``."""

    n: int
    mean: float
    rmse: float
    mae: float
    frac_beyond: float
    beyond: float = 0.5


def residual_stats(residuals: Iterable[float], beyond: float = 0.5) -> ResidualStats:
    """:class:`ResidualStats` of ``residuals`` (NaN statistics for none)."""
    r = np.asarray(list(residuals), dtype=float)
    if r.size == 0:
        return ResidualStats(0, math.nan, math.nan, math.nan, math.nan, beyond)
    return ResidualStats(
        n=int(r.size),
        mean=float(r.mean()),
        rmse=float(np.sqrt(np.mean(r**2))),
        mae=float(np.mean(np.abs(r))),
        frac_beyond=float(np.mean(np.abs(r) > beyond)),
        beyond=beyond,
    )


@dataclass
class PickScore:
    """Counts and residuals of one phase at one tolerance. Scores add up (``a + b``) over traces.

    ``precision`` is NaN without predictions, ``recall`` NaN without references; ``f1`` is 0 when there were
    predictions or references but no match, NaN when there were neither.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    residuals: list[float] = field(default_factory=list)

    def __add__(self, other: "PickScore") -> "PickScore":
        return PickScore(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.residuals + other.residuals)

    @property
    def n_predicted(self) -> int:
        return self.tp + self.fp

    @property
    def n_reference(self) -> int:
        return self.tp + self.fn

    @property
    def precision(self) -> float:
        return self.tp / self.n_predicted if self.n_predicted else math.nan

    @property
    def recall(self) -> float:
        return self.tp / self.n_reference if self.n_reference else math.nan

    @property
    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else math.nan

    def residual_stats(self, beyond: float = 0.5) -> ResidualStats:
        return residual_stats(self.residuals, beyond)

    def as_dict(self, prefix: str = "") -> dict:
        r = self.residual_stats()
        return {
            f"{prefix}tp": self.tp,
            f"{prefix}fp": self.fp,
            f"{prefix}fn": self.fn,
            f"{prefix}precision": self.precision,
            f"{prefix}recall": self.recall,
            f"{prefix}f1": self.f1,
            f"{prefix}residual_mean_s": r.mean,
            f"{prefix}residual_rmse_s": r.rmse,
            f"{prefix}residual_mae_s": r.mae,
        }


def match_picks(
    predicted: Sequence[float], reference: Sequence[float], tolerance: float
) -> list[tuple[int, int]]:
    """One-to-one pairs ``(index in predicted, index in reference)`` within ``tolerance`` seconds (greedy by
    distance, see the module docstring), sorted by reference index."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be non-negative, got {tolerance}")
    pred = np.asarray(predicted, dtype=float)
    ref = np.asarray(reference, dtype=float)
    if pred.size == 0 or ref.size == 0:
        return []
    dist = np.abs(pred[:, None] - ref[None, :])
    i, j = np.nonzero(dist <= tolerance + MATCH_SLACK_S)
    order = np.lexsort((i, j, dist[i, j]))  # by distance, then reference, then prediction
    used_p, used_r, pairs = set(), set(), []
    for k in order:
        a, b = int(i[k]), int(j[k])
        if a not in used_p and b not in used_r:
            used_p.add(a)
            used_r.add(b)
            pairs.append((a, b))
    return sorted(pairs, key=lambda p: p[1])


def score_picks(predicted: Sequence[float], reference: Sequence[float], tolerance: float) -> PickScore:
    """:class:`PickScore` of one phase on one trace (or one record)."""
    pairs = match_picks(predicted, reference, tolerance)
    return PickScore(
        tp=len(pairs),
        fp=len(predicted) - len(pairs),
        fn=len(reference) - len(pairs),
        residuals=[float(predicted[a]) - float(reference[b]) for a, b in pairs],
    )


def score_traces(
    predicted: Mapping[Hashable, Sequence[float]], reference: Mapping[Hashable, Sequence[float]], tolerance: float
) -> PickScore:
    """Sum of :func:`score_picks` over the traces of both mappings (trace key -> pick times); a trace missing from
    one side has no picks there."""
    total = PickScore()
    for key in set(predicted) | set(reference):
        total = total + score_picks(list(predicted.get(key, ())), list(reference.get(key, ())), tolerance)
    return total


def tune_threshold(
    thresholds: Sequence[float], score: Callable[[float], PickScore | float]
) -> tuple[float, float, list[tuple[float, float]]]:
    """The threshold of ``thresholds`` with the best F1 of ``score(threshold)`` (a :class:`PickScore` or an F1).

    NaN scores count as worst. Among equal best F1 the median tied threshold is taken (the lower middle one for
    an even count). Returns ``(threshold, best F1, [(threshold, F1), ...])``.
    """
    if len(thresholds) == 0:
        raise ValueError("no thresholds to tune over")
    table = []
    for t in sorted(float(x) for x in thresholds):
        s = score(t)
        f1 = s.f1 if isinstance(s, PickScore) else float(s)
        table.append((t, f1))
    values = np.array([-np.inf if math.isnan(f) else f for _, f in table])
    best = values.max()
    tied = [t for (t, _), v in zip(table, values) if v == best]
    chosen = tied[(len(tied) - 1) // 2]
    return chosen, (math.nan if best == -np.inf else float(best)), table


# ---------------------------------------------------------------------------------------------- models
def picks_by_trace(picks, phase: str, key: Callable | None = None) -> dict[str, list[float]]:
    """Peak times (``timestamp``) of the picks of ``phase``, per ``pick.trace_id`` (or ``key(pick)``)."""
    out: dict[str, list[float]] = defaultdict(list)
    for p in picks:
        if p.phase == phase:
            out[key(p) if key else p.trace_id].append(float(p.peak_time.timestamp))
    return dict(out)


def _phases(model) -> list[str]:
    phases = getattr(model, "phases", None) or getattr(model, "labels", None) or "PS"
    return [p for p in phases if p in ("P", "S")]


def classify_picks(model, annotations, thresholds: Mapping[str, float] | None = None):
    """``model.classify``'s picks from annotations already computed (``model.annotate(stream)``), with the trigger
    thresholds ``{"P": t, "S": t}`` (default: the model's ``default_args``)."""
    argdict = dict(getattr(model, "default_args", {}) or {})
    for phase, t in (thresholds or {}).items():
        argdict[f"{phase}_threshold"] = float(t)
    return model.classify_aggregate(annotations, argdict).picks


def tune_pick_thresholds(
    model,
    annotations,
    reference: Mapping[str, Mapping[str, Sequence[float]]],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    tolerance: float = 0.5,
) -> dict[str, tuple[float, float, list[tuple[float, float]]]]:
    """P and S trigger thresholds that maximise the F1 of ``classify`` picks within ``tolerance`` s.

    :param annotations: ``model.annotate(stream)`` of the tuning traces (annotated once)
    :param reference: ``{phase: {trace_id: [times]}}`` (analyst picks; trace ids as in the annotations)
    :return: ``{phase: (threshold, F1, [(threshold, F1), ...])}`` for each phase the model picks
    """
    out = {}
    for phase in _phases(model):
        ref = reference.get(phase, {})

        def score(t: float, phase=phase, ref=ref) -> PickScore:
            picks = classify_picks(model, annotations, {phase: t})
            return score_traces(picks_by_trace(picks, phase), ref, tolerance)

        out[phase] = tune_threshold(thresholds, score)
    return out


def evaluate_model(
    model,
    annotations,
    reference: Mapping[str, Mapping[str, Sequence[float]]],
    tolerances: Sequence[float] = (0.1, 0.5),
    thresholds: Mapping[str, float] | None = None,
) -> dict[tuple[str, float], PickScore]:
    """``{(phase, tolerance): PickScore}`` of ``classify`` picks (``thresholds`` or the model's defaults)."""
    picks = classify_picks(model, annotations, thresholds)
    out = {}
    for phase in _phases(model):
        predicted = picks_by_trace(picks, phase)
        for tol in tolerances:
            out[(phase, float(tol))] = score_traces(predicted, reference.get(phase, {}), tol)
    return out


# ---------------------------------------------------------------------------------------------- whole traces
#: Shortest constant run at a trace's start or end that counts as stored padding (as ``TrimFlatEdges``).
FLAT_RUN = 50
#: Start time given to every trace of a :class:`TraceSet` (the traces are told apart by their station code).
TRACE_T0 = obspy.UTCDateTime(2000, 1, 1)


@dataclass
class TraceSet:
    """Whole traces of a SeisBench dataset as one ObsPy stream, with the analyst picks as reference.

    :ivar stream: 3 traces (``HHZ/HHN/HHE``, or the dataset's band/instrument code) per dataset trace; trace
        ``k`` has network ``XX`` and station ``T<k>``, all start at :data:`TRACE_T0`
    :ivar trace_ids: ``"XX.T<k>."`` per dataset row (the pick ``trace_id``)
    :ivar rows: dataset row of each trace
    :ivar offsets: samples cut from the start of each trace (stored padding, see ``flat_edges``)
    :ivar lengths: samples kept of each trace
    :ivar reference: ``{phase: {trace_id: [times]}}`` of the analyst picks inside the kept samples
    :ivar outside: analyst picks left out because they lie outside the kept samples
    :ivar sampling_rate: Hz
    """

    stream: obspy.Stream
    trace_ids: list[str]
    rows: list[int]
    offsets: list[int]
    lengths: list[int]
    reference: dict[str, dict[str, list[float]]]
    outside: int
    sampling_rate: float

    def time_to_sample(self, k: int, time: float) -> float:
        """Sample of the dataset trace (row ``rows[k]``) at ``time`` (timestamp) on trace ``k``."""
        return (time - TRACE_T0.timestamp) * self.sampling_rate + self.offsets[k]


def dataset_traces(dataset, indices: Sequence[int] | None = None, trim_flat: bool = True,
                   extra_pick_columns: Mapping[str, str] | None = None) -> TraceSet:
    """The traces ``indices`` (default all) of a SeisBench dataset opened at 100 Hz, ZNE, channels first
    (:func:`seisbench_xlstm.data.open_dataset`) as a :class:`TraceSet` for ``annotate``/``classify``.

    Constant runs that a dataset stores at a trace's start or end (padding, 50+ samples on every channel) are
    cut (``trim_flat``): annotate never sees such padding in real records. Analyst picks are read from the
    dataset's pick columns (the data layer's P/S mapping, plus ``extra_pick_columns``).
    """
    from .data.augmentations import flat_edges
    from .data.phases import pick_columns

    md = dataset.metadata
    rate = float(dataset.sampling_rate or 100.0)
    columns = pick_columns(md.columns, extra=extra_pick_columns)
    indices = range(len(dataset)) if indices is None else indices
    stream = obspy.Stream()
    out = TraceSet(stream, [], [], [], [], {"P": {}, "S": {}}, 0, rate)
    for k, i in enumerate(indices):
        i = int(i)
        x = np.asarray(dataset.get_waveforms(i), dtype=np.float32)
        row = md.iloc[i]
        head, tail = flat_edges(x) if trim_flat else (0, 0)
        head, tail = (head if head >= FLAT_RUN else 0), (tail if tail >= FLAT_RUN else 0)
        if head + tail >= x.shape[-1]:  # constant throughout: keep as is
            head, tail = 0, 0
        x = x[:, head : x.shape[-1] - tail]
        code = str(row.get("trace_channel", "") or "HH")[:2] if "trace_channel" in md.columns else "HH"
        if len(code) != 2 or code == "na":
            code = "HH"
        for c, data in zip("ZNE", x):
            stream += obspy.Trace(data.copy(), header=dict(network="XX", station=f"T{k}", location="",
                                                           channel=f"{code}{c}", sampling_rate=rate,
                                                           starttime=TRACE_T0))
        trace_id = f"XX.T{k}."
        out.trace_ids.append(trace_id)
        out.rows.append(i)
        out.offsets.append(head)
        out.lengths.append(x.shape[-1])
        for col, phase in columns.items():
            v = row.get(col)
            try:
                v = float(v)
            except (TypeError, ValueError):
                continue
            if not np.isfinite(v):
                continue
            s = v - head
            if 0 <= s < x.shape[-1]:
                out.reference[phase].setdefault(trace_id, []).append(TRACE_T0.timestamp + s / rate)
            else:
                out.outside += 1
    return out
