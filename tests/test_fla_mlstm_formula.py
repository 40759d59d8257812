"""The mLSTM written as a simple gated linear attention (``benchmarks/fla_mlstm_speed.py``: the mapping behind the
flash-linear-attention comparison) against the quadratic mLSTM, with the attention written out in PyTorch (FLA
itself is not a dependency)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fla_mlstm_speed  # noqa: E402
from common import forward_backward, random_mlstm_inputs  # noqa: E402

from seisbench_xlstm.kernels import quadratic_mlstm  # noqa: E402


def simple_gla(q, k, v, g, scale):
    """``o_t = sum_{j<=t} exp(G_t - G_j) scale (q_t . k_j) v_j``, ``G`` the cumulative ``g``; ``(batch, steps,
    heads, dim)`` as FLA's ``chunk_simple_gla``."""
    cum = g.cumsum(1).transpose(1, 2)  # (batch, heads, steps)
    steps = q.shape[1]
    causal = torch.ones(steps, steps, dtype=torch.bool).tril()
    decay = torch.exp((cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, float("-inf")))
    scores = torch.einsum("bthd,bjhd->bhtj", q, k) * scale * decay
    return torch.einsum("bhtj,bjhd->bthd", scores, v), None


@pytest.mark.parametrize("gate_shift, dtype, tolerance", [(0.0, torch.float64, 1e-9), (25.0, torch.float64, 1e-9),
                                                         (-40.0, torch.float64, 1e-9), (100.0, torch.float32, 1e-4)])
def test_simple_gla_form_equals_the_quadratic_mlstm(gate_shift, dtype, tolerance):
    """Outputs and all five input gradients against the quadratic mLSTM in float64, with input gates shifted far from
    0 and one large gate (the stabiliser's eps term); in float32 gates near 100 would overflow ``exp`` without the
    shift by the sequence's largest input gate."""
    inputs, grad = random_mlstm_inputs((2, 2, 48, 8), seed=3, device="cpu")
    with torch.no_grad():
        inputs[3] += gate_shift
        inputs[3][..., 7] += 6.0
    expected = forward_backward(quadratic_mlstm, [t.detach().double().requires_grad_() for t in inputs],
                                grad.double())

    def mapped(q, k, v, i, f):
        steps_first = fla_mlstm_speed.steps_first
        out = fla_mlstm_speed.fla_mlstm(*(steps_first(t) for t in (q, k, v, i, f)), simple_gla=simple_gla)
        return fla_mlstm_speed.heads_first(out)

    got = forward_backward(mapped, [t.detach().to(dtype).requires_grad_() for t in inputs], grad.to(dtype))
    for name, a, b in zip(fla_mlstm_speed.NAMES, got, expected):
        assert float((a.double() - b).norm() / b.norm()) < tolerance, name
