"""``ingest()``: pick files + waveforms -> a SeisBench dataset folder, with a summary of everything skipped."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..splits import SPLITS, split_by_event
from .events import merge_events
from .nordic import read_nordic
from .readers import read_csv_picks, read_quakeml
from .records import FORMATS, IngestConfig, IngestSummary
from .traces import EventIngester
from .waveforms import WaveformIndex
from .writer import GzipWaveformDataWriter

__all__ = ["ingest", "READERS"]

READERS = {"nordic": read_nordic, "quakeml": read_quakeml, "csv": read_csv_picks}


def _as_list(x) -> list:
    return [x] if isinstance(x, (str, os.PathLike)) else list(x)


def _prepare_out(out: Path, overwrite: bool):
    if out.exists() and any((out / n).exists() for n in ("metadata.csv", "waveforms.hdf5")):
        if not overwrite:
            raise FileExistsError(f"{out} already holds a dataset; use overwrite=True (--overwrite)")
        for n in ("metadata.csv", "waveforms.hdf5", "ingest_summary.json"):
            (out / n).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _assign_splits(rows: list[dict], cfg: IngestConfig, summary: IngestSummary):
    """The package's split algorithm on the written traces (event id, station, data span)."""
    from obspy import UTCDateTime

    starts = np.array([UTCDateTime(r["trace_start_time"]).timestamp for r in rows])
    ends = starts + np.array([r["trace_npts"] for r in rows]) / float(cfg.sampling_rate)
    split, report = split_by_event(
        [r["source_id"] for r in rows],
        cfg.split_fractions,
        cfg.seed,
        stations=[f"{r['station_network_code']}.{r['station_code']}" for r in rows],
        starts=starts,
        ends=ends,
        what="ingest splits",
    )
    for r, s in zip(rows, split):
        r["split"] = s
    for w in report.warnings:
        summary.note("split", "splits", w)
    if report.groups < len({r["source_id"] for r in rows}):
        summary.note(
            "split", "splits",
            f"{report.groups} groups of events placed together (events overlapping at a shared station), "
            f"largest {report.largest_group}; trace pairs sharing samples across splits: "
            f"{report.overlaps_across_splits}",
        )


def _count(summary: IngestSummary, md: pd.DataFrame, n_stations: int):
    summary.events = int(md["source_id"].nunique())
    summary.traces = len(md)
    summary.p_picks = int(md["trace_P_arrival_sample"].notna().sum())
    summary.s_picks = int(md["trace_S_arrival_sample"].notna().sum())
    summary.stations = n_stations
    ev_split = md.drop_duplicates("source_id")["split"].value_counts()
    summary.events_per_split = {s: int(ev_split.get(s, 0)) for s in SPLITS}
    tr_split = md["split"].value_counts()
    summary.traces_per_split = {s: int(tr_split.get(s, 0)) for s in SPLITS}


def _training_windows(out: Path, cfg: IngestConfig, summary: IngestSummary):
    """How many written traces can give training windows (no padding; see ``data.windows``)."""
    from ..datasets import open_dataset
    from ..windows import window_eligibility

    e = window_eligibility(open_dataset(out, sampling_rate=cfg.sampling_rate), cfg.window_len, margin=100)
    summary.training_windows = {**asdict(e), "text": e.report()}
    if e.noise_eligible < 0.5 * e.usable:
        need = (cfg.window_len + 100) / cfg.sampling_rate
        summary.note(
            "training windows", str(out),
            f"only {e.noise_eligible} of {e.usable} traces hold a {cfg.window_len}-sample noise window before the "
            f"first pick (needs {need:.0f} s of data before it; --before {cfg.window_before:g} was asked)",
        )


def ingest(
    waveforms: str | os.PathLike | Sequence[str | os.PathLike],
    picks: str | os.PathLike | Sequence[str | os.PathLike],
    fmt: str,
    out: str | os.PathLike,
    config: IngestConfig | None = None,
    **overrides,
) -> IngestSummary:
    """Convert waveforms + picks into a SeisBench dataset in ``out`` (rules: :mod:`seisbench_xlstm.data.ingest`).

    :param waveforms: file(s) or folder(s) ObsPy can read (searched recursively).
    :param picks: pick file(s) or folder(s) in ``fmt``.
    :param fmt: ``"nordic"``, ``"quakeml"`` or ``"csv"``.
    :param out: output folder (created; must be empty unless ``overwrite``).
    :param config: :class:`IngestConfig`; keyword ``overrides`` replace its fields
        (e.g. ``sampling_rate=100, window_before=60``).
    :return: :class:`IngestSummary` (also written to ``out/ingest_summary.json``).
    :raises ValueError: unknown format or option; :raises FileNotFoundError: input path missing;
        :raises FileExistsError: ``out`` holds a dataset and ``overwrite`` is False.
    """
    from obspy import read_inventory

    cfg = config or IngestConfig()
    if overrides:
        cfg = IngestConfig(**{**asdict(cfg), **overrides})
    fmt = fmt.lower()
    if fmt not in READERS:
        raise ValueError(f"unknown pick format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if cfg.duplicate_events not in ("merge", "first"):
        raise ValueError(f"duplicate_events must be 'merge' or 'first', got {cfg.duplicate_events!r}")
    waveforms, picks = _as_list(waveforms), _as_list(picks)
    for p in waveforms + picks:
        if not Path(p).exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
    out = Path(out)
    _prepare_out(out, cfg.overwrite)

    summary = IngestSummary(out=str(out), fmt=fmt)
    events = READERS[fmt](picks, summary)
    if summary.pick_files == 0:
        summary.skip("pick file", ", ".join(map(str, picks)), "no pick files found there")
    summary.events_read = len(events)
    events = merge_events(events, cfg.duplicate_tolerance, summary, cfg.duplicate_events)
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

    with GzipWaveformDataWriter(out, cfg.compression_level, cfg.bucket_size) as writer:
        writer.data_format = {"dimension_order": "CW", "component_order": "ZNE",
                              "sampling_rate": float(cfg.sampling_rate), "unit": "counts"}
        ingester = EventIngester(index, cfg, writer, summary, inventory)
        for ev in tqdm(events, desc="Ingesting events", disable=not cfg.progress):
            try:
                ingester.ingest(ev)
            except Exception as err:  # noqa: BLE001 - one bad event must not lose the run
                summary.skip("event", ev.event_id, f"unexpected error {type(err).__name__}: {err}")
        if ingester.rows:
            _assign_splits(ingester.rows, cfg, summary)

    if not ingester.rows:
        summary.note("output", str(out), "nothing written: no trace survived (see skipped)")
        _write_summary(out, summary)
        return summary
    _count(summary, pd.read_csv(out / "metadata.csv"), len(ingester.stations))
    _training_windows(out, cfg, summary)
    for path in sorted({e.path for e in index.entries} - index.used):
        summary.note("waveforms without picks", str(path), "file not used by any event")
    _write_summary(out, summary)
    return summary


def _write_summary(out: Path, summary: IngestSummary):
    with open(out / "ingest_summary.json", "w") as f:
        json.dump(summary.to_dict(), f, indent=1, default=str)
