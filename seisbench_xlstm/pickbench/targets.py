"""Evaluation targets of the SeisBench pick benchmark (Münchmeyer et al. 2022), from the metadata alone.

Task 1 (event detection): 30 s windows labelled ``earthquake`` or ``noise``. A trace with a P or S pick gives an
earthquake window that contains its first arrival (which may not lie in the first or last second of the
window); with ``noise_before_events`` it also gives a noise window that ends before the first arrival, where the
trace holds more than one window of data before it. A trace without picks gives one noise window anywhere.

Task 2 (phase identification) and task 3 (onset regression): 10 s windows around one pick each. A pick gets a
window only when its neighbouring picks on the trace are far enough away (``pick_spacing_s``, 0.5 s) that a 10 s
window containing it and no other pick exists; the pick may not lie in the first or last ``onset_bounds_s``
(0.5 s) of the window.

Windows are drawn with one ``numpy.random.Generator`` per task, seeded with ``seed`` (42), over all traces in
dataset order (windows of the splits not asked for are drawn and dropped), so the targets of a split depend only
on the dataset and the seed.
Picks are the data layer's P/S columns (:func:`seisbench_xlstm.data.pick_columns`); picks outside the trace are
ignored. Where the window rules of the published protocol leave room, these choices are made: a window position
is valid when the pick lies at least the bound inside it (the protocol also drops the case of exactly one valid
position); a trace shorter than one window gives no window (the protocol keeps such a shorter window).

Columns (as the protocol's CSV files): ``trace_name``, ``trace_idx`` (row in the dataset as opened),
``trace_split``, ``sampling_rate``, ``start_sample``, ``end_sample`` (exclusive), and ``trace_type`` (task 1) or
``phase_label`` (P/S), ``full_phase_label`` (the column's phase, e.g. ``Pg``) and ``phase_onset`` (sample in the
trace, float) for tasks 2 and 3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..data import pick_columns, trace_lengths

__all__ = ["TargetsConfig", "select_window", "trace_arrivals", "task1_targets", "task23_targets", "make_targets",
           "save_targets", "load_targets"]

TASK1_COLUMNS = ["trace_name", "trace_idx", "trace_split", "sampling_rate", "start_sample", "end_sample",
                 "trace_type"]
TASK23_COLUMNS = ["trace_name", "trace_idx", "trace_split", "sampling_rate", "start_sample", "end_sample",
                  "phase_label", "full_phase_label", "phase_onset"]


@dataclass(frozen=True)
class TargetsConfig:
    """How targets are drawn (defaults: the published protocol).

    :ivar splits: splits that get targets (the ``split`` column); dev for the thresholds, test for the scores
    :ivar seed: seed of each task's random generator
    :ivar detection_window_s: task 1 window length
    :ivar phase_window_s: task 2/3 window length
    :ivar detection_bounds_s: task 1: the first arrival lies at least this far inside the earthquake window
    :ivar onset_bounds_s: task 2/3: the pick lies at least this far inside its window
    :ivar pick_spacing_s: task 2/3: a window keeps at least this distance to the neighbouring picks
    :ivar noise_before_events: task 1: also cut a noise window before the first arrival of each event trace
    """

    splits: tuple[str, ...] = ("dev", "test")
    seed: int = 42
    detection_window_s: float = 30.0
    phase_window_s: float = 10.0
    detection_bounds_s: float = 1.0
    onset_bounds_s: float = 0.5
    pick_spacing_s: float = 0.5
    noise_before_events: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def select_window(rng: np.random.Generator, npts: int, windowlen: int, containing: float | None = None,
                  bounds: tuple[int, int] = (0, 0)) -> tuple[int, int] | None:
    """A random window ``[start, start + windowlen)`` inside ``[0, npts)``, or None where none fits.

    With ``containing``, the sample ``containing`` lies at least ``bounds[0]`` samples after the window start and
    at least ``bounds[1]`` samples before the window end (``start + bounds[0] <= containing <= end - bounds[1]``).
    Every valid integer start is equally likely.
    """
    if windowlen < 1:
        raise ValueError(f"windowlen must be positive, got {windowlen}")
    latest = npts - windowlen
    earliest = 0
    if containing is not None:
        earliest = max(earliest, int(np.ceil(containing + bounds[1] - windowlen)))
        latest = min(latest, int(np.floor(containing - bounds[0])))
    if latest < earliest:
        return None
    start = int(rng.integers(earliest, latest + 1))
    return start, start + windowlen


def _source_rates(dataset) -> np.ndarray:
    md = dataset.metadata
    fmt = getattr(dataset, "data_format", None) or {}
    default = float(fmt.get("sampling_rate", np.nan)) if isinstance(fmt, dict) else np.nan
    if "trace_sampling_rate_hz" not in md.columns:
        return np.full(len(md), default)
    sr = pd.to_numeric(md["trace_sampling_rate_hz"], errors="coerce").to_numpy(dtype=float)
    return np.where(np.isfinite(sr), sr, default)


def trace_arrivals(dataset) -> list[list[tuple[float, str, str]]]:
    """Per trace: sorted ``(sample, "P"|"S", full phase)`` of the picks inside the trace, at the dataset's rate."""
    md = dataset.metadata
    columns = pick_columns(md.columns)
    n = trace_lengths(dataset)
    scale = np.ones(len(md))
    if getattr(dataset, "sampling_rate", None):
        rates = _source_rates(dataset)
        scale = np.where(np.isfinite(rates), dataset.sampling_rate / rates, 1.0)
    out: list[list[tuple[float, str, str]]] = [[] for _ in range(len(md))]
    for col, phase in columns.items():
        values = pd.to_numeric(md[col], errors="coerce").to_numpy(dtype=float) * scale
        full = col[len("trace_"):-len("_arrival_sample")]
        for i in np.flatnonzero(np.isfinite(values) & (values >= 0) & (values < n)):
            out[i].append((float(values[i]), phase, full))
    return [sorted(a) for a in out]


