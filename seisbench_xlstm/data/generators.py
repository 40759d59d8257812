"""Window generators for pretraining and picking, built on ``seisbench.generate``.

Both generators are :class:`seisbench.generate.GenericGenerator` instances (usable directly as a
``torch.utils.data.Dataset``) whose augmentation pipeline is assembled from SeisBench's library blocks
(``RandomWindow``, ``WindowAroundSample``, ``OneOf``, ``GaussianNoise``, ``AddGap``, ``ChannelDropout``,
``Normalize``, ``ProbabilisticLabeller``, ``ChangeDtype``). Three blocks have no library equivalent and are
defined here: :class:`PreArrivalNoiseWindow` (pure-noise windows cut before the first pick),
:class:`SuperimposeEvent` (adds a second event with its picks) and :class:`RandomAmplitudeScale`.

Samples (model conventions: 100 Hz, ZNE, 4096 samples, channels-first, float32):

* pretraining: ``{"X": float32 (3, 4096)}``
* picking: ``{"X": float32 (3, 4096), "y": float32 (3, 4096)}`` with label rows P, S, Noise ("PSN");
  ``y`` sums to 1 over the three rows at every sample.

Normalisation (default, see :class:`NormalizeConfig`): ``seisbench.generate.Normalize(demean_axis=-1,
amp_norm_axis=-1, amp_norm_type="std")``, i.e. each channel is demeaned and then divided by its *own*
standard deviation (+1e-10). For one standard deviation over all three channels use
``NormalizeConfig(amp_norm_axis=(-2, -1))``. Inference (``annotate_batch_pre``) must do the same.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import seisbench.data as sbd
import seisbench.generate as sbg

from .phases import pick_columns

__all__ = [
    "NormalizeConfig",
    "AugmentationConfig",
    "PretrainConfig",
    "PickingConfig",
    "PreArrivalNoiseWindow",
    "SuperimposeEvent",
    "RandomAmplitudeScale",
    "Sequential",
    "pretraining_generator",
    "picking_generator",
    "label_columns_for",
    "MODEL_LABELS",
    "SUPERIMPOSED_P",
    "SUPERIMPOSED_S",
]

#: Order of the label rows in ``y``.
MODEL_LABELS = "PSN"
#: Metadata keys under which :class:`SuperimposeEvent` stores the added event's picks.
SUPERIMPOSED_P = "trace_superimposedP_arrival_sample"
SUPERIMPOSED_S = "trace_superimposedS_arrival_sample"


@dataclass
class NormalizeConfig:
    """Normalisation applied to every window (after waveform augmentations, before labels).

    Defaults: demean each channel, divide each channel by its standard deviation (``amp_norm_axis=-1``).
    ``enabled=False`` leaves raw counts.
    """

    enabled: bool = True
    demean_axis: int | tuple[int, ...] | None = -1
    detrend_axis: int | None = None
    amp_norm_axis: int | tuple[int, ...] | None = -1
    amp_norm_type: str = "std"
    eps: float = 1e-10

    def build(self) -> sbg.Normalize | None:
        if not self.enabled:
            return None
        return sbg.Normalize(
            demean_axis=self.demean_axis,
            detrend_axis=self.detrend_axis,
            amp_norm_axis=self.amp_norm_axis,
            amp_norm_type=self.amp_norm_type,
            eps=self.eps,
        )


@dataclass
class AugmentationConfig:
    """Probabilities and ranges of the training augmentations (set a probability to 0 to disable one).

    Order in the pipeline: demean -> superposition -> Gaussian noise -> gap -> channel dropout ->
    normalise -> amplitude scaling. Gaps and dropped channels are zeros in the raw trace (as gaps are in merged
    streams at inference); a pick inside a gap is removed from the labels.
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


class Sequential:
    """Apply several state-dict augmentations in order (so that ``sbg.OneOf`` can choose between chains)."""

    def __init__(self, augmentations: Sequence[Callable]):
        self.augmentations = list(augmentations)

    def __call__(self, state_dict):
        for aug in self.augmentations:
            aug(state_dict)

    def __str__(self):
        return "Sequential(" + ", ".join(str(a) for a in self.augmentations) + ")"


def _arrival_keys(metadata: dict) -> list[str]:
    return [k for k in metadata if k.endswith("_arrival_sample")]


def _first_pick(metadata: dict, columns: Sequence[str]) -> float:
    vals = []
    for col in columns:
        v = metadata.get(col)
        if v is None:
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if np.isfinite(v):
            vals.append(v)
    return min(vals) if vals else np.nan


