"""The SeisBench pick benchmark (Münchmeyer et al. 2022, JGR, "Which picker fits my data?") for any picker.

Three tasks on windows cut from the dev and test splits of a labelled dataset with a fixed seed:

1. event detection on 30 s windows (earthquake or noise): ROC-AUC, and F1 at the dev-optimal threshold;
2. phase identification on 10 s windows holding one pick (P or S): MCC and F1 at the dev-optimal threshold;
3. onset regression on the same windows: P and S residual mean, RMSE, MAE (s) and the fraction beyond 0.5 s.

::

    from seisbench_xlstm.data import open_dataset
    from seisbench_xlstm.pickbench import make_targets, predict_targets, task_scores

    ds = open_dataset("../shared/data/ncedc154")
    targets = make_targets(ds)                                   # {"task1": frame, "task23": frame}
    predictions = {k: predict_targets(model, ds, t) for k, t in targets.items()}
    scores = task_scores(predictions)                            # {"det_auc": ..., "phase_mcc": ..., ...}

Modules: :mod:`.targets` (windows), :mod:`.predict` (model outputs per window), :mod:`.metrics` (scores).
Pick matching on whole traces and continuous records lives in :mod:`seisbench_xlstm.evaluation`.
"""

from .metrics import (
    BinaryCurve,
    binary_curve,
    binary_scores,
    f1_score,
    mcc_score,
    onset_residuals,
    roc_auc,
    task1_scores,
    task2_scores,
    task3_scores,
    task_scores,
    tune_binary_threshold,
)
from .predict import WindowPredictor, predict_targets
from .targets import (
    TargetsConfig,
    load_targets,
    make_targets,
    save_targets,
    select_window,
    task1_targets,
    task23_targets,
    trace_arrivals,
)

__all__ = [
    "BinaryCurve",
    "TargetsConfig",
    "WindowPredictor",
    "binary_curve",
    "binary_scores",
    "f1_score",
    "load_targets",
    "make_targets",
    "mcc_score",
    "onset_residuals",
    "predict_targets",
    "roc_auc",
    "save_targets",
    "select_window",
    "task1_scores",
    "task23_targets",
    "task2_scores",
    "task3_scores",
    "task1_targets",
    "task_scores",
    "trace_arrivals",
    "tune_binary_threshold",
]
