"""Helpers of this project's Triton stages (:mod:`triton_output_gate`, :mod:`triton_conv`): the layout of the tensors
they hand to their kernels (any strides, the last axis contiguous) and their kernels' autotuned launchers."""

from __future__ import annotations

import os
import threading

import torch

#: keys of a launch setting that are not the kernel's compile-time constants
_LAUNCH_KEYS = ("num_warps", "num_stages")


def interpreted() -> bool:
    """Whether Triton's interpreter runs the kernels (``TRITON_INTERPRET=1``: on CPU tensors, no timing)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def autotuned(kernel, tuning: list[dict], key: list[str]):
    """``kernel`` autotuned over the launch settings ``tuning`` (dicts of its compile-time constants with
    ``num_warps`` and ``num_stages``), retuned when the arguments ``key`` change, its launches taking turns across
    threads (:class:`TurnTakingLauncher`); under the interpreter, which cannot time them, the kernel itself (launch
    it with :func:`interpreter_setting`)."""
    if interpreted():
        return kernel
    import triton

    configs = [triton.Config({k: v for k, v in s.items() if k not in _LAUNCH_KEYS}, num_warps=s["num_warps"],
                             num_stages=s["num_stages"]) for s in tuning]
    return TurnTakingLauncher(triton.autotune(configs, key=key)(kernel))


#: held by every launch of an autotuned kernel (:class:`TurnTakingLauncher`)
_LAUNCHES = threading.Lock()


class TurnTakingLauncher:
    """An autotuned kernel (``launcher[grid](*args)``) whose launches take turns across threads. Triton's autotuner
    keeps the arguments of the call in progress on itself and clears them when the call ends (Triton 3.6,
    ``Autotuner.nargs``). Two threads that launch an untuned key at once, as annotate's two batches in flight do
    on their first windows, time each other's arguments or fail (``TypeError: 'NoneType' object is not a
    mapping``). A tuned launch only queues the kernel, so the turns cost microseconds."""

    def __init__(self, autotuner):
        self.autotuner = autotuner

    def __getitem__(self, grid):
        launch = self.autotuner[grid]

        def in_turn(*args, **kwargs):
            with _LAUNCHES:
                return launch(*args, **kwargs)

        return in_turn


def interpreter_setting(tuning: list[dict]) -> dict:
    """The compile-time constants of the first setting of ``tuning`` under the interpreter (where
    :func:`autotuned` returns the bare kernel), else none (the autotuner supplies them)."""
    return {k: v for k, v in tuning[0].items() if k not in _LAUNCH_KEYS} if interpreted() else {}


def last_axis_contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself if its last axis is contiguous, else a contiguous copy."""
    return x if x.stride(-1) == 1 else x.contiguous()


def leading_strides(x: torch.Tensor, dims: int) -> list[int]:
    """The strides of ``x``'s ``dims`` leading axes, for a kernel that indexes the last axis without a stride; a
    tensor whose last axis is not contiguous is an error."""
    if x.stride(-1) != 1:
        raise ValueError(f"the last axis must be contiguous, got strides {x.stride()}")
    return list(x.stride()[:dims])
