"""Nordic (SEISAN) pick files: single S-files and multi-event files such as SEISAN's ``select.out``.

A file is cut into events at blank lines (ObsPy's rule for Nordic files). Each event is read on its own, with
the wave file names of **its own** type-6 lines, so a multi-event file gives the same events as the same
events in separate S-files. Event ids: the file name for a one-event file (an S-file name), ``NAME#k`` for
the k-th event of a multi-event file. A malformed phase line is dropped (and reported) instead of losing the
event: each phase line is re-parsed alone to find it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from .readers import dedupe_files, events_from_catalog, files_under
from .records import Event, IngestSummary

__all__ = ["read_nordic", "nordic_blocks"]

_TYPE_COLUMN = 79  # column 80 holds the line type


def _line_type(line: str) -> str:
    line = line.rstrip("\n")
    return line[_TYPE_COLUMN] if len(line) > _TYPE_COLUMN else " "


def nordic_blocks(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Cut the lines of a Nordic file into events at blank lines: ``[(index of the first line, lines), ...]``."""
    blocks, current, start = [], [], 0
    for i, line in enumerate(lines):
        if line.strip():
            if not current:
                start = i
            current.append(line if line.endswith("\n") else line + "\n")
        elif current:
            blocks.append((start, current))
            current = []
    if current:
        blocks.append((start, current))
    return blocks


def _parse(lines: list[str], quiet: bool = True):
    from obspy.io.nordic.core import read_nordic as obspy_read_nordic

    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            return obspy_read_nordic(io.StringIO("".join(lines) + " " * 80 + "\n")), None
    except Exception as err:  # noqa: BLE001 - ObsPy raises many types on malformed lines
        return None, f"{type(err).__name__}: {err}"


def _read_event(lines: list[str], first: int, path: Path, where: str, summary: IngestSummary):
    """Catalog of one event's lines; malformed phase lines are dropped and reported."""
    cat, first_error = _parse(lines, quiet=False)
    if cat is not None:
        return cat
    header, phases, in_phases = [], [], False
    for i, line in enumerate(lines):
        (phases if in_phases else header).append((first + i, line))
        if _line_type(line) == "7":
            in_phases = True
    header_lines = [line for _, line in header]
    if _parse(header_lines)[0] is None:
        summary.skip("pick file", where, f"unreadable header ({first_error})")
        return None
    good = []
    for i, line in phases:
        ok, err = _parse(header_lines + [line])
        if ok is None:
            summary.skip("malformed line", f"{path}:{i + 1}", f"{err}; line: {line.rstrip()!r}")
        else:
            good.append(line)
    cat, err = _parse(header_lines + good)
    if cat is None:
        summary.skip("pick file", where, f"unreadable after dropping malformed lines ({err})")
    return cat


def read_nordic(paths, summary: IngestSummary) -> list[Event]:
    """Events from Nordic files (S-files or multi-event files; files or folders).

    Wave file names per event from that event's own type-6 lines.
    """
    files = dedupe_files(files_under(paths), summary, "pick")
    summary.pick_files = len(files)
    events = []
    for f in files:
        blocks = nordic_blocks(f.read_text(encoding="latin-1").splitlines(keepends=True))
        if not blocks:
            summary.skip("pick file", str(f), "no event in file")
            continue
        for k, (first, lines) in enumerate(blocks):
            where = str(f) if len(blocks) == 1 else f"{f}:{first + 1}"
            cat = _read_event(lines, first, f, where, summary)
            if cat is None:
                continue
            if len(cat) == 0:
                summary.skip("pick file", where, "no event in file")
                continue
            wavefiles = [line[1:_TYPE_COLUMN].strip() for line in lines if _line_type(line) == "6"]
            wavefiles = [w for w in wavefiles if w]
            event_id = f.name if len(blocks) == 1 else f"{f.name}#{k}"
            for ev in events_from_catalog(cat, where, summary, default_id=event_id):
                ev.wavefiles = list(wavefiles)
                events.append(ev)
    return events
