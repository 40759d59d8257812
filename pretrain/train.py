"""Running a pretraining experiment with Lightning: trainer, callbacks, resume, loss curve and export.

Several devices run Lightning's DDP (``trainer.devices=2``: one process per GPU, started by Lightning;
gradients averaged over the devices in the backward pass). The data are sharded by
:class:`pretrain.data.EpochSampler`, not by Lightning's distributed sampler. On GPUs NVLink multicast (NVLS) is kept
off in the environment every process inherits (:data:`MULTICAST_OFF`), before NCCL starts.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from seisbench_xlstm.backbones import count_parameters

from .data import PretrainDataModule, check_datasets
from .export import export_backbone
from .module import PretrainModule
from .plots import plot_loss_curve

__all__ = ["RunResult", "WindowRate", "PeakDeviceMemory", "CodebookWatch", "MULTICAST_OFF", "multicast_off",
           "build_trainer", "resolve_precision", "run"]

#: Environment that keeps NVLink multicast off for NCCL, torch's symmetric memory and NVSHMEM (set before NCCL
#: initialises; values a user set are kept).
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def multicast_off(environ=None) -> dict:
    """Sets :data:`MULTICAST_OFF` in ``environ`` (default ``os.environ``, which Lightning's DDP launcher passes to
    every process) where not set already; returns the values in effect."""
    environ = os.environ if environ is None else environ
    for key, value in MULTICAST_OFF.items():
        environ.setdefault(key, value)
    return {key: environ[key] for key in MULTICAST_OFF}


class WindowRate(L.Callback):
    """Logs ``train/windows_per_s``: windows of all devices per second of training, over each logging interval
    (validation excluded; data waits and checkpoint writes included). Without a device synchronisation: over an
    interval of many steps the queued work of one step is a small error."""

    def __init__(self):
        self._start: tuple[float, int] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._start is None:
            self._start = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        steps = trainer.global_step - self._start[1]
        if steps and trainer.global_step % trainer.log_every_n_steps == 0:
            windows = steps * len(batch["X"]) * trainer.world_size * trainer.accumulate_grad_batches
            now = time.perf_counter()
            pl_module.log("train/windows_per_s", windows / (now - self._start[0]))
            self._start = (now, trainer.global_step)

    def on_validation_start(self, trainer, pl_module):
        self._start = None


class PeakDeviceMemory(L.Callback):
    """Logs ``device/peak_gib_rank{r}`` for every process r at each logging interval: the most memory the tensors
    of process r have held on its GPU since it started (``torch.cuda.max_memory_allocated``, GiB). The values are
    gathered from all processes (a collective every process reaches at the same step), so rank 0's log holds each
    GPU's figure. Nothing is logged on CPUs."""

    def __init__(self):
        self._logged_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if pl_module.device.type != "cuda" or step % trainer.log_every_n_steps or step == self._logged_step:
            return  # (micro-batches of one accumulated step share its global_step)
        self._logged_step = step
        peak = torch.tensor(torch.cuda.max_memory_allocated(pl_module.device) / 2**30, device=pl_module.device)
        for rank, gib in enumerate(trainer.strategy.all_gather(peak).reshape(-1).tolist()):
            pl_module.log(f"device/peak_gib_rank{rank}", gib)


class CodebookWatch(L.Callback):
    """Recipe 2: warns once when the fraction of codes in use on the validation windows (``val/codes_in_use``, the
    mean over the devices) falls below ``threshold``: the codebook is collapsing, and a falling contrastive loss
    then says less (fewer codes leave fewer negatives). See docs/pretrain.md, "Watch the codebook"."""

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.warned = False

    def on_validation_end(self, trainer, pl_module):
        in_use = trainer.callback_metrics.get("val/codes_in_use")
        if self.warned or in_use is None or trainer.sanity_checking or float(in_use) >= self.threshold:
            return
        self.warned = True
        rank_zero_warn(
            f"Only {float(in_use):.0%} of the codebook's codes are in use on the validation windows at step "
            f"{trainer.global_step}: the codebook is collapsing. A larger recipe.diversity_weight (e.g. 1.0) or "
            f"more data holds it; see docs/pretrain.md, 'Watch the codebook'.")


@dataclass
class RunResult:
    """:ivar out_dir: output folder; :ivar checkpoint: final checkpoint; :ivar backbone: exported backbone file
    (None if ``export=false``); :ivar loss_curve: PNG; :ivar metrics: CSV logs of this run; :ivar global_step: steps
    done"""

    out_dir: Path
    checkpoint: Path | None
    backbone: Path | None
    loss_curve: Path | None
    metrics: Path | None
    global_step: int


def _uses_gpu(cfg: DictConfig) -> bool:
    accelerator = str(cfg.trainer.accelerator)
    return torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")


