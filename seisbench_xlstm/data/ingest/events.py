"""Events as read -> events to ingest: duplicates merged, one P and one S per station."""

from __future__ import annotations

from collections import OrderedDict

from .records import Event, IngestSummary, Pick

__all__ = ["merge_events", "station_picks"]


def merge_events(events: list[Event], tol: float, summary: IngestSummary, mode: str = "merge") -> list[Event]:
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


def station_picks(ev: Event, summary: IngestSummary) -> dict[tuple[str, str], dict[str, Pick]]:
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


