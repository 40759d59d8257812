"""Window generators for pretraining and picking, built on ``seisbench.generate``.

Both generators are :class:`seisbench.generate.GenericGenerator` instances (usable directly as a
``torch.utils.data.Dataset``) whose augmentation pipeline is assembled from SeisBench's library blocks
(``WindowAroundSample``, ``RandomWindow``, ``OneOf``, ``GaussianNoise``, ``ChannelDropout``, ``Normalize``,
``ProbabilisticLabeller``, ``ChangeDtype``) and the blocks of :mod:`.augmentations` that have no library
equivalent (noise windows before the first pick, annotate-like gaps, event superposition, amplitude scaling).

Samples (model conventions: 100 Hz, ZNE, 4096 samples, channels-first, float32):

* pretraining: ``{"X": float32 (3, 4096)}``
* picking: ``{"X": float32 (3, 4096), "y": float32 (3, 4096)}`` with label rows P, S, Noise ("PSN");
  ``y`` sums to 1 over the three rows at every sample.

Windows are real data end to end: traces shorter than a window are skipped (counted in
``generator.eligibility``, with a warning), and noise windows come only from traces with a full window of
pre-arrival data (see :mod:`.windows`).

Normalisation (:class:`NormalizeConfig`) is limited to what the pickers' ``annotate_batch_pre`` does: each
channel demeaned, then divided by its own standard deviation (``"std"``) or absolute peak (``"peak"``), +1e-10.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import seisbench.data as sbd
import seisbench.generate as sbg

from .augmentations import (
    SUPERIMPOSED_P,
    SUPERIMPOSED_S,
    NoiseOrPickWindow,
    PreArrivalNoiseWindow,
    RandomAmplitudeScale,
    SegmentDemeanedGap,
    Sequential,
    SuperimposeEvent,
    TrimFlatEdges,
)
from .phases import pick_columns
from .windows import WindowEligibility, usable_mask, window_eligibility

__all__ = [
    "NormalizeConfig",
    "AugmentationConfig",
    "PretrainConfig",
    "PickingConfig",
    "PreArrivalNoiseWindow",
    "NoiseOrPickWindow",
    "SegmentDemeanedGap",
    "SuperimposeEvent",
    "RandomAmplitudeScale",
    "Sequential",
    "pretraining_generator",
    "picking_generator",
    "label_columns_for",
    "MODEL_LABELS",
    "PICKER_NORMS",
    "SUPERIMPOSED_P",
    "SUPERIMPOSED_S",
]

#: Order of the label rows in ``y``.
MODEL_LABELS = "PSN"
#: Window normalisations the pickers' ``annotate_batch_pre`` (``normalize_windows``) implements.
PICKER_NORMS = ("std", "peak")
_PICKER_EPS = 1e-10


def _last_axis(v) -> bool:
    return v == -1 or (isinstance(v, (tuple, list)) and tuple(v) == (-1,))


@dataclass
class NormalizeConfig:
    """Window normalisation (after the waveform augmentations, before the labels), as the pickers do it.

    Only what ``annotate_batch_pre`` reproduces is accepted: each channel demeaned (``demean_axis=-1``), then
    divided by its own standard deviation (``amp_norm_type="std"``) or absolute peak (``"peak"``) plus 1e-10
    (``amp_norm_axis=-1``, ``eps=1e-10``), no detrending, always on. Anything else raises ``ValueError``: a model
    trained on windows that annotate normalises differently would be wrong without a word. The other fields
    are kept so that the SeisBench ``Normalize`` arguments stay visible.

    Store the choice in the model: ``XLSTMSeqPicker(norm=config.picker_norm)``; the reverse is
    :meth:`for_picker`.
    """

    enabled: bool = True
    demean_axis: int | tuple[int, ...] | None = -1
    detrend_axis: int | None = None
    amp_norm_axis: int | tuple[int, ...] | None = -1
    amp_norm_type: str = "std"
    eps: float = _PICKER_EPS

    def __post_init__(self):
        bad = []
        if self.enabled is not True:
            bad.append(f"enabled={self.enabled!r}")
        if not _last_axis(self.demean_axis):
            bad.append(f"demean_axis={self.demean_axis!r}")
        if self.detrend_axis is not None:
            bad.append(f"detrend_axis={self.detrend_axis!r}")
        if not _last_axis(self.amp_norm_axis):
            bad.append(f"amp_norm_axis={self.amp_norm_axis!r}")
        if self.amp_norm_type not in PICKER_NORMS:
            bad.append(f"amp_norm_type={self.amp_norm_type!r}")
        if self.eps != _PICKER_EPS:
            bad.append(f"eps={self.eps!r}")
        if bad:
            raise ValueError(
                f"NormalizeConfig({', '.join(bad)}) cannot be reproduced by the pickers' annotate_batch_pre, "
                f"which demeans each window per channel and divides it by the per-channel 'std' or 'peak' "
                f"(+{_PICKER_EPS:g}). Allowed: NormalizeConfig(amp_norm_type='std') or "
                f"NormalizeConfig(amp_norm_type='peak'), other fields at their defaults (enabled=True, "
                f"demean_axis=-1, detrend_axis=None, amp_norm_axis=-1, eps={_PICKER_EPS:g})."
            )

    @property
    def picker_norm(self) -> str:
        """The pickers' ``norm`` argument for this normalisation (``"std"`` or ``"peak"``)."""
        return self.amp_norm_type

    @classmethod
    def for_picker(cls, picker_or_norm) -> "NormalizeConfig":
        """The normalisation of a picker (anything with a ``norm`` attribute) or of a ``norm`` string."""
        norm = getattr(picker_or_norm, "norm", picker_or_norm)
        if norm not in PICKER_NORMS:
            raise ValueError(f"norm must be one of {PICKER_NORMS}, got {norm!r}")
        return cls(amp_norm_type=norm)

    def build(self) -> sbg.Normalize:
        return sbg.Normalize(
            demean_axis=-1, detrend_axis=None, amp_norm_axis=-1, amp_norm_type=self.amp_norm_type, eps=self.eps
        )