def resolve_precision(cfg: DictConfig) -> str:
    """``trainer.precision``, with ``auto`` = ``bf16-mixed`` on GPUs and ``32-true`` on CPUs."""
    precision = str(cfg.trainer.precision)
    if precision == "auto":
        return "bf16-mixed" if _uses_gpu(cfg) else "32-true"
    return precision


def build_trainer(cfg: DictConfig, out_dir: Path, extra_callbacks: list | None = None) -> L.Trainer:
    t = cfg.trainer
    checkpoints = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename="step{step:08d}",
        auto_insert_metric_name=False,
        every_n_train_steps=int(t.checkpoint_every_n_steps),
        save_top_k=-1,
        save_last=True,
        save_on_train_epoch_end=False,
    )
    if _uses_gpu(cfg):
        multicast_off()
    callbacks = [checkpoints, LearningRateMonitor(logging_interval="step"), WindowRate(), PeakDeviceMemory(),
                 CodebookWatch()]
    if t.progress_bar:
        # every step on a terminal; every logging interval into a file (logs of GPU runs stay short)
        callbacks.append(TQDMProgressBar(refresh_rate=1 if sys.stdout.isatty() else int(t.log_every_n_steps)))
    callbacks += extra_callbacks or []
    return L.Trainer(
        default_root_dir=str(out_dir),
        accelerator=str(t.accelerator),
        devices=t.devices,
        num_nodes=int(t.num_nodes),
        strategy=_strategy(t),
        precision=resolve_precision(cfg),
        max_steps=int(t.max_steps),
        max_epochs=None if t.max_epochs is None else int(t.max_epochs),
        max_time=None if t.max_time is None else str(t.max_time),
        val_check_interval=float(t.val_check_interval),
        limit_val_batches=t.limit_val_batches,
        gradient_clip_val=float(t.gradient_clip_val) or None,
        accumulate_grad_batches=int(t.accumulate_grad_batches),
        log_every_n_steps=int(t.log_every_n_steps),
        logger=CSVLogger(save_dir=str(out_dir), name="logs"),
        callbacks=callbacks,
        enable_progress_bar=bool(t.progress_bar),
        use_distributed_sampler=False,  # pretrain.data.EpochSampler shards by rank itself
        enable_model_summary=False,
    )


def _strategy(t: DictConfig):
    """``trainer.strategy``, or Lightning's DDP strategy with the non-default ``trainer.ddp`` settings."""
    options = OmegaConf.to_object(t.ddp).options()
    if not options:
        return str(t.strategy)
    if str(t.strategy) not in ("auto", "ddp"):
        raise ValueError(f"trainer.ddp settings {options} need trainer.strategy=auto or ddp, not {t.strategy!r}")
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(**options)


def _resume_path(cfg: DictConfig, out_dir: Path) -> str | None:
    if cfg.resume in (None, ""):
        return None
    if str(cfg.resume) == "auto":
        last = out_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    path = Path(str(cfg.resume))
    if not path.is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: no such checkpoint")
    return str(path)


def run(cfg: DictConfig, extra_callbacks: list | None = None) -> RunResult:
    """Runs (or resumes) the experiment ``cfg`` (from :func:`pretrain.config.compose_config`)."""
    check_datasets(list(cfg.data.datasets))  # missing datasets: say so before building anything
    out_dir = Path(str(cfg.out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = PretrainModule(cfg)
    data = PretrainDataModule(cfg)
    trainer = build_trainer(cfg, out_dir, extra_callbacks)
    ckpt = _resume_path(cfg, out_dir)
    if trainer.is_global_zero:
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        print(
            f"[pretrain] {cfg.name}: {module.backbone_name} backbone, {count_parameters(module.backbone):,} backbone "
            f"parameters ({count_parameters(module):,} with the recipe), precision {resolve_precision(cfg)}, "
            f"output {out_dir}" + (f", resuming from {ckpt}" if ckpt else "")
        )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    result = RunResult(out_dir, None, None, None, None, int(trainer.global_step))
    if trainer.interrupted:
        print(f"[pretrain] interrupted at step {trainer.global_step}; resume with resume=auto")
        return result
    final = out_dir / "checkpoints" / "final.ckpt"
    trainer.save_checkpoint(final, weights_only=False)
    trainer.save_checkpoint(out_dir / "checkpoints" / "last.ckpt", weights_only=False)
    result.checkpoint = final
    if trainer.is_global_zero:
        result.metrics = Path(trainer.logger.log_dir) / "metrics.csv"
        result.loss_curve = plot_loss_curve(out_dir / "logs", out_dir / "loss_curve.png", title=str(cfg.name))
        if cfg.export:
            result.backbone = export_backbone(module, out_dir / "backbone.pt")
        print(f"[pretrain] done: {trainer.global_step} steps; {data.summary()}")
        print(f"[pretrain] checkpoint {final}; loss curve {result.loss_curve}; backbone {result.backbone}")
    return result
