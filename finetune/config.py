"""Configuration of a fine-tuning run: structured configs (one dataclass per component) composed by Hydra.

The schema is :class:`RunConfig`. Experiments are YAML files under ``finetune/conf/experiment/`` that set values
of this schema; the command line sets any key (``key=value``, Hydra syntax). Every key is checked against the
schema: an unknown key is an error naming the valid keys at that level (:class:`UnknownConfigKeyError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from experiments import ExperimentConfigs, UnknownConfigKeyError
from seisbench_xlstm.evaluation import DEFAULT_THRESHOLDS

__all__ = [
    "ARCHS",
    "IngestSourceConfig",
    "AugmentConfig",
    "DataConfig",
    "PseudoConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainerConfig",
    "SelectionConfig",
    "ExportConfig",
    "RunConfig",
    "UnknownConfigKeyError",
    "compose_config",
    "list_experiments",
    "from_container",
]

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("experiment",)
#: Model choices: the two xLSTM pickers and SeisBench's PhaseNet and EQTransformer architectures.
ARCHS = ("xlstm_seq", "xlstm_unet", "phasenet", "eqtransformer")


@dataclass
class IngestSourceConfig:
    """A network's own waveforms + picks, converted once with the data layer's ingest tool (default options) into
    ``data.cache_dir/<name>`` and reused. :param format: ``nordic``, ``quakeml`` or ``csv``"""

    name: str = MISSING
    waveforms: str = MISSING
    picks: str = MISSING
    format: str = "nordic"


@dataclass
class AugmentConfig:
    """The data layer's ``AugmentationConfig`` (probabilities and ranges of the training augmentations)."""

    gaussian_noise_p: float = 0.2
    gaussian_noise_scale: list[float] = field(default_factory=lambda: [0.0, 0.15])
    gap_p: float = 0.1
    channel_dropout_p: float = 0.1
    amplitude_scale_p: float = 0.2
    amplitude_scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    superposition_p: float = 0.1
    superposition_scale: list[float] = field(default_factory=lambda: [0.1, 1.0])


@dataclass
class DataConfig:
    """Labelled data and windows.

    :param datasets: SeisBench dataset names or SeisBench-format folders with analyst picks (their own ``split``
        column, or one assigned by event): ``train`` trains, ``dev`` selects, ``test`` is never touched here
    :param ingest: own data converted with the ingest tool into ``cache_dir`` (default options) once and reused
    :param cache_dir: folder of ingested datasets (default ``$SEISBENCH_CACHE_ROOT/seisbench_xlstm/ingest``)
    :param label_fraction: share of the training traces that keep their analyst picks, chosen by event with
        ``seed`` (nested: the 5% events are among the 10% events); 1.0 = all
    :param sigma: standard deviation of the Gaussian P/S targets (ProbabilisticLabeller), samples
    :param noise_window_p: probability of a pre-arrival noise window (where a trace holds one)
    :param batch_size: windows per step
    :param windows_per_epoch: training windows per epoch (default: one per training trace and chunk)
    :param val_windows: dev windows for ``val/loss`` (default: one per dev trace)
    :param num_workers: DataLoader workers (default: the data layer's)
    """

    datasets: list[str] = field(default_factory=list)
    ingest: list[IngestSourceConfig] = field(default_factory=list)
    cache_dir: Optional[str] = None
    label_fraction: float = 1.0
    sigma: float = 20.0
    noise_window_p: float = 0.1
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 64
    windows_per_epoch: Optional[int] = None
    val_windows: Optional[int] = None
    num_workers: Optional[int] = None


