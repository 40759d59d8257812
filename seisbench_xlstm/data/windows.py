"""Which traces can give a full training window, from the metadata alone (no waveform is read).

Training windows are real data end to end: no generator pads a window. So a trace shorter than one window
is skipped, and a pure-noise window is cut before the first pick only where the trace holds a full window of
pre-arrival data (``first pick - margin >= window_len``). :func:`window_eligibility` counts this per dataset;
the generators report it (``generator.eligibility``) and warn when the noise windows asked for cannot be had.

Trace lengths are read from ``trace_npts`` where the metadata has it, else from the shape encoded in
SeisBench's ``trace_name`` (``bucket3$5,:3,:9001``), else from the HDF5 dataset's shape; they are converted to
the dataset's sampling rate exactly as :mod:`.resample` (the annotate resampler) resamples.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import seisbench.data as sbd

from .resample import output_length

__all__ = [
    "WindowEligibility",
    "window_eligibility",
    "trace_lengths",
    "first_pick_samples",
    "usable_mask",
    "drop_unusable",
]


def _parts(dataset) -> list[sbd.WaveformDataset]:
    if isinstance(dataset, sbd.MultiWaveformDataset):
        return list(dataset.datasets)
    return [dataset]


def resampled_length(n: int, source: float, target: float | None, eps: float = 1e-4) -> int:
    """Samples of an ``n``-sample trace at ``source`` Hz after resampling to ``target`` Hz (see :mod:`.resample`)."""
    if target is None or not np.isfinite(source) or 1 - eps < target / source < 1 + eps:
        return int(n)
    return output_length(int(n), float(source), float(target))


def _length_from_name(name: str, w_axis: int) -> int | None:
    if "$" not in name:
        return None
    loc = name.split("$", 1)[1].replace(" ", "").split(",")
    if len(loc) <= w_axis + 1:
        return None
    part = loc[w_axis + 1].split(":")
    if len(part) != 2 or not part[1] or (part[0] not in ("", "0")):
        return None
    try:
        return int(part[1])
    except ValueError:
        return None


def _part_lengths(ds: sbd.WaveformDataset) -> np.ndarray:
    md = ds.metadata
    dims = str(ds.data_format.get("dimension_order", "CW")).replace("N", "")
    w_axis = dims.index("W") if "W" in dims else len(dims) - 1
    n = np.full(len(md), -1, dtype=np.int64)
    if "trace_npts" in md.columns:
        v = pd.to_numeric(md["trace_npts"], errors="coerce").to_numpy()
        ok = np.isfinite(v)
        n[ok] = v[ok].astype(np.int64)
    names = md["trace_name"].astype(str).to_numpy()
    chunks = md["trace_chunk"].astype(str).to_numpy() if "trace_chunk" in md.columns else np.full(len(md), "")
    missing = np.flatnonzero(n < 0)
    for i in missing:
        k = _length_from_name(names[i], w_axis)
        if k is not None:
            n[i] = k
    missing = np.flatnonzero(n < 0)
    if len(missing):
        import h5py

        for chunk in sorted(set(chunks[missing])):
            with h5py.File(Path(ds.path) / f"waveforms{chunk}.hdf5", "r") as f:
                for i in missing[chunks[missing] == chunk]:
                    name = names[i]
                    block, loc = (name.split("$", 1) + [":"])[:2] if "$" in name else (name, ":")
                    shape = f["data"][block].shape
                    sl = sbd.WaveformDataset._parse_location(loc)
                    dummy = np.broadcast_to(np.zeros((), dtype=np.int8), shape)[sl]
                    n[i] = dummy.shape[w_axis]
    return n


def _source_rates(ds: sbd.WaveformDataset) -> np.ndarray:
    """Stored sampling rate per trace (``trace_sampling_rate_hz``, else the file's ``data_format``)."""
    md = ds.metadata
    default = float(ds.data_format.get("sampling_rate", np.nan))
    if "trace_sampling_rate_hz" not in md.columns:
        return np.full(len(md), default)
    sr = pd.to_numeric(md["trace_sampling_rate_hz"], errors="coerce").to_numpy(dtype=float)
    return np.where(np.isfinite(sr), sr, default)


def trace_lengths(dataset) -> np.ndarray:
    """Samples per trace at the dataset's sampling rate (what ``get_sample`` returns), in metadata order."""
    out = []
    for ds in _parts(dataset):
        n = _part_lengths(ds)
        out.append(np.array([resampled_length(k, s, ds.sampling_rate) for k, s in zip(n, _source_rates(ds))],
                            dtype=np.int64))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _part_picks(ds: sbd.WaveformDataset, columns: Sequence[str], n: np.ndarray):
    """Per trace of one part at its sampling rate: earliest pick (NaN without) and whether a pick lies inside."""
    md = ds.metadata
    cols = [c for c in columns if c in md.columns]
    if not cols:
        return np.full(len(md), np.nan), np.zeros(len(md), dtype=bool)
    picks = md[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    if ds.sampling_rate is not None:
        picks = picks * (ds.sampling_rate / _source_rates(ds))[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
        first = np.nanmin(picks, axis=1)
    return first, ((picks >= 0) & (picks < n[:, None])).any(axis=1)


def first_pick_samples(dataset, columns: Sequence[str]) -> np.ndarray:
    """Earliest pick per trace among ``columns``, in samples at the dataset's sampling rate (NaN: no pick)."""
    return np.concatenate([_part_picks(ds, columns, trace_lengths(ds))[0] for ds in _parts(dataset)])


@dataclass
class WindowEligibility:
    """How many traces of a dataset can give full windows of ``window_len`` samples (no padding).

    :ivar traces: traces in the dataset.
    :ivar short: traces shorter than ``window_len``: skipped by the generators.
    :ivar picks_outside: traces whose picks all lie before the trace start (no pick inside, not noise): skipped.
    :ivar usable: ``traces - short - picks_outside``.
    :ivar noise_traces: usable traces without any pick: always noise windows.
    :ivar eligible_event_traces: usable traces with picks and at least ``window_len`` samples before
        (first pick - margin): noise window with probability ``noise_window_p``, else pick window.
    :ivar ineligible_event_traces: usable traces with picks and less pre-arrival data: pick windows only.
    """

    window_len: int
    margin: int
    traces: int
    short: int
    picks_outside: int
    usable: int
    noise_traces: int
    eligible_event_traces: int
    ineligible_event_traces: int

    @property
    def noise_eligible(self) -> int:
        """Usable traces that can give a pure-noise window."""
        return self.noise_traces + self.eligible_event_traces

    def expected_noise_fraction(self, noise_window_p: float) -> float:
        """Share of noise windows when every usable trace is drawn equally often."""
        if self.usable == 0:
            return 0.0
        return (self.noise_traces + noise_window_p * self.eligible_event_traces) / self.usable

    def report(self, noise_window_p: float | None = None) -> str:
        """One line: what is skipped, and who can give noise windows."""
        text = (
            f"{self.short} of {self.traces} traces shorter than {self.window_len} samples and "
            f"{self.picks_outside} with all picks before the trace start skipped; of {self.usable} usable, "
            f"{self.noise_traces} noise traces and {self.eligible_event_traces} event traces hold a pre-arrival "
            f"noise window (>= {self.window_len} samples before first pick - {self.margin}), "
            f"{self.ineligible_event_traces} event traces give pick windows only"
        )
        if noise_window_p is not None:
            text += (
                f"; noise windows: {self.expected_noise_fraction(noise_window_p):.1%} expected "
                f"(noise_window_p={noise_window_p:.0%})"
            )
        return text


def _classify(dataset, window_len: int, margin: int, columns: Sequence[str]):
    n, first, inside = [], [], []
    for ds in _parts(dataset):
        k = trace_lengths(ds)
        f, i = _part_picks(ds, columns, k)
        n.append(k), first.append(f), inside.append(i)
    n, first, inside = np.concatenate(n), np.concatenate(first), np.concatenate(inside)
    has_pick = np.isfinite(first)
    short = n < window_len
    outside = has_pick & ~inside & (first < 0)
    usable = ~short & ~outside
    eligible = has_pick & (np.floor(np.nan_to_num(first, nan=-1.0)) - margin >= window_len)
    return n, usable, short, outside, has_pick, eligible


def window_eligibility(
    dataset, window_len: int = 4096, margin: int = 100, pick_columns: Sequence[str] | None = None
) -> WindowEligibility:
    """Count the traces of ``dataset`` that give full windows and pre-arrival noise windows.

    :param dataset: ``WaveformDataset``/``MultiWaveformDataset`` (or a ``MixedDataset``).
    :param margin: samples between a noise window's end and the first pick (the generators use 5 sigma).
    :param pick_columns: pick columns (default: every P/S column of :mod:`.phases`).
    """
    dataset = getattr(dataset, "dataset", dataset)
    if pick_columns is None:
        from .phases import pick_columns as _pc

        pick_columns = list(_pc(dataset.metadata.columns))
    _, usable, short, outside, has_pick, eligible = _classify(dataset, window_len, margin, pick_columns)
    return WindowEligibility(
        window_len=int(window_len),
        margin=int(margin),
        traces=int(len(usable)),
        short=int(short.sum()),
        picks_outside=int((outside & ~short).sum()),
        usable=int(usable.sum()),
        noise_traces=int((usable & ~has_pick).sum()),
        eligible_event_traces=int((usable & eligible).sum()),
        ineligible_event_traces=int((usable & has_pick & ~eligible).sum()),
    )


def usable_mask(dataset, window_len: int, pick_columns: Sequence[str] | None = None) -> np.ndarray:
    """Boolean mask of the traces that give full windows (long enough, a pick inside or no pick at all)."""
    dataset = getattr(dataset, "dataset", dataset)
    if pick_columns is None:
        from .phases import pick_columns as _pc

        pick_columns = list(_pc(dataset.metadata.columns))
    return _classify(dataset, window_len, 0, pick_columns)[1]


def drop_unusable(dataset, window_len: int, pick_columns: Sequence[str] | None = None):
    """``dataset`` without the traces that cannot give a full window (a filtered copy; the same object if none)."""
    mask = usable_mask(dataset, window_len, pick_columns)
    if mask.all():
        return dataset
    return dataset.filter(mask, inplace=False)
