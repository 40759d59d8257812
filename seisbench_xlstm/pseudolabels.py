"""Teacher pseudo-labels: picks of an ensemble of published pickers, combined with analyst picks.

The teachers are SeisBench models loaded offline from a SeisBench cache (by default the converted original
PhaseNet and EQTransformer, installed with ``python -m seisbench_xlstm.baselines install``). Steps:

1. **Ensemble curves** (:func:`ensemble_curves`): every teacher runs its own ``annotate`` on the raw stream
   (its own windows, normalisation and stacking, exactly as a user would run it); per instrument, the P and the
   S probability curves of the teachers are averaged sample by sample on the 100 Hz grid (where only some
   teachers have output, e.g. EQTransformer's blinded record edges, the mean of those that have).
2. **Ensemble picks** (:func:`ensemble_picks`): SeisBench's trigger (``picks_from_annotations``: on at the
   threshold, off at half of it, the pick at the peak) on the mean curves. With two teachers, a pick that both
   see clearly passes a threshold of 0.4 on the mean; one that only one teacher sees needs a peak of 0.8 there.
3. **Combination with analyst picks** (:func:`combine_picks`), the rule: every analyst pick is kept; a teacher
   pick is dropped when an analyst pick of the same phase lies within ``analyst_tolerance`` seconds (the analyst's
   time wins) or an analyst pick of the other phase does (the analyst's phase wins); every other teacher pick
   is kept as an extra pick (e.g. an S the analyst did not read, or a second event in the trace).

Pseudo picks live in extra metadata columns ``trace_pseudoP<k>_arrival_sample`` /
``trace_pseudoS<k>_arrival_sample`` (:func:`pseudo_pick_columns` maps them to P/S for the data layer's
``PickingConfig.extra_pick_columns``), so the picking generator turns them into the same
``ProbabilisticLabeller`` targets, windows and augmentations as analyst picks.

**Continuous records** (:func:`write_continuous_dataset`): the teachers annotate the whole record; the record is
then prepared as annotate prepares it (``seisbench_xlstm.data.continuous.segments_from_stream``: grouped per
instrument, merged, resampled with annotate's resampler, cut at gaps, each segment demeaned in raw counts) and cut
into chunks written as a SeisBench dataset with the ensemble picks. Chunks before ``train_fraction`` of the record
span are the ``train`` split, the rest ``test`` (held out, e.g. to compare a student with its teachers).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import obspy
import pandas as pd

__all__ = [
    "PseudoLabelConfig",
    "TeacherNotAvailableError",
    "load_teacher",
    "load_teachers",
    "ensemble_curves",
    "ensemble_picks",
    "combine_picks",
    "pseudo_pick_columns",
    "pseudo_picks_for_traces",
    "add_pseudo_columns",
    "write_continuous_dataset",
    "read_teacher_picks",
    "PSEUDO_COLUMN",
]

#: Metadata column of the k-th pseudo pick of a phase.
PSEUDO_COLUMN = "trace_pseudo{phase}{k}_arrival_sample"
_PSEUDO_RE = re.compile(r"^trace_pseudo(?P<phase>[PS])\d+_arrival_sample$")
ENSEMBLE = "Ensemble"


class TeacherNotAvailableError(FileNotFoundError):
    """A teacher's weights are not in the SeisBench cache (nothing is ever downloaded)."""


@dataclass
class PseudoLabelConfig:
    """:param teachers: ``"Class:name"`` of SeisBench models in the cache (``seisbench.models.<Class>``)
    :param P_threshold: trigger threshold on the teachers' mean P curve (0.4 and S 0.3 gave the best F1 against
        the analyst picks of the NCEDC-154 and NZ-DFDP train splits, see docs/finetune.md)
    :param S_threshold: the same for S
    :param analyst_tolerance: seconds within which an analyst pick overrides a teacher pick (see the rule above)
    :param cache_root: SeisBench cache holding the teachers (default: ``seisbench.cache_root``)
    :param chunk_len: samples per chunk of continuous records
    :param min_chunk_len: shortest chunk kept (the remainder of a segment)
    :param train_fraction: continuous chunks before this fraction of the record span are ``train``, after it ``test``
    :param batch_size: annotate batch size of the teachers
    """

    teachers: Sequence[str] = ("PhaseNet:original", "EQTransformer:original")
    P_threshold: float = 0.4
    S_threshold: float = 0.3
    analyst_tolerance: float = 1.0
    cache_root: str | None = None
    chunk_len: int = 12288
    min_chunk_len: int = 6000
    train_fraction: float = 0.7
    batch_size: int = 64

    @property
    def thresholds(self) -> dict[str, float]:
        return {"P": float(self.P_threshold), "S": float(self.S_threshold)}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["teachers"] = list(self.teachers)
        return d


