"""SeisBench phase pickers on the xLSTM backbones.

:class:`XLSTMSeqPicker` (deep sequential backbone) and :class:`XLSTMUNetPicker` (xLSTM U-Net) are
:class:`seisbench.models.WaveformModel` subclasses, used like :class:`seisbench.models.PhaseNet`::

    model = XLSTMSeqPicker.from_pretrained("...")     # or .load(path)
    annotations = model.annotate(stream)             # XLSTMSeqPicker_P / _S / _N traces
    picks = model.classify(stream).picks             # seisbench.util.PickList

Input: 4096-sample windows at 100 Hz, components ZNE. Output: per-sample softmax probabilities of P, S and
noise ("PSN"). Each gap-free segment is demeaned before gaps and padding are zero-filled, and each record is
annotated to its first and last sample (:mod:`seisbench_xlstm.records`). Normalisation (``annotate_batch_pre``,
the same as in training): each window and channel is demeaned, then divided by its standard deviation
(``norm="std"``) or absolute peak (``norm="peak"``).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import numpy as np
import obspy
import seisbench.util as sbu
import torch
import torch.nn as nn
from seisbench.models import WaveformModel

from .annotate_args import picker_annotate_args, validate_annotate_args
from .backbones import BACKBONES, build_backbone
from .kernels import AUTO
from .records import (
    bridge_gaps,
    check_components,
    data_spans,
    demean_segments,
    headers_copy,
    keep_spans,
    pad_short_records,
    split_at_gaps,
)
from .weight_lookup import CorruptWeightsError, OfflineWeightsMixin, WeightsNotFoundError, _read_metadata

CITATION = (
    "seisbench-xlstm: bidirectional mLSTM phase pickers for SeisBench. "
    "xLSTM: Beck et al. (2024), xLSTM: Extended Long Short-Term Memory, arXiv:2405.04517. "
    "TFLA kernels: Beck et al. (2025), Tiled Flash Linear Attention, arXiv:2503.14376."
)

#: Default output labels: P, S and noise.
DEFAULT_PHASES = "PSN"

#: ``annotate`` converts each instrument's traces to one array (SeisBench's ``stream_to_array``) in a worker thread,
#: while the model predicts the windows of the instruments before it. SeisBench converts every instrument before
#: the first prediction. False: SeisBench's order (a benchmark switch).
CONVERT_IN_THREADS = True

#: Batches ``annotate`` gives the model at a time, each in a worker thread: with 2 the next batch is gathered,
#: converted and copied to the device while the model runs on the one before (SeisBench: 1, one after the other).
PREDICTIONS_IN_FLIGHT = 2


#: Errors raised by the pipeline steps of the annotate call in progress (one list per call, via the context).
_PIPELINE_ERRORS: contextvars.ContextVar[list | None] = contextvars.ContextVar("pipeline_errors", default=None)


def _reported(method):
    """Records an exception of a SeisBench pipeline step in the current call's error list, then re-raises it."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            errors = _PIPELINE_ERRORS.get()
            if errors is not None:
                errors.append(e)
            raise

    return wrapper


async def _raise_pipeline_errors(coro, poll_s: float = 0.1):
    """Awaits ``coro`` (SeisBench's annotate pipeline), raising the first error of any of its steps.

    SeisBench's pipeline runs its steps in asyncio tasks connected by queues; when a step fails (a model error,
    out of memory), the task ends and its consumer waits forever on the queue. The steps are wrapped with
    :func:`_reported`, which puts their errors in a list that this coroutine watches.
    """
    errors: list = []
    token = _PIPELINE_ERRORS.set(errors)
    try:
        main = asyncio.ensure_future(coro)  # the task and the tasks it starts inherit the list through the context
    finally:
        _PIPELINE_ERRORS.reset(token)
    try:
        while True:
            done, _ = await asyncio.wait({main}, timeout=poll_s)
            if done:
                return main.result()
            if errors:
                raise errors[0]
    finally:
        if not main.done():
            main.cancel()


