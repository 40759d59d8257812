"""The ``seisbench-xlstm`` console command.

Subcommands:

- ``pick``: phase picks of waveform files or folders (anything ObsPy reads) as CSV
  (``seisbench.util.PickList.to_dataframe()``).
- ``annotate``: the P/S/noise probability traces as miniSEED, one file per station and input file; channel
  codes ``PRP``, ``PRS``, ``PRN`` (miniSEED allows 3 characters), the model's name in the file name.
- ``info``: parameter counts, available offline weights and the kernel each device would use.
- ``ingest``: a network's own waveforms and picks into a SeisBench dataset (see ``seisbench_xlstm.data``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

WAVEFORM_SUFFIXES_SKIPPED = {".csv", ".json", ".txt", ".md", ".xml", ".py", ".pt", ".hdf5", ".h5"}


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


def _read_waveforms(files: list[Path]):
    """Yields (path, stream or None, error message or None) per file."""
    import obspy

    for path in files:
        try:
            yield path, obspy.read(str(path)), None
        except Exception as e:  # ObsPy raises many types for unreadable files
            yield path, None, f"{type(e).__name__}: {e}"


def _load_model(args):
    import torch

    from .pickers import load_picker

    if args.weights is None:
        raise SystemExit(
            "seisbench-xlstm: no trained weights ship with this release yet. Pass --weights PATH (a model saved "
            "with model.save(PATH), i.e. PATH.json + PATH.pt) or --weights NAME --backbone sequential|unet for "
            "weights in $SEISBENCH_CACHE_ROOT. Untrained models are never used to pick."
        )
    model = load_picker(args.weights, args.backbone)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    if args.kernel:
        model.set_kernel(args.kernel)
    return model


def _annotate_kwargs(args) -> dict:
    kwargs = {"batch_size": args.batch_size, "nan_policy": args.nan_policy}
    if args.overlap is not None:
        kwargs["overlap"] = args.overlap
    return kwargs


def _per_station(stream):
    """Splits a stream into one stream per instrument (network.station.location)."""
    groups = {}
    for tr in stream:
        groups.setdefault((tr.stats.network, tr.stats.station, tr.stats.location), []).append(tr)
    import obspy

    return [obspy.Stream(traces) for _, traces in sorted(groups.items())]


#: Long records are processed in pieces of this length (for the progress bar and bounded memory) ...
CHUNK_SECONDS = 3600.0
#: ... each read with this much extra data on both sides, so that window edges never fall inside a piece's core.
CHUNK_MARGIN_SECONDS = 60.0


def time_chunks(stream, chunk_s: float = CHUNK_SECONDS, margin_s: float = CHUNK_MARGIN_SECONDS):
    """Splits one station's stream into pieces of ``chunk_s`` seconds, each sliced with ``margin_s`` seconds of
    context on both sides.

    :return: list of ``(core_start, core_end, piece)``; results of a piece belong to it if they fall in
        ``[core_start, core_end)``; the last core ends after the record, so nothing at the very end is lost.
    """
    t0 = min(tr.stats.starttime for tr in stream)
    t1 = max(tr.stats.endtime for tr in stream)
    if t1 - t0 <= chunk_s + 2 * margin_s:
        return [(t0, t1 + 1.0, stream)]
    chunks = []
    start = t0
    while start < t1:
        end = min(start + chunk_s, t1)
        core_end = end if end < t1 else t1 + 1.0
        chunks.append((start, core_end, stream.slice(start - margin_s, end + margin_s)))
        start = end
    return chunks


def _run_over_inputs(args, work):
    """Reads each input file, splits it per station and in time (:func:`time_chunks`) and calls
    ``work(model, path, piece, core_start, core_end)``, with a progress bar over the pieces."""
    from tqdm import tqdm

    files = iter_waveform_files(args.inputs)
    if not files:
        print(f"seisbench-xlstm: no waveform files found in {args.inputs}", file=sys.stderr)
        return 1
    model = _load_model(args)
    failures = []
    failed_files = 0
    with tqdm(total=0, unit="piece", disable=args.quiet or None) as bar:
        for path, stream, error in _read_waveforms(files):
            if error is not None:
                failures.append((path, error))
                failed_files += 1
                continue
            pieces = [(sta, *chunk) for sta in _per_station(stream) for chunk in time_chunks(sta)]
            bar.total += len(pieces)
            bar.refresh()
            for station_stream, start, end, piece in pieces:
                bar.set_postfix_str(f"{path.name} {station_stream[0].id[:-1]}* {start}")
                try:
                    work(model, path, piece, start, end)
                except ValueError as e:
                    failures.append((f"{path} [{station_stream[0].id[:-1]}* from {start}]", str(e)))
                bar.update(1)
    for path, error in failures:
        print(f"seisbench-xlstm: skipped {path}: {error}", file=sys.stderr)
    return 0 if failed_files < len(files) else 1


def cmd_pick(args) -> int:
    import pandas as pd
    import seisbench.util as sbu

    frames = []

    def work(model, path, stream, start, end):
        out = model.classify(stream, P_threshold=args.p_threshold, S_threshold=args.s_threshold,
                             **_annotate_kwargs(args))
        frames.append(sbu.PickList([p for p in out.picks if start <= p.peak_time < end]).to_dataframe())

    status = _run_over_inputs(args, work)
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
    import obspy

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    collected: dict[tuple[Path, str], obspy.Stream] = {}

    def work(model, path, stream, start, end):
        annotations = model.annotate(stream, **_annotate_kwargs(args))
        for tr in annotations:
            # miniSEED channel codes have 3 characters: XLSTMSeqPicker_P -> PRP (probability of P), etc.
            tr.stats.channel = "PR" + tr.stats.channel.rsplit("_", 1)[-1]
            tr.data = tr.data.astype("float32")
            tr.trim(start, end - 0.5 / tr.stats.sampling_rate)
            if tr.stats.npts:
                station = tr.id.rsplit(".", 1)[0]
                collected.setdefault((path, station), obspy.Stream()).append(tr)

    status = _run_over_inputs(args, work)
    for (path, station), annotations in collected.items():
        annotations.merge(method=1)
        annotations = annotations.split()  # real gaps stay gaps (miniSEED cannot hold masked samples)
        start = min(tr.stats.starttime for tr in annotations).strftime("%Y%m%dT%H%M%S")
        target = out_dir / f"{station.replace('.', '_')}_{start}_{path.stem}.mseed"
        annotations.write(str(target), format="MSEED")
    print(f"{len(collected)} annotation files written to {out_dir}", file=sys.stderr)
    return status


def cmd_info(args) -> int:
    import torch

    from .backbones import build_backbone, count_parameters
    from .kernels import resolve_kernel
    from .pickers import PICKERS

    for name, cls in PICKERS.items():
        backbone = build_backbone(name)
        print(f"{cls.__name__}: backbone {name!r}, {count_parameters(backbone):,} backbone parameters")
        print(f"  offline weights: {cls.list_pretrained() or 'none'} (looked in {[str(p) for p in cls._weight_dirs()]})")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        print(f"mLSTM kernel on {dev}: {resolve_kernel('auto', torch.device(dev))}")
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="waveform files or folders (anything ObsPy reads)")
    p.add_argument("--weights", help="saved model path stem (PATH.json + PATH.pt) or name of offline weights")
    p.add_argument("--backbone", choices=["sequential", "unet"], help="needed with a weights name")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--kernel", help="mLSTM kernel override (default: auto)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per batch (default 64)")
    p.add_argument("--overlap", type=int, help="overlap of windows in samples (default: the model's, 512)")
    p.add_argument("--nan-policy", choices=["raise", "gap"], default="raise",
                   help="NaN/inf samples: skip the station with a message (raise) or treat them as gaps")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seisbench-xlstm", description="xLSTM phase pickers for SeisBench")
    sub = parser.add_subparsers(dest="command", required=True)

    pick = sub.add_parser("pick", help="pick P and S phases, write CSV")
    _add_model_args(pick)
    pick.add_argument("-o", "--out", default="picks.csv", help="CSV file, or - for standard output")
    pick.add_argument("--p-threshold", type=float, default=0.3)
    pick.add_argument("--s-threshold", type=float, default=0.3)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    from .pickers import CorruptWeightsError, WeightsNotFoundError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (WeightsNotFoundError, CorruptWeightsError, FileNotFoundError, ValueError) as e:
        print(f"seisbench-xlstm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
