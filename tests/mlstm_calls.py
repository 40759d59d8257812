"""Outputs and input gradients of one mLSTM call, and their relative errors, shared by the kernel tests
(``test_kernels.py``, ``test_triton_mlstm.py``, ``test_triton_mlstm_scalars.py``)."""

import torch

#: The output and the five input gradients of an mLSTM call, in the order :func:`output_and_grads` returns them.
NAMES = ("h", "dq", "dk", "dv", "di", "df")


def output_and_grads(fn, inputs, grad, dtype=None) -> list[torch.Tensor]:
    """``[h, dq, dk, dv, di, df]`` of ``fn`` on copies of ``inputs`` (q, k, v, i, f); q, k, v (and grad) cast to
    ``dtype`` if given."""
    xs = [x.detach().clone() for x in inputs]
    if dtype is not None:
        xs[:3] = [x.to(dtype) for x in xs[:3]]
        grad = grad.to(dtype)
    xs = [x.requires_grad_() for x in xs]
    h = fn(*xs)
    h.backward(grad)
    return [h.detach()] + [x.grad for x in xs]


def rel_errors(got, want) -> dict[str, float]:
    """Relative L2 error ``|got - want| / |want|`` of each of :data:`NAMES` (in float32)."""
    return {n: float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))
            for n, a, b in zip(NAMES, got, want)}


def triton_device_or_skip(what: str) -> str:
    """The device the Triton kernels' tests run on: ``"cuda"``, or ``"cpu"`` under Triton's interpreter
    (``TRITON_INTERPRET=1``). Skips the calling test module (call it at import) without triton, or without either.

    :param what: what needs it, for the skip reason
    """
    import os

    import pytest

    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("triton is not installed", allow_module_level=True)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if not (torch.cuda.is_available() or interpret):
        pytest.skip(f"{what} needs CUDA, or TRITON_INTERPRET=1 to run on CPU", allow_module_level=True)
    return "cuda" if torch.cuda.is_available() and not interpret else "cpu"
