"""Contiguous records of an ObsPy stream, prepared the way the pickers annotate them.

A *segment* is one gap-free trace of one channel. A *record* is a stretch of one instrument (``net.sta.loc``)
where at least one component has data. The steps, in the order in which ``annotate`` runs them:

1. :func:`split_at_gaps`: masked samples (as left by ``Stream.merge()``) and, with ``nan_policy="gap"``,
   NaN/inf samples become gaps: traces are split there.
2. :func:`check_components`: components the picker cannot read are dropped, and stations with missing,
   unrotated or unknown components are named in an :class:`AnnotateWarning`.
3. :func:`data_spans`: the time spans with data per instrument, where annotations are kept in the end.
4. :func:`demean_segments`: each segment minus its own mean (in float64, in raw counts; kept in float32), before
   any zeros are added, so that gaps, missing components and padding (zeros) lie at the level of the data around
   them. The training pipeline demeans before it inserts gaps in the same way.
5. SeisBench's filter and resampling.
6. :func:`bridge_gaps`: gaps of an instrument (all components missing) shorter than one window are filled with
   zeros, so that the data on both sides are annotated together; the output inside them is removed again in
   step 8. Longer gaps separate records.
7. :func:`pad_short_records`: records shorter than one window get zeros at their end up to one window.
8. :func:`keep_spans`: annotations are kept only where the instrument had data (step 3).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from copy import deepcopy

import numpy as np
import obspy

#: Horizontal components SeisBench reads as N and E with ``flexible_horizontal_components=True``.
UNROTATED = {"1": "N", "2": "E"}


class AnnotateWarning(UserWarning):
    """Something in the input was skipped, zero-filled or reinterpreted; the message names the station."""


def instrument_id(trace: obspy.Trace) -> str:
    """``net.sta.loc``, the unit SeisBench annotates together (grouping ``"instrument"``)."""
    return f"{trace.stats.network}.{trace.stats.station}.{trace.stats.location}"


def split_at_gaps(stream: obspy.Stream, nan_policy: str = "raise") -> obspy.Stream:
    """Splits traces at masked samples, and at NaN/inf samples with ``nan_policy="gap"``.

    :param nan_policy: ``"raise"``: NaN/inf samples (outside masked parts) raise ``ValueError`` naming the
        traces; ``"gap"``: they are cut out like masked samples.
    :return: a stream of gap-free traces (unchanged traces are not copied)
    """
    bad, out = [], obspy.Stream()
    pieces = []
    for tr in stream:
        data = tr.data
        mask = np.ma.getmaskarray(data) if np.ma.isMaskedArray(data) else None
        values = np.ma.getdata(data)
        nonfinite = ~np.isfinite(values) if values.dtype.kind in "fc" else None
        if nonfinite is not None and mask is not None:
            nonfinite &= ~mask
        if nonfinite is not None and nonfinite.any():
            bad.append(tr.id)
            mask = nonfinite if mask is None else (mask | nonfinite)
        if mask is None or not mask.any():
            if np.ma.isMaskedArray(data):
                tr = tr.copy()
                tr.data = np.asarray(values)
            pieces.append(tr)
            continue
        piece = tr.copy()
        piece.data = np.ma.masked_array(values, mask=mask)
        pieces.extend(piece.split())
    if bad and nan_policy == "raise":
        raise ValueError(
            f"Traces with NaN or inf samples: {', '.join(sorted(set(bad)))}. Pass nan_policy='gap' to cut these "
            "samples out and treat them as gaps (annotated around, never inside), or clean the data first."
        )
    out.traces = [tr for tr in pieces if tr.stats.npts > 0]
    return out


def check_components(stream: obspy.Stream, component_order: str, flexible: bool, strict: bool) -> obspy.Stream:
    """Drops components the picker cannot read and warns per station about what was skipped or changed.

    - Components outside ``component_order`` (and outside 1/2 with ``flexible``), such as X, Y, W or 3, are
      skipped: SeisBench would ignore them without a word.
    - 1/2 are read as N/E (SeisBench's ``flexible_horizontal_components``), with a warning that they are
      unrotated.
    - Missing components are zero-filled (``strict=False``) or the station is skipped (``strict=True``).

    :return: the stream without the skipped traces
    """
    order = list(component_order)
    readable = set(order) | (set(UNROTATED) if flexible else set())
    by_instrument = defaultdict(list)
    for tr in stream:
        by_instrument[instrument_id(tr)].append(tr)
    keep = []
    for key, traces in sorted(by_instrument.items()):
        components = {tr.stats.channel[-1:] for tr in traces}
        unknown = sorted(components - readable)
        if unknown:
            channels = sorted({tr.id for tr in traces if tr.stats.channel[-1:] in unknown})
            hint = (
                " If one of them is vertical, rename its channel to end in Z." if "3" in unknown else ""
            )
            warnings.warn(
                f"{key}: skipped channel(s) {', '.join(channels)}: the picker reads components "
                f"{''.join(order)}{' (1/2 as N/E)' if flexible else ''}.{hint}",
                AnnotateWarning,
                stacklevel=3,
            )
        traces = [tr for tr in traces if tr.stats.channel[-1:] in readable]
        used = {UNROTATED.get(c, c) if flexible else c for c in components if c in readable}
        unrotated = sorted(c for c in components if c in UNROTATED and flexible and c not in order)
        if unrotated and traces:
            warnings.warn(
                f"{key}: components {'/'.join(unrotated)} read as {'/'.join(UNROTATED[c] for c in unrotated)} "
                "(unrotated horizontals; rotate them to N/E with the sensor azimuth where it is known).",
                AnnotateWarning,
                stacklevel=3,
            )
        missing = [c for c in order if c not in used]
        if not traces:
            warnings.warn(f"{key}: skipped: no readable component.", AnnotateWarning, stacklevel=3)
        elif missing and strict:
            warnings.warn(
                f"{key}: skipped: no {'/'.join(missing)} component and strict=True.", AnnotateWarning, stacklevel=3
            )
            traces = []
        elif missing:
            warnings.warn(
                f"{key}: no {'/'.join(missing)} component: zero-filled (strict=True skips such stations).",
                AnnotateWarning,
                stacklevel=3,
            )
        keep += traces
    kept = {id(tr) for tr in keep}
    return obspy.Stream([tr for tr in stream if id(tr) in kept])


def _union(intervals: list[tuple[obspy.UTCDateTime, obspy.UTCDateTime, float]]):
    """Merges ``(start, end, sampling_rate)`` intervals that overlap or follow each other without a missing
    sample; ``end`` is the time of the last sample."""
    merged = []
    for t0, t1, rate in sorted(intervals, key=lambda x: (x[0], x[1])):
        if merged and t0 <= merged[-1][1] + 1.5 / rate:
            if t1 > merged[-1][1]:
                merged[-1][1] = t1
        else:
            merged.append([t0, t1, rate])
    return merged


def data_spans(stream: obspy.Stream) -> dict[str, list[tuple[obspy.UTCDateTime, obspy.UTCDateTime]]]:
    """Per instrument, the time spans (first and last sample) where at least one component has data."""
    intervals = defaultdict(list)
    for tr in stream:
        intervals[instrument_id(tr)].append((tr.stats.starttime, tr.stats.endtime, tr.stats.sampling_rate))
    return {key: [(a, b) for a, b, _ in _union(v)] for key, v in intervals.items()}


def demean_segments(stream: obspy.Stream) -> None:
    """Replaces every trace's data (a gap-free segment) by a new float32 array: the data minus their own mean, both
    in float64, rounded once to float32, the precision the model reads (annotate rounds every window to float32).
    The arrays given are never written to, so the traces may share them with the caller's stream
    (:func:`headers_copy`)."""
    for tr in stream:
        data = np.asarray(tr.data)
        out = np.empty(data.shape, dtype=np.float32)
        if data.size:
            np.subtract(data, data.mean(dtype=np.float64), out=out, dtype=np.float64, casting="same_kind")
        tr.data = out


def headers_copy(stream: obspy.Stream) -> obspy.Stream:
    """A stream of new traces with copied headers and the same data arrays: ``annotate``'s copy of the caller's
    stream, made without copying the data: no step writes into the arrays (:func:`demean_segments` and SeisBench's
    conversion to arrays make new ones)."""
    return obspy.Stream([obspy.Trace(data=tr.data, header=deepcopy(tr.stats)) for tr in stream])


def _zero_traces(traces: list[obspy.Trace], start: obspy.UTCDateTime, n: int) -> list[obspy.Trace]:
    """One trace of ``n`` zeros from ``start`` per channel among ``traces``."""
    out = {}
    for tr in traces:
        if tr.id not in out:
            header = {k: tr.stats[k] for k in ("network", "station", "location", "channel", "sampling_rate")}
            # in the traces' dtype: SeisBench merges adjacent traces, which must agree in it
            out[tr.id] = obspy.Trace(np.zeros(n, dtype=tr.data.dtype), header={**header, "starttime": start})
    return list(out.values())


def bridge_gaps(stream: obspy.Stream, max_missing: int) -> None:
    """Fills gaps where all components of an instrument are missing for fewer than ``max_missing`` samples with
    zeros in every channel of the instrument (in place). Assumes one sampling rate (after resampling)."""
    by_instrument = defaultdict(list)
    for tr in stream:
        by_instrument[instrument_id(tr)].append(tr)
    for traces in by_instrument.values():
        spans = _union([(tr.stats.starttime, tr.stats.endtime, tr.stats.sampling_rate) for tr in traces])
        for (_, end, rate), (start, _, _) in zip(spans, spans[1:]):
            missing = int(round((start - end) * rate)) - 1
            if 0 < missing < max_missing:
                stream.extend(_zero_traces(traces, end + 1.0 / rate, missing))


def pad_short_records(stream: obspy.Stream, n_samples: int) -> None:
    """Zero-pads every record shorter than ``n_samples`` at its end to ``n_samples`` samples (in place), in every
    channel of the instrument. Call after :func:`bridge_gaps`, which leaves gaps of at least ``n_samples``."""
    by_instrument = defaultdict(list)
    for tr in stream:
        by_instrument[instrument_id(tr)].append(tr)
    for traces in by_instrument.values():
        records = _union([(tr.stats.starttime, tr.stats.endtime, tr.stats.sampling_rate) for tr in traces])
        for start, end, rate in records:
            length = int(round((end - start) * rate)) + 1
            if length < n_samples:
                stream.extend(_zero_traces(traces, end + 1.0 / rate, n_samples - length))


def keep_spans(annotations: obspy.Stream, spans: dict[str, list[tuple]]) -> obspy.Stream:
    """The parts of the annotation traces inside their instrument's data spans (:func:`data_spans`)."""
    out = obspy.Stream()
    for tr in annotations:
        tol = 0.25 / tr.stats.sampling_rate
        for t0, t1 in spans.get(instrument_id(tr), []):
            if t1 < tr.stats.starttime or t0 > tr.stats.endtime:
                continue
            piece = tr.slice(t0 - tol, t1 + tol, nearest_sample=False)
            if piece.stats.npts:
                out.append(piece)
    return out
