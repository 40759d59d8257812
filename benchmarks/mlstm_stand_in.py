"""A stand-in for the mLSTM cell: the training step without its mLSTM kernels, for counting and for timing.

Inside :func:`mlstm_stand_in` every call of the mLSTM kernels (``seisbench_xlstm.kernels``' sequence functions, the
ones ``mlstm_sequence`` and ``mlstm_sequence_qk`` run, traced or not) returns a copy of the values ``v`` and, in the
backward pass, hands the incoming gradient to ``v`` and zero gradients to q, k (or qk) and the gates. Every other
part of the layer keeps its work: the products that make q, k and the gates still get a gradient (zeros cost a
product as much as any values do), and the stand-in stays outside ``torch.compile``'s graphs as the kernels do. So
a step's time with the stand-in is the step less its mLSTM kernels, plus a copy forward and the zero fills backward
(a few passes over the kernel's inputs), and a FLOP count with it counts everything but the cell, whose calls it
records. ``pretrain_speed.py`` uses it both ways; a benchmark tool, not a model: its outputs mean nothing.
"""

from __future__ import annotations

import contextlib

import torch


class _CellStandIn(torch.autograd.Function):
    """``h = v`` (a copy); backward: ``dv = dh``, zeros for the other inputs."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        ctx.others = [(t.shape, t.dtype, t.device) for t in others]
        return v.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (grad, *(torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.others))


@contextlib.contextmanager
def mlstm_stand_in(calls: list | None = None):
    """The mLSTM kernels replaced by the stand-in inside the block, recording each call's ``(batch, heads, steps,
    head_dim)`` of q in ``calls`` if given; compiled code is reset on entry and exit so that no graph keeps the
    other version."""
    from seisbench_xlstm import kernels

    def sequence(q, k, v, i, f, kernel):
        if calls is not None:
            calls.append(tuple(q.shape))
        return _CellStandIn.apply(v, q, k, i, f)

    def sequence_qk(qk, v, i, f, kernel):  # q and k as the two halves of each row (bimlstm.QK_ONE_PRODUCT)
        if calls is not None:
            calls.append((*qk.shape[:3], qk.shape[3] // 2))
        return _CellStandIn.apply(v, qk, i, f)

    names = {"_sequence": sequence, "_sequence_qk": sequence_qk,
             "_opaque_sequence": torch.compiler.disable(sequence),
             "_opaque_sequence_qk": torch.compiler.disable(sequence_qk)}
    saved = {name: getattr(kernels, name) for name in names}
    torch._dynamo.reset()
    for name, fn in names.items():
        setattr(kernels, name, fn)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(kernels, name, fn)
        torch._dynamo.reset()
