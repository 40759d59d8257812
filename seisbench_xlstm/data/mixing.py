"""Mix several datasets with per-dataset weights or fractions, keeping train/dev/test splits and noise.

* ``weights``: relative probability of drawing a window from each dataset (mixture proportions). Applied
  by :meth:`MixedDataset.sampler` (a ``torch.utils.data.WeightedRandomSampler`` over traces: every trace of
  dataset ``d`` has weight ``w_d / n_d``), so a small dataset can make up a large share of the batches.
* ``fractions``: share of each dataset's *events* that is kept at all (deterministic subsample by
  ``source_id``; traces without an event id, e.g. noise, are subsampled individually).

Splits: each dataset keeps its own ``split`` column; the mixture's train split is the union of the
datasets' train splits, and so on. Datasets without a ``split`` column get one from :func:`assign_splits`
(by event, so one event never sits in two splits). Noise traces stay in the mixture untouched: they have no
picks, so the picking generator labels them Noise.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import seisbench.data as sbd

from .datasets import open_dataset
from .splits import SPLITS, split_by_event
from .windows import usable_mask

__all__ = ["MixedDataset", "mix_datasets", "assign_splits", "SPLITS"]


def _group_keys(metadata: pd.DataFrame, by: str = "source_id") -> np.ndarray:
    """Event id per trace; traces without one (noise) are their own group (keyed by trace name)."""
    names = [str(n) for n in metadata["trace_name"]]
    if by in metadata.columns:
        ev = metadata[by].tolist()
        keys = [f"trace:{n}" if pd.isna(e) else f"event:{e}" for n, e in zip(names, ev)]
    else:
        keys = [f"trace:{n}" for n in names]
    return np.array(keys, dtype=object)


def _trace_spans(md: pd.DataFrame, ds) -> tuple[list | None, np.ndarray | None, np.ndarray | None]:
    """Station key and time span (seconds, end exclusive) per trace, where the metadata allows it."""
    if "station_code" not in md.columns or "trace_start_time" not in md.columns:
        return None, None, None
    cols = [c for c in ("station_network_code", "station_code", "station_location_code") if c in md.columns]
    stations = md[cols].astype(str).agg(".".join, axis=1).tolist()
    t = pd.to_datetime(md["trace_start_time"], utc=True, errors="coerce")
    starts = (t - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=float)
    from .windows import _part_lengths, _source_rates

    ends = starts + _part_lengths(ds) / _source_rates(ds)
    return stations, starts, ends


def assign_splits(
    dataset: sbd.WaveformDataset,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    by: str = "source_id",
    overwrite: bool = False,
) -> sbd.WaveformDataset:
    """Write a ``split`` column (train/dev/test) into the dataset's metadata, by event.

    The package's one split algorithm (:func:`~.splits.split_by_event`, shared with ``ingest``): all traces
    sharing a ``by`` value (event id) land in one split; traces without one (noise) are split individually;
    traces that already have a split keep it and their event's other traces follow it (the majority, with a
    warning where the existing splits disagree); events whose traces overlap in time at the same station
    (from ``station_code`` + ``trace_start_time``, where present) are placed together. Warns when a split ends
    up empty or tiny. Deterministic for a given ``seed``. A complete existing split column is left untouched
    unless ``overwrite``. Modifies ``dataset`` in place and returns it.
    """
    md = dataset.metadata
    if "split" in md.columns and not overwrite and md["split"].notna().all():
        return dataset
    events = md[by].tolist() if by in md.columns else [None] * len(md)
    existing = md["split"].tolist() if "split" in md.columns and not overwrite else None
    stations, starts, ends = _trace_spans(md, dataset)
    split, _ = split_by_event(
        events, fractions, seed, existing=existing, stations=stations, starts=starts, ends=ends,
        what=f"assign_splits({getattr(dataset, 'name', '')})",
    )
    md["split"] = split
    return dataset


def _components(ds) -> list[sbd.WaveformDataset]:
    if isinstance(ds, sbd.MultiWaveformDataset):
        return list(ds.datasets)
    if isinstance(ds, sbd.WaveformDataset):
        return [ds]
    raise TypeError(f"expected a WaveformDataset or MultiWaveformDataset, got {type(ds).__name__}")


def _subsample(ds: sbd.WaveformDataset, fraction: float, seed: int) -> sbd.WaveformDataset:
    if not 0 < fraction <= 1:
        raise ValueError(f"fractions must be in (0, 1], got {fraction}")
    if fraction == 1:
        return ds
    keys = _group_keys(ds.metadata)
    uniq = np.array(sorted(set(keys)))
    rng = np.random.default_rng(seed)
    n_keep = max(1, int(round(fraction * len(uniq))))
    keep = set(rng.choice(uniq, size=n_keep, replace=False).tolist())
    return ds.filter(np.array([k in keep for k in keys]), inplace=False)


@dataclass
class MixedDataset:
    """Several datasets as one, with per-trace sampling weights.

    :ivar dataset: the combined SeisBench dataset (``MultiWaveformDataset`` for several parts); pass it, or
        this object, to the generators.
    :ivar parts: component ``WaveformDataset`` objects.
    :ivar groups: index of the input dataset each part came from.
    :ivar names: names of the inputs.
    :ivar dataset_weights: normalised mixture weights of the inputs (sum 1).
    """

    parts: list[sbd.WaveformDataset]
    groups: list[int]
    names: list[str]
    dataset_weights: np.ndarray
    #: per input: traces dropped because they cannot give a full window (see ``min_samples``)
    dropped: list[int] | None = None

    def __post_init__(self):
        if self.dropped is None:
            self.dropped = [0] * len(self.names)
        nonempty = [p for p in self.parts if len(p) > 0] or self.parts[:1]
        self.dataset = nonempty[0] if len(nonempty) == 1 else sbd.MultiWaveformDataset(nonempty)
        self._nonempty = nonempty

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    @property
    def trace_weights(self) -> np.ndarray:
        """Sampling weight of every trace of :attr:`dataset` (in its order); sums to 1.

        Input ``g`` gets total weight ``dataset_weights[g]`` (renormalised over inputs present in this split),
        spread uniformly over its traces.
        """
        sizes = np.zeros(len(self.names))
        for part, g in zip(self.parts, self.groups):
            sizes[g] += len(part)
        w = np.where(sizes > 0, self.dataset_weights, 0.0)
        if w.sum() == 0:
            return np.zeros(len(self.dataset))
        w = w / w.sum()
        out = []
        for part, g in zip(self.parts, self.groups):
            if part in self._nonempty and len(part) > 0:
                out.append(np.full(len(part), w[g] / sizes[g]))
        return np.concatenate(out) if out else np.zeros(0)

    def filter(self, mask) -> "MixedDataset":
        """A new mixture with only the traces where ``mask`` (over :attr:`dataset`, in its order) is True.

        Mixture weights stay per input, so :attr:`trace_weights` and :meth:`sampler` follow the new traces.
        """
        mask = np.asarray(mask, dtype=bool)
        if len(mask) != len(self.dataset):
            raise ValueError(f"mask has {len(mask)} entries for {len(self.dataset)} traces")
        parts, dropped, k = [], list(self.dropped), 0
        for part, g in zip(self.parts, self.groups):
            if part in self._nonempty and len(part) > 0:
                m = mask[k : k + len(part)]
                k += len(part)
                dropped[g] += int((~m).sum())
                part = part if m.all() else part.filter(m, inplace=False)
            parts.append(part)
        return MixedDataset(parts, list(self.groups), list(self.names), self.dataset_weights.copy(), dropped)

    def get_split(self, split: str) -> "MixedDataset":
        """The ``split`` ("train", "dev" or "test") of every part, mixed with the same weights."""
        parts = []
        for p in self.parts:
            if "split" not in p.metadata.columns:
                raise ValueError(f"dataset {p.name} has no split column; use assign_splits()")
            parts.append(p.filter((p.metadata["split"] == split).to_numpy(), inplace=False))
        return MixedDataset(parts, list(self.groups), list(self.names), self.dataset_weights.copy(),
                            list(self.dropped))

    def train(self) -> "MixedDataset":
        return self.get_split("train")

    def dev(self) -> "MixedDataset":
        return self.get_split("dev")

    def test(self) -> "MixedDataset":
        return self.get_split("test")

    def train_dev_test(self) -> tuple["MixedDataset", "MixedDataset", "MixedDataset"]:
        return self.train(), self.dev(), self.test()

    def sampler(self, num_samples: int | None = None, replacement: bool = True, generator=None):
        """``torch.utils.data.WeightedRandomSampler`` drawing traces with the mixture weights.

        :param num_samples: windows per epoch (default: number of traces).
        """
        import torch

        weights = torch.as_tensor(self.trace_weights, dtype=torch.double)
        return torch.utils.data.WeightedRandomSampler(
            weights, num_samples or len(weights), replacement=replacement, generator=generator
        )

    def summary(self) -> pd.DataFrame:
        """Per input: traces, noise traces (no P/S pick), events, traces per split, weight, and
        ``short_dropped``: traces left out because they cannot give a window of ``min_samples``."""
        from .phases import pick_columns

        rows = []
        for g, name in enumerate(self.names):
            parts = [p for p, gg in zip(self.parts, self.groups) if gg == g]
            md = pd.concat([p.metadata for p in parts]) if parts else pd.DataFrame()
            cols = list(pick_columns(md.columns))
            noise = int((~md[cols].notna().any(axis=1)).sum()) if cols else len(md)
            row = {
                "dataset": name,
                "traces": len(md),
                "noise_traces": noise,
                "events": int(md["source_id"].nunique()) if "source_id" in md.columns else np.nan,
                "weight": float(self.dataset_weights[g]),
                "short_dropped": int(self.dropped[g]),
            }
            for s in SPLITS:
                row[s] = int((md["split"] == s).sum()) if "split" in md.columns else 0
            rows.append(row)
        return pd.DataFrame(rows)


def mix_datasets(
    datasets: Sequence | Mapping,
    weights: Sequence[float] | None = None,
    fractions: Sequence[float] | None = None,
    *,
    seed: int = 0,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    min_samples: int | None = 4096,
    **open_kwargs,
) -> MixedDataset:
    """Combine datasets (names, paths or opened datasets) into a :class:`MixedDataset`.

    :param datasets: list of names/paths/``WaveformDataset``/``MultiWaveformDataset``, or a mapping
        ``{name_or_path: weight}``.
    :param weights: mixture weights (relative; default: proportional to dataset size, i.e. plain union).
    :param fractions: per dataset, the share of events kept (0 < f <= 1; default all).
    :param seed: seed of the subsampling and of splits assigned to datasets without a split column.
    :param split_fractions: train/dev/test fractions for datasets that lack a split column.
    :param min_samples: traces that cannot give a window of this many samples (shorter, or all picks before
        the trace start) are left out and counted (``summary()["short_dropped"]``, and a warning): windows are
        never padded. Default one model window (4096); None keeps every trace.
    :param open_kwargs: passed to :func:`~.datasets.open_dataset` for names/paths (e.g. ``cache="full"``).
    :return: :class:`MixedDataset`; ``.dataset`` is a SeisBench dataset, ``.sampler()`` draws with the weights.
    """
    if isinstance(datasets, Mapping):
        if weights is not None:
            raise ValueError("give weights either in the mapping or as weights=, not both")
        items = list(datasets.keys())
        weights = list(datasets.values())
    else:
        items = list(datasets)
    if not items:
        raise ValueError("mix_datasets needs at least one dataset")
    for arg, label in ((weights, "weights"), (fractions, "fractions")):
        if arg is not None and len(arg) != len(items):
            raise ValueError(f"{label} has {len(arg)} entries for {len(items)} datasets")

    parts, groups, names, dropped = [], [], [], [0] * len(items)
    for g, item in enumerate(items):
        ds = open_dataset(item, **open_kwargs) if isinstance(item, (str, os.PathLike)) else item
        comps = _components(ds)
        names.append(str(item) if isinstance(item, (str, os.PathLike)) else "+".join(c.name for c in comps))
        for c in comps:
            c = c.copy()
            if fractions is not None:
                c = _subsample(c, float(fractions[g]), seed)
            if min_samples is not None and len(c) > 0:
                keep = usable_mask(c, int(min_samples))
                if not keep.all():
                    dropped[g] += int((~keep).sum())
                    c = c.filter(keep, inplace=False)
            assign_splits(c, split_fractions, seed=seed)
            parts.append(c)
            groups.append(g)

    if weights is None:
        sizes = np.zeros(len(items))
        for p, g in zip(parts, groups):
            sizes[g] += len(p)
        w = sizes
    else:
        w = np.asarray(weights, dtype=float)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    w = w / w.sum()
    for g, n in enumerate(dropped):
        if n:
            warnings.warn(
                f"mix_datasets: {n} traces of {names[g]} cannot give a window of {min_samples} samples "
                f"(shorter, or all picks before the trace start): left out",
                UserWarning,
                stacklevel=2,
            )
    return MixedDataset(parts, groups, names, w, dropped)
