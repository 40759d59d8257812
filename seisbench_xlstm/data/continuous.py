"""Continuous records (anything ObsPy reads) as a ``torch.utils.data.Dataset`` of fixed-length windows.

Used for self-supervised pretraining on unlabelled continuous data (e.g. the 2 h of Oklahoma data in
``../shared/data/continuous-ok``). Steps, following what ``annotate`` does to a stream:

1. Traces are grouped per instrument: ``network.station.location`` + band and instrument code (``channel[:-1]``,
   e.g. ``HH`` and ``HN`` at one station are two instruments). Components map to ZNE by the last channel letter;
   ``1``/``2`` stand in for ``N``/``E`` where those are absent (unrotated, as the ingest tool does). Other
   components are skipped and listed in :attr:`ContinuousWindows.skipped`.
2. Per component: NaN/inf samples are masked, records are merged (ObsPy ``merge(method=1)``), split into
   contiguous pieces at gaps and masked samples, and every piece is resampled to 100 Hz with SeisBench's
   ``WaveformModel.resample`` (the resampling of ``annotate``). Start times are snapped to the 100 Hz sample grid.
3. *Segments* are the spans where every component the instrument has is recorded (missing components are
   zeros throughout). Each segment and component is demeaned by its own mean in raw counts (the annotate contract).
4. Windows of ``window_len`` samples lie entirely inside one segment (never padded): a segment of ``L`` usable
   samples gives ``L // window_len`` non-overlapping windows per epoch, shifted together by a random offset in
   ``[0, L % window_len]`` drawn from ``(seed, epoch, segment)``, so positions are deterministic for a given seed
   and epoch and the number of windows per epoch is constant (``len``).
5. Each window is normalised exactly as the pickers' ``normalize_windows`` (per-channel demean, then division by the
   population standard deviation + 1e-10).

Items are ``{"X": float32 (3, window_len)}``, like the pretraining generator's samples. ``span=(a, b)`` uses only
the part of every segment between fractions ``a`` and ``b`` of its length (a split by time: e.g. ``(0, 0.85)`` for
training and ``(0.85, 1)`` for validation never share a sample).
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import obspy
import torch

__all__ = ["ContinuousConfig", "ContinuousWindows", "Segment", "read_records", "segments_from_stream"]

#: Component letter -> row of the ZNE array (``1``/``2`` only where ``N``/``E`` are absent).
_ROWS = {"Z": 0, "N": 1, "E": 2}
_FALLBACK = {"1": "N", "2": "E"}


@dataclass
class ContinuousConfig:
    """:param window_len: samples per window; :param sampling_rate: output rate (Hz); :param norm: ``"std"`` or
    ``"peak"`` (as the pickers); :param seed: seed of the window offsets; :param span: part ``(a, b)`` of every
    segment used (fractions of its length)."""

    window_len: int = 4096
    sampling_rate: float = 100.0
    norm: str = "std"
    seed: int = 0
    span: tuple[float, float] = (0.0, 1.0)


@dataclass
class Segment:
    """A span where all of an instrument's components are recorded.

    :ivar instrument: ``NET.STA.LOC.BI`` (BI: band and instrument code)
    :ivar starttime: time of the first sample
    :ivar data: float32 ``(3, samples)`` ZNE, each component demeaned over the segment; absent components zero
    :ivar components: components recorded, e.g. ``"ZNE"`` or ``"Z"``
    """

    instrument: str
    starttime: obspy.UTCDateTime
    data: np.ndarray
    components: str


def _files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(
                f for f in p.rglob("*") if f.is_file() and not any(s.startswith(".") for s in f.relative_to(p).parts)
            )
        else:
            raise FileNotFoundError(f"No such file or folder: {p}")
    return out


def read_records(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[obspy.Stream, list[tuple[str, str]]]:
    """Reads files and folders (recursively) with ObsPy. Returns the stream and ``(file, reason)`` of the files
    that could not be read (skipped)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    stream, skipped = obspy.Stream(), []
    for f in _files(paths):
        try:
            stream += obspy.read(str(f))
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported, not fatal
            skipped.append((str(f), f"unreadable: {type(err).__name__}: {err}"))
    return stream, skipped


def _contiguous_pieces(traces: list[obspy.Trace], rate: float) -> list[tuple[int, np.ndarray]]:
    """Merged, split at gaps/masked samples, resampled pieces as ``(first sample index on the rate grid, data)``."""
    from seisbench.models import WaveformModel

    st = obspy.Stream([tr.copy() for tr in traces])
    for tr in st:
        tr.data = np.ma.masked_invalid(np.asarray(tr.data, dtype=np.float64))
    try:
        st.merge(method=1)
    except Exception as err:  # noqa: BLE001 - e.g. records of one channel at different sampling rates
        raise ValueError(f"records cannot be merged: {err}") from err
    st = st.split()
    WaveformModel.resample(st, rate)
    pieces = []
    for tr in st:
        start = int(round(tr.stats.starttime.timestamp * rate))
        pieces.append((start, np.asarray(tr.data, dtype=np.float64)))
    return pieces


