"""The ``seisbench-xlstm`` console command.

Subcommands:

- ``pick``: phase picks of waveform files or folders (anything ObsPy reads) as CSV
  (``seisbench.util.PickList.to_dataframe()``).
- ``annotate``: the P/S/noise probability traces as miniSEED, one file per instrument; channel codes ``PRP``,
  ``PRS``, ``PRN`` (miniSEED allows 3 characters), the model's name in the file name.
- ``info``: parameter counts, available offline weights and the kernel each device would use.
- ``ingest``: a network's own waveforms and picks into a SeisBench dataset (see ``seisbench_xlstm.data``).

Files are grouped by instrument (network, station, location and the band and instrument codes of the channel,
e.g. ``O2.WILZ..EH``) and each group's traces are merged with ObsPy before annotation: a folder with one file per
component, or hourly files, is annotated as one record per instrument, without lost borders. Long records are
annotated in pieces (:func:`annotate_record`) aligned to the window grid, so the output equals a direct
``model.annotate`` of the whole record while the model's memory stays bounded by the piece length. One
instrument's data is held in memory at a time (a 24 h, 3-component, 100 Hz record: about 0.6 GB in all).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import warnings
from collections import defaultdict
from pathlib import Path

WAVEFORM_SUFFIXES_SKIPPED = {".csv", ".json", ".txt", ".md", ".xml", ".py", ".pt", ".hdf5", ".h5"}

#: Long records are annotated in pieces of about this length (aligned to the window step) ...
PIECE_SECONDS = 3600.0


def iter_waveform_files(inputs: list[str]) -> list[Path]:
    """Files named directly plus every file below named folders (suffixes that are never waveforms skipped)."""
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() not in WAVEFORM_SUFFIXES_SKIPPED
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"No such file or folder: {item}")
    return files


def instrument_key(trace) -> str:
    """``NET.STA.LOC.BI``: the channel without its component code (band and instrument codes)."""
    return f"{trace.stats.network}.{trace.stats.station}.{trace.stats.location}.{trace.stats.channel[:-1]}"


def group_files(files: list[Path]) -> tuple[dict[str, list[Path]], list[tuple[Path, str]]]:
    """Reads the headers of ``files`` and groups them by :func:`instrument_key`.

    :return: ``{key: files holding traces of it}`` and ``[(file, error)]`` for unreadable files
    """
    import obspy

    groups: dict[str, list[Path]] = defaultdict(list)
    failures = []
    for path in files:
        try:
            try:
                stream = obspy.read(str(path), headonly=True)
            except TypeError:  # formats without a header-only reader
                stream = obspy.read(str(path))
        except Exception as e:  # ObsPy raises many types for unreadable files
            failures.append((path, f"{type(e).__name__}: {e}"))
            continue
        for key in sorted({instrument_key(tr) for tr in stream}):
            groups[key].append(path)
    return dict(sorted(groups.items())), failures


def read_instrument(key: str, paths: list[Path]):
    """The traces of one instrument from ``paths``, merged with ObsPy (gaps and conflicting overlaps masked)."""
    import obspy

    net, sta, loc, bi = key.split(".")
    stream = obspy.Stream()
    for path in paths:
        stream += obspy.read(str(path)).select(network=net, station=sta, location=loc, channel=bi + "?")
    stream.merge(method=0)
    return stream


def _load_model(args):
    import torch

    from .pickers import PICKERS, SHIPPED_PICKER, load_picker

    weights, backbone = args.weights, args.backbone
    if weights is None:
        backbone, weights = SHIPPED_PICKER
        if args.backbone not in (None, backbone):
            raise SystemExit(f"seisbench-xlstm: the shipped picker {weights!r} is a {backbone!r} picker; pass "
                             f"--weights for a {args.backbone!r} one.")
        if not args.quiet:
            print(f"seisbench-xlstm: picker {PICKERS[backbone].__name__} {weights!r} (shipped with the package; "
                  "--weights for another)", file=sys.stderr)
    model = load_picker(weights, backbone)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    if args.kernel:
        model.set_kernel(args.kernel)
    if args.compile:
        model.set_compile(True)
    return model


def _annotate_kwargs(args) -> dict:
    kwargs = {"batch_size": args.batch_size, "nan_policy": args.nan_policy, "stacking": args.stacking}
    if args.overlap is not None:
        kwargs["overlap"] = args.overlap
    return kwargs


def annotate_record(model, stream, kwargs: dict, piece_seconds: float = PIECE_SECONDS, progress=None):
    """Annotations of one instrument's stream, equal to ``model.annotate(stream, **kwargs)``, computed in pieces.

    The stream is prepared once as annotate prepares it (gaps, segment demeaning, resampling, bridging; see
    :mod:`seisbench_xlstm.records`). Each contiguous record longer than a piece is then annotated in pieces
    whose cores start on the record's window grid (multiples of the step ``in_samples - overlap``) and which
    carry a margin of at least one window on each side: every core sample is predicted by exactly the windows of
    a direct run, and the piece edges, where windows differ, fall in the margins, which are dropped.

    :param progress: optional ``tqdm`` bar, advanced by one per piece
    :return: annotation stream (channels ``<model name>_<label>``), only where the instrument has data
    """
    import obspy

    from .annotate_args import overlap_in_samples
    from .records import check_components, data_spans, keep_spans, split_at_gaps

    argdict = {**model.default_args, **kwargs}
    get = model._argdict_get_with_default
    stream = split_at_gaps(stream, get(argdict, "nan_policy"))
    stream = check_components(
        stream, model.component_order, get(argdict, "flexible_horizontal_components"), get(argdict, "strict")
    )
    if not len(stream):
        return obspy.Stream()
    spans = data_spans(stream)
    model.annotate_stream_pre(stream, argdict)
    rate = model.sampling_rate
    step = model.in_samples - overlap_in_samples(get(argdict, "overlap"), model.in_samples)
    margin = math.ceil(model.in_samples / step) * step
    core = max(1, round(piece_seconds * rate / step)) * step
    pieces = []
    for records in data_spans(stream).values():
        for r0, r1 in records:
            n = int(round((r1 - r0) * rate)) + 1
            if n <= core + 2 * margin:
                pieces.append((r0, 0, n, 0, n))
            else:
                pieces += [
                    (r0, c, min(c + core, n), max(0, c - margin), min(n, c + core + margin)) for c in range(0, n, core)
                ]
    if progress is not None:
        progress.total += len(pieces)
        progress.refresh()
    out = obspy.Stream()
    tol = 0.25 / rate  # sample times are compared with a quarter-sample tolerance
    # One event loop for all pieces (annotate would start one per call): its worker threads, and the memory
    # arenas the C allocator keeps for them, are reused, which keeps the peak memory flat over many pieces.
    loop = asyncio.new_event_loop()
    try:
        for r0, c0, c1, p0, p1 in pieces:
            piece = stream.slice(r0 + p0 / rate - tol, r0 + (p1 - 1) / rate + tol, nearest_sample=False)
            annotations = loop.run_until_complete(model.annotate_async(piece, prepared=True, **kwargs))
            for tr in annotations.slice(r0 + c0 / rate - tol, r0 + (c1 - 1) / rate + tol, nearest_sample=False):
                tr.data = tr.data.copy()  # keep the core only, not the whole piece's arrays
                out.append(tr)
            if progress is not None:
                progress.update(1)
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    out.merge(method=-1)
    return keep_spans(out, spans)


def _example_file() -> Path:
    """ObsPy's example record (``obspy.read()``: BW.RJOB, a local earthquake, 30 s of 3-component 100 Hz data)
    written once as miniSEED into a temporary folder (removed at exit)."""
    import atexit
    import shutil
    import tempfile

    import obspy

    folder = Path(tempfile.mkdtemp(prefix="seisbench-xlstm-example-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "BW.RJOB.example.mseed"
    obspy.read().write(str(path), format="MSEED")
    return path


def _run_over_instruments(args, work) -> int:
    """Groups the input files by instrument, annotates each (:func:`annotate_record`) and calls
    ``work(model, key, annotations, argdict)``; reports unreadable files and skipped instruments on stderr.

    :return: 0 if at least one instrument was annotated, else 1
    """
    from tqdm import tqdm

    from .records import AnnotateWarning

    files = iter_waveform_files(args.inputs)
    if args.example:
        files.append(_example_file())
    if not files:
        print(f"seisbench-xlstm: no waveform files found in {args.inputs}", file=sys.stderr)
        return 1
    model = _load_model(args)
    kwargs = _annotate_kwargs(args)
    model.check_annotate_args({**model.default_args, **kwargs})
    groups, failures = group_files(files)
    reports = [f"skipped {path}: {error}" for path, error in failures]
    processed = 0
    with tqdm(total=0, unit="piece", disable=args.quiet or None) as bar:
        for key, paths in groups.items():
            bar.set_postfix_str(key)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", AnnotateWarning)
                try:
                    annotations = annotate_record(model, read_instrument(key, paths), kwargs, args.piece_seconds, bar)
                except Exception as e:  # one instrument's bad data (ObsPy raises plain Exceptions) stops no other
                    reports.append(f"skipped {key}: {type(e).__name__}: {e}")
                    continue
            reports += [f"{w.message}" for w in caught if issubclass(w.category, AnnotateWarning)]
            if len(annotations):
                work(model, key, annotations, {**model.default_args, **kwargs})
                processed += 1
            elif not any(issubclass(w.category, AnnotateWarning) and "skipped" in str(w.message) for w in caught):
                reports.append(f"skipped {key}: no annotations")
    for line in reports:
        print(f"seisbench-xlstm: {line}", file=sys.stderr)
    if not processed:
        print(f"seisbench-xlstm: nothing was annotated ({len(groups)} instrument(s), {len(failures)} unreadable "
              "file(s)).", file=sys.stderr)
    return 0 if processed else 1


def cmd_pick(args) -> int:
    import pandas as pd

    frames = []

    def work(model, key, annotations, argdict):
        # thresholds given on the command line override the model's own (tuned ones ship in default_args)
        given = {"P_threshold": args.p_threshold, "S_threshold": args.s_threshold}
        argdict = {**argdict, **{k: v for k, v in given.items() if v is not None}}
        frames.append(model.classify_aggregate(annotations, argdict).picks.to_dataframe())

    for name, value in (("--p-threshold", args.p_threshold), ("--s-threshold", args.s_threshold)):
        if value is not None and not 0 < value <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {value}.")
    status = _run_over_instruments(args, work)
    frames = [f for f in frames if len(f)]
    picks = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["station", "time", "start_time", "end_time", "probability", "phase"]
    )
    if len(picks):
        picks = picks.drop(columns=["index"], errors="ignore").sort_values(["time", "station"])
    if args.out == "-":
        picks.to_csv(sys.stdout, index=False)
    else:
        picks.to_csv(args.out, index=False)
        print(f"{len(picks)} picks written to {args.out}", file=sys.stderr)
    return status


def cmd_annotate(args) -> int:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def work(model, key, annotations, argdict):
        for tr in annotations:
            # miniSEED channel codes have 3 characters: XLSTMSeqPicker_P -> PRP (probability of P), etc.
            tr.stats.channel = "PR" + tr.stats.channel.rsplit("_", 1)[-1]
            tr.data = tr.data.astype("float32")
        start = min(tr.stats.starttime for tr in annotations).strftime("%Y%m%dT%H%M%S")
        target = out_dir / f"{key.replace('.', '_')}_{start}_{model.name}.mseed"
        annotations.write(str(target), format="MSEED")
        written.append(target)

    status = _run_over_instruments(args, work)
    print(f"{len(written)} annotation files written to {out_dir}", file=sys.stderr)
    return status


def cmd_info(args) -> int:
    import torch

    from .backbones import build_backbone, count_parameters
    from .kernels import OWN_KERNEL_MIN_SEQUENCES, resolve_kernel
    from .pickers import PICKERS

    for name, cls in PICKERS.items():
        backbone = build_backbone(name)
        print(f"{cls.__name__}: backbone {name!r}, {count_parameters(backbone):,} backbone parameters")
        folders = [str(p) for p in cls._weight_dirs()]
        print(f"  offline weights: {cls.list_pretrained() or 'none'} (looked in {folders})")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        small, large = (resolve_kernel("auto", torch.device(dev), sequences=n) for n in (1, OWN_KERNEL_MIN_SEQUENCES))
        print(f"mLSTM kernel on {dev}: {large}" if small == large else
              f"mLSTM kernel on {dev}: {large} for calls of {OWN_KERNEL_MIN_SEQUENCES} sequences or more "
              f"(batch x 2 directions x heads), else {small}")
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", help="waveform files or folders (anything ObsPy reads)")
    p.add_argument("--example", action="store_true",
                   help="also ObsPy's example record (obspy.read(): BW.RJOB, a local earthquake), offline")
    p.add_argument("--weights", help="saved model (PATH for PATH.json + PATH.pt, or either file) or a weights "
                                     "name (default: the picker shipped with the package)")
    p.add_argument("--backbone", choices=["sequential", "unet"],
                   help="picker class of a weights name (detected where only one class has the name)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--kernel", help="mLSTM kernel override (default: auto)")
    p.add_argument("--compile", action="store_true",
                   help="run the mLSTM layers through torch.compile: each batch shape compiles first (about 20 s "
                        "on a 2-core CPU), then batches run about 1.25x faster; for long records")
    p.add_argument("--batch-size", type=int, default=64, help="windows per batch (default 64)")
    p.add_argument("--overlap", type=int, help="overlap of windows in samples (default: the model's, 512)")
    p.add_argument("--stacking", choices=["avg", "max"], default="avg", help="stacking of overlapping windows")
    p.add_argument("--nan-policy", choices=["raise", "gap"], default="raise",
                   help="NaN/inf samples: skip the instrument with a message (raise) or treat them as gaps")
    p.add_argument("--piece-seconds", type=float, default=PIECE_SECONDS,
                   help="long records are annotated in pieces of about this length (bounded memory)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seisbench-xlstm", description="xLSTM phase pickers for SeisBench")
    sub = parser.add_subparsers(dest="command", required=True)

    pick = sub.add_parser("pick", help="pick P and S phases, write CSV")
    _add_model_args(pick)
    pick.add_argument("-o", "--out", default="picks.csv", help="CSV file, or - for standard output")
    pick.add_argument("--p-threshold", type=float, default=None,
                      help="P pick threshold (default: the model's, from its weights; 0.3 if they set none)")
    pick.add_argument("--s-threshold", type=float, default=None, help="S pick threshold (default: the model's)")
    pick.set_defaults(func=cmd_pick)

    annotate = sub.add_parser("annotate", help="write P/S/noise probability traces as miniSEED")
    _add_model_args(annotate)
    annotate.add_argument("-o", "--out", default="annotations", help="output folder")
    annotate.set_defaults(func=cmd_annotate)

    info = sub.add_parser("info", help="parameter counts, offline weights, kernels")
    info.set_defaults(func=cmd_info)

    try:
        from .data.ingest import add_ingest_subcommand
    except ImportError:  # the data layer is optional at import time of the CLI
        add_ingest_subcommand = None
    if add_ingest_subcommand is not None:
        add_ingest_subcommand(sub)

    baselines = sub.add_parser(
        "baselines", add_help=False,
        help="original PhaseNet/EQTransformer weights converted exactly, installed into the SeisBench cache "
             "(seisbench-xlstm baselines install|check --help)",
    )
    baselines.add_argument("baseline_args", nargs=argparse.REMAINDER)
    baselines.set_defaults(func=cmd_baselines)
    return parser


def cmd_baselines(args) -> int:
    from .baselines.__main__ import main as baselines_main

    return baselines_main(args.baseline_args or ["--help"])


def main(argv: list[str] | None = None) -> int:
    from .weight_lookup import CorruptWeightsError, WeightsNotFoundError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["baselines"]:  # its own parser (argparse's REMAINDER does not pass on options)
        return cmd_baselines(argparse.Namespace(baseline_args=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "inputs", None) == [] and not args.example:
        parser.error(f"{args.command}: give waveform files or folders, or --example")
    try:
        return args.func(args)
    except (WeightsNotFoundError, CorruptWeightsError, FileNotFoundError, ValueError) as e:
        print(f"seisbench-xlstm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
