"""Records of an ingest run: picks and events as read, the options, and the summary of what was done."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

__all__ = ["Pick", "Event", "IngestConfig", "IngestSummary", "FORMATS"]

FORMATS = ("nordic", "quakeml", "csv")


@dataclass
class Pick:
    """One P or S reading as read from a pick file."""

    network: str
    station: str
    location: str
    channel: str
    label: str  # "P" or "S"
    phase: str  # original phase hint
    time: object  # obspy.UTCDateTime
    mode: str | None
    source: str  # file (and line or event) it came from


@dataclass
class Event:
    """One event as read: origin, magnitude, its picks, and (Nordic) the wave files its own type-6 lines name."""

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
    """Options of :func:`~seisbench_xlstm.data.ingest.ingest` (all have console equivalents).

    ``window_before`` defaults to 60 s: a picking noise window needs 4096 samples + a 100-sample margin (42 s
    at 100 Hz) of data before the first pick; with 30 s no trace could give one.
    """

    sampling_rate: float = 100.0
    window_before: float = 60.0
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
    #: window length used to count the traces that can give training windows (see ``data.windows``)
    window_len: int = 4096


@dataclass
class IngestSummary:
    """What an ingest run did: counts, and every item skipped or changed with the reason.

    ``skipped`` and ``notes`` are lists of ``{"what", "item", "reason"}`` dicts; ``skipped`` entries lost
    data (a pick, a trace, a file, a line), ``notes`` did not (merges, truncations, resampling, ...).
    ``training_windows`` counts, for windows of ``IngestConfig.window_len`` samples, the traces that are too
    short and those that hold a pre-arrival noise window (``data.windows.WindowEligibility``).
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
    training_windows: dict = field(default_factory=dict)
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
        if self.training_windows:
            lines.append(f"  training windows: {self.training_windows.get('text', self.training_windows)}")
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
