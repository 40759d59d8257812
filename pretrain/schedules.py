"""Schedules: learning rate (linear warm-up, then cosine decay) and the quantiser's Gumbel temperature."""

from __future__ import annotations

import math

__all__ = ["warmup_cosine", "warmup_steps", "annealed_temperature"]


def warmup_steps(total_steps: int, warmup_fraction: float) -> int:
    """Warm-up length in optimizer steps: ``round(warmup_fraction * total_steps)`` (45,210 of 452,100 at 10%)."""
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    return int(round(warmup_fraction * total_steps))


def warmup_cosine(step: int, total_steps: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Learning-rate factor at optimizer step ``step`` (0-based): linear from ``1/warmup`` to 1 over the first
    ``warmup`` steps, then cosine from 1 down to ``min_ratio`` at ``total_steps``; ``min_ratio`` after that."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def annealed_temperature(step: int, total_steps: int, start: float = 2.0, end: float = 0.5) -> float:
    """Gumbel-softmax temperature: geometric (exponential) decay from ``start`` at step 0 to ``end`` at
    ``total_steps``, constant after. wav2vec 2.0 decays its temperature by a constant factor per update as well."""
    if start <= 0 or end <= 0:
        raise ValueError("temperatures must be positive")
    progress = min(1.0, max(0.0, step / max(1, total_steps)))
    return start * (end / start) ** progress