@dataclass
class AugmentationConfig:
    """Probabilities and ranges of the training augmentations (set a probability to 0 to disable one).

    Order in the pipeline: demean -> superposition -> Gaussian noise -> gap -> channel dropout ->
    normalise -> amplitude scaling. A gap is built as annotate sees one (:class:`SegmentDemeanedGap`: each
    side demeaned by its own mean, the gap exactly 0); dropped channels are zeros (as missing components at
    inference); a pick inside a gap is removed from the labels.
    Amplitude scaling multiplies the *normalised* window by a log-uniform factor, so the model does not
    rely on unit standard deviation (a pre-normalisation gain would be undone by the normalisation).
    """

    gaussian_noise_p: float = 0.2
    gaussian_noise_scale: tuple[float, float] = (0.0, 0.15)
    gap_p: float = 0.1
    channel_dropout_p: float = 0.1
    amplitude_scale_p: float = 0.2
    amplitude_scale_range: tuple[float, float] = (0.5, 2.0)
    superposition_p: float = 0.1
    superposition_scale: tuple[float, float] = (0.1, 1.0)


@dataclass
class PretrainConfig:
    """Random ``window_len``-sample windows from any trace (events and noise alike)."""

    window_len: int = 4096
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    #: None = no augmentation (masking for self-supervision is the model's job).
    augment: AugmentationConfig | None = None


@dataclass
class PickingConfig:
    """Windows around picks with random offsets, plus pure-noise windows, with P/S/Noise targets."""

    window_len: int = 4096
    #: Gaussian label width (standard deviation, samples).
    sigma: float = 20.0
    label_shape: str = "gaussian"
    #: Fraction of windows cut from the noise before the first pick (labels: Noise only).
    noise_window_p: float = 0.1
    #: Noise windows end this many samples before the first pick (default 5 sigma).
    noise_margin: int | None = None
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    #: Augmentations for training; ``picking_generator(..., train=False)`` ignores them.
    augment: AugmentationConfig | None = field(default_factory=AugmentationConfig)
    #: Extra ``{column: "P"|"S"}`` pick columns (beyond :data:`~.phases.PICK_COLUMN_MAP`).
    extra_pick_columns: dict[str, str] = field(default_factory=dict)