# ---------------------------------------------------------------------------------------------- teachers
def load_teacher(spec: str, cache_root: str | Path | None = None):
    """``"Class:name"`` (e.g. ``"PhaseNet:original"``) from the SeisBench cache, newest version, offline."""
    import seisbench
    import seisbench.models as sbm
    from packaging import version as pversion

    if ":" not in spec:
        raise ValueError(f"teacher {spec!r}: expected 'Class:name', e.g. 'PhaseNet:original'")
    cls_name, name = spec.split(":", 1)
    cls = getattr(sbm, cls_name, None)
    if cls is None:
        raise ValueError(f"teacher {spec!r}: seisbench.models has no class {cls_name!r}")
    root = Path(cache_root) if cache_root else Path(seisbench.cache_root)
    folder = root / "models" / "v3" / cls_name.lower()
    files = [f.name for f in folder.iterdir()] if folder.is_dir() else []
    versions = [v for v in cls._get_versions_from_files(name, files) if v and f"{name}.pt.v{v}" in files]
    if not versions:
        raise TeacherNotAvailableError(
            f"teacher {spec}: no weights {name}.json.v* + {name}.pt.v* in {folder}. Install the converted teachers "
            f"with: python -m seisbench_xlstm.baselines install --cache-root {root}"
        )
    best = max(versions, key=pversion.parse)
    model = cls.load(folder / name, version_str=best)
    model.eval()
    return model


def load_teachers(config: PseudoLabelConfig) -> list:
    if len(config.teachers) == 0:
        raise ValueError("no teachers configured")
    return [load_teacher(spec, config.cache_root) for spec in config.teachers]


def ensemble_curves(teachers: Sequence, stream: obspy.Stream, batch_size: int = 64) -> obspy.Stream:
    """Mean P and S curves of the teachers' ``annotate(stream)``: per instrument one ``Ensemble_P`` and one
    ``Ensemble_S`` trace on the 100 Hz grid of the first teacher's output (zeros where no teacher has output)."""
    import torch

    pieces: dict[tuple[str, str], list[obspy.Trace]] = {}
    rate = None
    for teacher in teachers:
        with torch.no_grad():
            annotations = teacher.annotate(stream.copy(), batch_size=batch_size)
        for tr in annotations:
            phase = tr.stats.channel.rsplit("_", 1)[-1]
            if phase not in ("P", "S"):
                continue
            rate = rate or tr.stats.sampling_rate
            if abs(tr.stats.sampling_rate - rate) > 1e-6:
                tr = tr.copy()
                tr.resample(rate)
            key = (f"{tr.stats.network}.{tr.stats.station}.{tr.stats.location}", phase)
            pieces.setdefault(key, []).append(tr)
    out = obspy.Stream()
    for (instrument, phase), traces in sorted(pieces.items()):
        t0 = min(tr.stats.starttime for tr in traces)
        n = max(int(round((tr.stats.endtime - t0) * rate)) + 1 for tr in traces)
        total, count = np.zeros(n), np.zeros(n)
        for tr in traces:
            i0 = int(round((tr.stats.starttime - t0) * rate))
            data = np.asarray(tr.data, dtype=float)[: n - i0]
            ok = np.isfinite(data)
            total[i0 : i0 + len(data)] += np.where(ok, data, 0.0)
            count[i0 : i0 + len(data)] += ok
        mean = np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)
        net, sta, loc = instrument.split(".")
        out += obspy.Trace(mean, header=dict(network=net, station=sta, location=loc,
                                             channel=f"{ENSEMBLE}_{phase}", sampling_rate=rate, starttime=t0))
    return out


def ensemble_picks(curves: obspy.Stream, thresholds: Mapping[str, float]):
    """SeisBench picks (``seisbench.util.PickList``) of the mean curves at ``{"P": t, "S": t}``."""
    import seisbench.util as sbu
    from seisbench.models import WaveformModel

    picks = sbu.PickList()
    for phase in ("P", "S"):
        picks += WaveformModel.picks_from_annotations(
            curves.select(channel=f"{ENSEMBLE}_{phase}"), float(thresholds[phase]), phase
        )
    return sbu.PickList(sorted(picks))