def _wanted(dataset, splits: Sequence[str]) -> np.ndarray:
    md = dataset.metadata
    if "split" not in md.columns:
        raise ValueError("the dataset has no 'split' column (assign one with seisbench_xlstm.data.assign_splits)")
    return md["split"].isin(list(splits)).to_numpy()


def _base(md, i: int, rate: float, window: tuple[int, int]) -> dict:
    return {"trace_name": md["trace_name"].iloc[i], "trace_idx": int(i), "trace_split": md["split"].iloc[i],
            "sampling_rate": rate, "start_sample": window[0], "end_sample": window[1]}


def task1_targets(dataset, config: TargetsConfig = TargetsConfig()) -> pd.DataFrame:
    """Task 1 windows of the traces in ``config.splits`` (see the module docstring)."""
    md = dataset.metadata
    rate = float(dataset.sampling_rate or 100.0)
    windowlen = int(round(config.detection_window_s * rate))
    bound = int(round(config.detection_bounds_s * rate))
    rng = np.random.default_rng(config.seed)
    arrivals = trace_arrivals(dataset)
    n = trace_lengths(dataset)
    wanted = _wanted(dataset, config.splits)
    rows = []

    def add(i, window, **labels):
        if window and wanted[i]:
            rows.append(dict(_base(md, i, rate, window), **labels))

    for i in range(len(md)):
        if not arrivals[i]:
            add(i, select_window(rng, int(n[i]), windowlen), trace_type="noise")
            continue
        first = arrivals[i][0][0]
        add(i, select_window(rng, int(n[i]), windowlen, containing=first, bounds=(bound, bound)),
            trace_type="earthquake")
        if config.noise_before_events and first > windowlen:
            add(i, select_window(rng, int(min(n[i], np.floor(first))), windowlen), trace_type="noise")
    return pd.DataFrame(rows, columns=TASK1_COLUMNS)


def task23_targets(dataset, config: TargetsConfig = TargetsConfig()) -> pd.DataFrame:
    """Task 2/3 windows of the traces in ``config.splits`` (see the module docstring)."""
    md = dataset.metadata
    rate = float(dataset.sampling_rate or 100.0)
    windowlen = int(round(config.phase_window_s * rate))
    bound = int(round(config.onset_bounds_s * rate))
    spacing = config.pick_spacing_s * rate
    rng = np.random.default_rng(config.seed)
    arrivals = trace_arrivals(dataset)
    n = trace_lengths(dataset)
    wanted = _wanted(dataset, config.splits)
    rows = []
    for i in range(len(md)):
        picks = arrivals[i]
        for k, (onset, phase, full) in enumerate(picks):
            # the window must lie in [lo, hi): away from the neighbouring picks by the spacing
            lo = 0 if k == 0 else int(np.ceil(picks[k - 1][0] + spacing))
            hi = int(n[i]) if k == len(picks) - 1 else int(np.floor(picks[k + 1][0] - spacing)) + 1
            if not lo <= onset < hi:
                continue
            window = select_window(rng, hi - lo, windowlen, containing=onset - lo, bounds=(bound, bound))
            if window and wanted[i]:
                window = (window[0] + lo, window[1] + lo)
                rows.append(dict(_base(md, i, rate, window), phase_label=phase, full_phase_label=full,
                                 phase_onset=onset))
    return pd.DataFrame(rows, columns=TASK23_COLUMNS)


def make_targets(dataset, config: TargetsConfig = TargetsConfig()) -> dict[str, pd.DataFrame]:
    """``{"task1": ..., "task23": ...}`` for ``dataset`` (opened with :func:`seisbench_xlstm.data.open_dataset`)."""
    return {"task1": task1_targets(dataset, config), "task23": task23_targets(dataset, config)}


def save_targets(targets: dict[str, pd.DataFrame], folder: str | Path) -> None:
    """Writes ``folder/task1.csv`` and ``folder/task23.csv``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in targets.items():
        frame.to_csv(folder / f"{name}.csv", index=False)


def load_targets(folder: str | Path) -> dict[str, pd.DataFrame]:
    """Reads the files :func:`save_targets` wrote (those present)."""
    folder = Path(folder)
    return {name: pd.read_csv(folder / f"{name}.csv") for name in ("task1", "task23")
            if (folder / f"{name}.csv").is_file()}