def _maybe(aug, p: float):
    if p <= 0:
        return None
    if p >= 1:
        return aug
    return sbg.OneOf([aug, sbg.NullAugmentation()], probabilities=[p, 1 - p])


def _unwrap(dataset):
    # MixedDataset (mixing.py) carries the SeisBench dataset in .dataset
    inner = getattr(dataset, "dataset", None)
    if inner is not None and isinstance(inner, (sbd.WaveformDataset, sbd.MultiWaveformDataset)):
        return inner
    return dataset


def label_columns_for(dataset, extra: dict[str, str] | None = None) -> dict[str, str]:
    """``{column: "P"|"S"}`` for the labeller: the dataset's pick columns, canonical P/S, superposition keys."""
    dataset = _unwrap(dataset)
    cols = pick_columns(dataset.metadata.columns, extra=extra)
    cols.setdefault("trace_P_arrival_sample", "P")
    cols.setdefault("trace_S_arrival_sample", "S")
    cols[SUPERIMPOSED_P] = "P"
    cols[SUPERIMPOSED_S] = "S"
    return cols


def _waveform_augmentations(aug: AugmentationConfig) -> list:
    out = [
        _maybe(sbg.GaussianNoise(scale=aug.gaussian_noise_scale), aug.gaussian_noise_p),
        _maybe(SegmentDemeanedGap(metadata_picks_in_gap_threshold=0), aug.gap_p),
        _maybe(sbg.ChannelDropout(check_meta_picks_in_gap=True), aug.channel_dropout_p),
    ]
    return [a for a in out if a is not None]


def _usable_traces(dataset, window_len: int, columns, margin: int):
    """(SeisBench dataset without unusable traces, the MixedDataset filtered alike or None, eligibility)."""
    inner = _unwrap(dataset)
    elig = window_eligibility(inner, window_len, margin, columns)
    mixed = dataset if inner is not dataset else None
    if elig.usable < elig.traces:
        mask = usable_mask(inner, window_len, columns)
        warnings.warn(f"training windows: {elig.report()}", UserWarning, stacklevel=3)
        if mixed is not None:
            mixed = mixed.filter(mask)
            inner = mixed.dataset
            warnings.warn(
                "the mixture held traces that cannot give a full window: draw with generator.mixed.sampler(n), "
                "not with the unfiltered mixture's sampler (or mix with min_samples=window_len)",
                UserWarning,
                stacklevel=3,
            )
        else:
            inner = inner.filter(mask, inplace=False)
    return inner, mixed, elig


def _generator(dataset, augs, mixed, elig: WindowEligibility) -> sbg.GenericGenerator:
    gen = sbg.GenericGenerator(dataset)
    gen.add_augmentations(augs)
    gen.eligibility = elig
    gen.mixed = mixed
    return gen


def pretraining_generator(dataset, config: PretrainConfig | None = None) -> sbg.GenericGenerator:
    """Generator of random windows for self-supervised pretraining.

    :param dataset: ``WaveformDataset``/``MultiWaveformDataset`` (or a :class:`~.mixing.MixedDataset`),
        opened at 100 Hz, ZNE, channels-first (see :func:`~.datasets.open_dataset`).
    :return: ``GenericGenerator``; ``gen[i]["X"]`` is float32 ``(3, window_len)``, a random window of trace
        ``i``. Traces shorter than ``window_len`` are skipped, never padded: ``gen.eligibility.short`` counts
        them (with a warning), ``gen.dataset`` is the dataset without them (``gen.mixed`` the filtered
        mixture, for a MixedDataset input).
    """
    config = config or PretrainConfig()
    inner, mixed, elig = _usable_traces(dataset, config.window_len, [], 0)
    augs: list[Any] = [
        TrimFlatEdges(config.window_len),
        sbg.RandomWindow(windowlen=config.window_len, strategy="fail"),
    ]
    if config.augment is not None:
        # demean first, so that noise scaled to the window's peak is not scaled to a DC offset
        augs.append(sbg.Normalize(demean_axis=-1))
        augs += _waveform_augmentations(config.augment)
    augs.append(config.normalize.build())
    if config.augment is not None:
        a = _maybe(RandomAmplitudeScale(config.augment.amplitude_scale_range), config.augment.amplitude_scale_p)
        if a is not None:
            augs.append(a)
    augs.append(sbg.ChangeDtype(np.float32, "X"))
    return _generator(inner, augs, mixed, elig)