@dataclass
class PseudoConfig:
    """Teacher pseudo-labels (:mod:`seisbench_xlstm.pseudolabels`).

    :param continuous: continuous records (files/folders) labelled by the teachers and mixed into training
        (their first ``train_fraction`` of the record span; the rest is held out)
    :param labelled: add the teachers' picks to the labelled training traces (analyst picks win, see the rule)
    :param unlabelled_traces: with ``label_fraction < 1``, keep the other training traces with teacher picks only
        (otherwise they are left out)
    :param weight: share of the training windows drawn from the continuous chunks (0: none)
    :param teachers: ``Class:name`` of SeisBench models in ``teacher_cache``
    :param teacher_cache: SeisBench cache root holding the teachers (default: ``SEISBENCH_CACHE_ROOT``)
    """

    continuous: list[str] = field(default_factory=list)
    labelled: bool = False
    unlabelled_traces: bool = False
    weight: float = 0.3
    teachers: list[str] = field(default_factory=lambda: ["PhaseNet:original", "EQTransformer:original"])
    teacher_cache: Optional[str] = None
    P_threshold: float = 0.4
    S_threshold: float = 0.3
    analyst_tolerance: float = 1.0
    chunk_len: int = 12288
    train_fraction: float = 0.7


@dataclass
class ModelConfig:
    """:param arch: ``xlstm_seq``, ``xlstm_unet``, ``phasenet`` (3001 samples) or ``eqtransformer`` (6000 samples)
    :param pretrained: pretrained-backbone export (``pretrain/export.py`` format) for the xLSTM pickers; null =
        from scratch
    :param backbone: backbone config values for a picker from scratch (default: the library's seed config)
    :param gradient_checkpointing: recompute each mLSTM layer in the backward pass (xLSTM only)
    :param kernel: mLSTM kernel (``auto``: Triton kernels on CUDA, native chunkwise on CPU)
    :param compile: run the mLSTM layers through ``torch.compile`` while training (xLSTM only; validation and the
        dev evaluation stay eager); ``null``: on CUDA only, as in pretraining. Default ``false`` until fine-tuning
        with it is measured on a GPU (the GPU figures so far ran eagerly)."""

    arch: str = "xlstm_seq"
    pretrained: Optional[str] = None
    backbone: dict[str, Any] = field(default_factory=dict)
    gradient_checkpointing: bool = False
    kernel: str = "auto"
    compile: Optional[bool] = False


@dataclass
class OptimConfig:
    """AdamW, linear warm-up then cosine decay over the run's steps (to ``min_lr_ratio``).

    :param freeze_backbone_epochs: epochs with the backbone frozen (xLSTM pickers: stem and mLSTM layers; the
        decoder and the head train from the start)
    :param backbone_lr_factor: backbone learning rate = ``lr * backbone_lr_factor`` once unfrozen
    """

    lr: float = 1e-3
    backbone_lr_factor: float = 0.1
    freeze_backbone_epochs: int = 2
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.01


@dataclass
class TrainerConfig:
    """Lightning trainer settings. :param precision: ``auto`` = ``bf16-mixed`` on GPUs, ``32-true`` on CPUs;
    :param max_time: wall-clock budget (``DD:HH:MM:SS``), null = none; :param devices: one device (the dev
    evaluation runs annotate in the main process)"""

    accelerator: str = "auto"
    devices: int = 1
    precision: str = "auto"
    max_epochs: int = 50
    max_steps: int = -1
    max_time: Optional[str] = None
    val_check_interval: float = 1.0
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    progress_bar: bool = True


@dataclass
class SelectionConfig:
    """Model selection on the dev split.

    :param monitor: ``val/f1`` (mean of the P and S F1 of ``classify`` picks within ``tolerance`` on the whole dev
        traces, at the dev-optimal thresholds) or ``val/loss`` (loss on dev windows)
    :param patience: validations without improvement before early stopping
    :param tolerance: seconds within which a pick matches an analyst pick
    :param thresholds: grid of trigger thresholds tuned on dev
    :param dev_traces: at most this many dev traces for ``val/f1`` (default all)
    """

    monitor: str = "val/f1"
    patience: int = 10
    tolerance: float = 0.5
    thresholds: list[float] = field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    dev_traces: Optional[int] = None


