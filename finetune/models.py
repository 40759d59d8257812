"""The models a fine-tuning run trains, with their targets, losses and parameter groups.

* ``xlstm_seq`` / ``xlstm_unet``: :class:`~seisbench_xlstm.XLSTMSeqPicker` / ``XLSTMUNetPicker`` (4096 samples,
  per-channel std normalisation), from a pretrained-backbone export (the format of ``pretrain/export.py``, read
  here with ``torch.load(weights_only=True)`` and the library API) or from scratch. Loss: cross-entropy of the
  softmax P/S/noise output against the soft ProbabilisticLabeller targets.
* ``phasenet``: ``seisbench.models.PhaseNet(phases="PSN", norm="std")`` (3001 samples), the same loss. Its
  annotate divides by the sample std (ddof 1), training by the population std: a factor 1.00017.
* ``eqtransformer``: ``seisbench.models.EQTransformer(in_samples=6000, phases="PS", norm="peak")``: per-channel
  peak normalisation (the form of SeisBench's EQTransformer preprocessing that the data layer reproduces; its
  ``norm="std"`` divides all channels by one std), with annotate's 6-sample cosine taper applied to the training
  windows too. Loss: binary cross-entropy of the detection, P and S outputs, weighted 0.05 / 0.40 / 0.55 as in
  Mousavi et al. (2020); detection targets from :class:`EventDetectionTarget`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import seisbench.models as sbm
import torch
import torch.nn as nn
import torch.nn.functional as F

from seisbench_xlstm import PICKERS

__all__ = ["ArchSpec", "ARCH_SPECS", "BACKBONE_FORMAT", "build_model", "read_backbone_export", "loss_fn",
           "parameter_groups", "probabilities", "EventDetectionTarget", "eqt_taper"]

#: ``format`` field of a pretrained-backbone export (``pretrain/export.py``).
BACKBONE_FORMAT = "seisbench_xlstm.pretrained_backbone"


@dataclass(frozen=True)
class ArchSpec:
    """:ivar window_len: samples per window; :ivar norm: data-layer normalisation (``std``/``peak``);
    :ivar backbone: library backbone name (xLSTM pickers) or None; :ivar model_class: the class of the exported
    weights, in ``seisbench_xlstm`` or ``seisbench.models`` (what evaluation scripts load them with)"""

    window_len: int
    norm: str
    backbone: str | None
    model_class: str


ARCH_SPECS = {
    "xlstm_seq": ArchSpec(4096, "std", "sequential", "XLSTMSeqPicker"),
    "xlstm_unet": ArchSpec(4096, "std", "unet", "XLSTMUNetPicker"),
    "phasenet": ArchSpec(3001, "std", None, "PhaseNet"),
    "eqtransformer": ArchSpec(6000, "peak", None, "EQTransformer"),
}


def read_backbone_export(path: str) -> dict:
    """A pretrained-backbone export (``torch.save`` of a dict; see ``pretrain/export.py``), checked."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != BACKBONE_FORMAT:
        raise ValueError(f"{path} is not a pretrained-backbone export (expected format {BACKBONE_FORMAT!r})")
    for key in ("backbone", "config", "state_dict"):
        if key not in payload:
            raise ValueError(f"{path}: pretrained-backbone export without {key!r}")
    return payload


def build_model(arch: str, pretrained: str | None = None, backbone: dict | None = None) -> tuple[nn.Module, dict]:
    """The model of ``arch`` and a description of its initialisation (for the weights' docstring).

    :param pretrained: backbone export for the xLSTM pickers (its backbone kind must match ``arch``)
    :param backbone: backbone config values for a picker from scratch
    """
    spec = ARCH_SPECS[arch]
    if arch == "phasenet":
        return sbm.PhaseNet(phases="PSN", norm="std"), {"init": "random"}
    if arch == "eqtransformer":
        return sbm.EQTransformer(in_samples=6000, phases="PS", norm="peak"), {"init": "random"}
    cls = PICKERS[spec.backbone]
    if pretrained:
        payload = read_backbone_export(pretrained)
        if payload["backbone"] != spec.backbone:
            raise ValueError(
                f"{pretrained} holds a {payload['backbone']!r} backbone; model.arch={arch} needs {spec.backbone!r} "
                f"(use model.arch={'xlstm_seq' if payload['backbone'] == 'sequential' else 'xlstm_unet'})"
            )
        if backbone:
            raise ValueError("model.backbone values are for pickers from scratch; the export fixes the backbone")
        model = cls(backbone_config=payload["config"], norm=spec.norm)
        model.backbone.load_state_dict(payload["state_dict"])
        info = {"init": "pretrained", "export": str(pretrained), "recipe": payload.get("recipe"),
                "global_step": payload.get("global_step")}
        return model, info
    return cls(backbone_config=dict(backbone or {}) or None, norm=spec.norm), {"init": "random"}


