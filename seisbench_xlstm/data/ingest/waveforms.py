"""Waveforms for ingest: a header index of all files, the channel set per station, merged records."""

from __future__ import annotations

import warnings
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .readers import dedupe_files, files_under
from .records import IngestSummary

__all__ = ["WaveformIndex", "choose_channels", "merge_component"]


@dataclass
class _IndexEntry:
    path: Path
    network: str
    station: str
    location: str
    channel: str
    start: object
    end: object
    sampling_rate: float


class WaveformIndex:
    """Header index of all waveform files (station, channel, time span) for time-based lookup."""

    def __init__(self, paths, summary: IngestSummary, progress: bool = True):
        from obspy import read

        files = dedupe_files(files_under(paths), summary, "waveform")
        self.entries: list[_IndexEntry] = []
        self.by_station: dict[str, list[_IndexEntry]] = defaultdict(list)
        self.names: dict[str, Path] = {}
        self.used: set[Path] = set()
        n_ok = 0
        for f in tqdm(files, desc="Indexing waveforms", disable=not progress, leave=False):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    st = read(str(f), headonly=True)
            except Exception as err:  # noqa: BLE001
                summary.skip("waveform file", str(f), f"ObsPy cannot read it ({type(err).__name__}: {err})")
                continue
            n_ok += 1
            self.names.setdefault(f.name, f)
            for tr in st:
                s = tr.stats
                e = _IndexEntry(f, s.network, s.station, s.location, s.channel, s.starttime, s.endtime,
                                float(s.sampling_rate))
                self.entries.append(e)
                self.by_station[s.station].append(e)
        summary.waveform_files = n_ok
        self._cache: "OrderedDict[Path, object]" = OrderedDict()

    def find(self, station: str, network: str, t0, t1) -> list[_IndexEntry]:
        return [
            e
            for e in self.by_station.get(station, [])
            if (not network or e.network == network) and e.start <= t1 and e.end >= t0
        ]

    def stations_between(self, t0, t1) -> set[tuple[str, str]]:
        return {(e.network, e.station) for e in self.entries if e.start <= t1 and e.end >= t0}

    def read(self, path: Path):
        from obspy import read

        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            st = read(str(path))
        self._cache[path] = st
        self.used.add(path)
        if len(self._cache) > 4:
            self._cache.popitem(last=False)
        return st


def choose_channels(traces, pick_channels: set[str], allow_incomplete: bool):
    """Pick the channel set: returns (group_key, {Z/N/E: [traces]}, orientation) or (None, reason)."""
    groups: dict[tuple[str, str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for tr in traces:
        s = tr.stats
        groups[(s.network, s.location, s.channel[:-1])][s.channel[-1:].upper()].append(tr)
    bands = {c[0] for c in pick_channels if c}
    candidates = []
    for key, comps in groups.items():
        if "Z" not in comps:
            continue
        if "N" in comps and "E" in comps:
            orient, hz = "ZNE", ("N", "E")
        elif "1" in comps and "2" in comps:
            orient, hz = "Z12", ("1", "2")
        elif allow_incomplete:
            orient, hz = "Z", ()
        else:
            continue
        sr = max(tr.stats.sampling_rate for tr in comps["Z"])
        rank = (key[2][:1] in bands, orient == "ZNE", len(hz), sr, -len(key[1]))
        candidates.append((rank, key, comps, orient, hz))
    if not candidates:
        have = sorted({tr.stats.channel for tr in traces})
        return None, f"no channel set with Z and two horizontals (have {', '.join(have) or 'none'})"
    candidates.sort(key=lambda c: c[0], reverse=True)
    _, key, comps, orient, hz = candidates[0]
    chosen = {"Z": comps["Z"]}
    for out, src in zip(("N", "E"), hz):
        chosen[out] = comps[src]
    return (key, chosen, orient), None


def merge_component(traces, t0, t1, fill_gaps: bool):
    """Merge segments of one channel and cut [t0, t1]. Returns (trace, notes) or (None, reason)."""
    from obspy import Stream

    notes = []
    full = [tr for tr in traces if tr.stats.starttime <= t0 and tr.stats.endtime >= t1]
    if full:  # one record covers the window: no merging needed
        traces = [max(full, key=lambda tr: tr.stats.npts)]
    st = Stream([tr.copy() for tr in traces])
    rates = {tr.stats.sampling_rate for tr in st}
    if len(rates) > 1:
        return None, f"mixed sampling rates {sorted(rates)} within channel {st[0].id}"
    if len(st) > 1:
        st.sort(keys=["starttime"])
        disagree = False
        for a, b in zip(st[:-1], st[1:]):
            if b.stats.starttime <= a.stats.endtime:
                i = int(round((b.stats.starttime - a.stats.starttime) * a.stats.sampling_rate))
                n = min(a.stats.npts - i, b.stats.npts)
                if n > 0 and not np.allclose(a.data[i : i + n], b.data[:n]):
                    disagree = True
        try:
            st.merge(method=1, fill_value=None)
        except Exception as err:  # noqa: BLE001
            return None, f"cannot merge records of {traces[0].id}: {err}"
        if disagree:
            notes.append(f"overlapping records of {traces[0].id} disagree; the later record's samples used")
        else:
            notes.append(f"{len(traces)} records of {traces[0].id} joined (overlaps identical)")
    tr = st[0]
    tr.trim(t0, t1)
    if tr.stats.npts == 0:
        return None, f"no samples of {traces[0].id} in window"
    data = tr.data
    if np.ma.isMaskedArray(data) and np.ma.count_masked(data) > 0:
        n_gap = int(np.ma.count_masked(data))
        if not fill_gaps:
            return None, f"gap of {n_gap / tr.stats.sampling_rate:.2f} s in {tr.id} inside the window"
        tr.data = data.filled(0)
        notes.append(f"gap of {n_gap / tr.stats.sampling_rate:.2f} s in {tr.id} filled with zeros")
    elif np.ma.isMaskedArray(data):
        tr.data = data.filled(0)
    return tr, notes