@dataclass
class ExportConfig:
    """The SeisBench weight pair ``<dir>/<name>.json.v<version>`` + ``.pt.v<version>``.

    :param name: weight name (default: ``<arch>_<run name with / as _>``)
    :param dir: output folder (default ``<out_dir>/weights``)
    :param precision: ``fp32``, ``fp16`` or ``bf16`` (stored weights; they load into fp32 models)
    :param check_tolerance: largest allowed difference of output probabilities between the trained fp32 model
        and the stored weights on dev windows
    :param fallback_fp32: half-precision weights beyond ``check_tolerance`` are stored in fp32 instead (off: the
        export fails and removes its files)
    :param note: text added to the weights' docstring
    """

    enabled: bool = True
    name: Optional[str] = None
    dir: Optional[str] = None
    version: str = "1"
    precision: str = "fp32"
    check_tolerance: float = 0.02
    fallback_fp32: bool = True
    note: str = ""


@dataclass
class RunConfig:
    """A fine-tuning run. :param out_dir: default ``runs/finetune/<name>``"""

    name: str = "custom"
    seed: int = 0
    out_dir: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


def _register() -> None:
    ConfigStore.instance().store(name="finetune_schema", node=RunConfig)


EXPERIMENTS = ExperimentConfigs(
    conf_dir=CONF_DIR,
    groups=GROUPS,
    register=_register,
    # backbone values are free-form here (checked by the library's backbone config): added or replaced
    free_form=(("model", "backbone"),),
)
list_experiments = EXPERIMENTS.list_experiments


def _validate(cfg: DictConfig) -> None:
    errors = []
    if cfg.model.arch not in ARCHS:
        errors.append(f"model.arch={cfg.model.arch!r}: choose one of {', '.join(ARCHS)}")
    if cfg.model.pretrained and not str(cfg.model.arch).startswith("xlstm"):
        errors.append("model.pretrained is a pretrained xLSTM backbone: only for model.arch=xlstm_seq|xlstm_unet")
    if cfg.model.backbone and not str(cfg.model.arch).startswith("xlstm"):
        errors.append(f"model.backbone sets an xLSTM picker's backbone from scratch: not for {cfg.model.arch}")
    if cfg.pseudo.unlabelled_traces and not cfg.pseudo.labelled:
        errors.append("pseudo.unlabelled_traces keeps train traces without analyst picks: needs pseudo.labelled=true")
    if not 0 < float(cfg.data.label_fraction) <= 1:
        errors.append(f"data.label_fraction={cfg.data.label_fraction}: must be in (0, 1]")
    if cfg.selection.monitor not in ("val/f1", "val/loss"):
        errors.append(f"selection.monitor={cfg.selection.monitor!r}: choose val/f1 or val/loss")
    if cfg.export.precision not in ("fp32", "fp16", "bf16"):
        errors.append(f"export.precision={cfg.export.precision!r}: choose fp32, fp16 or bf16")
    if not 0 <= float(cfg.pseudo.weight) < 1:
        errors.append(f"pseudo.weight={cfg.pseudo.weight}: must be in [0, 1)")
    if int(cfg.trainer.devices) != 1:
        errors.append("trainer.devices: fine-tuning runs on one device")
    if errors:
        raise ValueError("Invalid configuration:\n  " + "\n  ".join(errors))


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The run config from command-line style overrides (``experiment=<name>``, ``key=value``, ...).

    :raises UnknownConfigKeyError: a key the schema lacks (the message lists the valid keys at that level)
    :raises ValueError: values out of range (all problems in one message)
    """
    cfg = EXPERIMENTS.compose(overrides)
    if cfg.out_dir is None:
        cfg.out_dir = str(Path("runs") / "finetune" / cfg.name)
    _validate(cfg)
    return cfg


def from_container(values: dict) -> DictConfig:
    """A plain dict of a composed config (as stored in checkpoints) back as a typed, validated config."""
    return OmegaConf.merge(OmegaConf.structured(RunConfig), values)
