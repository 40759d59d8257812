"""The Lightning module of a pretraining run: a recipe around a backbone, AdamW, schedules, a NaN/inf guard."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from omegaconf import DictConfig, OmegaConf

from seisbench_xlstm.backbones import build_backbone

from .config import to_objects
from .data import item_seed
from .recipes import ContrastiveVQ, MaskedReconstruction, build_recipe
from .schedules import annealed_temperature, warmup_cosine, warmup_steps

__all__ = ["PretrainModule", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf: the run stops before the optimizer applies that step."""


class PretrainModule(L.LightningModule):
    """A recipe (:mod:`pretrain.recipes`) around a backbone, trained with AdamW.

    :param config: the composed run config (DictConfig or the plain dict of one; stored in checkpoints)

    Recipe 1 masks every window from the window's own seed (``batch["seed"]``, from ``(seed, epoch, position)``):
    its masks do not depend on the batch a window lands in or the number of devices. The rest of the randomness of
    a training step (recipe 2's masks, negatives and Gumbel noise; dropout) comes from the global torch RNG, seeded
    at every step from ``(seed, global step, rank, micro-batch of the step)``. Either way a resumed run repeats the
    uninterrupted one. Recipe 2's validation masks use a generator seeded from ``(seed, batch index)``: the same
    masks at every validation.

    With several devices (DDP) the logged training values are means over the devices: for recipe 1 the loss of the
    whole global batch.
    """

    def __init__(self, config: DictConfig | dict):
        super().__init__()
        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
        self.save_hyperparameters({"config": config})
        cfg = self._omega = self._structured(config)
        self.backbone_name, backbone_cfg, recipe_cfg = to_objects(cfg)
        torch.manual_seed(item_seed(int(cfg.seed), 0xB00))  # initialisation
        backbone = build_backbone(self.backbone_name, backbone_cfg)
        backbone.gradient_checkpointing = bool(cfg.model.gradient_checkpointing)
        backbone.set_kernel(str(cfg.model.kernel))
        self.recipe = build_recipe(backbone, recipe_cfg)
        self._unchecked_losses: list = []  # the training losses of the optimizer step under way (NaN/inf guard)

    @staticmethod
    def _structured(config: dict) -> DictConfig:
        """The stored plain dict back as a typed config (checkpoints hold plain dicts)."""
        from .config import from_container

        return from_container(config)

    @property
    def backbone(self):
        return self.recipe.backbone

    @property
    def run_config(self) -> DictConfig:
        return self._omega

    # ---------------------------------------------------------------- steps
    def total_steps(self) -> int:
        if self._trainer is None:  # outside a trainer (benchmarks): the configured steps, else a long run
            steps = int(self._omega.trainer.max_steps)
            return steps if steps > 0 else 1_000_000
        return max(1, int(self.trainer.estimated_stepping_batches))

    def on_fit_start(self):
        """Turns on ``torch.compile`` of the mLSTM layers per ``model.compile`` (``null``: on CUDA)."""
        enabled = self.run_config.model.compile
        self.backbone.set_compile(self.device.type == "cuda" if enabled is None else bool(enabled))

    def on_validation_start(self):
        """Validation runs eagerly: its few batches (with a short last one) and its no-grad mode would each compile
        variants of their own, minutes on a GPU for seconds of validation."""
        self._compiled_for_training = self.backbone.compiled
        self.backbone.set_compile(False)

    def on_validation_end(self):
        self.backbone.set_compile(getattr(self, "_compiled_for_training", self.backbone.compiled))

    def on_train_batch_start(self, batch, batch_idx):
        # micro-batches of one optimizer step (gradient accumulation) get their own streams
        micro = batch_idx % max(1, int(self.trainer.accumulate_grad_batches))
        torch.manual_seed(item_seed(int(self._omega.seed), self.global_step, self.global_rank, micro, 0x57E9))
        if isinstance(self.recipe, ContrastiveVQ):
            c = self.recipe.config
            tau = annealed_temperature(self.global_step, self.total_steps(), c.tau_start, c.tau_end)
            self.recipe.set_temperature(tau)

    def _recipe_inputs(self, batch) -> dict:
        """Recipe 1 masks every window from its own seed (the same mask on any number of devices)."""
        if isinstance(self.recipe, MaskedReconstruction) and "seed" in batch:
            return {"seeds": batch["seed"]}
        return {}

    def training_step(self, batch, batch_idx):
        out = self.recipe(batch["X"], **self._recipe_inputs(batch))
        loss = out["loss"]
        keys = [k for k in out if k != "loss"]
        # the logged values are means over all devices (one all-reduce); a non-finite loss on any device makes the
        # mean non-finite, so every rank stops together (one that raised alone would leave the others waiting)
        local = torch.stack([loss.detach().float()] + [out[k].detach().float() for k in keys])
        world = self.trainer.world_size if self._trainer is not None else 1
        mean = self.trainer.strategy.reduce(local.clone(), reduce_op="mean") if world > 1 else local
        # checked in on_before_optimizer_step, once the backward pass is queued: a check here would make the host
        # wait for the forward pass before it could launch the backward one
        self._unchecked_losses.append((local, mean, keys, batch_idx))
        self.log("train/loss", mean[0], prog_bar=True)
        for key, value in zip(keys, mean[1:]):
            self.log(f"train/{key}", value)
        return loss

    def on_before_optimizer_step(self, optimizer):
        """The NaN/inf guard: stops the run before the optimizer applies a step any of whose micro-batches had a
        non-finite loss (on any device: the checked value is the mean over the devices)."""
        losses, self._unchecked_losses = self._unchecked_losses, []
        if not losses or bool(torch.stack([torch.isfinite(mean[0]) for _, mean, _, _ in losses]).all()):
            return
        local, mean, keys, batch_idx = next(x for x in losses if not bool(torch.isfinite(x[1][0])))
        world = self.trainer.world_size
        stats = {k: float(v) for k, v in zip(keys, local[1:])}
        where = "" if world == 1 else f", mean over the {world} devices {mean[0].item()}"
        raise NonFiniteLossError(
            f"Training loss is {local[0].item()} (on this rank{where}) at step {self.global_step} "
            f"(epoch {self.current_epoch}, batch {batch_idx}); statistics of the step: {stats}. Stopped before "
            f"the optimizer applied it. Resume from the last checkpoint with a lower optim.lr, stronger "
            f"trainer.gradient_clip_val, or trainer.precision=32-true to look for the cause."
        )

    def validation_step(self, batch, batch_idx):
        g = torch.Generator(device=batch["X"].device).manual_seed(item_seed(int(self._omega.seed), batch_idx, 0x7A1))
        out = self.recipe(batch["X"], generator=g, **self._recipe_inputs(batch))
        self.log("val/loss", out["loss"], prog_bar=True, sync_dist=True, batch_size=len(batch["X"]))
        for key, value in out.items():
            if key not in ("loss", "temperature"):
                self.log(f"val/{key}", value, sync_dist=True, batch_size=len(batch["X"]))

    # ---------------------------------------------------------------- optimizer
    def _fused_adamw(self, params) -> bool | None:
        """On GPUs the fused AdamW: one multi-tensor kernel a step instead of torch's default chain of foreach
        kernels (9.4 ms of GPU time a step for the U-Net in a profile of recipe 2 on an H200, 2026-11-30). Not
        with a loss scaler (``16-mixed``): the fused step unscales the gradients itself, after clipping would have
        seen them scaled. CPUs keep the default, which the CPU tests' figures (resume, loss curves) were taken
        with."""
        scaled = self._trainer is not None and getattr(self.trainer.precision_plugin, "scaler", None) is not None
        return (all(p.is_cuda for p in params) and not scaled) or None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Lightning's clipping, except that under ``bf16-mixed`` the fused AdamW clips too: Lightning's
        mixed-precision plugin refuses every optimizer that unscales gradients itself, but bf16 runs have no loss
        scaler, so clipping their gradients before the fused step is exact. (Other plugins clip as Lightning's.)"""
        plugin = self.trainer.precision_plugin
        if not (isinstance(plugin, MixedPrecision) and plugin.scaler is None):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        Precision.clip_gradients(plugin, optimizer, gradient_clip_val or 0.0, gradient_clip_algorithm or "norm")

    def configure_optimizers(self):
        o = self._omega.optim
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 and "codevectors" not in name else no_decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": float(o.weight_decay)}, {"params": no_decay, "weight_decay": 0.0}],
            lr=float(o.lr),
            betas=tuple(float(b) for b in o.betas),
            eps=float(o.eps),
            fused=self._fused_adamw(decay + no_decay),
        )
        total = self.total_steps()
        warm = warmup_steps(total, float(o.warmup_fraction))
        min_ratio = float(o.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total, warm, min_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
