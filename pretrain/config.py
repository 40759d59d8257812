"""Configuration of a pretraining run: structured configs (one dataclass per component) composed by Hydra.

The schema is :class:`RunConfig`; ``backbone`` and ``recipe`` are Hydra config groups whose options are
dataclasses too (``backbone=sequential|unet``: the library's backbone configs; ``recipe=masked|contrastive``).
Experiments are YAML files under ``pretrain/conf/experiment/`` that set values of this schema. Every key is
checked against the schema: an unknown key is an error naming the valid keys at that level
(:class:`UnknownConfigKeyError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from seisbench_xlstm.backbones import SequentialBackboneConfig, UNetBackboneConfig
from experiments import ExperimentConfigs, UnknownConfigKeyError

from .recipes import ContrastiveConfig, MaskedReconstructionConfig

__all__ = [
    "DataConfig",
    "DDPConfig",
    "IngestSourceConfig",
    "OptimConfig",
    "TrainerConfig",
    "ModelConfig",
    "RunConfig",
    "UnknownConfigKeyError",
    "compose_config",
    "list_experiments",
    "backbone_name",
    "from_container",
    "to_objects",
]

CONF_DIR = Path(__file__).parent / "conf"
#: Config groups (the rest of the command line are values).
GROUPS = ("experiment", "backbone", "recipe")


@dataclass
class IngestSourceConfig:
    """A network's own waveforms + picks, converted once with the data layer's ingest tool (cached).

    :param name: folder name of the converted dataset inside ``data.cache_dir``
    :param waveforms: file or folder of waveforms (anything ObsPy reads)
    :param picks: file or folder of picks
    :param format: ``nordic``, ``quakeml`` or ``csv``
    """

    name: str = MISSING
    waveforms: str = MISSING
    picks: str = MISSING
    format: str = "nordic"


@dataclass
class DataConfig:
    """Where the windows come from and how they are batched.

    :param datasets: SeisBench dataset names (``stead``, ``mlaapde``, ...) or SeisBench-format folders; training
        uses their ``train`` split, validation their ``dev`` split
    :param ingest: own data converted with the ingest tool into ``cache_dir`` once and reused (train/dev splits)
    :param continuous: files/folders of continuous records cut into windows (``seisbench_xlstm.data.continuous``);
        the last ``continuous_val_fraction`` of every contiguous segment is used for validation
    :param cache_dir: folder of ingested datasets (default ``$SEISBENCH_CACHE_ROOT/seisbench_xlstm/ingest``)
    :param window_len: samples per window (100 Hz)
    :param batch_size: windows per device and step
    :param windows_per_epoch: windows drawn per epoch over all devices (default: one per training trace/window)
    :param val_windows: validation windows (default: all; the same windows every time)
    :param num_workers: DataLoader workers per device (default: the data layer's default)
    """

    datasets: list[str] = field(default_factory=list)
    ingest: list[IngestSourceConfig] = field(default_factory=list)
    continuous: list[str] = field(default_factory=list)
    continuous_val_fraction: float = 0.15
    cache_dir: Optional[str] = None
    window_len: int = 4096
    batch_size: int = 128
    windows_per_epoch: Optional[int] = None
    val_windows: Optional[int] = None
    num_workers: Optional[int] = None


@dataclass
class OptimConfig:
    """AdamW with a linear warm-up and a cosine decay over the run's optimizer steps.

    Weight decay applies to weight matrices and convolution kernels (tensors of 2+ dimensions), not to biases,
    norm weights, the learnable skips, the mask embedding or codevectors.
    """

    lr: float = 0.002
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_fraction: float = 0.1
    min_lr_ratio: float = 0.0


@dataclass
class DDPConfig:
    """Settings of ``torch.nn.parallel.DistributedDataParallel`` for runs on several devices. At their defaults
    Lightning picks the strategy (``trainer.strategy``); any other value runs Lightning's ``DDPStrategy`` with them.

    :param static_graph: DDP's ``static_graph`` (the same parameters get gradients in the same order every step,
        true of both recipes): lets DDP skip per-step bookkeeping
    :param bucket_cap_mb: size of a gradient all-reduce bucket in MiB (``null``: torch's default, 25)
    :param gradient_as_bucket_view: gradients are views into the all-reduce buckets (saves one copy per step)
    """

    static_graph: bool = False
    bucket_cap_mb: Optional[float] = None
    gradient_as_bucket_view: bool = False

    def options(self) -> dict:
        """The settings that differ from their defaults, as keyword arguments of ``DistributedDataParallel``."""
        changed = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}
        return {k: float(v) if k == "bucket_cap_mb" else bool(v) for k, v in changed.items()}


@dataclass
class TrainerConfig:
    """Lightning trainer settings.

    :param precision: ``auto`` = ``bf16-mixed`` on GPUs, ``32-true`` on CPUs; or any Lightning precision
    :param devices: GPUs (or CPU processes) per node, ``auto`` or a number; DDP when more than one
    :param max_steps: optimizer steps (``-1``: ``max_epochs`` decides); the schedules span the run's total steps
    :param max_time: stop after this much training time (``DD:HH:MM:SS``; a timed run: the schedules still span
        ``max_steps``/``max_epochs``)
    :param val_check_interval: validation every this fraction of an epoch (0.25: four times an epoch)
    :param checkpoint_every_n_steps: a checkpoint every N optimizer steps (plus ``last.ckpt`` and one at the end)
    :param gradient_clip_val: clip the global gradient norm to this (0: off)
    :param ddp: DistributedDataParallel settings (:class:`DDPConfig`)
    """

    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    max_steps: int = -1
    max_epochs: Optional[int] = None
    max_time: Optional[str] = None
    val_check_interval: float = 1.0
    limit_val_batches: Optional[int] = None
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 50
    checkpoint_every_n_steps: int = 1000
    progress_bar: bool = True
    ddp: DDPConfig = field(default_factory=DDPConfig)


@dataclass
class ModelConfig:
    """Run-time settings of the backbone. :param gradient_checkpointing: recompute each mLSTM layer in the
    backward pass (activation checkpointing: far less memory, ~35% more time); :param kernel: mLSTM kernel
    (``auto``: Triton kernels on CUDA, native chunkwise on CPU); :param compile: run the mLSTM layers through
    ``torch.compile`` (``null``: on CUDA only, where it nearly doubles the training speed; compiling costs tens of
    seconds at the start and is slow on CPUs)."""

    gradient_checkpointing: bool = False
    kernel: str = "auto"
    compile: Optional[bool] = None


@dataclass
class RunConfig:
    """A pretraining run.

    :param name: experiment name (also the default output folder ``runs/<name>``)
    :param seed: seed of the data order, windows, masks, dropout and initialisation
    :param out_dir: output folder: checkpoints, CSV logs, loss curve, exported backbone
    :param resume: checkpoint to resume from, or ``auto`` (``<out_dir>/checkpoints/last.ckpt`` if present)
    :param export: write ``<out_dir>/backbone.pt`` at the end (see :mod:`pretrain.export`)
    """

    name: str = "custom"
    seed: int = 0
    out_dir: Optional[str] = None
    resume: Optional[str] = None
    export: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    backbone: Any = MISSING
    recipe: Any = MISSING


def _register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="backbone", name="sequential", node=SequentialBackboneConfig)
    cs.store(group="backbone", name="unet", node=UNetBackboneConfig)
    cs.store(group="recipe", name="masked", node=MaskedReconstructionConfig)
    cs.store(group="recipe", name="contrastive", node=ContrastiveConfig)


EXPERIMENTS = ExperimentConfigs(
    conf_dir=CONF_DIR,
    groups=GROUPS,
    register=_register,
    group_hints={
        ("backbone",): "Each backbone has its own keys: choose one with backbone=sequential or backbone=unet.",
        ("recipe",): "Each recipe has its own keys: choose one with recipe=masked or recipe=contrastive.",
    },
)
list_experiments = EXPERIMENTS.list_experiments


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """Composes the run config from command-line style overrides (``experiment=<name>``, ``key=value``, ...).

    :raises UnknownConfigKeyError: a key the schema lacks (the message lists the valid keys at that level)
    :raises hydra.errors.ConfigCompositionException: bad values or unknown group options (Hydra's message lists
        the available options)
    """
    cfg = EXPERIMENTS.compose(overrides)
    if cfg.out_dir is None:
        cfg.out_dir = str(Path("runs") / cfg.name)
    return cfg


def from_container(values: dict) -> DictConfig:
    """A plain dict of a composed config (as stored in checkpoints) back as a typed, validated config."""
    base = OmegaConf.structured(RunConfig)
    backbone = values.get("backbone") or {}
    recipe = values.get("recipe") or {}
    base.backbone = OmegaConf.structured(UNetBackboneConfig if "dims" in backbone else SequentialBackboneConfig)
    base.recipe = OmegaConf.structured(ContrastiveConfig if "num_codes" in recipe else MaskedReconstructionConfig)
    return OmegaConf.merge(base, values)


def backbone_name(cfg: DictConfig) -> str:
    """``"sequential"`` or ``"unet"``, from the type of the ``backbone`` node."""
    kind = OmegaConf.get_type(cfg.backbone)
    for name, config_type in (("sequential", SequentialBackboneConfig), ("unet", UNetBackboneConfig)):
        if kind is config_type:
            return name
    raise TypeError(f"backbone config of unknown type {kind}")


def to_objects(cfg: DictConfig):
    """The composed config as plain objects: ``(backbone name, backbone config, recipe config)``."""
    backbone_cls = OmegaConf.get_type(cfg.backbone)
    backbone_cfg = backbone_cls.from_dict(OmegaConf.to_container(cfg.backbone, resolve=True))
    recipe_cfg = OmegaConf.to_object(cfg.recipe)
    return backbone_name(cfg), backbone_cfg, recipe_cfg