# ---------------------------------------------------------------------------------------------- the rule
def combine_picks(
    analyst: Mapping[str, Sequence[float]], teacher: Mapping[str, Sequence[float]], tolerance: float
) -> dict[str, list[float]]:
    """Teacher picks kept next to the analyst picks of one trace, by the rule of the module docstring.

    :param analyst: ``{"P": [times], "S": [times]}`` (seconds)
    :param teacher: the same for the teacher (ensemble) picks
    :return: ``{"P": [...], "S": [...]}``: the teacher picks to add (the analyst picks are kept as they are)
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be non-negative, got {tolerance}")
    all_analyst = np.array([t for phase in ("P", "S") for t in analyst.get(phase, ())], dtype=float)
    out = {}
    for phase in ("P", "S"):
        kept = []
        for t in teacher.get(phase, ()):
            if all_analyst.size and np.min(np.abs(all_analyst - float(t))) <= tolerance:
                continue  # an analyst pick of this phase (time wins) or of the other phase (phase wins)
            kept.append(float(t))
        out[phase] = kept
    return out


def pseudo_pick_columns(columns) -> dict[str, str]:
    """``{column: "P"|"S"}`` of the pseudo-pick columns among ``columns``."""
    return {c: m.group("phase") for c in columns if (m := _PSEUDO_RE.match(str(c)))}


def _columns_frame(samples: list[dict[str, list[float]]], index) -> pd.DataFrame:
    """Pseudo-pick columns (sorted picks per row, NaN-filled) from per-row ``{phase: [samples]}``."""
    data = {}
    for phase in ("P", "S"):
        width = max((len(s.get(phase, ())) for s in samples), default=0)
        for k in range(width):
            col = PSEUDO_COLUMN.format(phase=phase, k=k)
            data[col] = [sorted(s.get(phase, ()))[k] if k < len(s.get(phase, ())) else np.nan for s in samples]
    return pd.DataFrame(data, index=index)


def pseudo_picks_for_traces(teachers: Sequence, traces, config: PseudoLabelConfig) -> pd.DataFrame:
    """Teacher picks for the traces of a :class:`seisbench_xlstm.evaluation.TraceSet`, combined with its analyst
    picks (the rule above), as pseudo-pick columns in dataset samples; one row per trace, indexed by dataset row.
    Picks of traces whose analyst picks are removed from ``traces.reference`` (unlabelled traces) all count."""
    from .evaluation import picks_by_trace

    curves = ensemble_curves(teachers, traces.stream, config.batch_size)
    picks = ensemble_picks(curves, config.thresholds)
    by_phase = {phase: picks_by_trace(picks, phase) for phase in ("P", "S")}
    rows = []
    for k, trace_id in enumerate(traces.trace_ids):
        analyst = {p: traces.reference.get(p, {}).get(trace_id, []) for p in ("P", "S")}
        teacher = {p: by_phase[p].get(trace_id, []) for p in ("P", "S")}
        kept = combine_picks(analyst, teacher, config.analyst_tolerance)
        rows.append({p: [traces.time_to_sample(k, t) for t in kept[p]] for p in ("P", "S")})
    return _columns_frame(rows, traces.rows)


def add_pseudo_columns(dataset, frame: pd.DataFrame) -> dict[str, str]:
    """Writes the pseudo-pick columns of ``frame`` (indexed by dataset row) into ``dataset.metadata`` (in place;
    rows missing from ``frame`` get NaN). Returns ``{column: "P"|"S"}`` for ``PickingConfig.extra_pick_columns``."""
    md = dataset.metadata
    for col in frame.columns:
        values = np.full(len(md), np.nan)
        values[np.asarray(frame.index, dtype=int)] = frame[col].to_numpy(dtype=float)
        md[col] = values
    return pseudo_pick_columns(md.columns)


# ---------------------------------------------------------------------------------------------- continuous
def write_continuous_dataset(source, out: str | Path, config: PseudoLabelConfig | None = None,
                             teachers: Sequence | None = None) -> dict:
    """Continuous records (files/folders or an ``obspy.Stream``) with teacher picks as a SeisBench dataset.

    Writes ``out/metadata.csv`` + ``out/waveforms.hdf5`` (``CW``, ``ZNE``, 100 Hz; pseudo-pick columns, ``split``),
    ``out/teacher_picks.csv`` (all ensemble picks: ``instrument, phase, time, peak_value, split``) and
    ``out/pseudolabels.json`` (config, counts, the cut time). Returns that summary.
    """
    import seisbench.data as sbd

    from .data.continuous import read_records, segments_from_stream

    config = config or PseudoLabelConfig()
    if not 0 < config.train_fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {config.train_fraction}")
    if config.min_chunk_len > config.chunk_len:
        raise ValueError("min_chunk_len must not exceed chunk_len")
    if isinstance(source, obspy.Stream):
        stream, skipped = source, []
    else:
        stream, skipped = read_records(source)
    if len(stream) == 0:
        raise ValueError(f"no waveforms in {source}")
    teachers = teachers if teachers is not None else load_teachers(config)
    rate = 100.0
    curves = ensemble_curves(teachers, stream, config.batch_size)
    picks = ensemble_picks(curves, config.thresholds)
    segments, seg_skipped = segments_from_stream(stream, rate, min_samples=config.min_chunk_len)
    t_start = min(tr.stats.starttime for tr in stream)
    t_end = max(tr.stats.endtime for tr in stream)
    cut = t_start + config.train_fraction * (t_end - t_start)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with sbd.WaveformDataWriter(out / "metadata.csv", out / "waveforms.hdf5") as writer:
        writer.data_format = {"dimension_order": "CW", "component_order": "ZNE", "sampling_rate": rate,
                              "measurement": "unknown", "unit": "counts"}
        for seg in segments:
            net, sta, loc, band = seg.instrument.split(".")
            n = seg.data.shape[1]
            cut_sample = int(np.clip(np.ceil((cut - seg.starttime) * rate), 0, n))
            for split, lo, hi in (("train", 0, cut_sample), ("test", cut_sample, n)):
                for a in range(lo, hi, config.chunk_len):
                    b = min(a + config.chunk_len, hi)
                    if b - a < config.min_chunk_len:
                        continue
                    t0 = seg.starttime + a / rate
                    mine = [p for p in picks if p.trace_id == f"{net}.{sta}.{loc}"
                            and 0 <= (p.peak_time - t0) * rate < b - a]
                    row = {
                        "trace_name": f"{seg.instrument}_{t0.strftime('%Y%m%dT%H%M%S')}_{a}",
                        "source_id": f"continuous:{seg.instrument}:{t0.isoformat()}",
                        "station_network_code": net,
                        "station_code": sta,
                        "station_location_code": loc,
                        "trace_channel": band,
                        "trace_start_time": t0.isoformat(),
                        "trace_sampling_rate_hz": rate,
                        "trace_components": seg.components,
                        "split": split,
                    }
                    for phase in ("P", "S"):
                        times = sorted((p.peak_time - t0) * rate for p in mine if p.phase == phase)
                        for k, s in enumerate(times):
                            row[PSEUDO_COLUMN.format(phase=phase, k=k)] = float(s)
                    writer.add_trace(dict(row), seg.data[:, a:b])
                    rows.append(row)
    pick_rows = [{"instrument": p.trace_id, "phase": p.phase, "time": p.peak_time.isoformat(),
                  "peak_value": float(p.peak_value), "split": "train" if p.peak_time < cut else "test"}
                 for p in picks]
    pd.DataFrame(pick_rows, columns=["instrument", "phase", "time", "peak_value", "split"]).to_csv(
        out / "teacher_picks.csv", index=False)
    summary = {
        "config": config.to_dict(),
        "record_start": t_start.isoformat(),
        "record_end": t_end.isoformat(),
        "cut": cut.isoformat(),
        "chunks": {s: sum(r["split"] == s for r in rows) for s in ("train", "test")},
        "picks": {f"{s}_{ph}": sum(r["split"] == s and r["phase"] == ph for r in pick_rows)
                  for s in ("train", "test") for ph in ("P", "S")},
        "skipped": [list(x) for x in skipped + seg_skipped],
    }
    (out / "pseudolabels.json").write_text(json.dumps(summary, indent=2))
    return summary


def read_teacher_picks(folder: str | Path, split: str | None = None) -> pd.DataFrame:
    """The ensemble picks written by :func:`write_continuous_dataset` (optionally one split)."""
    df = pd.read_csv(Path(folder) / "teacher_picks.csv")
    return df if split is None else df[df["split"] == split].reset_index(drop=True)