def picking_generator(
    dataset, config: PickingConfig | None = None, train: bool = True
) -> sbg.GenericGenerator:
    """Generator of labelled windows for phase picking.

    Each sample of an event trace is, with probability ``noise_window_p``, a pure-noise window cut before the
    first pick, if the trace holds ``window_len`` samples before (first pick - ``noise_margin``); otherwise a
    ``window_len`` window containing one of the trace's picks at a uniformly random position
    (``WindowAroundSample`` + ``RandomWindow``). Noise traces (no picks) give noise windows. Nothing is padded:
    traces shorter than ``window_len`` (or whose picks all lie before the trace) are skipped, and
    ``gen.eligibility`` (:class:`~.windows.WindowEligibility`) says how many traces were skipped and how many
    can give noise windows; a warning is issued when traces are skipped or when the expected share of noise
    windows is below half of ``noise_window_p``. Training adds the augmentations of ``config.augment``.

    :param dataset: ``WaveformDataset``/``MultiWaveformDataset``/:class:`~.mixing.MixedDataset` at 100 Hz,
        ZNE, channels-first.
    :param train: if False, no augmentation (windows, normalisation and labels only).
    :return: ``GenericGenerator``; ``gen[i]`` = ``{"X": float32 (3, window_len), "y": float32 (3, window_len)}``,
        ``y`` rows P, S, Noise (ProbabilisticLabeller, gaussian of std ``sigma``), summing to 1 per sample.
    """
    config = config or PickingConfig()
    label_cols = label_columns_for(dataset, config.extra_pick_columns)
    window_cols = [c for c in label_cols if c in _unwrap(dataset).metadata.columns]
    margin = config.noise_margin if config.noise_margin is not None else int(round(5 * config.sigma))
    inner, mixed, elig = _usable_traces(dataset, config.window_len, window_cols, margin)
    p = float(config.noise_window_p)
    expected = elig.expected_noise_fraction(p)
    if p > 0 and expected < 0.5 * p:
        warnings.warn(
            f"noise windows: {expected:.1%} expected, {p:.0%} asked ({elig.report()})", UserWarning, stacklevel=2
        )

    augs: list[Any] = [NoiseOrPickWindow(window_cols, config.window_len, margin, p)]
    aug = config.augment if train else None
    if aug is not None:
        # demean first, so that noise scaled to the window's peak is not scaled to a DC offset
        augs.append(sbg.Normalize(demean_axis=-1))
        sup = _maybe(
            SuperimposeEvent(
                inner, {c: label_cols[c] for c in window_cols}, config.window_len, aug.superposition_scale
            ),
            aug.superposition_p,
        )
        if sup is not None:
            augs.append(sup)
        augs += _waveform_augmentations(aug)
    augs.append(config.normalize.build())
    if aug is not None:
        a = _maybe(RandomAmplitudeScale(aug.amplitude_scale_range), aug.amplitude_scale_p)
        if a is not None:
            augs.append(a)
    augs += [
        sbg.ChangeDtype(np.float32, "X"),
        sbg.ProbabilisticLabeller(
            label_columns=label_cols,
            model_labels=MODEL_LABELS,
            sigma=config.sigma,
            shape=config.label_shape,
            dim=0,
        ),
        sbg.ChangeDtype(np.float32, "y"),
    ]
    return _generator(inner, augs, mixed, elig)