class PreArrivalNoiseWindow:
    """Cut a pure-noise window of ``windowlen`` samples ending at least ``margin`` samples before the first pick.

    Traces without picks (noise traces) give a random window anywhere. When the trace has less than
    ``windowlen`` samples of pre-arrival noise, the available noise is taken and zero-padded at the end.
    All ``*_arrival_sample`` entries of the metadata are set to NaN, so the labeller marks only Noise.
    No SeisBench generator cuts windows relative to "before the first pick", hence this class.

    :param pick_columns: metadata keys that hold picks (sample units).
    """

    def __init__(self, pick_columns: Sequence[str], windowlen: int, margin: int, key: str = "X"):
        self.pick_columns = list(pick_columns)
        self.windowlen = int(windowlen)
        self.margin = int(margin)
        self.key = key

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        metadata = copy.copy(metadata)
        n = x.shape[-1]
        first = _first_pick(metadata, self.pick_columns)
        end = n if np.isnan(first) else int(min(n, np.floor(first) - self.margin))
        end = max(end, 0)
        if end >= self.windowlen:
            p0 = np.random.randint(0, end - self.windowlen + 1)
            window = x[..., p0 : p0 + self.windowlen]
        else:
            window = np.zeros(x.shape[:-1] + (self.windowlen,), dtype=x.dtype)
            window[..., :end] = x[..., :end]
        for key in _arrival_keys(metadata):
            metadata[key] = np.nan
        state_dict[self.key] = (np.array(window), metadata)

    def __str__(self):
        return f"PreArrivalNoiseWindow(windowlen={self.windowlen}, margin={self.margin})"


class RandomAmplitudeScale:
    """Multiply the window by a log-uniform random factor in ``scale`` (one factor, or one per channel)."""

    def __init__(self, scale: tuple[float, float] = (0.5, 2.0), per_channel: bool = False, key: str = "X"):
        if scale[0] <= 0 or scale[1] < scale[0]:
            raise ValueError(f"scale must be 0 < low <= high, got {scale}")
        self.scale = scale
        self.per_channel = per_channel
        self.key = key

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        shape = x.shape[:-1] + (1,) if self.per_channel else ()
        factor = np.exp(np.random.uniform(np.log(self.scale[0]), np.log(self.scale[1]), size=shape))
        state_dict[self.key] = ((x * factor).astype(x.dtype, copy=False), metadata)

    def __str__(self):
        return f"RandomAmplitudeScale(scale={self.scale}, per_channel={self.per_channel})"


class SuperimposeEvent:
    """Add a second, randomly chosen event window (with its picks) to the current window.

    The other trace is cut with the same library windowing as the picking windows (a random offset
    around one of its picks), demeaned, scaled to ``U(scale) * max|x - mean(x)|`` of the current window
    and added. Its earliest P and S (per :mod:`.phases`) are written to :data:`SUPERIMPOSED_P` /
    :data:`SUPERIMPOSED_S`, which the picking labeller maps to P and S. Windows that already are pure
    noise (no pick inside) are left unchanged, so noise stays noise.

    :param dataset: dataset to draw the second event from (only traces with a P or S pick are used).
    """

    def __init__(
        self,
        dataset,
        pick_map: dict[str, str],
        windowlen: int,
        scale: tuple[float, float] = (0.1, 1.0),
        key: str = "X",
    ):
        self.dataset = dataset
        self.pick_map = dict(pick_map)
        self.windowlen = int(windowlen)
        self.scale = scale
        self.key = key
        cols = [c for c in self.pick_map if c in dataset.metadata.columns]
        if cols:
            has_pick = dataset.metadata[cols].notna().any(axis=1).to_numpy()
            self.candidates = np.flatnonzero(has_pick)
        else:
            self.candidates = np.zeros(0, dtype=int)
        self._window = _pick_window(list(self.pick_map), self.windowlen)

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        if len(self.candidates) == 0:
            return
        first = _first_pick(metadata, list(self.pick_map))
        if np.isnan(first):
            return  # pure-noise window: keep it pure
        idx = int(self.candidates[np.random.randint(len(self.candidates))])
        other, other_meta = self.dataset.get_sample(idx)
        tmp = {"X": (np.asarray(other, dtype=np.float64), dict(other_meta))}
        self._window(tmp)
        w, wmeta = tmp["X"]
        w = w - w.mean(axis=-1, keepdims=True)
        peak = np.abs(w).max()
        if not np.isfinite(peak) or peak == 0:
            return
        base = np.abs(x - x.mean(axis=-1, keepdims=True)).max()
        if not np.isfinite(base) or base == 0:
            base = 1.0
        w = w / peak * base * np.random.uniform(*self.scale)
        metadata = copy.copy(metadata)
        for out_key, label in ((SUPERIMPOSED_P, "P"), (SUPERIMPOSED_S, "S")):
            cols = [c for c, lab in self.pick_map.items() if lab == label]
            metadata[out_key] = _first_pick(wmeta, cols)
        state_dict[self.key] = ((x + w).astype(x.dtype, copy=False), metadata)

    def __str__(self):
        return f"SuperimposeEvent(n_candidates={len(self.candidates)}, scale={self.scale})"


