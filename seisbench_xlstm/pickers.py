"""SeisBench phase pickers on the xLSTM backbones.

:class:`XLSTMSeqPicker` (deep sequential backbone) and :class:`XLSTMUNetPicker` (xLSTM U-Net) are
:class:`seisbench.models.WaveformModel` subclasses, used like :class:`seisbench.models.PhaseNet`::

    model = XLSTMSeqPicker.from_pretrained("...")     # or .load(path)
    annotations = model.annotate(stream)             # XLSTMSeqPicker_P / _S / _N traces
    picks = model.classify(stream).picks             # seisbench.util.PickList

Input: 4096-sample windows at 100 Hz, components ZNE. Output: per-sample softmax probabilities of P, S and
noise ("PSN"). Normalisation (``annotate_batch_pre``, the same as in training): each window and channel is
demeaned, then divided by its standard deviation (``norm="std"``) or absolute peak (``norm="peak"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import obspy
import seisbench.util as sbu
import torch
import torch.nn as nn
from seisbench.models import WaveformModel

from .backbones import build_backbone
from .kernels import AUTO

#: Folder of weights shipped inside the package, one subfolder per model class (lower-case class name).
PACKAGE_WEIGHTS_ROOT = Path(__file__).parent / "weights"

CITATION = (
    "seisbench-xlstm: bidirectional mLSTM phase pickers for SeisBench. "
    "xLSTM: Beck et al. (2024), xLSTM: Extended Long Short-Term Memory, arXiv:2405.04517. "
    "TFLA kernels: Beck et al. (2025), Tiled Flash Linear Attention, arXiv:2503.14376."
)


class WeightsNotFoundError(FileNotFoundError):
    """Raised when named weights are neither shipped with the package nor in the SeisBench cache."""


class CorruptWeightsError(ValueError):
    """Raised when a weights or metadata file cannot be read (truncated, corrupt, or of another model)."""


class _XLSTMPicker(WaveformModel):
    """Shared implementation of the xLSTM pickers; use :class:`XLSTMSeqPicker` or :class:`XLSTMUNetPicker`.

    .. document_args:: seisbench_xlstm.pickers _XLSTMPicker

    :param backbone_config: options of the backbone config (see :mod:`seisbench_xlstm.backbones`); unknown
        keys raise ``ValueError``.
    :param phases: output labels, in order; ``"PSN"`` (P, S, noise).
    :param sampling_rate: model sampling rate in Hz (input streams are resampled to it).
    :param norm: window normalisation, ``"std"`` or ``"peak"`` (after per-channel demeaning).
    :param in_samples: window length in samples (a multiple of the backbone's ``sample_multiple``).
    """

    backbone_name: str = ""

    _annotate_args = WaveformModel._annotate_args.copy()
    _annotate_args["*_threshold"] = ("Detection threshold for the provided phase", 0.3)
    _annotate_args["detection_threshold"] = (
        "Threshold on 1 - noise probability for detections (classify's detections)",
        0.3,
    )
    _annotate_args["blinding"] = (
        "Number of prediction samples to discard on each side of each window prediction",
        (256, 256),
    )
    # 512 is the least overlap that covers every sample with the default blinding; more overlap averages more
    # predictions per sample at proportionally more windows (benchmarks/results/annotate_*.md).
    _annotate_args["overlap"] = (_annotate_args["overlap"][0], 512)
    _annotate_args["nan_policy"] = (
        "What to do with NaN/inf samples: 'raise' (ValueError naming the traces) or 'gap' (cut them out and treat "
        "them like gaps in the record, following SeisBench's gap handling and the 'strict' argument)",
        "raise",
    )

    def __init__(
        self,
        backbone_config: dict | None = None,
        phases: str = "PSN",
        sampling_rate: float = 100,
        norm: str = "std",
        in_samples: int = 4096,
        **kwargs,
    ):
        if norm not in ("std", "peak"):
            raise ValueError(f"norm must be 'std' or 'peak', got {norm!r}")
        if sorted(phases) != sorted(set(phases)) or "N" not in phases:
            raise ValueError(f"phases must be distinct labels including 'N' for noise, got {phases!r}")
        kwargs.setdefault("component_order", "ZNE")
        super().__init__(
            citation=kwargs.pop("citation", CITATION),
            in_samples=in_samples,
            output_type="array",
            pred_sample=(0, in_samples),
            labels=phases,
            sampling_rate=sampling_rate,
            **kwargs,
        )
        self.norm = norm
        self.backbone = build_backbone(self.backbone_name, backbone_config)
        if in_samples % self.backbone.sample_multiple:
            raise ValueError(
                f"in_samples={in_samples} must be a multiple of {self.backbone.sample_multiple} for this backbone"
            )
        self.head = nn.Conv1d(self.backbone.out_channels, len(phases), 1)
        self.precision = AUTO

    # ------------------------------------------------------------------ run-time settings (never saved)
    def set_kernel(self, kernel: str) -> "_XLSTMPicker":
        """Selects the mLSTM kernel (``"auto"``: TFLA Triton on CUDA, native chunkwise on CPU)."""
        self.backbone.set_kernel(kernel)
        return self

    def set_precision(self, precision: str) -> "_XLSTMPicker":
        """Inference precision: ``"auto"`` (bf16 autocast on CUDA, fp32 elsewhere), ``"bf16"`` or ``"fp32"``."""
        if precision not in (AUTO, "bf16", "fp32"):
            raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
        self.precision = precision
        return self

    @property
    def kernel(self) -> str:
        return self.backbone.kernel

    def _autocast_dtype(self, device: torch.device):
        if self.precision == "fp32":
            return None
        if self.precision == "bf16" or device.type == "cuda":
            return torch.bfloat16
        return None

    # ------------------------------------------------------------------ network
    def forward(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """
        :param x: normalised waveforms ``(batch, 3, in_samples)``
        :param logits: return logits instead of softmax probabilities
        :return: ``(batch, len(phases), in_samples)``
        """
        dtype = self._autocast_dtype(x.device)
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            y = self.head(self.backbone(x))
        y = y.float()
        return y if logits else torch.softmax(y, dim=1)

    # ------------------------------------------------------------------ SeisBench annotate hooks
    def annotate_stream_pre(self, stream: obspy.Stream, argdict: dict[str, Any]) -> obspy.Stream:
        """Handles non-finite samples per ``nan_policy``, resamples and filters (SeisBench's default), and
        zero-pads instruments recorded for less than one window to one window (cut back in the output)."""
        policy = self._argdict_get_with_default(argdict, "nan_policy")
        if policy not in ("raise", "gap"):
            raise ValueError(f"nan_policy must be 'raise' or 'gap', got {policy!r}")
        bad = [tr.id for tr in stream if not np.all(np.isfinite(tr.data))]
        if bad:
            if policy == "raise":
                raise ValueError(
                    f"Traces with NaN or inf samples: {', '.join(sorted(set(bad)))}. Pass nan_policy='gap' to "
                    "cut these samples out and treat them as gaps (SeisBench's gap handling; see 'strict'), or clean the data "
                    "first."
                )
            for tr in [tr for tr in stream if tr.id in bad]:
                stream.remove(tr)
                masked = np.ma.masked_invalid(tr.data.astype(np.float64))
                piece = tr.copy()
                piece.data = masked
                stream += piece.split()
        stream = super().annotate_stream_pre(stream, argdict)
        half_sample = 0.5 / self.sampling_rate
        for key, (t0, t1) in self._short_instruments(stream).items():
            net, sta, loc = key.split(".")
            for tr in stream.select(network=net, station=sta, location=loc):
                if tr.stats.endtime > t1 - half_sample:  # the last record of each channel
                    end = t0 + (self.in_samples - 1) / self.sampling_rate
                    tr.trim(tr.stats.starttime, end, pad=True, fill_value=0)
        return stream

    def _short_instruments(self, stream: obspy.Stream) -> dict[str, tuple[obspy.UTCDateTime, obspy.UTCDateTime]]:
        """Time spans of the instruments (``net.sta.loc``) whose records are shorter than one window."""
        spans: dict[str, list] = {}
        for tr in stream:
            key = self._grouping.trace_id_without_component(tr)
            t0, t1 = spans.get(key, (tr.stats.starttime, tr.stats.endtime))
            spans[key] = (min(t0, tr.stats.starttime), max(t1, tr.stats.endtime))
        window_s = (self.in_samples - 1) / self.sampling_rate
        return {k: v for k, v in spans.items() if v[1] - v[0] < window_s}

    async def annotate_async(self, stream: obspy.Stream, copy: bool = True, **kwargs) -> obspy.Stream:
        """SeisBench's ``annotate_async``; instruments recorded for less than one window are zero-padded at the
        end to one window (in :meth:`annotate_stream_pre`) and their annotations cut back to the recorded span."""
        short = self._short_instruments(stream)
        annotations = await super().annotate_async(stream, copy=copy, **kwargs)
        for tr in annotations:
            span = short.get(self._grouping.trace_id_without_component(tr))
            if span is not None:
                tr.trim(*span)
        return annotations

    def annotate_batch_pre(self, batch: torch.Tensor, argdict: dict[str, Any]) -> torch.Tensor:
        """Per window and channel: demean, then divide by the std (or absolute peak). ``(batch, 3, samples)``."""
        return normalize_windows(batch, self.norm)

    def annotate_batch_post(self, batch: torch.Tensor, piggyback: Any, argdict: dict[str, Any]) -> torch.Tensor:
        """``(batch, labels, samples)`` to ``(batch, samples, labels)``, blinded samples set to NaN."""
        batch = batch.transpose(1, 2).contiguous()
        pre, post = argdict.get("blinding", self._annotate_args["blinding"][1])
        if pre > 0:
            batch[:, :pre] = np.nan
        if post > 0:
            batch[:, -post:] = np.nan
        return batch

    def classify_aggregate(self, annotations: obspy.Stream, argdict: dict[str, Any]) -> sbu.ClassifyOutput:
        """Picks (trigger on ``<phase>_threshold``, off at half of it) and detections (1 - noise probability).

        :return: ``ClassifyOutput`` with ``picks`` (:class:`seisbench.util.PickList`) and ``detections``
        """
        picks = sbu.PickList()
        for phase in self.labels:
            if phase == "N":
                continue
            threshold = argdict.get(f"{phase}_threshold", self._annotate_args["*_threshold"][1])
            picks += self.picks_from_annotations(
                annotations.select(channel=f"{self.name}_{phase}"), threshold, phase
            )
        detection_annotations = annotations.select(channel=f"{self.name}_N").copy()
        for trace in detection_annotations:
            trace.data = 1.0 - trace.data
        detections = self.detections_from_annotations(
            detection_annotations, self._argdict_get_with_default(argdict, "detection_threshold")
        )
        return sbu.ClassifyOutput(self.name, picks=sbu.PickList(sorted(picks)), detections=detections)

    # ------------------------------------------------------------------ saving and loading
    def get_model_args(self) -> dict[str, Any]:
        model_args = super().get_model_args()
        for key in ("citation", "in_samples", "output_type", "default_args", "pred_sample", "labels"):
            model_args.pop(key, None)
        model_args.update(
            backbone_config=self.backbone.config.to_dict(),
            phases=self.labels,
            sampling_rate=self.sampling_rate,
            norm=self.norm,
            in_samples=self.in_samples,
        )
        return model_args

    @classmethod
    def load(cls, path, version_str=None, **kwargs):
        """Loads weights saved with :meth:`save`; unreadable files raise :class:`CorruptWeightsError`."""
        path_json, path_pt = cls._get_weights_file_paths(path, version_str)
        for p in (path_json, path_pt):
            if not Path(p).is_file():
                raise WeightsNotFoundError(f"Weights file {p} does not exist.")
        try:
            with open(path_json) as f:
                json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorruptWeightsError(f"Metadata file {path_json} is not valid JSON ({e}).") from e
        kwargs.setdefault("map_location", "cpu")
        kwargs.setdefault("weights_only", True)
        try:
            return super().load(path, version_str=version_str, **kwargs)
        except (RuntimeError, EOFError, OSError) as e:
            # torch raises RuntimeError for truncated archives and for state dicts of another architecture.
            raise CorruptWeightsError(
                f"Could not load {cls.__name__} weights from {path_pt} with metadata {path_json}: {e}"
            ) from e
        except Exception as e:  # unpickling errors of non-tensor content
            if type(e).__name__ == "UnpicklingError":
                raise CorruptWeightsError(f"Weights file {path_pt} is not a PyTorch state dict: {e}") from e
            raise

    @classmethod
    def _weight_dirs(cls) -> list[Path]:
        return [PACKAGE_WEIGHTS_ROOT / cls._name_internal().lower(), cls._model_path()]

    @classmethod
    def list_pretrained(cls, details: bool = False, remote: bool = False):
        """Names of the weights available offline (shipped with the package or in ``SEISBENCH_CACHE_ROOT``).

        ``remote`` is accepted for compatibility and ignored: this package never contacts a remote repository.
        """
        names = {}
        for folder in cls._weight_dirs():
            if folder.is_dir():
                for f in folder.iterdir():
                    name, ftype, _ = cls._parse_weight_filename(f)
                    if name is not None and ftype == "json":
                        names.setdefault(name, None)
        if not details:
            return sorted(names)
        return {name: cls._find_weights(name, "latest")[0].get("docstring") for name in sorted(names)}

    @classmethod
    def _find_weights(cls, name: str, version_str: str) -> tuple[dict, Path, str | None]:
        """Locates ``name`` in the weight folders; returns (metadata, path stem, version suffix or None)."""
        looked = []
        for folder in cls._weight_dirs():
            looked.append(str(folder))
            if not folder.is_dir():
                continue
            files = [f.name for f in folder.iterdir()]
            versions = cls._get_versions_from_files(name, files)
            if f"{name}.json" in files:
                versions.append("")
            if version_str != "latest":
                versions = [v for v in versions if v == version_str]
            if not versions:
                continue
            from packaging import version as pversion

            best = max(versions, key=lambda v: pversion.parse(v or "0"))
            suffix = best or None
            path_json, _ = cls._get_weights_file_paths(folder / name, suffix)
            try:
                metadata = json.loads(path_json.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CorruptWeightsError(f"Metadata file {path_json} is not valid JSON ({e}).") from e
            return metadata, folder / name, suffix
        available = cls.list_pretrained()
        raise WeightsNotFoundError(
            f"No weights named {name!r} (version {version_str}) for {cls.__name__}. Looked in: {', '.join(looked)}. "
            f"Available offline: {available or 'none'}. seisbench-xlstm never downloads weights: copy "
            f"'{name}.json.v<version>' and '{name}.pt.v<version>' into {cls._model_path()} (SEISBENCH_CACHE_ROOT), "
            f"or load a saved model with {cls.__name__}.load(path)."
        )

    @classmethod
    def from_pretrained(cls, name, version_str="latest", update=False, force=False, wait_for_file=False):
        """Loads named weights offline, from the package's ``weights/`` folder or ``SEISBENCH_CACHE_ROOT``.

        Never contacts the network; unknown names raise :class:`WeightsNotFoundError` at once, saying where
        weights were looked for and how to provide them. ``update``, ``force`` and ``wait_for_file`` are
        accepted for SeisBench compatibility; ``update=True`` raises, since nothing can be downloaded.
        """
        if update:
            raise ValueError("seisbench-xlstm weights are not downloaded; update=True is not supported.")
        _, stem, suffix = cls._find_weights(name, version_str)
        return cls.load(stem, version_str=suffix)


def normalize_windows(batch: torch.Tensor, norm: str = "std", eps: float = 1e-10) -> torch.Tensor:
    """Per-channel demeaning and std (or peak) scaling of ``(batch, channels, samples)`` windows.

    Matches ``seisbench.generate.Normalize(demean_axis=-1, amp_norm_axis=-1, amp_norm_type="std")``, the data
    layer's default for training (``seisbench_xlstm.data.NormalizeConfig``). All-zero channels stay zero.
    """
    batch = batch - batch.mean(dim=-1, keepdim=True)
    if norm == "std":
        scale = batch.std(dim=-1, keepdim=True, correction=0)  # population std, as numpy/seisbench.generate
    else:
        scale = batch.abs().amax(dim=-1, keepdim=True)
    return batch / (scale + eps)


class XLSTMSeqPicker(_XLSTMPicker):
    """Phase picker on the deep sequential bidirectional mLSTM backbone (24 layers, d_model 176).

    .. document_args:: seisbench_xlstm XLSTMSeqPicker
    """

    backbone_name = "sequential"


class XLSTMUNetPicker(_XLSTMPicker):
    """Phase picker on the xLSTM U-Net backbone (token rates 1024/256/64 for a 4096-sample window).

    .. document_args:: seisbench_xlstm XLSTMUNetPicker
    """

    backbone_name = "unet"


PICKERS = {"sequential": XLSTMSeqPicker, "unet": XLSTMUNetPicker}



def load_picker(weights: str | Path, backbone: str | None = None) -> _XLSTMPicker:
    """Loads a picker from a saved path (``<path>.json`` + ``<path>.pt``, as written by ``save``) or by name.

    :param weights: path stem of saved weights, or the name of offline pretrained weights
    :param backbone: ``"sequential"`` or ``"unet"``; needed for names, detected from the metadata for paths
    """
    stem = Path(weights)
    json_path = stem.with_name(stem.name + ".json")
    if json_path.is_file() or stem.suffix == ".json":
        if stem.suffix == ".json":
            stem, json_path = stem.with_suffix(""), stem
        try:
            config = json.loads(json_path.read_text()).get("model_args", {}).get("backbone_config", {})
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorruptWeightsError(f"Metadata file {json_path} is not valid JSON ({e}).") from e
        detected = "unet" if "dims" in config else "sequential"
        if backbone is not None and backbone != detected:
            raise ValueError(f"{json_path} holds a {detected!r} picker, not {backbone!r}.")
        return PICKERS[detected].load(stem)
    if backbone is None:
        if any(sep in str(weights) for sep in ("/", "\\")) or stem.suffix in (".pt", ".json"):
            raise WeightsNotFoundError(f"No saved model at {weights}: expected {json_path} and {stem}.pt.")
        raise ValueError(f"Pass the backbone ('sequential' or 'unet') to load pretrained weights {weights!r}.")
    if backbone not in PICKERS:
        raise ValueError(f"Unknown backbone {backbone!r}. Available: {sorted(PICKERS)}.")
    return PICKERS[backbone].from_pretrained(str(weights))
