"""The one train/dev/test split algorithm of the package (used by ``assign_splits`` and by ``ingest``).

Rules, per trace (row) with an event id, optionally a station and a time span:

1. **By event.** All traces of an event get one split. Traces without an event id (noise) are their own event.
2. **Existing splits are kept.** A trace that already has a split keeps it; the event's other traces follow the
   majority of the event's existing splits. Events whose traces already sit in several splits are reported
   (warning) and left as they are.
3. **No waveform sample in two splits.** Events whose traces overlap in time *at the same station* are grouped,
   and a group is split as a whole. Events that overlap in time at different stations are not grouped, so
   busy sequences do not chain everything into one group. A group of more than ``max_group`` events (default:
   the smaller of 10% of the events and the smallest non-zero split's share) is cut in time order into
   pieces of at most that size, with a warning; the samples shared across a cut may then sit in two splits.
   Trace pairs that share samples across splits are counted in the report.
4. **Filling.** The remaining groups are shuffled (``seed``) and placed largest first, each into the split
   furthest below its target share of events (``fractions``), counting events that already have a split.
5. **Warnings** (``warnings.warn`` and :attr:`SplitReport.warnings`) when a split with a positive fraction
   ends up with fewer than 2 events or less than 5% of the events.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["SPLITS", "SplitReport", "split_by_event"]

SPLITS = ("train", "dev", "test")


@dataclass
class SplitReport:
    """What :func:`split_by_event` did.

    :ivar events_per_split: events per split (an event with traces in several splits counts where most are).
    :ivar groups: groups of events placed together (events that overlap at a shared station form one group).
    :ivar largest_group: events in the largest group after cutting.
    :ivar chains_cut: groups larger than ``max_group`` that were cut.
    :ivar conflicting_events: events whose existing splits disagree (left as they are).
    :ivar overlaps_across_splits: pairs of traces at one station that share samples but sit in two splits.
    :ivar warnings: the warning texts (also issued with ``warnings.warn`` unless ``warn=False``).
    """

    events_per_split: dict = field(default_factory=dict)
    groups: int = 0
    largest_group: int = 0
    chains_cut: int = 0
    conflicting_events: int = 0
    overlaps_across_splits: int = 0
    warnings: list = field(default_factory=list)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int):
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v == "")


def _overlapping_pairs(stations, starts, ends):
    """Yield (row, row) pairs at one station whose spans share time; a sweep per station."""
    by_station = defaultdict(list)
    for i, s in enumerate(stations):
        if not _missing(s) and np.isfinite(starts[i]) and np.isfinite(ends[i]):
            by_station[s].append(i)
    for rows in by_station.values():
        rows.sort(key=lambda i: starts[i])
        active: list[int] = []
        for i in rows:
            active = [j for j in active if ends[j] > starts[i]]
            for j in active:
                yield j, i
            active.append(i)


def split_by_event(
    events: Sequence,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    *,
    existing: Sequence | None = None,
    stations: Sequence | None = None,
    starts: Sequence[float] | None = None,
    ends: Sequence[float] | None = None,
    max_group: int | None = None,
    warn: bool = True,
    what: str = "splits",
) -> tuple[np.ndarray, SplitReport]:
    """Split traces into train/dev/test by event (module docstring for the rules).

    :param events: event id per trace; None/NaN: the trace is its own event.
    :param fractions: train/dev/test shares of events (normalised).
    :param existing: split per trace already assigned (None/NaN: none); kept.
    :param stations: station per trace (e.g. ``"NET.STA"``); with ``starts``/``ends`` (seconds, end exclusive)
        events that overlap at a station are grouped. Leave all three None to split by event only.
    :param max_group: largest group kept whole (default: see the module docstring).
    :param what: name used in warning texts.
    :return: (split per trace as an object array, :class:`SplitReport`).
    """
    n = len(events)
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or (fr < 0).any() or not fr.sum() > 0:
        raise ValueError(f"fractions must be three non-negative numbers (train, dev, test), got {fractions}")
    fr = fr / fr.sum()
    report = SplitReport()

    # events
    keys = [f"trace:{i}" if _missing(e) else f"event:{e}" for i, e in enumerate(events)]
    ev_index: dict[str, int] = {}
    ev_of_row = np.array([ev_index.setdefault(k, len(ev_index)) for k in keys], dtype=np.int64)
    n_ev = len(ev_index)
    existing = [None] * n if existing is None else [None if _missing(v) else str(v) for v in existing]
    for v in set(existing) - {None} - set(SPLITS):
        raise ValueError(f"unknown split {v!r} (expected one of {SPLITS})")

    # rule 2: the majority of an event's existing splits
    votes: list[Counter] = [Counter() for _ in range(n_ev)]
    for r, v in enumerate(existing):
        if v is not None:
            votes[ev_of_row[r]][v] += 1
    ev_split: list[str | None] = [None] * n_ev
    for e, c in enumerate(votes):
        if c:
            ev_split[e] = max(c, key=lambda s: (c[s], -SPLITS.index(s)))
            if len(c) > 1:
                report.conflicting_events += 1

    # rule 3: group events that overlap at a shared station
    uf = _UnionFind(n_ev)
    grouping = stations is not None and starts is not None and ends is not None
    if grouping:
        starts = np.asarray(starts, dtype=float)
        ends = np.asarray(ends, dtype=float)
        for a, b in _overlapping_pairs(stations, starts, ends):
            uf.union(int(ev_of_row[a]), int(ev_of_row[b]))
    members: dict[int, list[int]] = defaultdict(list)
    for e in range(n_ev):
        members[uf.find(e)].append(e)
    groups = list(members.values())

    if max_group is None:
        positive = fr[fr > 0]
        max_group = max(2, int(min(0.1, positive.min()) * n_ev))
    if grouping and any(len(g) > max_group for g in groups):
        ev_start = np.full(n_ev, np.inf)
        np.minimum.at(ev_start, ev_of_row, np.where(np.isfinite(starts), starts, np.inf))
        cut = []
        for g in groups:
            if len(g) <= max_group:
                cut.append(g)
                continue
            report.chains_cut += 1
            g = sorted(g, key=lambda e: ev_start[e])
            cut += [g[k : k + max_group] for k in range(0, len(g), max_group)]
            report.warnings.append(
                f"{what}: {len(g)} events overlap one another in a chain at shared stations; cut in time order "
                f"into groups of at most {max_group} events (samples near a cut may sit in two splits)"
            )
        groups = cut
    report.groups = len(groups)
    report.largest_group = max((len(g) for g in groups), default=0)

    # rule 4: groups with existing splits follow them; the others fill the splits to their targets
    counts = np.zeros(3)
    todo = []
    for g in groups:
        c = Counter(ev_split[e] for e in g if ev_split[e] is not None)
        if c:
            s = max(c, key=lambda s: (c[s], -SPLITS.index(s)))
            for e in g:
                if ev_split[e] is None:
                    ev_split[e] = s
                counts[SPLITS.index(ev_split[e])] += 1
        else:
            todo.append(g)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(todo))
    todo = sorted((todo[i] for i in order), key=len, reverse=True)  # stable: shuffled within a size
    target = fr * n_ev
    for g in todo:
        deficit = np.where(fr > 0, target - counts, -np.inf)
        s = int(np.argmax(deficit))
        for e in g:
            ev_split[e] = SPLITS[s]
        counts[s] += len(g)

    split = np.array(
        [existing[r] if existing[r] is not None else ev_split[ev_of_row[r]] for r in range(n)], dtype=object
    )

    # report
    per_event = Counter(ev_split)
    report.events_per_split = {s: int(per_event.get(s, 0)) for s in SPLITS}
    if report.conflicting_events:
        report.warnings.append(
            f"{what}: {report.conflicting_events} events already had traces in several splits; kept as they are, "
            f"their unsplit traces follow the majority"
        )
    if grouping:
        report.overlaps_across_splits = sum(1 for a, b in _overlapping_pairs(stations, starts, ends)
                                            if split[a] != split[b])
    for i, s in enumerate(SPLITS):
        k = report.events_per_split[s]
        if fr[i] > 0 and n_ev > 0 and (k < 2 or k < 0.05 * n_ev):
            report.warnings.append(
                f"{what}: split '{s}' holds {k} of {n_ev} events (fraction {fr[i]:.2f} asked): "
                f"{'empty' if k == 0 else 'tiny'}"
            )
    if warn:
        for w in report.warnings:
            warnings.warn(w, UserWarning, stacklevel=2)
    return split, report
