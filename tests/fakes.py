"""Test helpers: pickers whose output the test controls, and a guard that turns a hang into a failure."""

from __future__ import annotations

import threading

import numpy as np
import obspy
import pytest
import torch

from seisbench_xlstm import XLSTMSeqPicker
from tiny import TINY_SEQUENTIAL

T0 = obspy.UTCDateTime(2024, 1, 1)


class SpikePicker(XLSTMSeqPicker):
    """A tiny picker whose forward marks P (probability 0.9) wherever the normalised Z channel exceeds
    ``SPIKE_LEVEL`` standard deviations, else P 0.05; S is 0.05 everywhere, noise the rest.

    The windows it receives are recorded in ``inputs`` (normalised, ``(batch, 3, samples)``)."""

    SPIKE_LEVEL = 8.0

    def __init__(self, **kwargs):
        super().__init__(backbone_config=TINY_SEQUENTIAL, **kwargs)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x, logits=False):
        self.inputs.append(x.detach().clone())
        p = torch.where(x[:, 0].abs() > self.SPIKE_LEVEL, 0.9, 0.05)
        s = torch.full_like(p, 0.05)
        return torch.stack([p, s, 1 - p - s], dim=1)


class FailingPicker(XLSTMSeqPicker):
    """A tiny picker whose forward raises, as a model error or out-of-memory would inside annotate."""

    def __init__(self, **kwargs):
        super().__init__(backbone_config=TINY_SEQUENTIAL, **kwargs)

    def forward(self, x, logits=False):
        raise RuntimeError("forward failed on purpose")


def noise_stream(n_samples: int, components: str = "ZNE", start=T0, offset: float = 0.0, seed: int = 0,
                 station: str = "A", channel_prefix: str = "HH", dtype=np.float64, rate: float = 100.0) -> obspy.Stream:
    """Gaussian noise (std 1) plus ``offset``, one trace per component."""
    rng = np.random.default_rng(seed)
    return obspy.Stream([
        obspy.Trace((rng.normal(size=n_samples) + offset).astype(dtype),
                    header=dict(network="XX", station=station, channel=channel_prefix + c, sampling_rate=rate,
                                starttime=start))
        for c in components
    ])


def run_with_timeout(fn, timeout: float = 120.0):
    """Runs ``fn()`` in a daemon thread; fails the test if it has not returned after ``timeout`` seconds (a hang
    guard, not a speed test). Returns ``fn``'s result or re-raises its exception."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # re-raised in the test thread
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"call did not return within {timeout} s (hangs)")
    if "error" in box:
        raise box["error"]
    return box.get("result")
