"""The SeisBench pick-benchmark protocol (tasks 1-3, Münchmeyer et al. 2022) for any list of pickers and datasets.

    python -m seisbench_xlstm.baselines install --cache-root /tmp/sb-cache          # the published baselines, once
    python benchmarks/pick_benchmark.py --cache-root /tmp/sb-cache --datasets ncedc154 nz-dfdp \\
        --model "PhaseNet original=PhaseNet:original" --model "EQTransformer original=EQTransformer:original" \\
        --model "xLSTM seq=XLSTMSeqPicker:runs/finetune/local/xlstm_seq/weights/xlstm_seq"

A model is ``LABEL=CLASS:SOURCE`` as in ``picking_eval.py``: ``SOURCE`` a path stem of saved weights
(``STEM.json[.vN]`` + ``STEM.pt[.vN]``) or a weight name in ``--cache-root``. Without ``--model`` the published
baselines installed in ``--cache-root`` are evaluated (PhaseNet original, EQTransformer original and
conservative, PhaseNetLight ethz; those missing are skipped with a message).

A dataset is ``ncedc154`` (``../shared/data/ncedc154``), ``nz-dfdp`` (``../shared/data/nz-dfdp`` converted once
by the ingest tool with its default options into ``--data-cache``), a SeisBench dataset name available offline
(``ethz``, ``stead``, ...; see ``seisbench_xlstm.data.open_dataset``) or a folder in SeisBench format. Absent
datasets are skipped with a message.

Per dataset ``D`` (``seisbench_xlstm.pickbench``): targets of the dev and test splits (seed 42) in
``OUT/targets_D/task1.csv`` + ``task23.csv``; each model's window predictions in ``WORK/D/<model>/`` (not in the
repository); scores in ``OUT/pick_benchmark_D.csv`` (one row per model) and ``OUT/pick_benchmark_D.md``; test
residual histograms ``OUT/pick_benchmark_D_residuals.png`` and precision-recall curves of tasks 1 and 2
``OUT/pick_benchmark_D_pr.png``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

#: The published baselines of docs/baselines.md, used when no --model is given.
PUBLISHED = ("PhaseNet original=PhaseNet:original", "EQTransformer original=EQTransformer:original",
             "EQTransformer conservative=EQTransformer:conservative", "PhaseNetLight ethz=PhaseNetLight:ethz")
LOCAL = ("ncedc154", "nz-dfdp")
#: Line styles of the models in the plots (curves that coincide stay visible).
STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(LOCAL))
    ap.add_argument("--model", action="append", default=None, help="LABEL=CLASS:SOURCE (repeatable)")
    ap.add_argument("--cache-root", default=None, help="SeisBench cache with the published baselines")
    ap.add_argument("--data-cache", default=None, help="folder for the NZ-DFDP ingest (default: SeisBench cache)")
    ap.add_argument("--shared-data", default=None, help="default ../shared/data")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "pick_benchmark")
    ap.add_argument("--note", default="", help="a paragraph for the reports (what the models are)")
    return ap.parse_args(argv)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def shared_dir(args) -> Path:
    from seisbench_xlstm.data import shared_data_dir

    return Path(args.shared_data) if args.shared_data else shared_data_dir()


def open_benchmark_dataset(name: str, args):
    """The dataset ``name`` opened at 100 Hz, ZNE; raises ``FileNotFoundError`` (with the reason) when absent."""
    from seisbench_xlstm.data import DATASET_NAMES, check_available, open_dataset

    shared = shared_dir(args)
    if name in ("nz-dfdp", "ncedc154"):
        from common import shared_dataset_path

        return open_dataset(shared_dataset_path(name, shared, args.data_cache))
    if name.lower() in DATASET_NAMES:
        check_available(name.lower())  # DatasetNotAvailableError is a FileNotFoundError
        return open_dataset(name.lower())
    if not Path(name).is_dir():
        raise FileNotFoundError(f"{name}: neither a known dataset name nor a folder")
    return open_dataset(name)


def load_models(specs, cache_root) -> list[tuple[str, object]]:
    """``[(label, model)]``; with the default list, baselines missing from the cache are skipped with a message."""
    from picking_eval import load_model

    import torch

    models = []
    for spec in specs or PUBLISHED:
        try:
            label, model = load_model(spec, cache_root)
        except (FileNotFoundError, ValueError) as e:
            if specs:
                raise
            print(f"[pick_benchmark] skipped {spec}: {e}", flush=True)
            continue
        if torch.cuda.is_available():
            model.cuda()
        models.append((label, model))
    return models


def evaluate_dataset(name, dataset, models, args) -> list[dict]:
    import pandas as pd

    from seisbench_xlstm.pickbench import TargetsConfig, make_targets, predict_targets, save_targets, task_scores

    targets = make_targets(dataset, TargetsConfig(seed=args.seed))
    save_targets(targets, args.out_dir / f"targets_{slug(name)}")
    counts = {k: v.groupby(["trace_split", "trace_type" if k == "task1" else "phase_label"]).size().to_dict()
              for k, v in targets.items()}
    print(f"[pick_benchmark] {name}: targets {counts}", flush=True)
    rows, predictions = [], {}
    for label, model in models:
        t = time.perf_counter()
        pred = {k: predict_targets(model, dataset, v, batch_size=args.batch_size) for k, v in targets.items()}
        wall = time.perf_counter() - t
        folder = args.work / slug(name) / slug(label)
        folder.mkdir(parents=True, exist_ok=True)
        for task, frame in pred.items():
            for split in ("dev", "test"):
                frame[frame["trace_split"] == split].to_csv(folder / f"{split}_{task}.csv", index=False)
        row = {"data": name, "model": label, "seconds": round(wall, 1)}
        row.update(task_scores(pred))
        rows.append(row)
        predictions[label] = pred
        print(f"[pick_benchmark] {name} / {label}: {wall:.1f} s, det AUC {row.get('det_auc', math.nan):.3f}, "
              f"phase MCC {row.get('phase_mcc', math.nan):.3f}, P MAE {row.get('P_mae_s', math.nan):.3f} s, "
              f"S MAE {row.get('S_mae_s', math.nan):.3f} s", flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out_dir / f"pick_benchmark_{slug(name)}.csv", index=False)
    plot_residuals(name, predictions, args.out_dir / f"pick_benchmark_{slug(name)}_residuals.png")
    plot_pr(name, predictions, args.out_dir / f"pick_benchmark_{slug(name)}_pr.png")
    return rows


def _f(v, digits=3):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def report(name: str, rows: list[dict], dataset, args) -> list[str]:
    """Markdown tables of one dataset: tasks 1-2, then task 3."""
    from common import machine

    first = rows[0] if rows else {}
    n = {k: first.get(k) for k in ("det_n_test", "det_n_dev", "phase_n_test", "phase_n_dev", "P_n", "S_n")}
    lines = [f"# Pick benchmark: {name}", "",
             f"SeisBench pick-benchmark protocol (Münchmeyer et al. 2022) on `{name}` ({len(dataset)} traces), "
             f"targets with seed {args.seed} (`targets_{slug(name)}/`), made by `benchmarks/pick_benchmark.py`. "
             f"Task 1: {n['det_n_test']} test / {n['det_n_dev']} dev 30 s windows; tasks 2-3: {n['phase_n_test']} "
             f"test / {n['phase_n_dev']} dev 10 s windows ({n['P_n']} P, {n['S_n']} S in test). Thresholds are "
             "chosen on dev (task 1: best F1, task 2: best MCC) and applied to test; all scores are on test. "
             "Task 3 takes the position of the highest P (S) probability in the window however low it is, so a "
             "missed onset counts with its full error.", ""]
    if args.note:
        lines += [args.note, ""]
    note = first.get("det_note")
    if isinstance(note, str):
        lines += [f"Task 1: {note} (no trace of this dataset holds 30 s of data before its first pick, the "
                  "protocol's condition for a noise window, and no trace is noise only).", ""]
    head = ["model", "det AUC", "det F1", "det Pr/Re", "det thr", "phase MCC", "phase F1", "phase AUC", "phase thr"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], _f(r.get("det_auc")), _f(r.get("det_f1")),
            f"{_f(r.get('det_precision'), 2)}/{_f(r.get('det_recall'), 2)}", _f(r.get("det_threshold")),
            _f(r.get("phase_mcc")), _f(r.get("phase_f1")), _f(r.get("phase_auc")), _f(r.get("phase_threshold"), 2),
        ]) + " |")
    head = ["model"] + [f"{p} {k}" for p in "PS" for k in ("mean s", "RMSE s", "MAE s", ">0.5 s")] + ["seconds"]
    lines += ["", "Task 3, residuals (predicted - analyst) on test:", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"]]
        for p in "PS":
            cells += [_f(r.get(f"{p}_mean_s")), _f(r.get(f"{p}_rmse_s")), _f(r.get(f"{p}_mae_s")),
                      _f(r.get(f"{p}_frac_beyond"), 2)]
        lines.append("| " + " | ".join(cells + [_f(r.get("seconds"), 1)]) + " |")
    lines += ["", f"Machine: {machine()}; 'seconds': wall time of all predictions of the model."]
    return lines


def plot_residuals(name: str, predictions: dict, path: Path, limit: float = 1.5) -> None:
    """Histograms of the test residuals (s) per phase, one step line per model; values beyond the limit are
    counted in the outermost bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from seisbench_xlstm.pickbench import onset_residuals

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    bins = np.linspace(-limit, limit, 61)
    for ax, phase in zip(axes, "PS"):
        for k, (label, pred) in enumerate(predictions.items()):
            t23 = pred.get("task23")
            if t23 is None or not len(t23):
                continue
            r = onset_residuals(t23[t23["trace_split"] == "test"], phase)
            r = np.clip(r[np.isfinite(r)], -limit, limit)
            ax.hist(r, bins=bins, histtype="step", linewidth=1.4, linestyle=STYLES[k % len(STYLES)],
                    label=f"{label} (n={len(r)})")
        ax.axvline(0, color="k", linewidth=0.6)
        ax.set_xlabel(f"{phase} residual, predicted - analyst (s; clipped to ±{limit:g})")
        ax.set_title(f"{name}: task 3, {phase} windows (test)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("windows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pr(name: str, predictions: dict, path: Path) -> None:
    """Precision-recall curves on test: task 1 (earthquake vs noise) and task 2 (P vs S)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from seisbench_xlstm.pickbench import binary_curve

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = [("task1", "score_detection", lambda f: f["trace_type"] == "earthquake", "task 1: earthquake vs noise"),
              ("task23", "score_p_or_s", lambda f: f["phase_label"] == "P", "task 2: P vs S (P positive)")]
    for ax, (task, column, positive, title) in zip(axes, panels):
        drawn = False
        for k, (label, pred) in enumerate(predictions.items()):
            frame = pred.get(task)
            if frame is None or not len(frame):
                continue
            test = frame[(frame["trace_split"] == "test") & frame[column].notna()]
            y = positive(test).to_numpy()
            if y.all() or not y.any():
                continue
            c = binary_curve(y, test[column].to_numpy())
            ok = np.isfinite(c.precision)
            ax.plot(c.recall[ok], c.precision[ok], label=label, linewidth=1.4, linestyle=STYLES[k % len(STYLES)])
            drawn = True
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name}: {title}" + ("" if drawn else " (one class only: no curve)"), fontsize=9)
        if drawn:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cache_root:
        os.environ.setdefault("SEISBENCH_CACHE_ROOT", str(Path(args.cache_root).resolve()))
    from common import write_report

    args.out_dir.mkdir(parents=True, exist_ok=True)
    models = load_models(args.model, args.cache_root)
    if not models:
        print("[pick_benchmark] no model to evaluate: install the baselines "
              "(python -m seisbench_xlstm.baselines install --cache-root DIR) or give --model", flush=True)
        return 1
    done = 0
    for name in args.datasets:
        try:
            dataset = open_benchmark_dataset(name, args)
        except FileNotFoundError as e:
            print(f"[pick_benchmark] skipped dataset {name}: {str(e).splitlines()[0]}", flush=True)
            continue
        rows = evaluate_dataset(name, dataset, models, args)
        write_report(report(name, rows, dataset, args), args.out_dir / f"pick_benchmark_{slug(name)}.md")
        done += 1
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
