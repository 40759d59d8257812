"""State-dict augmentations without a SeisBench library equivalent, used by :mod:`.generators`.

All follow SeisBench's augmentation protocol: ``aug(state_dict)`` with ``state_dict["X"] = (waveform, metadata)``,
waveforms channels-first ``(channels, samples)``, picks in the metadata as ``*_arrival_sample`` keys.

* :class:`NoiseOrPickWindow`: with probability ``p`` a pure-noise window cut before the first pick
  (:class:`PreArrivalNoiseWindow`), where the trace has enough pre-arrival data; otherwise a window around
  a pick (:func:`pick_window`). Nothing is ever padded.
* :class:`SegmentDemeanedGap`: a gap as annotate sees it (each side demeaned by its own mean, gap exactly 0).
* :class:`TrimFlatEdges`: cuts a dataset's own padding (constant runs at a trace's start or end) off the trace
  before windowing.
* :class:`SuperimposeEvent`, :class:`RandomAmplitudeScale`, :class:`Sequential`.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import seisbench.generate as sbg

__all__ = [
    "Sequential",
    "PreArrivalNoiseWindow",
    "NoiseOrPickWindow",
    "SegmentDemeanedGap",
    "SuperimposeEvent",
    "RandomAmplitudeScale",
    "TrimFlatEdges",
    "flat_edges",
    "pick_window",
    "first_pick",
    "SUPERIMPOSED_P",
    "SUPERIMPOSED_S",
]

#: Metadata keys under which :class:`SuperimposeEvent` stores the added event's picks.
SUPERIMPOSED_P = "trace_superimposedP_arrival_sample"
SUPERIMPOSED_S = "trace_superimposedS_arrival_sample"


class Sequential:
    """Apply several state-dict augmentations in order (so that ``sbg.OneOf`` can choose between chains)."""

    def __init__(self, augmentations: Sequence[Callable]):
        self.augmentations = list(augmentations)

    def __call__(self, state_dict):
        for aug in self.augmentations:
            aug(state_dict)

    def __str__(self):
        return "Sequential(" + ", ".join(str(a) for a in self.augmentations) + ")"


def _arrival_keys(metadata: dict) -> list[str]:
    return [k for k in metadata if k.endswith("_arrival_sample")]


def _pick_sample(metadata: dict, column: str) -> float | None:
    """The pick in ``column`` as a finite float, or None (absent, NaN or not a number)."""
    try:
        v = float(metadata.get(column))
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _finite_picks(metadata: dict, columns: Sequence[str]) -> list[float]:
    return [v for v in (_pick_sample(metadata, col) for col in columns) if v is not None]


def first_pick(metadata: dict, columns: Sequence[str]) -> float:
    """Earliest finite pick (samples) among ``columns`` of ``metadata``; NaN when there is none."""
    vals = _finite_picks(metadata, columns)
    return min(vals) if vals else np.nan


def noise_window_end(n_samples: int, first: float, margin: int) -> int:
    """Last usable sample (exclusive) of pre-arrival noise: ``first - margin`` (the whole trace without picks)."""
    if np.isnan(first):
        return int(n_samples)
    return int(max(0, min(n_samples, np.floor(first) - margin)))


def flat_edges(x: np.ndarray) -> tuple[int, int]:
    """Lengths of the runs at the start and at the end of ``x`` ``(channels, samples)`` where every channel stays
    at its edge value (padding; a trace that is constant throughout gives ``(n, n)``)."""
    out = []
    for seq in (x, x[..., ::-1]):
        same = (seq == seq[..., :1]).reshape(-1, seq.shape[-1]).all(axis=0)
        out.append(int(np.argmin(same)) if not same.all() else seq.shape[-1])
    return out[0], out[1]


class TrimFlatEdges:
    """Cut padding that a dataset stores in its traces (constant runs of ``min_run`` samples or more at the start
    or the end, on all channels at once) off the trace, shifting the picks with it (``sbg.FixedWindow``).

    Some datasets pad records that start late or end early with zeros (41 of the 154 NCEDC traces of
    ``../shared/data/ncedc154`` start with 27 to 3,356 zeros); a window reaching into that padding would show
    the model a flat segment that annotate never shows. The trace keeps at least ``keep`` samples (the
    window length): where the real data are shorter, as little padding as possible is kept.
    """

    def __init__(self, keep: int, min_run: int = 50, key: str = "X"):
        self.keep = int(keep)
        self.min_run = int(min_run)
        self.key = key
        self._window = sbg.FixedWindow(key=key, strategy="fail")

    def __call__(self, state_dict):
        x, _ = state_dict[self.key]
        n = x.shape[-1]
        if n <= self.keep:
            return
        head, tail = flat_edges(x)
        a = head if head >= self.min_run else 0
        b = n - tail if tail >= self.min_run else n
        if a == 0 and b == n:
            return
        if b - a < self.keep:  # keep a full window around the data: the least padding possible
            a = max(0, b - self.keep)
            b = a + self.keep
        self._window(state_dict, p0=int(a), windowlen=int(b - a))

    def __str__(self):
        return f"TrimFlatEdges(keep={self.keep}, min_run={self.min_run})"


class PreArrivalNoiseWindow:
    """Cut a pure-noise window of ``windowlen`` samples ending at least ``margin`` samples before the first pick.

    Traces without picks (noise traces) give a random window anywhere. A trace with less than ``windowlen``
    samples of pre-arrival data raises ``ValueError``: windows are never padded (use
    :class:`NoiseOrPickWindow`, which gives such traces a pick window). All ``*_arrival_sample`` entries
    of the metadata are set to NaN, so the labeller marks only Noise.

    :param pick_columns: metadata keys that hold picks (sample units).
    """

    def __init__(self, pick_columns: Sequence[str], windowlen: int, margin: int, key: str = "X"):
        self.pick_columns = list(pick_columns)
        self.windowlen = int(windowlen)
        self.margin = int(margin)
        self.key = key

    def eligible(self, n_samples: int, metadata: dict) -> bool:
        """Whether a trace of ``n_samples`` with these picks holds a full noise window."""
        return noise_window_end(n_samples, first_pick(metadata, self.pick_columns), self.margin) >= self.windowlen

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        metadata = copy.copy(metadata)
        end = noise_window_end(x.shape[-1], first_pick(metadata, self.pick_columns), self.margin)
        if end < self.windowlen:
            raise ValueError(
                f"only {end} samples of pre-arrival data (first pick - margin {self.margin}); a noise window "
                f"needs {self.windowlen}. Windows are not padded: use NoiseOrPickWindow."
            )
        p0 = np.random.randint(0, end - self.windowlen + 1)
        for key in _arrival_keys(metadata):
            metadata[key] = np.nan
        state_dict[self.key] = (np.array(x[..., p0 : p0 + self.windowlen]), metadata)

    def __str__(self):
        return f"PreArrivalNoiseWindow(windowlen={self.windowlen}, margin={self.margin})"


class _PicksInsideTrace:
    """Set picks that lie outside the trace to NaN (they cannot be in any window of it, and a window around
    them would reach past the trace's end)."""

    def __init__(self, columns: Sequence[str], key: str = "X"):
        self.columns = list(columns)
        self.key = key

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        n = x.shape[-1]
        changed = None
        for col in self.columns:
            v = _pick_sample(metadata, col)
            if v is not None and not 0 <= v < n:
                changed = changed or copy.copy(metadata)
                changed[col] = np.nan
        if changed is not None:
            state_dict[self.key] = (x, changed)

    def __str__(self):
        return "PicksInsideTrace"


def pick_window(columns: Sequence[str], windowlen: int) -> Sequential:
    """Library windowing: a 2*windowlen span around a random pick, then a random windowlen cut of it.

    The pick lands uniformly anywhere in the output window where the trace allows it (the SeisBench
    pick-benchmark recipe). The trace must hold ``windowlen`` samples and a pick inside it; then the span is
    at least ``windowlen`` long and ``RandomWindow(strategy="fail")`` never pads.
    """
    return Sequential(
        [
            _PicksInsideTrace(columns),
            sbg.WindowAroundSample(
                list(columns),
                samples_before=windowlen,
                windowlen=2 * windowlen,
                selection="random",
                strategy="variable",
            ),
            sbg.RandomWindow(windowlen=windowlen, strategy="fail"),
        ]
    )


class NoiseOrPickWindow:
    """With probability ``p`` a pre-arrival noise window where the trace allows it, otherwise a pick window.

    * traces without picks (noise traces): always a noise window (anywhere in the trace);
    * event traces with at least ``windowlen`` samples before (first pick - margin): a noise window with
      probability ``p``, else a pick window;
    * event traces with less pre-arrival data: always a pick window (never a padded noise window).

    The trace must be at least ``windowlen`` long (the generators skip shorter traces).
    """

    def __init__(self, pick_columns: Sequence[str], windowlen: int, margin: int, p: float, key: str = "X"):
        if not 0 <= p <= 1:
            raise ValueError(f"noise window probability must be in [0, 1], got {p}")
        self.trim = TrimFlatEdges(windowlen, key=key)
        self.noise = PreArrivalNoiseWindow(pick_columns, windowlen, margin, key=key)
        self.pick = pick_window(pick_columns, windowlen)
        self.p = float(p)
        self.key = key

    def __call__(self, state_dict):
        self.trim(state_dict)
        x, metadata = state_dict[self.key]
        if np.isnan(first_pick(metadata, self.noise.pick_columns)):
            self.noise(state_dict)
        elif self.p > 0 and np.random.random() < self.p and self.noise.eligible(x.shape[-1], metadata):
            self.noise(state_dict)
        else:
            self.pick(state_dict)

    def __str__(self):
        return f"NoiseOrPickWindow(p={self.p}, {self.noise}, {self.pick})"


class SegmentDemeanedGap(sbg.AddGap):
    """A gap as annotate sees it: zeros in the gap, each contiguous part around it demeaned by its own mean.

    Annotate demeans every contiguous segment of a record in raw counts before SeisBench fills gaps with
    zeros, then normalises the window. This augmentation therefore sets the gap (per channel) to exactly 0
    and subtracts from the part before and the part after the gap their own means; the window normalisation
    that follows in the pipeline completes the same window annotate builds.

    Gap position as in :class:`seisbench.generate.AddGap` (start uniform in ``[0, n - 1)``, end uniform in
    ``[start, n)``), or fixed with ``gap=(start, end)``. A pick inside the gap is set to NaN (AddGap's
    ``metadata_picks_in_gap_threshold`` rule, default 0: any pick in the gap).

    :param gap: fixed ``(start, end)`` sample range (end exclusive), or None for a random gap.
    """

    def __init__(self, gap: tuple[int, int] | None = None, metadata_picks_in_gap_threshold: int = 0, **kwargs):
        super().__init__(metadata_picks_in_gap_threshold=metadata_picks_in_gap_threshold, **kwargs)
        self.gap = gap

    def _draw(self, n: int) -> tuple[int, int]:
        if self.gap is not None:
            a, b = (int(v) for v in self.gap)
            if not 0 <= a <= b <= n:
                raise ValueError(f"gap {self.gap} outside a window of {n} samples")
            return a, b
        a = np.random.randint(n - 1)
        return a, np.random.randint(a, n)

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key[0]]
        # a copy: the input may be a view of cached waveforms
        x = np.array(x, dtype=x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)
        metadata = copy.copy(metadata)
        x = np.moveaxis(x, self.axis, -1)  # a view: edits go to x
        a, b = self._draw(x.shape[-1])
        for part in (slice(0, a), slice(b, None)):
            seg = x[..., part]
            if seg.shape[-1]:
                seg -= seg.mean(axis=-1, keepdims=True)
        x[..., a:b] = 0
        x = np.moveaxis(x, -1, self.axis)
        if self.metadata_picks_in_gap_threshold is not None:
            thr = self.metadata_picks_in_gap_threshold
            for key in _arrival_keys(metadata):
                v = np.asarray(metadata[key], dtype=float)
                inside = np.minimum(v - a, b - 1 - v) >= thr
                if inside.any():
                    metadata[key] = np.where(inside, np.nan, v) if v.ndim else np.nan
        state_dict[self.key[1]] = (x, metadata)
        for label_key in self.label_keys:  # labels, as AddGap: zero in the gap, noise 1
            y, _ = state_dict[label_key[0]]
            y = np.moveaxis(y.copy(), self.axis, -1)
            y[..., a:b] = 0
            if label_key[0] in self.noise_id:
                y[..., self.noise_id[label_key[0]], a:b] = 1
            state_dict[label_key[1]] = (np.moveaxis(y, -1, self.axis), copy.copy(metadata))

    def __str__(self):
        return f"SegmentDemeanedGap(gap={self.gap})"


