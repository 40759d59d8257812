"""Continuous picking quality: ``classify`` on whole traces and on a continuous record, for any list of models.

    python -m seisbench_xlstm.baselines install --cache-root /tmp/sb-cache          # the teachers, once
    python benchmarks/picking_eval.py --cache-root /tmp/sb-cache \\
        --model "xLSTM seq=XLSTMSeqPicker:runs/finetune/local/xlstm_seq/weights/xlstm_seq_local_xlstm_seq" \\
        --model "PhaseNet original=PhaseNet:original" --model "EQTransformer original=EQTransformer:original" \\
        --model "PhaseNet same data=PhaseNet:runs/finetune/local/phasenet/weights/phasenet_local_phasenet" \\
        --out benchmarks/results/picking_eval

A model is ``LABEL=CLASS:SOURCE``: ``CLASS`` a class of ``seisbench.models`` or ``seisbench_xlstm``; ``SOURCE`` a
path stem of saved weights (``STEM.json[.vN]`` + ``STEM.pt[.vN]``, newest version) or a weight name in
``--cache-root`` (``models/v3/<class>/``; the xLSTM pickers also look in the package).

Data (``--datasets``, default all three):

* ``nz-dfdp``: ``../shared/data/nz-dfdp`` converted by the ingest tool with its default options into
  ``--data-cache`` (once), the ``--split`` (default ``test``) traces whole;
* ``ncedc154``: ``../shared/data/ncedc154``, the ``--split`` traces whole (90 s);
* ``continuous``: the 2 h Oklahoma record (``../shared/data/continuous-ok``), annotated whole; picks after
  ``--continuous-from`` (0.7) of the record span, the part the fine-tuning runner holds out, are compared with the
  teachers' picks there: the ensemble picks of ``--teachers`` (the pseudo-label rule of
  ``seisbench_xlstm.pseudolabels``, so a teacher is partly compared with itself) and each teacher's own ``classify``
  picks at its default thresholds; plus picks per hour.

Traces become one ObsPy stream (``seisbench_xlstm.evaluation.dataset_traces``: stored padding cut); each model
annotates it once, and its picks (``classify_aggregate`` at the model's ``default_args`` thresholds, and with
``--dev-tuned`` also at thresholds tuned on the dev split of the same dataset) are matched one to one with the
analyst picks at 0.1 s and 0.5 s (``seisbench_xlstm.evaluation``). Residuals (pick minus analyst) are over the
matches within 0.5 s. Writes ``OUT.csv`` (one row per model, data, thresholds, reference, phase, tolerance) and
``OUT.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))


def _parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="LABEL=CLASS:SOURCE (repeatable)")
    ap.add_argument("--cache-root", default=None, help="SeisBench cache with the teachers / named weights")
    ap.add_argument("--datasets", nargs="+", default=["nz-dfdp", "ncedc154", "continuous"])
    ap.add_argument("--split", default="test")
    ap.add_argument("--dev-tuned", action="store_true", help="also report at thresholds tuned on the dev split")
    ap.add_argument("--data-cache", default=None, help="folder for the NZ-DFDP ingest (default: SeisBench cache)")
    ap.add_argument("--shared-data", default=None, help="default ../shared/data")
    ap.add_argument("--continuous-from", type=float, default=0.7)
    ap.add_argument("--teachers", nargs="+", default=["PhaseNet:original", "EQTransformer:original"])
    ap.add_argument("--tolerances", nargs="+", type=float, default=[0.1, 0.5])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None, help="OUT.csv + OUT.md (default: print only)")
    ap.add_argument("--note", default="", help="a paragraph for the report (what the models are, how they were made)")
    return ap.parse_args(argv)


def load_model(spec: str, cache_root: str | None):
    """``LABEL=CLASS:SOURCE`` -> (label, model)."""
    import seisbench.models as sbm

    import seisbench_xlstm
    from seisbench_xlstm.pseudolabels import load_teacher

    if "=" not in spec or ":" not in spec.split("=", 1)[1]:
        raise ValueError(f"--model {spec!r}: expected LABEL=CLASS:SOURCE")
    label, rest = spec.split("=", 1)
    cls_name, source = rest.split(":", 1)
    cls = getattr(seisbench_xlstm, cls_name, None) or getattr(sbm, cls_name, None)
    if cls is None:
        raise ValueError(f"--model {spec!r}: no class {cls_name} in seisbench_xlstm or seisbench.models")
    stem = Path(source)
    for suffix in (".json", ".pt"):
        if stem.name.endswith(suffix) or suffix + ".v" in stem.name:
            stem = stem.with_name(stem.name.split(suffix)[0])
    versions = sorted((f.name.rsplit(".v", 1)[1] for f in stem.parent.glob(stem.name + ".json.v*")),
                      key=lambda v: [int(x) if x.isdigit() else x for x in v.split(".")])
    if versions:
        model = cls.load(stem, version_str=versions[-1])
    elif stem.with_name(stem.name + ".json").is_file():
        model = cls.load(stem)
    elif "/" in source or os.sep in source:
        raise FileNotFoundError(f"--model {spec!r}: no weights {stem}.json[.vN] + .pt[.vN]")
    elif cls_name in ("XLSTMSeqPicker", "XLSTMUNetPicker"):
        model = cls.from_pretrained(source)
    else:
        model = load_teacher(f"{cls_name}:{source}", cache_root)
    return label, model.eval()


def _shared(args) -> Path:
    from common import SHARED_DATA

    return Path(args.shared_data) if args.shared_data else SHARED_DATA


def trace_sets(args, name: str):
    """``{split: TraceSet}`` of a labelled dataset (the evaluation split, plus dev with --dev-tuned)."""
    import numpy as np

    from seisbench_xlstm.data import open_dataset
    from seisbench_xlstm.evaluation import dataset_traces

    shared = _shared(args)
    from common import shared_dataset_path

    path = shared_dataset_path(name, shared, args.data_cache)
    ds = open_dataset(path)
    splits = [args.split] + (["dev"] if args.dev_tuned and args.split != "dev" else [])
    return {s: dataset_traces(ds, np.nonzero((ds.metadata["split"] == s).to_numpy())[0]) for s in splits}


def _rows(scores, base: dict) -> list[dict]:
    rows = []
    for (phase, tol), s in scores.items():
        row = dict(base, phase=phase, tolerance_s=tol)
        row.update(s.as_dict())
        rows.append(row)
    return rows


def _thresholds_of(model) -> dict:
    return {p: float(model.default_args.get(f"{p}_threshold", model._annotate_args.get("*_threshold", (0, 0.3))[1]))
            for p in "PS"}


def evaluate_labelled(args, name, models) -> list[dict]:
    from seisbench_xlstm.evaluation import evaluate_model, tune_pick_thresholds

    sets = trace_sets(args, name)
    test = sets[args.split]
    rows = []
    n_ref = {p: sum(map(len, v.values())) for p, v in test.reference.items()}
    print(f"[{name}] {len(test.trace_ids)} {args.split} traces, analyst picks {n_ref}", flush=True)
    for label, model in models:
        t = time.perf_counter()
        annotations = model.annotate(test.stream.copy(), batch_size=args.batch_size)
        wall = time.perf_counter() - t
        variants = [("default", _thresholds_of(model))]
        if "dev" in sets:
            dev = sets["dev"]
            tuned = tune_pick_thresholds(model, model.annotate(dev.stream.copy(), batch_size=args.batch_size),
                                         dev.reference, tolerance=0.5)
            variants.append(("dev-tuned", {p: v[0] for p, v in tuned.items()}))
        for mode, thresholds in variants:
            scores = evaluate_model(model, annotations, test.reference, args.tolerances, thresholds)
            base = {"data": name, "split": args.split, "model": label, "thresholds": mode,
                    "P_threshold": thresholds.get("P"), "S_threshold": thresholds.get("S"), "reference": "analyst",
                    "annotate_s": round(wall, 2)}
            rows += _rows(scores, base)
        print(f"  {label}: annotate {wall:.1f} s", flush=True)
    return rows


def evaluate_continuous(args, models) -> list[dict]:
    from seisbench_xlstm.data.continuous import read_records
    from seisbench_xlstm.evaluation import classify_picks, picks_by_trace, score_traces
    from seisbench_xlstm.pseudolabels import PseudoLabelConfig, ensemble_curves, ensemble_picks, load_teacher

    stream, _ = read_records(_shared(args) / "continuous-ok")
    t0 = min(tr.stats.starttime for tr in stream)
    t1 = max(tr.stats.endtime for tr in stream)
    cut = t0 + args.continuous_from * (t1 - t0)
    hours = (t1 - cut) / 3600
    config = PseudoLabelConfig(teachers=tuple(args.teachers))
    teachers = [load_teacher(s, args.cache_root) for s in args.teachers]
    references = {"teacher ensemble": ensemble_picks(ensemble_curves(teachers, stream, args.batch_size),
                                                     config.thresholds)}
    for spec, teacher in zip(args.teachers, teachers):
        references[spec.replace(":", " ")] = classify_picks(teacher, teacher.annotate(stream.copy()))

    def after_cut(picks, phase):
        return {k: [t for t in v if t >= cut.timestamp] for k, v in picks_by_trace(picks, phase).items()}

    print(f"[continuous] {hours:.2f} h held out after {cut}; reference picks "
          f"{ {k: len([p for p in v if p.peak_time >= cut]) for k, v in references.items()} }", flush=True)
    rows = []
    for label, model in models:
        t = time.perf_counter()
        picks = classify_picks(model, model.annotate(stream.copy(), batch_size=args.batch_size))
        wall = time.perf_counter() - t
        for ref_name, ref in references.items():
            for phase in "PS":
                predicted = after_cut(picks, phase)
                n = sum(map(len, predicted.values()))
                for tol in args.tolerances:
                    s = score_traces(predicted, after_cut(ref, phase), tol)
                    row = {"data": "continuous", "split": f"after {args.continuous_from:g}", "model": label,
                           "thresholds": "default", "P_threshold": _thresholds_of(model)["P"],
                           "S_threshold": _thresholds_of(model)["S"], "reference": ref_name, "phase": phase,
                           "tolerance_s": tol, "picks_per_hour": round(n / hours, 1), "annotate_s": round(wall, 2)}
                    row.update(s.as_dict())
                    rows.append(row)
        print(f"  {label}: annotate+classify {wall:.1f} s", flush=True)
    return rows


def _f(v, digits=2):
    import math

    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def report(df, args) -> list[str]:
    lines = ["# Picking on whole traces and continuous data", "",
             "Made by `benchmarks/picking_eval.py` (see its docstring for the protocol). Precision (Pr), recall (Re) "
             "and F1 of `classify` picks matched one to one within the tolerance; residuals (pick minus reference, "
             "seconds) over the matches within 0.5 s.", ""]
    if args.note:
        lines += [args.note, ""]
    for data, part in df.groupby("data", sort=False):
        for (mode, reference), sub in part.groupby(["thresholds", "reference"], sort=False):
            head = f"## {data} ({sub['split'].iloc[0]}), thresholds: {mode}, reference: {reference}"
            lines += [head, ""]
            cols = ["model", "P thr", "S thr"]
            for phase in "PS":
                cols += [f"{phase} F1 0.1 s", f"{phase} Pr/Re/F1 0.5 s", f"{phase} res. mean", f"{phase} RMSE"]
            if data == "continuous":
                cols += ["P/h", "S/h"]
            lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            for model, m in sub.groupby("model", sort=False):
                cells = [model, _f(m["P_threshold"].iloc[0]), _f(m["S_threshold"].iloc[0])]
                for phase in "PS":
                    a = m[(m.phase == phase) & (m.tolerance_s == 0.1)]
                    b = m[(m.phase == phase) & (m.tolerance_s == 0.5)]
                    if b.empty:
                        cells += ["-"] * 4
                        continue
                    b = b.iloc[0]
                    cells += [_f(a["f1"].iloc[0]) if len(a) else "-",
                              f"{_f(b['precision'])}/{_f(b['recall'])}/{_f(b['f1'])}",
                              _f(b["residual_mean_s"], 3), _f(b["residual_rmse_s"], 3)]
                if data == "continuous":
                    cells += [_f(m[m.phase == p]["picks_per_hour"].iloc[0], 0) for p in "PS"]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.cache_root:
        os.environ.setdefault("SEISBENCH_CACHE_ROOT", str(Path(args.cache_root).resolve()))
    import pandas as pd
    import torch

    from common import machine, write_report

    models = [load_model(spec, args.cache_root) for spec in args.model]
    if torch.cuda.is_available():
        for _, m in models:
            m.cuda()
    rows = []
    for name in args.datasets:
        if name == "continuous":
            rows += evaluate_continuous(args, models)
        elif name in ("nz-dfdp", "ncedc154"):
            rows += evaluate_labelled(args, name, models)
        else:
            raise SystemExit(f"unknown dataset {name!r}: choose from nz-dfdp, ncedc154, continuous")
    df = pd.DataFrame(rows)
    lines = report(df, args) + [f"Machine: {machine()}."]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out.with_suffix(".csv"), index=False)
    write_report(lines, args.out.with_suffix(".md") if args.out else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
