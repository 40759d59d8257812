"""Running a fine-tuning experiment with Lightning: data, trainer, selection on dev, thresholds, export."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from .data import FinetuneData, FinetuneDataModule
from .export import export_weights, weights_docstring
from .module import FinetuneModule

__all__ = ["RunResult", "resolve_precision", "run", "read_metrics"]


@dataclass
class RunResult:
    """:ivar out_dir: output folder; :ivar best_checkpoint: checkpoint selected on dev; :ivar thresholds: dev-tuned
    P/S thresholds; :ivar dev_scores: dev F1 (``f1``, ``f1_P``, ``f1_S``) of the selected model; :ivar export:
    the written weight pair (paths, bytes, precision check) or None; :ivar metrics: CSV log"""

    out_dir: Path
    best_checkpoint: Path | None
    thresholds: dict = field(default_factory=dict)
    dev_scores: dict = field(default_factory=dict)
    export: dict | None = None
    metrics: Path | None = None
    global_step: int = 0
    epochs: int = 0


def _uses_gpu(cfg: DictConfig) -> bool:
    return torch.cuda.is_available() and str(cfg.trainer.accelerator) in ("auto", "gpu", "cuda")


def resolve_precision(cfg: DictConfig) -> str:
    """``trainer.precision``, with ``auto`` = ``bf16-mixed`` on GPUs and ``32-true`` on CPUs."""
    precision = str(cfg.trainer.precision)
    if precision == "auto":
        return "bf16-mixed" if _uses_gpu(cfg) else "32-true"
    return precision


def read_metrics(out_dir: Path):
    """All CSV logs of a run folder as one DataFrame (empty if none)."""
    import pandas as pd

    files = sorted(Path(out_dir).glob("logs/version_*/metrics.csv"))
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def plot_curves(out_dir: Path, title: str) -> Path | None:
    """``curves.png``: training and dev loss per step, dev F1 per validation."""
    df = read_metrics(out_dir)
    if df.empty or "train/loss" not in df:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    train = df[["step", "train/loss"]].dropna()
    axes[0].plot(train["step"], train["train/loss"], lw=0.8, alpha=0.5, label="train")
    if len(train) > 5:
        axes[0].plot(train["step"], train["train/loss"].rolling(10, min_periods=1).mean(), label="train (mean of 10)")
    if "val/loss" in df:
        val = df[["step", "val/loss"]].dropna()
        axes[0].plot(val["step"], val["val/loss"], "o-", label="dev windows")
    axes[0].set_xlabel("step"), axes[0].set_ylabel("loss"), axes[0].legend()
    for key in ("val/f1", "val/f1_P", "val/f1_S"):
        if key in df:
            v = df[["step", key]].dropna()
            axes[1].plot(v["step"], v[key], "o-", label=key)
    axes[1].set_xlabel("step"), axes[1].set_ylabel("dev F1 (whole traces)"), axes[1].set_ylim(0, 1)
    if axes[1].lines:
        axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(out_dir) / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _device_name(cfg) -> str:
    return torch.cuda.get_device_name(0) if _uses_gpu(cfg) else "CPU"


class _TrainStart(L.Callback):
    """Records when training starts (after the data set-up inside ``fit``)."""

    started = None

    def on_train_start(self, trainer, module):
        self.started = time.time()


def run(cfg: DictConfig, extra_callbacks: list | None = None) -> RunResult:
    """Runs the experiment ``cfg`` (from :func:`finetune.config.compose_config`)."""
    t_run = time.time()
    seconds = {}  # wall time of each phase of the run (result.json "seconds"): where a short run's time goes
    out_dir = Path(str(cfg.out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    data = FinetuneData(cfg).prepare()
    dm = FinetuneDataModule(data)
    sel = cfg.selection
    use_f1 = str(sel.monitor) == "val/f1"
    module = FinetuneModule(cfg, data.dev_traces if use_f1 else None)
    mode = "max" if use_f1 else "min"
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor=str(sel.monitor), mode=mode,
                                 save_top_k=1, save_last=True, auto_insert_metric_name=False)
    train_start = _TrainStart()
    callbacks = [checkpoint, EarlyStopping(monitor=str(sel.monitor), mode=mode, patience=int(sel.patience)),
                 train_start,
                 LearningRateMonitor(logging_interval="step")]
    t = cfg.trainer
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    trainer = L.Trainer(
        default_root_dir=str(out_dir),
        accelerator=str(t.accelerator),
        devices=int(t.devices),
        precision=resolve_precision(cfg),
        max_epochs=int(t.max_epochs),
        max_steps=int(t.max_steps),
        max_time=str(t.max_time) if t.max_time else None,
        val_check_interval=float(t.val_check_interval),
        gradient_clip_val=float(t.gradient_clip_val) or None,
        accumulate_grad_batches=int(t.accumulate_grad_batches),
        log_every_n_steps=int(t.log_every_n_steps),
        logger=CSVLogger(save_dir=str(out_dir), name="logs"),
        callbacks=callbacks + list(extra_callbacks or []),
        enable_progress_bar=bool(t.progress_bar),
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    n_params = sum(p.numel() for p in module.model.parameters())
    print(f"[finetune] {cfg.name}: {cfg.model.arch} ({n_params:,} parameters, {module.init_info['init']} init), "
          f"precision {resolve_precision(cfg)}, output {out_dir}\n[finetune] data: {data.summary()}", flush=True)
    start = time.time()
    seconds["setup"] = start - t_run
    trainer.fit(module, datamodule=dm)
    seconds["fit"] = time.time() - start
    # of which before the first step (data set-up, loader workers, sanity checks) and training (what
    # trainer.max_time limits)
    seconds["fit_start"] = (train_start.started or time.time()) - start
    minutes = seconds["fit"] / 60
    result = RunResult(out_dir, None, global_step=int(trainer.global_step), epochs=int(trainer.current_epoch))
    result.metrics = Path(trainer.logger.log_dir) / "metrics.csv"
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    if best is None or not best.is_file():
        raise RuntimeError(f"No checkpoint was selected on {sel.monitor}: did a validation run? (output {out_dir})")
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    module.load_state_dict(ckpt["state_dict"])
    result.best_checkpoint = best
    device = "cuda" if _uses_gpu(cfg) else "cpu"
    module.model.to(device)
    module.dev_traces = data.dev_traces
    scores = module.dev_evaluation()  # thresholds of the selected model on the whole dev traces
    result.dev_scores = {k: v for k, v in scores.items() if k.startswith("f1")}
    result.thresholds = {k.split("_", 1)[1]: v for k, v in scores.items() if k.startswith("threshold_")}
    train_info = {"epochs": result.epochs, "steps": result.global_step, "minutes": minutes,
                  "device": _device_name(cfg), "best_epoch": int(ckpt.get("epoch", -1))}
    seconds["selection"] = time.time() - start - seconds["fit"]
    print(f"[finetune] selected {best.name} (epoch {train_info['best_epoch']}): dev F1 {result.dev_scores}, "
          f"thresholds {result.thresholds}", flush=True)
    if cfg.export.enabled:
        e = cfg.export
        name = e.name or f"{cfg.model.arch}_{str(cfg.name).replace('/', '_')}"
        stem = Path(e.dir or out_dir / "weights") / name
        n_check = min(16, len(dm.val_set))
        windows = np.stack([dm.val_set[i]["X"] for i in range(n_check)]) if n_check else np.zeros((0, 3, 1))
        default_args = {f"{ph}_threshold": float(v) for ph, v in result.thresholds.items()}
        result.export = export_weights(
            module.model, str(cfg.model.arch), stem, str(e.version), str(e.precision),
            lambda check: weights_docstring(cfg, data.info, module.init_info, result.thresholds, scores, train_info,
                                            str(e.precision), check),
            windows, float(e.check_tolerance), default_args, bool(e.fallback_fp32),
        )
        print(f"[finetune] weights {result.export['json']} + .pt ({result.export['bytes'] / 1e6:.1f} MB, "
              f"{result.export['precision']}; max output difference {result.export['max_abs_diff']:.2g})", flush=True)
        seconds["export"] = time.time() - start - seconds["fit"] - seconds["selection"]
    print("[finetune] seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()), flush=True)
    summary = {"name": cfg.name, "arch": cfg.model.arch, "init": module.init_info, "data": data.info,
               "train": train_info, "dev_scores": result.dev_scores, "thresholds": result.thresholds,
               "best_checkpoint": str(best), "export": result.export, "seconds": seconds}
    (out_dir / "result.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    plot_curves(out_dir, str(cfg.name))
    return result


def _json_default(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return str(v)