def _intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _union(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def segments_from_stream(
    stream: obspy.Stream, sampling_rate: float = 100.0, min_samples: int = 1
) -> tuple[list[Segment], list[tuple[str, str]]]:
    """Groups, merges, resamples and cuts a stream into :class:`Segment` objects (steps 1-3 of the module docstring).

    :param min_samples: shorter segments are dropped (and listed)
    :return: segments (sorted by instrument and time) and ``(item, reason)`` of what was skipped
    """
    skipped: list[tuple[str, str]] = []
    groups: dict[str, dict[str, list[obspy.Trace]]] = defaultdict(lambda: defaultdict(list))
    for tr in stream:
        s = tr.stats
        groups[f"{s.network}.{s.station}.{s.location}.{s.channel[:-1]}"][s.channel[-1:].upper()].append(tr)
    segments = []
    for instrument in sorted(groups):
        by_comp = groups[instrument]
        chosen: dict[str, list[obspy.Trace]] = {}
        for comp, traces in sorted(by_comp.items()):
            target = comp if comp in _ROWS else _FALLBACK.get(comp)
            if target is None or (comp in _FALLBACK and target in by_comp):
                skipped.append((f"{instrument}{comp}", "component not used (not Z/N/E, or 1/2 next to N/E)"))
                continue
            chosen[target] = traces
        if not chosen:
            continue
        pieces = {}
        for c, traces in chosen.items():
            try:
                pieces[c] = _contiguous_pieces(traces, sampling_rate)
            except ValueError as err:
                skipped.append((f"{instrument}{traces[0].stats.channel[-1]}", str(err)))
        if len(pieces) < len(chosen):
            skipped.append((instrument, "instrument not used: a component could not be read as one record"))
            continue
        covered = None
        for c in pieces:
            spans = _union([(i0, i0 + len(d)) for i0, d in pieces[c]])
            covered = spans if covered is None else _intersect(covered, spans)
        for lo, hi in covered or []:
            if hi - lo < min_samples:
                skipped.append((instrument, f"segment of {hi - lo} samples at {lo / sampling_rate:.2f} s is too short"))
                continue
            data = np.zeros((3, hi - lo), dtype=np.float64)
            for c, plist in pieces.items():
                for i0, d in plist:
                    a, b = max(lo, i0), min(hi, i0 + len(d))
                    if a < b:
                        data[_ROWS[c], a - lo : b - lo] = d[a - i0 : b - i0]
                row = data[_ROWS[c]]
                row -= row.mean()
            segments.append(
                Segment(
                    instrument=instrument,
                    starttime=obspy.UTCDateTime(lo / sampling_rate),
                    data=data.astype(np.float32),
                    components="".join(c for c in "ZNE" if c in pieces),
                )
            )
    return segments, skipped


class ContinuousWindows(torch.utils.data.Dataset):
    """Windows of continuous records (see the module docstring). ``len`` = windows per epoch.

    :param source: file(s)/folder(s) of records, or an ``obspy.Stream``
    :param config: :class:`ContinuousConfig`
    :ivar segments: the :class:`Segment` objects (whole segments; ``span`` selects within them)
    :ivar skipped: ``(item, reason)`` of files, components and segments not used
    """

    def __init__(self, source, config: ContinuousConfig | None = None):
        self.config = c = config or ContinuousConfig()
        a, b = c.span
        if not 0.0 <= a < b <= 1.0:
            raise ValueError(f"span must satisfy 0 <= a < b <= 1, got {c.span}")
        if c.norm not in ("std", "peak"):
            raise ValueError(f"norm must be 'std' or 'peak', got {c.norm!r}")
        if isinstance(source, obspy.Stream):
            stream, self.skipped = source, []
        else:
            stream, self.skipped = read_records(source)
        segments, skipped = segments_from_stream(stream, c.sampling_rate, min_samples=c.window_len)
        self.skipped += skipped
        self.segments = segments
        self._regions = []  # (segment index, first usable sample, usable length, windows)
        for k, seg in enumerate(segments):
            n = seg.data.shape[1]
            lo, hi = int(np.floor(a * n)), int(np.floor(b * n))
            count = (hi - lo) // c.window_len
            if count:
                self._regions.append((k, lo, hi - lo, count))
        self._cumulative = np.cumsum([r[3] for r in self._regions])
        self.epoch = 0
        if len(self) == 0:
            warnings.warn(
                f"No complete {c.window_len}-sample window in the continuous records "
                f"({len(segments)} segments; skipped: {self.skipped[:5]})"
            )

    def __len__(self) -> int:
        return int(self._cumulative[-1]) if len(self._cumulative) else 0

    def set_epoch(self, epoch: int) -> None:
        """Window positions of ``dataset[i]`` follow this epoch (see :meth:`window` to give it explicitly)."""
        self.epoch = int(epoch)

    def _locate(self, index: int, epoch: int) -> tuple[Segment, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        r = int(np.searchsorted(self._cumulative, index, side="right"))
        k, lo, usable, count = self._regions[r]
        first = int(self._cumulative[r - 1]) if r else 0
        slack = usable - count * self.config.window_len
        offset = int(np.random.default_rng([self.config.seed, epoch, k]).integers(0, slack + 1))
        return self.segments[k], lo + offset + (index - first) * self.config.window_len

    def window(self, index: int, epoch: int | None = None) -> np.ndarray:
        """Normalised window ``index`` of ``epoch`` (default :attr:`epoch`): float32 ``(3, window_len)``."""
        from ..pickers import normalize_windows

        seg, start = self._locate(index, self.epoch if epoch is None else epoch)
        raw = torch.from_numpy(seg.data[:, start : start + self.config.window_len])
        return normalize_windows(raw[None], self.config.norm)[0].numpy()

    def window_info(self, index: int, epoch: int | None = None) -> tuple[str, obspy.UTCDateTime]:
        """Instrument and start time of window ``index`` of ``epoch``."""
        seg, start = self._locate(index, self.epoch if epoch is None else epoch)
        return seg.instrument, seg.starttime + start / self.config.sampling_rate

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"X": self.window(index)}
