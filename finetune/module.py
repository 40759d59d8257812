"""The Lightning module of a fine-tuning run: loss, frozen-then-unfrozen backbone, AdamW, dev selection."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from seisbench_xlstm.evaluation import tune_pick_thresholds

from .models import build_model, loss_fn, parameter_groups

__all__ = ["FinetuneModule", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf: the run stops before the optimizer applies that step."""


class FinetuneModule(L.LightningModule):
    """A SeisBench picker (``self.model``) trained on picking targets.

    :param config: the composed run config (DictConfig or its plain dict; stored in checkpoints)
    :param dev_traces: whole dev traces (:class:`~seisbench_xlstm.evaluation.TraceSet`) for ``val/f1``; None
        skips it (``val/loss`` only)

    **Backbone schedule** (xLSTM pickers): for the first ``optim.freeze_backbone_epochs`` epochs the backbone's
    stem and mLSTM layers are frozen (no gradients) and only the decoder and head learn at ``optim.lr``; then the
    backbone learns too, at ``optim.lr * optim.backbone_lr_factor``. Both follow one warm-up + cosine schedule.

    **Validation**: ``val/loss`` on fixed dev windows; ``val/f1`` = mean of the P and S F1 (picks within
    ``selection.tolerance`` of the analyst picks) of ``classify`` on the whole dev traces at the thresholds that
    maximise each phase's F1 on them (also logged: ``val/f1_P``, ``val/f1_S``, ``val/threshold_P``, ...).
    """

    def __init__(self, config: DictConfig | dict, dev_traces=None):
        super().__init__()
        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
        self.save_hyperparameters({"config": config})
        from .config import from_container

        self.cfg = from_container(config)
        self.arch = str(self.cfg.model.arch)
        torch.manual_seed(int(self.cfg.seed))
        self.model, self.init_info = build_model(self.arch, self.cfg.model.pretrained,
                                                 OmegaConf.to_container(self.cfg.model.backbone))
        if self.arch.startswith("xlstm"):
            self.model.backbone.gradient_checkpointing = bool(self.cfg.model.gradient_checkpointing)
            self.model.set_kernel(str(self.cfg.model.kernel))
        self.backbone_params, self.head_params = parameter_groups(self.model, self.arch)
        self.dev_traces = dev_traces
        self.thresholds: dict[str, float] = {}
        self.dev_scores: dict[str, float] = {}

    # ---------------------------------------------------------------- torch.compile (xLSTM pickers)
    def on_fit_start(self):
        """Turns on ``torch.compile`` of the mLSTM layers per ``model.compile`` (``null``: on CUDA)."""
        if self.arch.startswith("xlstm"):
            enabled = self.cfg.model.compile
            self.model.backbone.set_compile(self.device.type == "cuda" if enabled is None else bool(enabled))

    def on_validation_start(self):
        """Validation and the dev evaluation (``annotate`` of whole traces) run eagerly: their shapes and no-grad
        mode would each compile variants of their own."""
        if self.arch.startswith("xlstm"):
            self._compiled_for_training = self.model.backbone.compiled
            self.model.backbone.set_compile(False)

    def on_validation_end(self):
        if self.arch.startswith("xlstm"):
            self.model.backbone.set_compile(getattr(self, "_compiled_for_training", self.model.backbone.compiled))

    # ---------------------------------------------------------------- backbone schedule
    def backbone_frozen(self, epoch: int | None = None) -> bool:
        epoch = self.current_epoch if epoch is None else epoch
        return bool(self.backbone_params) and epoch < int(self.cfg.optim.freeze_backbone_epochs)

    def on_train_epoch_start(self):
        frozen = self.backbone_frozen()
        for p in self.backbone_params:
            p.requires_grad_(not frozen)
        self.log("train/backbone_frozen", float(frozen), on_step=False, on_epoch=True)

    # ---------------------------------------------------------------- steps
    def training_step(self, batch, batch_idx):
        loss = loss_fn(self.model, self.arch, batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"Training loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); stopped "
                "before the optimizer applied it. Try a lower optim.lr or trainer.precision=32-true."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["X"]))
        return loss

    def validation_step(self, batch, batch_idx):
        loss = loss_fn(self.model, self.arch, batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["X"]))

    def dev_evaluation(self) -> dict:
        """Thresholds and F1 of ``classify`` on the whole dev traces (see the class docstring)."""
        sel = self.cfg.selection
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                annotations = self.model.annotate(self.dev_traces.stream.copy())
            tuned = tune_pick_thresholds(self.model, annotations, self.dev_traces.reference,
                                         thresholds=list(sel.thresholds), tolerance=float(sel.tolerance))
        finally:
            self.model.train(was_training)
        out = {}
        for phase, (threshold, f1, _) in tuned.items():
            out[f"threshold_{phase}"] = threshold
            out[f"f1_{phase}"] = 0.0 if math.isnan(f1) else f1
        out["f1"] = float(np.mean([out[f"f1_{p}"] for p in tuned]))
        return out

    def on_validation_epoch_end(self):
        if self.dev_traces is None or self.trainer.sanity_checking:
            return
        scores = self.dev_evaluation()
        self.dev_scores = scores
        self.thresholds = {k.split("_", 1)[1]: v for k, v in scores.items() if k.startswith("threshold_")}
        for key, value in scores.items():
            self.log(f"val/{key}", float(value), prog_bar=key == "f1")

    def on_save_checkpoint(self, checkpoint):
        checkpoint["dev_thresholds"] = dict(self.thresholds)
        checkpoint["dev_scores"] = dict(self.dev_scores)

    def on_load_checkpoint(self, checkpoint):
        self.thresholds = dict(checkpoint.get("dev_thresholds", {}))
        self.dev_scores = dict(checkpoint.get("dev_scores", {}))

    # ---------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        o = self.cfg.optim
        lr = float(o.lr)
        groups = []
        for params, group_lr in ((self.head_params, lr), (self.backbone_params, lr * float(o.backbone_lr_factor))):
            decay = [p for p in params if p.ndim >= 2]
            no_decay = [p for p in params if p.ndim < 2]
            groups += [{"params": decay, "weight_decay": float(o.weight_decay), "lr": group_lr},
                       {"params": no_decay, "weight_decay": 0.0, "lr": group_lr}]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(float(b) for b in o.betas), eps=float(o.eps))
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        if not math.isfinite(total):
            raise ValueError("Set trainer.max_epochs or trainer.max_steps: the learning-rate schedule needs a length")
        warm = int(round(float(o.warmup_fraction) * total))
        min_ratio = float(o.min_lr_ratio)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