class RandomAmplitudeScale:
    """Multiply the window by a log-uniform random factor in ``scale`` (one factor, or one per channel)."""

    def __init__(self, scale: tuple[float, float] = (0.5, 2.0), per_channel: bool = False, key: str = "X"):
        if scale[0] <= 0 or scale[1] < scale[0]:
            raise ValueError(f"scale must be 0 < low <= high, got {scale}")
        self.scale = scale
        self.per_channel = per_channel
        self.key = key

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        shape = x.shape[:-1] + (1,) if self.per_channel else ()
        factor = np.exp(np.random.uniform(np.log(self.scale[0]), np.log(self.scale[1]), size=shape))
        state_dict[self.key] = ((x * factor).astype(x.dtype, copy=False), metadata)

    def __str__(self):
        return f"RandomAmplitudeScale(scale={self.scale}, per_channel={self.per_channel})"


class SuperimposeEvent:
    """Add a second, randomly chosen event window (with its picks) to the current window.

    The other trace is cut with the same library windowing as the picking windows (a random offset
    around one of its picks), demeaned, scaled to ``U(scale) * max|x - mean(x)|`` of the current window
    and added. Its earliest P and S (per :mod:`.phases`) are written to :data:`SUPERIMPOSED_P` /
    :data:`SUPERIMPOSED_S`, which the picking labeller maps to P and S. Windows that already are pure
    noise (no pick inside) are left unchanged, so noise stays noise.

    :param dataset: dataset to draw the second event from (only traces with a P or S pick are used; the
        generators pass a dataset without traces shorter than a window).
    """

    def __init__(
        self,
        dataset,
        pick_map: dict[str, str],
        windowlen: int,
        scale: tuple[float, float] = (0.1, 1.0),
        key: str = "X",
    ):
        self.dataset = dataset
        self.pick_map = dict(pick_map)
        self.windowlen = int(windowlen)
        self.scale = scale
        self.key = key
        cols = [c for c in self.pick_map if c in dataset.metadata.columns]
        if cols:
            has_pick = dataset.metadata[cols].notna().any(axis=1).to_numpy()
            self.candidates = np.flatnonzero(has_pick)
        else:
            self.candidates = np.zeros(0, dtype=int)
        self._window = Sequential([TrimFlatEdges(self.windowlen), pick_window(list(self.pick_map), self.windowlen)])

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        if len(self.candidates) == 0:
            return
        if np.isnan(first_pick(metadata, list(self.pick_map))):
            return  # pure-noise window: keep it pure
        idx = int(self.candidates[np.random.randint(len(self.candidates))])
        other, other_meta = self.dataset.get_sample(idx)
        tmp = {"X": (np.asarray(other, dtype=np.float64), dict(other_meta))}
        try:
            self._window(tmp)
        except ValueError:
            return  # the other trace has no pick inside it: nothing to superimpose
        w, wmeta = tmp["X"]
        w = w - w.mean(axis=-1, keepdims=True)
        peak = np.abs(w).max()
        if not np.isfinite(peak) or peak == 0:
            return
        base = np.abs(x - x.mean(axis=-1, keepdims=True)).max()
        if not np.isfinite(base) or base == 0:
            base = 1.0
        w = w / peak * base * np.random.uniform(*self.scale)
        metadata = copy.copy(metadata)
        for out_key, label in ((SUPERIMPOSED_P, "P"), (SUPERIMPOSED_S, "S")):
            cols = [c for c, lab in self.pick_map.items() if lab == label]
            metadata[out_key] = first_pick(wmeta, cols)
        state_dict[self.key] = ((x + w).astype(x.dtype, copy=False), metadata)

    def __str__(self):
        return f"SuperimposeEvent(n_candidates={len(self.candidates)}, scale={self.scale})"
