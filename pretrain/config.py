"""Configuration of a pretraining run: structured configs (one dataclass per component) composed by Hydra.

The schema is :class:`RunConfig`; ``backbone`` and ``recipe`` are Hydra config groups whose options are
dataclasses too (``backbone=sequential|unet``: the library's backbone configs; ``recipe=masked|contrastive``).
Experiments are YAML files under ``pretrain/conf/experiment/`` that set values of this schema. Every key is
checked against the schema: an unknown key is an error naming the valid keys at that level
(:class:`UnknownConfigKeyError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from seisbench_xlstm.backbones import SequentialBackboneConfig, UNetBackboneConfig
from seisbench_xlstm.data import shared_data_dir

from .recipes import ContrastiveConfig, MaskedReconstructionConfig

__all__ = [
    "DataConfig",
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


@dataclass
class ModelConfig:
    """Run-time settings of the backbone. :param gradient_checkpointing: recompute each mLSTM layer in the
    backward pass (activation checkpointing: far less memory, ~35% more time); :param kernel: mLSTM kernel
    (``auto``: TFLA on CUDA, native chunkwise on CPU); :param compile: run the mLSTM layers through
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


class UnknownConfigKeyError(KeyError):
    """A command-line key that the schema does not have; the message names the valid keys at that level."""

    def __str__(self):  # KeyError quotes its message; show it as written
        return str(self.args[0])


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="backbone", name="sequential", node=SequentialBackboneConfig)
    cs.store(group="backbone", name="unet", node=UNetBackboneConfig)
    cs.store(group="recipe", name="masked", node=MaskedReconstructionConfig)
    cs.store(group="recipe", name="contrastive", node=ContrastiveConfig)
    if not OmegaConf.has_resolver("shared_data"):
        # ${shared_data:ncedc154} -> <repository>/../shared/data/ncedc154 (or $SEISBENCH_XLSTM_SHARED_DATA/...)
        OmegaConf.register_new_resolver("shared_data", lambda sub="": str(shared_data_dir() / sub))
    _registered = True


def list_experiments() -> list[str]:
    """Names of the experiments (``experiment=<name>``)."""
    root = CONF_DIR / "experiment"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def _compose(overrides: list[str]) -> DictConfig:
    _register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _check_key(cfg: DictConfig, key: str) -> None:
    node: Any = cfg
    done: list[str] = []
    for part in key.split("."):
        if isinstance(node, DictConfig):
            if part not in node:
                where = ".".join(done) or "the top level"
                hint = ""
                if done == ["backbone"]:
                    hint = " Each backbone has its own keys: choose one with backbone=sequential or backbone=unet."
                elif done == ["recipe"]:
                    hint = " Each recipe has its own keys: choose one with recipe=masked or recipe=contrastive."
                raise UnknownConfigKeyError(
                    f"Unknown config key {key!r}: {part!r} is not an option of {where}. "
                    f"Valid keys there: {', '.join(str(k) for k in node.keys())}.{hint}"
                )
            node = node._get_node(part)
        elif isinstance(node, ListConfig):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise UnknownConfigKeyError(
                    f"Unknown config key {key!r}: {'.'.join(done)} is a list of {len(node)} entries, not {part!r}."
                )
            node = node._get_node(int(part))
        else:
            raise UnknownConfigKeyError(f"Unknown config key {key!r}: {'.'.join(done)} has no sub-keys.")
        done.append(part)


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """Composes the run config from command-line style overrides (``experiment=<name>``, ``key=value``, ...).

    :raises UnknownConfigKeyError: a key the schema lacks (the message lists the valid keys at that level)
    :raises hydra.errors.ConfigCompositionException: bad values or unknown group options (Hydra's message lists
        the available options)
    """
    overrides = list(overrides or [])
    parsed = OverridesParser.create().parse_overrides(overrides)
    groups = [o.input_line for o in parsed if o.key_or_group in GROUPS]
    schema = _compose(groups)  # the schema with the chosen experiment/backbone/recipe, before values
    for o in parsed:
        if o.key_or_group in GROUPS or o.key_or_group.startswith("hydra"):
            continue
        if o.is_add() or o.is_force_add() or o.is_delete():
            raise UnknownConfigKeyError(
                f"{o.input_line!r}: adding or deleting keys is not supported; every key is part of the schema "
                "(set existing keys with key=value)."
            )
        _check_key(schema, o.key_or_group)
    cfg = _compose(overrides)
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
