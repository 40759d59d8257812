"""Console command ``seisbench-xlstm ingest`` (``add_ingest_subcommand`` is called by ``seisbench_xlstm.cli``)."""

from __future__ import annotations

import argparse

from .records import FORMATS, IngestConfig
from .run import ingest

__all__ = ["add_ingest_subcommand", "run_ingest_command"]


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
                   help="seconds kept before the first pick of a station (60: room for a 4096-sample noise window)")
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