def _pick_window(columns: list[str], windowlen: int) -> Sequential:
    """Library windowing: a 2*windowlen span around a random pick, then a random windowlen cut of it.

    The pick lands uniformly anywhere in the output window (the SeisBench pick-benchmark recipe).
    Traces without picks get a random window from their start.
    """
    return Sequential(
        [
            sbg.WindowAroundSample(
                columns,
                samples_before=windowlen,
                windowlen=2 * windowlen,
                selection="random",
                strategy="variable",
            ),
            sbg.RandomWindow(windowlen=windowlen, strategy="pad"),
        ]
    )


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
        _maybe(sbg.AddGap(metadata_picks_in_gap_threshold=0), aug.gap_p),
        _maybe(sbg.ChannelDropout(check_meta_picks_in_gap=True), aug.channel_dropout_p),
    ]
    return [a for a in out if a is not None]


def pretraining_generator(dataset, config: PretrainConfig | None = None) -> sbg.GenericGenerator:
    """Generator of random windows for self-supervised pretraining.

    :param dataset: ``WaveformDataset``/``MultiWaveformDataset`` (or a :class:`~.mixing.MixedDataset`),
        opened at 100 Hz, ZNE, channels-first (see :func:`~.datasets.open_dataset`).
    :return: ``GenericGenerator``; ``gen[i]["X"]`` is float32 ``(3, window_len)`` from trace ``i``
        (a random window; traces shorter than ``window_len`` are zero-padded at a random side).
    """
    config = config or PretrainConfig()
    dataset = _unwrap(dataset)
    augs: list[Any] = [sbg.RandomWindow(windowlen=config.window_len, strategy="pad")]
    if config.augment is not None:
        # demean first, so that noise scaled to the window's peak is not scaled to a DC offset
        augs.append(sbg.Normalize(demean_axis=-1))
        augs += _waveform_augmentations(config.augment)
    norm = config.normalize.build()
    if norm is not None:
        augs.append(norm)
    if config.augment is not None:
        a = _maybe(RandomAmplitudeScale(config.augment.amplitude_scale_range), config.augment.amplitude_scale_p)
        if a is not None:
            augs.append(a)
    augs.append(sbg.ChangeDtype(np.float32, "X"))
    gen = sbg.GenericGenerator(dataset)
    gen.add_augmentations(augs)
    return gen


def picking_generator(
    dataset, config: PickingConfig | None = None, train: bool = True
) -> sbg.GenericGenerator:
    """Generator of labelled windows for phase picking.

    Each sample is, with probability ``1 - noise_window_p``, a ``window_len`` window containing one of
    the trace's picks at a uniformly random position (``WindowAroundSample`` + ``RandomWindow``), and
    otherwise a pure-noise window cut before the first pick (:class:`PreArrivalNoiseWindow`). Noise traces
    (no picks) give noise windows either way. Training adds the augmentations of ``config.augment``.

    :param dataset: ``WaveformDataset``/``MultiWaveformDataset``/:class:`~.mixing.MixedDataset` at 100 Hz,
        ZNE, channels-first.
    :param train: if False, no augmentation (windows, normalisation and labels only).
    :return: ``GenericGenerator``; ``gen[i]`` = ``{"X": float32 (3, window_len), "y": float32 (3, window_len)}``,
        ``y`` rows P, S, Noise (ProbabilisticLabeller, gaussian of std ``sigma``), summing to 1 per sample.
    """
    config = config or PickingConfig()
    dataset = _unwrap(dataset)
    label_cols = label_columns_for(dataset, config.extra_pick_columns)
    window_cols = [c for c in label_cols if c in dataset.metadata.columns]
    margin = config.noise_margin if config.noise_margin is not None else int(round(5 * config.sigma))

    pick_win = _pick_window(window_cols, config.window_len)
    noise_win = PreArrivalNoiseWindow(window_cols, config.window_len, margin)
    p = float(config.noise_window_p)
    if p <= 0:
        windowing = pick_win
    elif p >= 1:
        windowing = noise_win
    else:
        windowing = sbg.OneOf([pick_win, noise_win], probabilities=[1 - p, p])

    augs: list[Any] = [windowing]
    aug = config.augment if train else None
    if aug is not None:
        # demean first, so that noise scaled to the window's peak is not scaled to a DC offset
        augs.append(sbg.Normalize(demean_axis=-1))
        sup = _maybe(
            SuperimposeEvent(
                dataset, {c: label_cols[c] for c in window_cols}, config.window_len, aug.superposition_scale
            ),
            aug.superposition_p,
        )
        if sup is not None:
            augs.append(sup)
        augs += _waveform_augmentations(aug)
    norm = config.normalize.build()
    if norm is not None:
        augs.append(norm)
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
    gen = sbg.GenericGenerator(dataset)
    gen.add_augmentations(augs)
    return gen
