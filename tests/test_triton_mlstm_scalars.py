"""The per-step scalar work of the Triton mLSTM's backward pass (``seisbench_xlstm.triton_mlstm_scalars``): its
Triton kernels against its PyTorch operations, alone and inside the kernel's backward pass. Both compute the same
formulas; they differ in float32 summation order only (a blockwise scan against ``torch.cumsum``).

Runs on CUDA, or on CPU under Triton's interpreter (``TRITON_INTERPRET=1``, as ``test_triton_mlstm.py``).
"""

import pytest
import torch

from mlstm_calls import NAMES, output_and_grads, rel_errors, triton_device_or_skip

DEVICE = triton_device_or_skip("the Triton kernels")

from seisbench_xlstm import triton_mlstm_scalars as scalars  # noqa: E402
from seisbench_xlstm.triton_mlstm import mlstm_chunkwise_triton  # noqa: E402

EPS = 1e-6


def per_step_inputs(rows: int, steps: int, parts: int, seed: int = 0):
    """delta, m, n~, i, f and k.dk parts as the backward pass sees them: ``m`` by the kernel's recurrence
    ``m_t = max(m_{t-1} + logsigmoid(f_t), i_t)`` (so ``m == i`` marks the arg-max resets), ``|n~|`` on both sides
    of ``exp(-m)``. No exact ties of the normaliser's max: each implementation decides them with its own ``exp``,
    which may differ in the last bit (both split a tie's gradient in half)."""
    g = torch.Generator().manual_seed(seed)
    i = torch.empty(rows, steps).uniform_(-6, 6, generator=g)
    f = torch.randn(rows, steps, generator=g) + 2.0
    lsf = torch.nn.functional.logsigmoid(f)
    m = torch.empty(rows, steps)
    prev = torch.full((rows,), -1e30)
    for t in range(steps):
        prev = torch.maximum(prev + lsf[:, t], i[:, t])
        m[:, t] = prev
    ntil = torch.randn(rows, steps, generator=g) * torch.exp(-m) * 2
    delta = torch.randn(rows, steps, generator=g)
    di_parts = torch.randn(parts, rows, steps, generator=g)
    assert (m == i).sum() > rows  # resets beyond each first step
    return [x.to(DEVICE) for x in (delta, m, ntil, i, f, di_parts)]


@pytest.mark.parametrize("constant", [False, True], ids=["exact", "constant"])
@pytest.mark.parametrize("steps,block,parts", [(100, 16, 1), (64, 64, 3), (37, 16, 2), (37, 1024, 1)])
def test_triton_scalars_equal_torch(monkeypatch, steps, block, parts, constant):
    """Several blocks per sequence (carries between them), a partial last block, a sequence shorter than a block,
    one and several value blocks."""
    monkeypatch.setattr(scalars, "BLOCK", block)
    delta, m, ntil, i, f, di_parts = per_step_inputs(3, steps, parts)
    got, want = {}, {}
    for name, out in (("triton", got), ("torch", want)):
        terms = scalars.normaliser_terms(delta, m, ntil, EPS, constant, name)
        out["den"], out["dntil"] = terms[:2]
        out["di"], out["df"] = scalars.gate_gradients(delta, m, ntil, i, f, di_parts, terms, EPS, constant, name)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5 * float(want[key].abs().max()),
                                   msg=key)


def test_unknown_implementation_is_refused():
    delta, m, ntil, *_ = per_step_inputs(1, 8, 1)
    with pytest.raises(ValueError, match="known: torch, triton"):
        scalars.normaliser_terms(delta, m, ntil, EPS, False, "numpy")


@pytest.mark.parametrize("constant", [False, True], ids=["exact", "constant"])
def test_kernel_gradients_with_either_implementation_agree(monkeypatch, constant):
    """The whole backward pass (2 chunks, two value blocks) with either implementation of the scalar work."""
    torch.manual_seed(0)
    inputs = [torch.randn(1, 2, 64, 24), torch.randn(1, 2, 64, 24), torch.randn(1, 2, 64, 40),
              torch.empty(1, 2, 64).uniform_(-15, 15), torch.empty(1, 2, 64).uniform_(-5, 8)]
    inputs = [x.to(DEVICE) for x in inputs]
    grad = torch.randn(1, 2, 64, 40).to(DEVICE)
    got = {}
    for name in scalars.IMPLEMENTATIONS:
        monkeypatch.setattr(scalars, "IMPLEMENTATION", name)
        got[name] = output_and_grads(lambda *x: mlstm_chunkwise_triton(
            *x, chunk_size=32, eps=EPS, block_v=16, constant_normaliser=constant), inputs, grad)
    errors = rel_errors(got["triton"], got["torch"])
    assert set(errors) == set(NAMES) and max(errors.values()) < 1e-5, errors