def parameter_groups(model: nn.Module, arch: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(backbone, head)`` parameters: for the xLSTM pickers the backbone's stem and mLSTM layers are the
    backbone (frozen first, lower learning rate), its sample decoder and the picking head the head; the SeisBench
    architectures have no backbone (everything is head)."""
    if ARCH_SPECS[arch].backbone is None:
        return [], [p for p in model.parameters()]
    backbone, head = [], []
    for name, p in model.named_parameters():
        (head if name.startswith(("backbone.decoder.", "head.")) else backbone).append(p)
    return backbone, head


def eqt_taper(x: torch.Tensor) -> torch.Tensor:
    """EQTransformer's annotate taper (6 samples of a cosine at each window end) on ``(batch, channels, samples)``."""
    tap = 0.5 * (1 + torch.cos(torch.linspace(np.pi, 2 * np.pi, 6, device=x.device, dtype=x.dtype)))
    x = x.clone()
    x[..., :6] *= tap
    x[..., -6:] *= tap.flip(dims=(0,))
    return x


def _soft_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over batch and samples of ``-sum_c y_c log softmax(logits)_c``; ``(batch, classes, samples)``."""
    return -(y * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


#: EQTransformer loss weights of detection, P and S (Mousavi et al. 2020).
EQT_WEIGHTS = (0.05, 0.40, 0.55)


def loss_fn(model: nn.Module, arch: str, batch: dict) -> torch.Tensor:
    """Training loss of ``model`` on a batch ``{"X": (B, 3, W), "y": (B, 3, W) rows P/S/Noise, ["detections":
    (B, 1, W)]}``."""
    x, y = batch["X"], batch["y"]
    if arch == "eqtransformer":
        det, p, s = model(eqt_taper(x), logits=True)
        targets = (batch["detections"][:, 0], y[:, 0], y[:, 1])
        return sum(w * F.binary_cross_entropy_with_logits(out.float(), t.float())
                   for w, out, t in zip(EQT_WEIGHTS, (det, p, s), targets))
    return _soft_cross_entropy(model(x, logits=True), y)


def probabilities(model: nn.Module, arch: str, x: torch.Tensor) -> torch.Tensor:
    """P and S probabilities ``(B, 2, W)`` of normalised windows (for the export precision check)."""
    if arch == "eqtransformer":
        _, p, s = model(eqt_taper(x))
        return torch.stack([p, s], dim=1).float()
    out = model(x).float()
    labels = list(model.labels)
    return out[:, [labels.index("P"), labels.index("S")]]


class EventDetectionTarget:
    """EQTransformer's detection target as a state-dict augmentation (``state_dict["detections"]``, ``(1, W)``).

    Every P pick of the window's metadata (in or outside the window) with an S pick after it and before the
    next P marks an event from P to ``S + factor * (S - P)`` (Mousavi et al. 2020), clipped to the window. Unlike
    ``seisbench.generate.DetectionLabeller`` (first P and first S only), a window with several events gets all of
    them (the pseudo-labelled continuous chunks hold several).
    """

    def __init__(self, columns: dict[str, str], factor: float = 1.4, key: str = "X"):
        self.columns = dict(columns)
        self.factor = float(factor)
        self.key = key

    def _picks(self, metadata: dict, phase: str) -> list[float]:
        out = []
        for col, ph in self.columns.items():
            if ph != phase or col not in metadata:
                continue
            try:
                v = float(metadata[col])
            except (TypeError, ValueError):
                continue
            if math.isfinite(v):
                out.append(v)
        return sorted(out)

    def __call__(self, state_dict):
        x, metadata = state_dict[self.key]
        n = x.shape[-1]
        target = np.zeros((1, n), dtype=np.float32)
        ps, ss = self._picks(metadata, "P"), self._picks(metadata, "S")
        for k, p in enumerate(ps):
            nxt = ps[k + 1] if k + 1 < len(ps) else math.inf
            after = [s for s in ss if p < s < nxt]
            if not after:
                continue
            s = after[0]
            a, b = max(int(p), 0), min(int(s + self.factor * (s - p)), n)
            if a < b:
                target[0, a:b] = 1.0
        state_dict["detections"] = (target, None)

    def __str__(self):
        return f"EventDetectionTarget(factor={self.factor})"
