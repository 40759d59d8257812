"""Per-window predictions of any SeisBench picker on pick-benchmark targets (see :mod:`.targets`).

Each target window ``[start_sample, end_sample)`` is placed in the middle of one model input window of
``model.in_samples`` samples cut from the trace (SeisBench's ``SteeredGenerator`` + ``SteeredWindow``: moved
where the trace ends, zero-padded where the trace is shorter), so the model sees context on both sides as the
protocol allows. The model then runs exactly as in its own ``annotate``: ``annotate_batch_pre`` (its
normalisation), ``forward``, ``annotate_batch_post`` (output ``(batch, samples, labels)``) with no blinding.
Only the samples of the target window count (``window_borders``), as in the protocol:

* ``score_detection``: maximum of ``1 - noise`` (labels with ``N``: PhaseNet, the xLSTM pickers) or of the
  detection curve (``Detection``: EQTransformer);
* ``score_p_or_s``: maximum P probability divided by maximum S probability;
* ``p_sample_pred`` / ``s_sample_pred``: sample (in the trace) of the maximum P / S probability;
* ``p_peak`` / ``s_peak``: that maximum P / S probability (not used by the scores: task 3 takes the position of
  the maximum however low it is; kept to tell missed onsets from misplaced ones).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import seisbench.generate as sbg
import torch

__all__ = ["WindowPredictor", "predict_targets"]

KEYS = ("score_detection", "score_p_or_s", "p_offset", "s_offset", "p_peak", "s_peak")


class _IndexedSteeredGenerator(sbg.SteeredGenerator):
    """``SteeredGenerator`` that finds each trace by its row (``trace_idx``) instead of its name, so datasets
    whose trace names repeat across chunks or parts work too."""

    def _populate_state_dict(self, idx):
        control = self.metadata.iloc[idx].to_dict()
        return {"X": self.dataset.get_sample(int(control["trace_idx"])), "_control_": control}


class WindowPredictor:
    """Runs ``model`` on windows of ``(batch, channels, model.in_samples)`` in the dataset's component order and
    reduces its output to the protocol's four numbers per target window.

    :param model: a SeisBench ``WaveformModel`` with array output (one value per input sample)
    :param component_order: component order of the windows (the dataset's, e.g. ``"ZNE"``)
    """

    def __init__(self, model, component_order: str = "ZNE"):
        if getattr(model, "output_type", "array") != "array":
            raise ValueError(f"{type(model).__name__} gives point predictions; the benchmark needs array output")
        labels = list(model.labels)
        missing = [p for p in "PS" if p not in labels]
        if missing:
            raise ValueError(f"{type(model).__name__} has no output for {missing} (labels {labels})")
        order = getattr(model, "component_order", component_order)
        absent = [c for c in order if c not in component_order]
        if absent:
            raise ValueError(f"{type(model).__name__} reads components {order!r}; the data have {component_order!r}")
        self.model = model
        self.channels = [component_order.index(c) for c in order]
        self.p, self.s = labels.index("P"), labels.index("S")
        if "N" in labels:
            self.detection: Callable = lambda y: 1 - y[..., labels.index("N")]
        elif "Detection" in labels:
            self.detection = lambda y: y[..., labels.index("Detection")]
        else:
            raise ValueError(f"{type(model).__name__} has neither a noise nor a detection output (labels {labels})")

    @torch.no_grad()
    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Model output ``(batch, samples, labels)`` for raw windows ``(batch, channels, samples)``."""
        model = self.model
        x = x[:, self.channels].to(model.device, torch.float32)
        argdict = {"blinding": (0, 0)}
        y = model.annotate_batch_post(model(model.annotate_batch_pre(x, argdict)), None, argdict)
        if y.shape[1] != x.shape[-1]:
            raise ValueError(f"{type(model).__name__} returned {y.shape[1]} samples for {x.shape[-1]}")
        return y.float().cpu()

    def reduce(self, y: torch.Tensor, borders: np.ndarray) -> dict[str, np.ndarray]:
        """The four protocol numbers per window from outputs ``(batch, samples, labels)`` and target-window
        borders ``(batch, 2)`` (samples of the model window); sample positions relative to the border start."""
        det = self.detection(y)
        out = {k: np.full(len(y), np.nan) for k in KEYS}
        for i, (a, b) in enumerate(np.asarray(borders, dtype=int)):
            p, s = y[i, a:b, self.p].numpy(), y[i, a:b, self.s].numpy()
            if b <= a or not (np.isfinite(p).any() and np.isfinite(s).any()):
                continue
            out["score_detection"][i] = float(np.nanmax(det[i, a:b].numpy()))
            with np.errstate(divide="ignore", invalid="ignore"):
                out["score_p_or_s"][i] = np.nanmax(p) / np.nanmax(s)
            out["p_offset"][i] = float(np.nanargmax(p))
            out["s_offset"][i] = float(np.nanargmax(s))
            out["p_peak"][i] = float(np.nanmax(p))
            out["s_peak"][i] = float(np.nanmax(s))
        return out


def predict_targets(model, dataset, targets: pd.DataFrame, batch_size: int = 256) -> pd.DataFrame:
    """``targets`` with ``score_detection``, ``score_p_or_s``, ``p_sample_pred``, ``s_sample_pred``, ``p_peak`` and
    ``s_peak`` added.

    :param model: SeisBench picker at the dataset's sampling rate (on its device, in eval mode)
    :param dataset: the dataset the targets were made from (:func:`seisbench_xlstm.data.open_dataset`)
    :param targets: rows of :func:`.targets.task1_targets` or :func:`.targets.task23_targets`
    """
    rate = float(dataset.sampling_rate or np.nan)
    if not np.isclose(float(model.sampling_rate), rate):
        raise ValueError(f"{type(model).__name__} runs at {model.sampling_rate} Hz, the dataset at {rate} Hz: "
                         f"open the dataset at the model's rate")
    out = targets.reset_index(drop=True).copy()
    columns = {k: np.full(len(out), np.nan) for k in KEYS}
    if len(out):
        predictor = WindowPredictor(model, getattr(dataset, "component_order", "ZNE"))
        generator = _IndexedSteeredGenerator(dataset, out)
        generator.add_augmentations([sbg.SteeredWindow(windowlen=int(model.in_samples), strategy="pad"),
                                     sbg.ChangeDtype(np.float32)])
        loader = torch.utils.data.DataLoader(generator, batch_size=batch_size, shuffle=False, num_workers=0)
        was_training = model.training
        model.eval()
        k = 0
        try:
            for batch in loader:
                reduced = predictor.reduce(predictor.outputs(batch["X"]), batch["window_borders"].numpy())
                n = len(batch["X"])
                for key, values in reduced.items():
                    columns[key][k:k + n] = values
                k += n
        finally:
            model.train(was_training)
    out["score_detection"] = columns["score_detection"]
    out["score_p_or_s"] = columns["score_p_or_s"]
    out["p_sample_pred"] = out["start_sample"].to_numpy(dtype=float) + columns["p_offset"]
    out["s_sample_pred"] = out["start_sample"].to_numpy(dtype=float) + columns["s_offset"]
    out["p_peak"] = columns["p_peak"]
    out["s_peak"] = columns["s_peak"]
    return out