class _XLSTMPicker(OfflineWeightsMixin, WaveformModel):
    """Shared implementation of the xLSTM pickers; use :class:`XLSTMSeqPicker` or :class:`XLSTMUNetPicker`.

    .. document_args:: seisbench_xlstm.pickers _XLSTMPicker

    :param backbone_config: options of the backbone config (see :mod:`seisbench_xlstm.backbones`); unknown
        keys raise ``ValueError``.
    :param phases: output labels, in order; ``"PSN"`` (P, S, noise), also for ``None``.
    :param sampling_rate: model sampling rate in Hz (input streams are resampled to it).
    :param norm: window normalisation, ``"std"`` or ``"peak"`` (after per-channel demeaning).
    :param in_samples: window length in samples (a multiple of the backbone's ``sample_multiple``).
    """

    backbone_name: str = ""

    _annotate_args = picker_annotate_args()
    #: WaveformModel arguments that saved model_args may hold besides the constructor's own.
    _passthrough_model_args = (
        "component_order", "filter_args", "filter_kwargs", "grouping", "citation", "default_args",
    )

    def __init__(
        self,
        backbone_config: dict | None = None,
        phases: str | None = DEFAULT_PHASES,
        sampling_rate: float = 100,
        norm: str = "std",
        in_samples: int = 4096,
        **kwargs,
    ):
        if phases is None:
            phases = DEFAULT_PHASES
        if norm not in ("std", "peak"):
            raise ValueError(f"norm must be 'std' or 'peak', got {norm!r}")
        if sorted(phases) != sorted(set(phases)) or "N" not in phases:
            raise ValueError(f"phases must be distinct labels including 'N' for noise, got {phases!r}")
        unknown = sorted(set(kwargs) - set(self._passthrough_model_args))
        if unknown:
            raise TypeError(f"Unknown argument(s) {unknown}. Valid: {sorted(self._model_arg_names())}.")
        if kwargs.get("grouping", "instrument") != "instrument":
            raise ValueError(
                f"The pickers annotate per instrument: grouping must be 'instrument', got {kwargs['grouping']!r}."
            )
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
        if self.default_args:
            self.check_annotate_args(self.default_args)

    # ------------------------------------------------------------------ run-time settings (never saved)
    def set_kernel(self, kernel: str) -> "_XLSTMPicker":
        """Selects the mLSTM kernel (``"auto"``: Triton kernels on CUDA, chosen per call by
        :func:`seisbench_xlstm.kernels.resolve_kernel`; native chunkwise on CPU)."""
        self.backbone.set_kernel(kernel)
        return self

    def set_compile(self, enabled: bool = True) -> "_XLSTMPicker":
        """Runs the mLSTM layers through ``torch.compile`` (run-time, never saved; see
        :meth:`~seisbench_xlstm.backbones.SequentialBackbone.set_compile`): worth it for long GPU runs, since
        each new batch shape compiles first (tens of seconds)."""
        self.backbone.set_compile(enabled)
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

    # ------------------------------------------------------------------ arguments
    def check_annotate_args(self, argdict: dict[str, Any]) -> None:
        """Raises ``ValueError`` for unknown or invalid annotate/classify arguments (see :mod:`.annotate_args`)."""
        validate_annotate_args(argdict, self._annotate_args, self.in_samples, self.labels, self._stack_options)

    def _verify_argdict(self, argdict: dict[str, Any]) -> None:
        # SeisBench only logs unknown arguments; here they raise, as do invalid values.
        self.check_annotate_args({**self.default_args, **argdict})

    def _check_default_args(self, default_args: dict[str, Any]) -> None:
        self.check_annotate_args(default_args)

    # ------------------------------------------------------------------ SeisBench annotate hooks
    async def annotate_async(self, stream: obspy.Stream, copy: bool = True, **kwargs) -> obspy.Stream:
        """SeisBench's ``annotate_async``, with arguments checked first and the stream's gaps, components and
        edges handled as :mod:`seisbench_xlstm.records` describes; annotations only where there is data.

        Any error inside SeisBench's asynchronous pipeline is raised instead of leaving the call waiting.
        """
        argdict = {**self.default_args, **kwargs}
        self.check_annotate_args(argdict)
        if copy:
            stream = headers_copy(stream)  # the data are not copied: no step writes into the caller's arrays
        if not self._argdict_get_with_default(argdict, "prepared"):
            stream = split_at_gaps(stream, self._argdict_get_with_default(argdict, "nan_policy"))
            stream = check_components(
                stream,
                self.component_order,
                flexible=self._argdict_get_with_default(argdict, "flexible_horizontal_components"),
                strict=self._argdict_get_with_default(argdict, "strict"),
            )
            # Conflicting overlapping records are dropped on the raw data, before demeaning could hide a
            # conflict of a constant offset (SeisBench checks again later, after annotate_stream_pre).
            stream = self.sanitize_mismatching_overlapping_records(stream)
        spans = data_spans(stream)
        annotations = await _raise_pipeline_errors(super().annotate_async(stream, copy=False, **kwargs))
        return keep_spans(annotations, spans)

    def annotate_stream_pre(self, stream: obspy.Stream, argdict: dict[str, Any]) -> obspy.Stream:
        """In place: splits traces at masked samples, and with ``prepared=True`` also at (``nan_policy="gap"``)
        non-finite ones (``annotate`` checked the others before SeisBench's merge), demeans every gap-free segment,
        filters and resamples (SeisBench's default), bridges gaps shorter than one window with zeros and zero-pads
        records shorter than one window. With ``prepared=True`` no demeaning, filtering or resampling."""
        prepared = self._argdict_get_with_default(argdict, "prepared")
        if prepared or any(np.ma.isMaskedArray(tr.data) for tr in stream):  # annotate_async split the others
            stream.traces = split_at_gaps(stream, self._argdict_get_with_default(argdict, "nan_policy")).traces
        if not prepared:
            demean_segments(stream)
            super().annotate_stream_pre(stream, argdict)
        bridge_gaps(stream, self.in_samples)
        pad_short_records(stream, self.in_samples)
        return stream

    def annotate_batch_pre(self, batch: torch.Tensor, argdict: dict[str, Any]) -> torch.Tensor:
        """Per window and channel: demean, then divide by the std (or absolute peak). ``(batch, 3, samples)``."""
        return normalize_windows(batch, self.norm)

    def annotate_batch_post(self, batch: torch.Tensor, piggyback: Any, argdict: dict[str, Any]) -> torch.Tensor:
        """``(batch, labels, samples)`` to ``(batch, samples, labels)``; blinding comes at stacking."""
        return batch.transpose(1, 2).contiguous()

    def _blind(self, predictions: list, argdict: dict[str, Any]) -> None:
        """Sets the blinded samples of each window prediction ``(samples, labels)`` to NaN, except the outer edge
        of the first and the last window of the record, so that a record is annotated to its first and last
        sample."""
        pre, post = self._argdict_get_with_default(argdict, "blinding")
        first = min(p.window_offset for p in predictions)
        last = max(p.window_offset for p in predictions)
        for p in predictions:
            if pre > 0 and p.window_offset != first:
                p.data[:pre] = np.nan
            if post > 0 and p.window_offset != last:
                p.data[-post:] = np.nan

    @_reported
    def _stack_predictions_array_ext(self, predictions, argdict):
        self._blind(predictions, argdict)
        return super()._stack_predictions_array_ext(predictions, argdict)

    @_reported
    def _stack_predictions_array(self, predictions, argdict):
        self._blind(predictions, argdict)
        return super()._stack_predictions_array(predictions, argdict)

    async def _iter_groups(self, traces, argdict):
        """The instruments' arrays, in order, each converted in a worker thread (:data:`CONVERT_IN_THREADS`): the
        next instrument's conversion overlaps the prediction of the windows already cut."""
        if not CONVERT_IN_THREADS:
            async for group in super()._iter_groups(traces, argdict):
                yield group
            return
        for stream in traces:
            yield await asyncio.to_thread(self.stream_to_array, stream, argdict)

    async def _iter_predictions(self, traces, argdict):
        """The predictions of the windows, handed on per record (``key``) once all its windows are predicted, with
        up to :data:`PREDICTIONS_IN_FLIGHT` batches predicted at a time in worker threads, in order."""
        if PREDICTIONS_IN_FLIGHT <= 1:
            async for complete in super()._iter_predictions(traces, argdict):
                yield complete
            return
        by_record: dict[tuple, list] = defaultdict(list)
        in_flight: deque = deque()

        def complete_records(predictions):
            for p in predictions:
                by_record[p.key, p.n_windows].append(p)
            for record in [r for r, got in by_record.items() if len(got) == r[1]]:
                yield by_record.pop(record)

        try:
            async for batch in traces:
                in_flight.append(asyncio.ensure_future(asyncio.to_thread(self._predict_windows, batch,
                                                                         argdict=argdict)))
                if len(in_flight) >= PREDICTIONS_IN_FLIGHT:
                    for complete in complete_records(await in_flight.popleft()):
                        yield complete
            while in_flight:
                for complete in complete_records(await in_flight.popleft()):
                    yield complete
        finally:  # after an error: the batches still running are not waited for
            for future in in_flight:
                future.cancel()

    # The other steps SeisBench runs in asyncio tasks, wrapped so that their errors are raised (see _reported).
    @_reported
    def stream_to_array(self, traces, argdict):
        return super().stream_to_array(traces, argdict)

    @_reported
    def _cut_fragments_array(self, group, argdict):
        return super()._cut_fragments_array(group, argdict)

    @_reported
    def _predict_windows(self, segments, argdict):
        return super()._predict_windows(segments, argdict)

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

    # ------------------------------------------------------------------ saving
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
    def _architecture_hint(cls, model_args: dict) -> str:
        config = model_args.get("backbone_config") or {}
        if not isinstance(config, dict):
            return ""
        for name, backbone in BACKBONES.items():
            fields = {f.name for f in dataclasses.fields(backbone.config_class)}
            if name != cls.backbone_name and set(config) <= fields and not set(config) <= cls._config_fields():
                return f" (its backbone_config is that of {PICKERS[name].__name__})"
        return ""

    @classmethod
    def _config_fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(BACKBONES[cls.backbone_name].config_class)}


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

