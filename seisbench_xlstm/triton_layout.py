"""Layout helpers for the tensors this project's Triton stages hand to their kernels (:mod:`triton_output_gate`,
:mod:`triton_conv`): the kernels take any strides but need the last axis contiguous."""

from __future__ import annotations

import torch


def last_axis_contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself if its last axis is contiguous, else a contiguous copy."""
    return x if x.stride(-1) == 1 else x.contiguous()


def leading_strides(x: torch.Tensor, dims: int) -> list[int]:
    """The strides of ``x``'s ``dims`` leading axes, for a kernel that indexes the last axis without a stride; a
    tensor whose last axis is not contiguous is an error."""
    if x.stride(-1) != 1:
        raise ValueError(f"the last axis must be contiguous, got strides {x.stride()}")
    return list(x.stride()[:dims])
