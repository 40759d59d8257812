"""Ingest a network's own waveforms and picks into a SeisBench dataset.

``ingest(waveforms, picks, fmt, out)`` (console: ``seisbench-xlstm ingest --waveforms PATH --picks PATH
--format nordic|quakeml|csv --out DIR``) reads

* waveforms: any file ObsPy can read (miniSEED, SEISAN, SAC, ...), files or folders (searched recursively);
* picks: QuakeML, Nordic (SEISAN S-files) or CSV (columns below),

and writes ``DIR/metadata.csv`` + ``DIR/waveforms.hdf5`` (gzip-compressed, SeisBench format, 100 Hz, ZNE,
channels-first) with one three-component trace per station and event, cut around that station's picks,
plus ``DIR/ingest_summary.json``. Nothing is dropped silently: everything skipped or changed is listed in
the returned :class:`IngestSummary` (printed by the console command).

Rules (also in docs/data.md):

* Picks: phase hints are mapped to P/S with :func:`~.phases.phase_of_hint`; other readings (amplitudes
  such as ``IAML``, unknown phases) are counted and ignored. Per station and event the earliest P and the
  earliest S are kept; further picks of the same phase are reported as duplicates.
* Events: identical pick files are read once. Events with the same id are merged; with Nordic, S-files
  that reference the same waveform file and whose origin times differ by at most
  ``duplicate_tolerance`` seconds are one event (SEISAN keeps re-located copies of an event as separate
  S-files). ``source_id`` is the event id (QuakeML resource id, CSV ``event_id``, Nordic: the S-file name;
  the SEISAN ``ID:`` is kept in ``source_catalog_id``).
* Components: per station the channel set (same band/instrument code and location) with Z and two
  horizontals is used, preferring the band code of the picks, then Z/N/E over Z/1/2, then the highest
  sampling rate. When only Z/1/2 exist and no inventory is given, 1 is stored as N and 2 as E without
  rotation (``trace_orientation = "Z12 unrotated"``); with ``inventory`` they are rotated to ZNE.
* Window: from ``window_before`` s before the first pick to ``window_after`` s after the last pick at the
  station, cut to the data available (shorter windows are reported); resampled to ``sampling_rate`` with
  an anti-alias polyphase filter (``scipy.signal.resample_poly``).
* Gaps and overlaps: overlapping records are merged (ObsPy ``merge(method=1)``, reported); a gap inside
  the window skips the trace (reported) unless ``fill_gaps`` (zeros, reported).
* Splits: by event, after grouping events whose windows overlap in time, so no event and no waveform
  sample sits in two splits.

CSV columns: required ``event_id, station, phase, time`` (ISO time); optional ``network, location,
channel, evaluation_mode, origin_time, latitude, longitude, depth_km, magnitude``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import tempfile
import warnings
from collections import Counter, OrderedDict, defaultdict
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from .phases import phase_of_hint

__all__ = [
    "IngestConfig",
    "IngestSummary",
    "ingest",
    "add_ingest_subcommand",
    "run_ingest_command",
    "FORMATS",
]

FORMATS = ("nordic", "quakeml", "csv")
SPLITS = ("train", "dev", "test")


# --------------------------------------------------------------------------------------------- records
@dataclass
class Pick:
    network: str
    station: str
    location: str
    channel: str
    label: str  # "P" or "S"
    phase: str  # original phase hint
    time: object  # obspy.UTCDateTime
    mode: str | None
    source: str


@dataclass
class Event:
    event_id: str
    origin_time: object | None = None
    latitude: float | None = None
    longitude: float | None = None
    depth_km: float | None = None
    magnitude: float | None = None
    magnitude_type: str | None = None
    catalog_id: str | None = None
    picks: list[Pick] = field(default_factory=list)
    wavefiles: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


@dataclass
class IngestConfig:
    """Options of :func:`ingest` (all have console equivalents)."""

    sampling_rate: float = 100.0
    window_before: float = 30.0
    window_after: float = 30.0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    duplicate_tolerance: float = 1.0
    #: "merge": a duplicate event's picks are added to the first copy's (union per station and phase);
    #: "first": only the first copy's picks are used, the others' are reported as skipped.
    duplicate_events: str = "merge"
    fill_gaps: bool = False
    allow_incomplete: bool = False
    inventory: str | None = None
    overwrite: bool = False
    progress: bool = True
    compression_level: int = 4
    bucket_size: int = 256


@dataclass
class IngestSummary:
    """What an ingest run did: counts, and every item skipped or changed with the reason.

    ``skipped`` and ``notes`` are lists of ``{"what", "item", "reason"}`` dicts; ``skipped`` entries lost
    data (a pick, a trace, a file, a line), ``notes`` did not (merges, truncations, resampling, ...).
    """

    out: str = ""
    fmt: str = ""
    pick_files: int = 0
    waveform_files: int = 0
    events_read: int = 0
    events: int = 0
    traces: int = 0
    p_picks: int = 0
    s_picks: int = 0
    stations: int = 0
    events_per_split: dict = field(default_factory=dict)
    traces_per_split: dict = field(default_factory=dict)
    ignored_phases: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def skip(self, what: str, item: str, reason: str):
        self.skipped.append({"what": what, "item": item, "reason": reason})

    def note(self, what: str, item: str, reason: str):
        self.notes.append({"what": what, "item": item, "reason": reason})

    @property
    def skipped_counts(self) -> dict:
        return dict(Counter(s["what"] for s in self.skipped))

    @property
    def note_counts(self) -> dict:
        return dict(Counter(s["what"] for s in self.notes))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped_counts"] = self.skipped_counts
        d["note_counts"] = self.note_counts
        return d

    def report(self, max_items: int = 20) -> str:
        """Human-readable summary (counts, then the first ``max_items`` entries of each kind)."""
        lines = [
            f"Ingest ({self.fmt}) -> {self.out}",
            f"  pick files read: {self.pick_files}, waveform files indexed: {self.waveform_files}",
            f"  events read: {self.events_read}, distinct events written: {self.events}",
            f"  traces written: {self.traces} (stations: {self.stations}), "
            f"P picks: {self.p_picks}, S picks: {self.s_picks}",
            f"  events per split: {self.events_per_split}, traces per split: {self.traces_per_split}",
        ]
        if self.ignored_phases:
            lines.append(f"  non-P/S readings ignored: {self.ignored_phases}")
        for title, entries in (("skipped", self.skipped), ("notes", self.notes)):
            if not entries:
                continue
            lines.append(f"  {title}: {dict(Counter(e['what'] for e in entries))}")
            by_kind = defaultdict(list)
            for e in entries:
                by_kind[e["what"]].append(e)
            for kind, items in by_kind.items():
                for e in items[:max_items]:
                    lines.append(f"    [{kind}] {e['item']}: {e['reason']}")
                if len(items) > max_items:
                    lines.append(f"    [{kind}] ... {len(items) - max_items} more (see ingest_summary.json)")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- helpers
def _files_under(paths: Sequence[str | os.PathLike]) -> list[Path]:
    out = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out


def _digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dedupe_files(files: list[Path], summary: IngestSummary, what: str) -> list[Path]:
    seen: dict[tuple[int, str], Path] = {}
    out = []
    for f in files:
        key = (f.stat().st_size, _digest(f))
        if key in seen:
            summary.note(f"duplicate {what} file", str(f), f"identical to {seen[key]}; read once")
            continue
        seen[key] = f
        out.append(f)
    return out


def _float(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


# --------------------------------------------------------------------------------------------- readers
def _events_from_catalog(cat, source: str, summary: IngestSummary, default_id: str | None) -> list[Event]:
    events = []
    for k, ev in enumerate(cat):
        origin = ev.preferred_origin() or (ev.origins[0] if ev.origins else None)
        mag = ev.preferred_magnitude() or (ev.magnitudes[0] if ev.magnitudes else None)
        extra = getattr(ev, "extra", None) or {}
        catalog_id = None
        if "nordic_event_id" in extra:
            catalog_id = str(extra["nordic_event_id"].get("value"))
        if default_id is not None:
            event_id = default_id if len(cat) == 1 else f"{default_id}#{k}"
        else:
            event_id = str(ev.resource_id.id) if ev.resource_id else f"{source}#{k}"
        e = Event(
            event_id=event_id,
            origin_time=origin.time if origin is not None else None,
            latitude=_float(origin.latitude) if origin is not None else None,
            longitude=_float(origin.longitude) if origin is not None else None,
            depth_km=(_float(origin.depth) / 1000.0)
            if origin is not None and _float(origin.depth) is not None
            else None,
            magnitude=_float(mag.mag) if mag is not None else None,
            magnitude_type=mag.magnitude_type if mag is not None else None,
            catalog_id=catalog_id,
            sources=[source],
        )
        arrival_phase = {}
        if origin is not None:
            for arr in origin.arrivals:
                if arr.pick_id is not None and arr.phase:
                    arrival_phase[str(arr.pick_id.id)] = arr.phase
        for p in ev.picks:
            hint = p.phase_hint or arrival_phase.get(str(p.resource_id.id))
            label = phase_of_hint(hint)
            if label is None:
                summary.ignored_phases[str(hint)] = summary.ignored_phases.get(str(hint), 0) + 1
                continue
            wid = p.waveform_id
            if wid is None or not wid.station_code:
                summary.skip("pick", f"{event_id} {hint} {p.time}", "pick has no station code")
                continue
            e.picks.append(
                Pick(
                    network=wid.network_code or "",
                    station=wid.station_code,
                    location=wid.location_code or "",
                    channel=wid.channel_code or "",
                    label=label,
                    phase=str(hint),
                    time=p.time,
                    mode=p.evaluation_mode,
                    source=source,
                )
            )
        events.append(e)
    return events


_NORDIC_TYPE = 79  # column 80 holds the line type


def _nordic_line_type(line: str) -> str:
    line = line.rstrip("\n")
    return line[_NORDIC_TYPE] if len(line) > _NORDIC_TYPE else " "


def _read_nordic_file(path: Path, summary: IngestSummary):
    """Read one S-file; a malformed phase line is dropped (and reported) instead of losing the file."""
    from obspy import read_events

    try:
        return read_events(str(path), format="NORDIC"), []
    except Exception as err:  # noqa: BLE001 - ObsPy raises many types on malformed files
        first_error = f"{type(err).__name__}: {err}"

    text = path.read_text(errors="replace").splitlines(keepends=True)
    header, phases = [], []
    in_phases = False
    for i, line in enumerate(text):
        if in_phases:
            if line.strip():
                phases.append((i, line))
        else:
            header.append(line)
        if _nordic_line_type(line) == "7":
            in_phases = True

    def try_parse(lines):
        with tempfile.NamedTemporaryFile("w", suffix=".S", delete=False) as tmp:
            tmp.writelines(lines)
            if lines and not lines[-1].endswith("\n"):
                tmp.write("\n")
            tmp.write(" " * 80 + "\n")
            name = tmp.name
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return read_events(name, format="NORDIC"), None
        except Exception as e:  # noqa: BLE001
            return None, f"{type(e).__name__}: {e}"
        finally:
            os.unlink(name)

    cat, err = try_parse(header)
    if cat is None:
        summary.skip("pick file", str(path), f"unreadable header ({first_error})")
        return None, []
    good, bad = [], []
    for i, line in phases:
        c, e = try_parse(header + [line])
        if c is None:
            bad.append((i, line, e))
        else:
            good.append(line)
    for i, line, e in bad:
        summary.skip("malformed line", f"{path}:{i + 1}", f"{e}; line: {line.rstrip()!r}")
    cat, err = try_parse(header + good)
    if cat is None:
        summary.skip("pick file", str(path), f"unreadable after dropping malformed lines ({err})")
        return None, bad
    return cat, bad


def read_nordic(paths, summary: IngestSummary) -> list[Event]:
    """Events from Nordic S-files (files or folders); wave file names from the type-6 lines."""
    from obspy.io.nordic.core import readwavename

    files = _dedupe_files(_files_under(paths), summary, "pick")
    summary.pick_files = len(files)
    events = []
    for f in files:
        cat, _ = _read_nordic_file(f, summary)
        if cat is None:
            continue
        if len(cat) == 0:
            summary.skip("pick file", str(f), "no event in file")
            continue
        try:
            wavefiles = [w.strip() for w in readwavename(str(f)) if w.strip()]
        except Exception as err:  # noqa: BLE001
            wavefiles = []
            summary.note("wave file names", str(f), f"could not read type-6 lines ({err})")
        for ev in _events_from_catalog(cat, str(f), summary, default_id=f.name):
            ev.wavefiles = wavefiles
            events.append(ev)
    return events


def read_quakeml(paths, summary: IngestSummary) -> list[Event]:
    """Events from QuakeML files (or any event format ObsPy detects)."""
    from obspy import read_events

    files = _dedupe_files(_files_under(paths), summary, "pick")
    summary.pick_files = len(files)
    events = []
    for f in files:
        try:
            cat = read_events(str(f))
        except Exception as err:  # noqa: BLE001
            summary.skip("pick file", str(f), f"unreadable ({type(err).__name__}: {err})")
            continue
        events += _events_from_catalog(cat, str(f), summary, default_id=None)
    return events


_CSV_REQUIRED = ("event_id", "station", "phase", "time")


def read_csv_picks(paths, summary: IngestSummary) -> list[Event]:
    """Events from CSV pick tables (one pick per row; columns documented in the module docstring)."""
    from obspy import UTCDateTime

    files = _dedupe_files(_files_under(paths), summary, "pick")
    summary.pick_files = len(files)
    events: "OrderedDict[str, Event]" = OrderedDict()
    for f in files:
        with open(f, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in _CSV_REQUIRED if c not in fields]
            if missing:
                summary.skip("pick file", str(f), f"CSV lacks required columns {missing} (has {fields})")
                continue
            for lineno, raw in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
                if None in raw:  # more fields than header
                    summary.skip("malformed line", f"{f}:{lineno}", "more fields than the header")
                    continue
                try:
                    if not row["event_id"] or not row["station"]:
                        raise ValueError("empty event_id or station")
                    t = UTCDateTime(row["time"])
                except Exception as err:  # noqa: BLE001
                    summary.skip("malformed line", f"{f}:{lineno}", f"{type(err).__name__}: {err}")
                    continue
                label = phase_of_hint(row["phase"])
                if label is None:
                    summary.ignored_phases[row["phase"]] = summary.ignored_phases.get(row["phase"], 0) + 1
                    continue
                ev = events.get(row["event_id"])
                if ev is None:
                    ev = Event(event_id=row["event_id"], sources=[str(f)])
                    events[row["event_id"]] = ev
                for key, attr, conv in (
                    ("origin_time", "origin_time", UTCDateTime),
                    ("latitude", "latitude", float),
                    ("longitude", "longitude", float),
                    ("depth_km", "depth_km", float),
                    ("magnitude", "magnitude", float),
                ):
                    if row.get(key) and getattr(ev, attr) is None:
                        try:
                            setattr(ev, attr, conv(row[key]))
                        except Exception:  # noqa: BLE001
                            summary.note("bad value", f"{f}:{lineno}", f"{key}={row[key]!r} ignored")
                ev.picks.append(
                    Pick(
                        network=row.get("network", ""),
                        station=row["station"],
                        location=row.get("location", ""),
                        channel=row.get("channel", ""),
                        label=label,
                        phase=row["phase"],
                        time=t,
                        mode=row.get("evaluation_mode") or None,
                        source=f"{f}:{lineno}",
                    )
                )
    return list(events.values())


# --------------------------------------------------------------------------------------------- events
def _merge_events(events: list[Event], tol: float, summary: IngestSummary, mode: str = "merge") -> list[Event]:
    """Merge events with the same id, and Nordic S-files sharing a wave file with close origin times."""
    by_id: "OrderedDict[str, Event]" = OrderedDict()
    for ev in events:
        if ev.event_id in by_id:
            keep = by_id[ev.event_id]
            summary.note("duplicate event", ev.event_id, f"same id in {ev.sources[0]}; picks merged")
            keep.picks += ev.picks
            keep.sources += ev.sources
        else:
            by_id[ev.event_id] = ev
    merged: list[Event] = []
    for ev in sorted(by_id.values(), key=lambda e: (str(e.origin_time), e.event_id)):
        target = None
        if ev.wavefiles and ev.origin_time is not None:
            for other in merged:
                if (
                    other.origin_time is not None
                    and set(other.wavefiles) & set(ev.wavefiles)
                    and abs(other.origin_time - ev.origin_time) <= tol
                ):
                    target = other
                    break
        if target is None:
            merged.append(ev)
        else:
            summary.note(
                "duplicate event",
                ev.event_id,
                f"same wave file {sorted(set(target.wavefiles) & set(ev.wavefiles))} and origin "
                f"{ev.origin_time - target.origin_time:+.2f} s from {target.event_id}: merged into it",
            )
            if mode == "first":
                for p in ev.picks:
                    summary.skip("duplicate-event pick", f"{target.event_id} {p.station} {p.label}",
                                 f"from duplicate {ev.event_id}; duplicate_events='first'")
            else:
                target.picks += ev.picks
            target.sources += ev.sources
    return merged


def _station_picks(ev: Event, summary: IngestSummary) -> dict[tuple[str, str], dict[str, Pick]]:
    """Per (network, station): the earliest P and S pick; extra picks of a phase are reported."""
    out: dict[tuple[str, str], dict[str, Pick]] = {}
    # picks come in file order: on a conflict the first file's pick is kept; within one file the earlier
    for p in ev.picks:
        slot = out.setdefault((p.network, p.station), {})
        kept = slot.get(p.label)
        if kept is None:
            slot[p.label] = p
            continue
        dt = float(p.time - kept.time)
        if abs(dt) <= 0.05:
            summary.note(
                "duplicate pick",
                f"{ev.event_id} {p.station} {p.label}",
                f"{p.phase} on {p.channel or '?'} ({p.source}) within 0.05 s of the kept pick; merged",
            )
            continue
        if dt < 0 and kept.source == p.source:
            slot[p.label], p = p, kept  # keep the earlier pick of the same file, drop the later
        summary.skip(
            "conflicting pick",
            f"{ev.event_id} {p.station} {p.label}",
            f"{p.phase} at {p.time} ({p.source}) is {float(p.time - slot[p.label].time):+.2f} s from the "
            f"kept pick at {slot[p.label].time} ({slot[p.label].source}); dropped",
        )
    return out


# --------------------------------------------------------------------------------------------- waveforms
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

        files = _dedupe_files(_files_under(paths), summary, "waveform")
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


def _choose_channels(traces, pick_channels: set[str], allow_incomplete: bool):
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


def _merge_component(traces, t0, t1, fill_gaps: bool):
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


def _resample(data: np.ndarray, sr: float, target: float) -> np.ndarray:
    from scipy.signal import resample_poly

    data = np.asarray(data, dtype=np.float64)
    if abs(sr - target) < 1e-9 * target:
        return data
    frac = (Fraction(target).limit_denominator(1000) / Fraction(sr).limit_denominator(1000)).limit_denominator(
        1000
    )
    mean = data.mean() if len(data) else 0.0
    out = resample_poly(data - mean, frac.numerator, frac.denominator)
    return out + mean


# --------------------------------------------------------------------------------------------- writer
class _CompressedWriter:
    """Writes SeisBench layout (``data/bucketK`` arrays + ``data_format``) with gzip, one HDF5 chunk per trace."""

    def __init__(self, out: Path, data_format: dict, bucket_size: int, level: int):
        self.out = out
        self.tmp = out / "waveforms.hdf5.partial"
        self.file = h5py.File(self.tmp, "w")
        self.group = self.file.create_group("data")
        self.data_format = data_format
        self.bucket_size = bucket_size
        self.level = level
        self.pending: list[tuple[dict, np.ndarray]] = []
        self.rows: list[dict] = []
        self.n_buckets = 0

    def add(self, row: dict, waveform: np.ndarray):
        self.pending.append((row, waveform))
        if len(self.pending) >= self.bucket_size:
            self.flush()

    def flush(self):
        if not self.pending:
            return
        n_ch = max(w.shape[0] for _, w in self.pending)
        n_max = max(w.shape[1] for _, w in self.pending)
        block = np.zeros((len(self.pending), n_ch, n_max), dtype=np.float32)
        name = f"bucket{self.n_buckets}"
        self.n_buckets += 1
        for i, (row, w) in enumerate(self.pending):
            block[i, : w.shape[0], : w.shape[1]] = w
            row["trace_name"] = f"{name}${i},:{w.shape[0]},:{w.shape[1]}"
            self.rows.append(row)
        self.group.create_dataset(
            name,
            data=block,
            chunks=(1, n_ch, n_max),
            compression="gzip",
            compression_opts=self.level,
            shuffle=True,
        )
        self.pending = []

    def close(self, metadata: pd.DataFrame | None):
        self.flush()
        g = self.file.create_group("data_format")
        for k, v in self.data_format.items():
            g.create_dataset(k, data=v)
        self.file.close()
        if metadata is None:
            self.tmp.unlink(missing_ok=True)
            return
        self.tmp.replace(self.out / "waveforms.hdf5")
        metadata.to_csv(self.out / "metadata.csv", index=False)

    def abort(self):
        try:
            self.file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- splits
def _assign_event_splits(spans: dict[str, tuple], fractions, seed: int) -> dict[str, str]:
    """Group events whose waveform spans overlap, then split groups (not traces) train/dev/test."""
    order = sorted(spans, key=lambda e: spans[e][0])
    groups: list[list[str]] = []
    end = None
    for ev in order:
        t0, t1 = spans[ev]
        if groups and end is not None and t0 <= end:
            groups[-1].append(ev)
            end = max(end, t1)
        else:
            groups.append([ev])
            end = t1
    fr = np.asarray(fractions, dtype=float)
    fr = fr / fr.sum()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(groups))
    n = len(groups)
    counts = np.floor(fr * n).astype(int)
    # distribute the remainder by largest fractional part; keep every non-zero split non-empty if possible
    rest = n - counts.sum()
    for i in np.argsort(-(fr * n - counts))[:rest]:
        counts[i] += 1
    for i in range(3):
        if fr[i] > 0 and counts[i] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    split_of = {}
    bounds = np.cumsum(counts)
    for rank, gi in enumerate(perm):
        split = SPLITS[int(np.searchsorted(bounds, rank, side="right"))]
        for ev in groups[gi]:
            split_of[ev] = split
    return split_of


# --------------------------------------------------------------------------------------------- main
_READERS = {"nordic": read_nordic, "quakeml": read_quakeml, "csv": read_csv_picks}


def ingest(
    waveforms: str | os.PathLike | Sequence[str | os.PathLike],
    picks: str | os.PathLike | Sequence[str | os.PathLike],
    fmt: str,
    out: str | os.PathLike,
    config: IngestConfig | None = None,
    **overrides,
) -> IngestSummary:
    """Convert waveforms + picks into a SeisBench dataset in ``out`` (see the module docstring for the rules).

    :param waveforms: file(s) or folder(s) ObsPy can read (searched recursively).
    :param picks: pick file(s) or folder(s) in ``fmt``.
    :param fmt: ``"nordic"``, ``"quakeml"`` or ``"csv"``.
    :param out: output folder (created; must be empty unless ``overwrite``).
    :param config: :class:`IngestConfig`; keyword ``overrides`` replace its fields
        (e.g. ``sampling_rate=100, window_before=30``).
    :return: :class:`IngestSummary` (also written to ``out/ingest_summary.json``).
    :raises ValueError: unknown format; :raises FileNotFoundError: input path missing;
        :raises FileExistsError: ``out`` holds a dataset and ``overwrite`` is False.
    """
    from obspy import Stream, read_inventory

    cfg = config or IngestConfig()
    if overrides:
        cfg = IngestConfig(**{**asdict(cfg), **overrides})
    fmt = fmt.lower()
    if fmt not in _READERS:
        raise ValueError(f"unknown pick format {fmt!r}; choose one of {', '.join(FORMATS)}")
    as_list = lambda x: [x] if isinstance(x, (str, os.PathLike)) else list(x)  # noqa: E731
    waveforms, picks = as_list(waveforms), as_list(picks)
    for p in waveforms + picks:
        if not Path(p).exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
    out = Path(out)
    if out.exists() and any((out / n).exists() for n in ("metadata.csv", "waveforms.hdf5")):
        if not cfg.overwrite:
            raise FileExistsError(f"{out} already holds a dataset; use overwrite=True (--overwrite)")
        for n in ("metadata.csv", "waveforms.hdf5", "ingest_summary.json"):
            (out / n).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    summary = IngestSummary(out=str(out), fmt=fmt)
    events = _READERS[fmt](picks, summary)
    if summary.pick_files == 0:
        summary.skip("pick file", ", ".join(map(str, picks)), "no pick files found there")
    summary.events_read = len(events)
    if cfg.duplicate_events not in ("merge", "first"):
        raise ValueError(f"duplicate_events must be 'merge' or 'first', got {cfg.duplicate_events!r}")
    events = _merge_events(events, cfg.duplicate_tolerance, summary, cfg.duplicate_events)
    index = WaveformIndex(waveforms, summary, progress=cfg.progress)
    for ev in events:
        for w in ev.wavefiles:
            if w not in index.names:
                summary.note("wave file not found", w, f"named in {ev.sources[0]}; looked up by time instead")

    inventory = None
    if cfg.inventory:
        try:
            inventory = read_inventory(cfg.inventory)
        except Exception as err:  # noqa: BLE001
            summary.note("inventory", cfg.inventory, f"unreadable ({err}); horizontals not rotated")

    target = float(cfg.sampling_rate)
    writer = _CompressedWriter(
        out,
        {"dimension_order": "CW", "component_order": "ZNE", "sampling_rate": target, "unit": "counts"},
        cfg.bucket_size,
        cfg.compression_level,
    )
    event_spans: dict[str, tuple] = {}
    stations_written: set[str] = set()
    try:
        for ev in tqdm(events, desc="Ingesting events", disable=not cfg.progress):
            try:
                _ingest_event(ev, index, cfg, target, inventory, writer, summary, event_spans, stations_written)
            except Exception as err:  # noqa: BLE001 - one bad event must not lose the run
                summary.skip("event", ev.event_id, f"unexpected error {type(err).__name__}: {err}")
        if not writer.rows and not writer.pending:
            writer.close(None)
            summary.note("output", str(out), "nothing written: no trace survived (see skipped)")
            _write_summary(out, summary)
            return summary
        writer.flush()
        md = pd.DataFrame(writer.rows)
        split_of = _assign_event_splits(event_spans, cfg.split_fractions, cfg.seed)
        md["split"] = md["source_id"].map(split_of)
        writer.close(md)
    except BaseException:
        writer.abort()
        raise

    summary.events = int(md["source_id"].nunique())
    summary.traces = len(md)
    summary.p_picks = int(md["trace_P_arrival_sample"].notna().sum())
    summary.s_picks = int(md["trace_S_arrival_sample"].notna().sum())
    summary.stations = len(stations_written)
    ev_split = md.drop_duplicates("source_id")["split"].value_counts()
    summary.events_per_split = {s: int(ev_split.get(s, 0)) for s in SPLITS}
    tr_split = md["split"].value_counts()
    summary.traces_per_split = {s: int(tr_split.get(s, 0)) for s in SPLITS}
    for path in sorted({e.path for e in index.entries} - index.used):
        summary.note("waveforms without picks", str(path), "file not used by any event")
    _write_summary(out, summary)
    return summary


def _write_summary(out: Path, summary: IngestSummary):
    with open(out / "ingest_summary.json", "w") as f:
        json.dump(summary.to_dict(), f, indent=1, default=str)


def _ingest_event(ev, index, cfg, target, inventory, writer, summary, event_spans, stations_written):
    from obspy import Stream

    per_station = _station_picks(ev, summary)
    if not per_station:
        summary.skip("event", ev.event_id, "no P or S pick")
        return
    # picks without network code: attach to the network found in the data
    ev_t0 = min(p.time for s in per_station.values() for p in s.values()) - cfg.window_before
    ev_t1 = max(p.time for s in per_station.values() for p in s.values()) + cfg.window_after
    picked_stations = {sta for (_, sta) in per_station}
    for net, sta in sorted(index.stations_between(ev_t0, ev_t1)):
        if sta not in picked_stations:
            summary.note("waveforms without picks", f"{ev.event_id} {net}.{sta}", "station recorded, not picked")

    for (net, sta), phases in sorted(per_station.items()):
        item = f"{ev.event_id} {net + '.' if net else ''}{sta}"
        times = [p.time for p in phases.values()]
        t0, t1 = min(times) - cfg.window_before, max(times) + cfg.window_after
        entries = index.find(sta, net, t0, t1)
        if not entries:
            for p in phases.values():
                summary.skip("pick without waveforms", f"{item} {p.label}",
                             f"no waveform data of station {sta} around {p.time}")
            continue
        traces = []
        for path in sorted({e.path for e in entries}):
            st = index.read(path)
            traces += [tr for tr in st.select(station=sta) if not net or tr.stats.network == net]
        # the same record may sit in several (non-identical) files: keep one copy of identical segments
        unique, seen = [], {}
        for tr in traces:
            key = (tr.id, str(tr.stats.starttime), tr.stats.sampling_rate, tr.stats.npts)
            if key in seen and np.array_equal(seen[key], tr.data):
                continue
            seen[key] = tr.data
            unique.append(tr)
        traces = unique
        pad = 2.0  # seconds of margin for the resampling filter
        traces = [tr for tr in traces if tr.stats.starttime <= t1 + pad and tr.stats.endtime >= t0 - pad]
        chosen, reason = _choose_channels(traces, {p.channel for p in phases.values()}, cfg.allow_incomplete)
        if chosen is None:
            for p in phases.values():
                summary.skip("pick without waveforms", f"{item} {p.label}", reason)
            continue
        (c_net, c_loc, c_code), comps, orient = chosen
        merged, bad = {}, None
        for comp, trs in comps.items():
            tr, info = _merge_component(trs, t0 - pad, t1 + pad, cfg.fill_gaps)
            if tr is None:
                bad = info
                break
            for n in info:
                summary.note("records merged/filled", item, n)
            merged[comp] = tr
        if bad is not None:
            summary.skip("trace", item, bad)
            continue
        orientation = orient
        if orient == "Z12":
            orientation = "Z12 unrotated"
            if inventory is not None:
                try:
                    st = Stream([merged["Z"], merged["N"], merged["E"]])
                    st.rotate("->ZNE", inventory=inventory, components=("Z12",))
                    merged = {c: st.select(component=c)[0] for c in "ZNE"}
                    orientation = "Z12 rotated"
                except Exception as err:  # noqa: BLE001
                    summary.note("rotation", item, f"failed ({err}); 1/2 stored as N/E unrotated")
        rates = {tr.stats.sampling_rate for tr in merged.values()}
        if len(rates) > 1:
            summary.note("mixed sampling rates", item, f"components at {sorted(rates)} Hz, each resampled")
        # resample every component, then align on a common start at the target rate
        res = {}
        for comp, tr in merged.items():
            res[comp] = (tr.stats.starttime, _resample(tr.data, tr.stats.sampling_rate, target))
        start = max(max(s for s, _ in res.values()), t0)
        z_start = res["Z"][0]  # snap to the Z samples, so trace_start_time is the time of sample 0
        start = z_start + np.ceil((start - z_start) * target - 1e-6) / target
        end = min(min(s + (len(d) - 1) / target for s, d in res.values()), t1)
        n = int(np.floor((end - start) * target)) + 1
        if n <= 1:
            summary.skip("trace", item, "no common time span of the components in the window")
            continue
        data = np.zeros((3, n), dtype=np.float32)
        for ci, comp in enumerate("ZNE"):
            if comp not in res:
                continue
            s, d = res[comp]
            i0 = int(round((start - s) * target))
            seg = d[i0 : i0 + n]
            data[ci, : len(seg)] = seg
        if (end - start) < (t1 - t0) - 1.0 / target:
            summary.note(
                "window truncated",
                item,
                f"data cover {start - t0:+.1f} s .. {end - t1:+.1f} s of the requested window",
            )
        row = {
            "source_id": ev.event_id,
            "source_catalog_id": ev.catalog_id,
            "source_origin_time": str(ev.origin_time) if ev.origin_time is not None else None,
            "source_latitude_deg": ev.latitude,
            "source_longitude_deg": ev.longitude,
            "source_depth_km": ev.depth_km,
            "source_magnitude": ev.magnitude,
            "source_magnitude_type": ev.magnitude_type,
            "source_files": ";".join(Path(s).name for s in ev.sources),
            "station_network_code": c_net,
            "station_code": sta,
            "station_location_code": c_loc,
            "trace_channel": c_code,
            "trace_orientation": orientation,
            "trace_start_time": str(start),
            "trace_sampling_rate_hz": target,
            "trace_original_sampling_rate_hz": float(max(rates)),
            "trace_npts": n,
            "trace_component_order": "ZNE",
        }
        kept = 0
        for label in ("P", "S"):
            p = phases.get(label)
            row[f"trace_{label}_arrival_sample"] = np.nan
            row[f"trace_{label}_status"] = None
            row[f"trace_{label}_phase"] = None
            if p is None:
                continue
            sample = float(p.time - start) * target
            if not 0 <= sample < n:
                summary.skip("pick without waveforms", f"{item} {label}",
                             f"pick at {p.time} outside the recorded data ({start} .. {end})")
                continue
            row[f"trace_{label}_arrival_sample"] = round(sample, 2)
            row[f"trace_{label}_status"] = p.mode or "manual"
            row[f"trace_{label}_phase"] = p.phase
            kept += 1
        if kept == 0:
            summary.skip("trace", item, "no pick inside the recorded data")
            continue
        if not np.any(data):
            summary.skip("trace", item, "waveform is all zeros")
            continue
        writer.add(row, data)
        stations_written.add(f"{c_net}.{sta}")
        span = (t0, t1)
        old = event_spans.get(ev.event_id)
        event_spans[ev.event_id] = span if old is None else (min(old[0], t0), max(old[1], t1))


# --------------------------------------------------------------------------------------------- console
def add_ingest_subcommand(subparsers) -> argparse.ArgumentParser:
    """Add ``ingest`` to an argparse ``subparsers`` object; sets ``func`` (Namespace -> exit code)."""
    d = IngestConfig()
    p = subparsers.add_parser(
        "ingest",
        help="convert your own waveforms + picks (Nordic, QuakeML, CSV) into a SeisBench dataset",
        description=(
            "Write a SeisBench dataset (metadata.csv + compressed waveforms.hdf5, 100 Hz, ZNE) with one "
            "3-component trace per station and event around the picks; print what was skipped and why."
        ),
    )
    p.add_argument("--waveforms", required=True, nargs="+", metavar="PATH",
                   help="waveform files/folders ObsPy can read (miniSEED, SEISAN, SAC, ...)")
    p.add_argument("--picks", required=True, nargs="+", metavar="PATH", help="pick files/folders")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt", help="pick format")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--sampling-rate", type=float, default=d.sampling_rate, help="target rate in Hz (100)")
    p.add_argument("--before", type=float, default=d.window_before,
                   help="seconds kept before the first pick of a station (30)")
    p.add_argument("--after", type=float, default=d.window_after,
                   help="seconds kept after the last pick of a station (30)")
    p.add_argument("--split", type=float, nargs=3, default=list(d.split_fractions),
                   metavar=("TRAIN", "DEV", "TEST"), help="split fractions by event (0.7 0.15 0.15)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split assignment")
    p.add_argument("--duplicate-tolerance", type=float, default=d.duplicate_tolerance,
                   help="Nordic: S-files sharing a wave file with origins this close (s) are one event")
    p.add_argument("--duplicate-events", choices=("merge", "first"), default=d.duplicate_events,
                   help="merge: union of the picks of duplicate events (default); first: first copy only")
    p.add_argument("--fill-gaps", action="store_true", help="zero-fill gaps instead of skipping the trace")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="keep stations without two horizontals (missing components are zeros)")
    p.add_argument("--inventory", default=None, help="StationXML to rotate Z/1/2 to Z/N/E")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--max-report", type=int, default=20, help="entries listed per kind in the report")
    p.set_defaults(func=run_ingest_command)
    return p


def run_ingest_command(args: argparse.Namespace) -> int:
    """Run ``ingest`` from parsed arguments; prints the summary. Exit code 0 ok, 1 nothing written, 2 error."""
    import sys

    cfg = IngestConfig(
        sampling_rate=args.sampling_rate,
        window_before=args.before,
        window_after=args.after,
        split_fractions=tuple(args.split),
        seed=args.seed,
        duplicate_tolerance=args.duplicate_tolerance,
        duplicate_events=args.duplicate_events,
        fill_gaps=args.fill_gaps,
        allow_incomplete=args.allow_incomplete,
        inventory=args.inventory,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    try:
        summary = ingest(args.waveforms, args.picks, args.fmt, args.out, cfg)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"seisbench-xlstm ingest: error: {err}", file=sys.stderr)
        return 2
    print(summary.report(max_items=args.max_report))
    return 0 if summary.traces > 0 else 1
