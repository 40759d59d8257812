"""Pick readers: QuakeML (or any event format ObsPy detects) and CSV; file listing and de-duplication.

Nordic S-files are read in :mod:`.nordic`. Every reader returns :class:`~.records.Event` objects and reports
what it could not read in the :class:`~.records.IngestSummary`.

CSV columns: required ``event_id, station, phase, time`` (ISO time); optional ``network, location,
channel, evaluation_mode, origin_time, latitude, longitude, depth_km, magnitude``.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from ..phases import phase_of_hint
from .records import Event, IngestSummary, Pick

__all__ = ["files_under", "dedupe_files", "events_from_catalog", "read_quakeml", "read_csv_picks"]


def files_under(paths: Sequence[str | os.PathLike]) -> list[Path]:
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


def dedupe_files(files: list[Path], summary: IngestSummary, what: str) -> list[Path]:
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
def events_from_catalog(cat, source: str, summary: IngestSummary, default_id: str | None) -> list[Event]:
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



def read_quakeml(paths, summary: IngestSummary) -> list[Event]:
    """Events from QuakeML files (or any event format ObsPy detects)."""
    from obspy import read_events

    files = dedupe_files(files_under(paths), summary, "pick")
    summary.pick_files = len(files)
    events = []
    for f in files:
        try:
            cat = read_events(str(f))
        except Exception as err:  # noqa: BLE001
            summary.skip("pick file", str(f), f"unreadable ({type(err).__name__}: {err})")
            continue
        events += events_from_catalog(cat, str(f), summary, default_id=None)
    return events


_CSV_REQUIRED = ("event_id", "station", "phase", "time")


def read_csv_picks(paths, summary: IngestSummary) -> list[Event]:
    """Events from CSV pick tables (one pick per row; columns documented in the module docstring)."""
    from obspy import UTCDateTime

    files = dedupe_files(files_under(paths), summary, "pick")
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