#: The picker that ships with the package (``seisbench_xlstm/weights/``): backbone and weights name. The README and
#: ``seisbench-xlstm pick`` use it when no weights are given; its docstring says what it was trained on.
SHIPPED_PICKER = ("unet", "ncedc_dfdp")


def load_picker(weights: str | Path, backbone: str | None = None) -> _XLSTMPicker:
    """Loads a picker from saved files or by name.

    :param weights: a saved model (``PATH`` for ``PATH.json`` + ``PATH.pt`` as written by ``save``, or either file
        itself), or the name of offline pretrained weights
    :param backbone: ``"sequential"`` or ``"unet"``; detected from the metadata for paths, and for names held by
        one picker class only
    """
    path = Path(weights)
    stem = path.with_suffix("") if path.suffix in (".pt", ".json") else path
    json_path = stem.with_name(stem.name + ".json")
    if json_path.is_file():
        config = (_read_metadata(json_path).get("model_args") or {}).get("backbone_config") or {}
        detected = "unet" if isinstance(config, dict) and "dims" in config else "sequential"
        if backbone is not None and backbone != detected:
            raise CorruptWeightsError(f"{json_path} holds a {detected!r} picker, not {backbone!r}.")
        return PICKERS[detected].load(stem)
    if backbone is None:
        if any(sep in str(weights) for sep in ("/", "\\")) or path.suffix in (".pt", ".json") or path.exists():
            raise WeightsNotFoundError(f"No saved model at {weights}: expected {json_path} and {stem}.pt.")
        offline = {b: cls.list_pretrained() for b, cls in PICKERS.items()}
        holders = [b for b, names in offline.items() if str(weights) in names]
        if len(holders) != 1:
            found = "both pickers have" if holders else "no picker has"
            raise ValueError(f"{found} offline weights named {weights!r}: pass the backbone ('sequential' or "
                             f"'unet'). Offline weights: " + ", ".join(
                                 f"{b}: {names or 'none'}" for b, names in offline.items()) + ".")
        backbone = holders[0]
    if backbone not in PICKERS:
        raise ValueError(f"Unknown backbone {backbone!r}. Available: {sorted(PICKERS)}.")
    return PICKERS[backbone].from_pretrained(str(weights))
