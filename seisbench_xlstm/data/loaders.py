"""DataLoader construction for the generators (worker count, sampler, batching)."""

from __future__ import annotations

import os

__all__ = ["make_loader", "default_num_workers"]


def default_num_workers() -> int:
    """Workers to use by default: one per CPU core (at most 8), none on a single core.

    Measured on the 2-core development machine (benchmarks/loader_speed.py, batch 64): 2 workers are best
    (pretraining ~3,200, picking with augmentations ~1,550 windows/s from uncompressed HDF5); 1 worker is
    slower than 0 (inter-process transfer without parallelism), so a single core gets 0.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return min(8, n) if n >= 2 else 0


def make_loader(
    generator,
    batch_size: int = 64,
    num_workers: int | None = None,
    sampler=None,
    shuffle: bool = True,
    drop_last: bool = True,
    pin_memory: bool = False,
    prefetch_factor: int | None = 4,
    persistent_workers: bool = True,
    seed: int | None = None,
):
    """A ``torch.utils.data.DataLoader`` over a generator from :mod:`.generators`.

    Batches are dicts of float32 tensors: ``X`` ``(batch, 3, 4096)`` (and ``y`` ``(batch, 3, 4096)``).
    Each worker gets its own NumPy seed (PyTorch seeds NumPy per worker), so augmentations differ
    between workers. Pass ``sampler=mixed.sampler(n)`` to draw with mixture weights (then ``shuffle``
    is ignored); a weighted sampler over another number of traces than the generator's raises ``ValueError``.
    """
    import torch

    weights = getattr(sampler, "weights", None)
    if weights is not None and len(weights) != len(generator):
        raise ValueError(
            f"the sampler draws from {len(weights)} traces, the generator has {len(generator)}: build the sampler "
            f"from the generator's own dataset (generator.mixed.sampler(n) when the generator left out traces "
            f"that cannot give a full window)"
        )
    if num_workers is None:
        num_workers = default_num_workers()
    kwargs = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor
        kwargs["persistent_workers"] = persistent_workers
    gen = None
    if seed is not None:
        gen = torch.Generator()
        gen.manual_seed(seed)
    return torch.utils.data.DataLoader(
        generator,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=gen,
        **kwargs,
    )
