"""Masks over the token axis of a batch of windows, one mask per window.

A *time step* is a token: ``token_samples`` consecutive waveform samples (4 for both backbones, whose
:meth:`embed` turns 4096 samples into 1024 tokens). Both recipes mask tokens; recipe 1 applies the token mask to
the samples it covers (:func:`expand_to_samples`).

* :func:`random_token_mask` (recipe 1, masked reconstruction): exactly ``round(ratio * tokens)`` tokens per window,
  chosen uniformly without replacement (the masked-autoencoder convention), so the realised fraction is the ratio.
  :func:`seeded_token_mask` draws the same kind of mask for every window from the window's own seed (training
  runs use it: a window's mask does not depend on its batch, its device or the number of devices).
* :func:`span_mask` (recipe 2, wav2vec 2.0 style): ``mask_prob`` follows wav2vec 2.0's pretraining setting
  (``mask_prob=0.65, mask_length=10``): a window of ``T`` tokens gets ``floor(mask_prob * T / mask_length + u)``
  span starts (``u`` uniform in [0, 1)), drawn without replacement from the ``T - mask_length + 1`` valid
  positions, and every start masks itself and the next ``mask_length - 1`` tokens. In the paper's words, a
  proportion ``p = mask_prob / mask_length`` (0.065) of all time steps are starting indices. Spans overlap, so the
  realised fraction is lower than ``mask_prob``: about ``1 - (1 - p) ** mask_length`` = 49% at T = 1024.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["random_token_mask", "seeded_token_mask", "span_mask", "expand_to_samples", "mask_runs"]


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")


def _lowest(noise: torch.Tensor, ratio: float) -> torch.Tensor:
    """True at the ``round(ratio * tokens)`` smallest noise values of every row of ``(batch, tokens)``."""
    n_masked = int(round(ratio * noise.shape[1]))
    ranks = noise.argsort(dim=1).argsort(dim=1)  # rank of each token's noise value within its row
    return ranks < n_masked


def random_token_mask(
    batch: int, tokens: int, ratio: float, device=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Boolean mask ``(batch, tokens)`` with exactly ``round(ratio * tokens)`` True entries per row.

    :param ratio: fraction of tokens to mask, in [0, 1]
    :param generator: random generator (on ``device``) for reproducible masks; the global RNG if None
    """
    _check_ratio(ratio)
    return _lowest(torch.rand(batch, tokens, device=device, generator=generator), ratio)


def seeded_token_mask(seeds: Sequence[int], tokens: int, ratio: float, device=None) -> torch.Tensor:
    """:func:`random_token_mask` per window, each from its own seed: ``(len(seeds), tokens)`` on ``device``.

    Row ``i`` equals ``random_token_mask(1, tokens, ratio, generator=torch.Generator().manual_seed(seeds[i]))``,
    whatever the other rows are. The noise is drawn on the host (a few microseconds per window), the ranking is
    done on ``device``.
    """
    _check_ratio(ratio)
    g = torch.Generator()
    noise = torch.zeros(len(seeds), tokens)
    for row, seed in zip(noise, seeds):
        torch.rand(tokens, generator=g.manual_seed(int(seed)), out=row)
    return _lowest(noise.to(device, non_blocking=True), ratio)


def span_mask(
    batch: int,
    tokens: int,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 2,
    device=None,
    generator: torch.Generator | None = None,
    return_starts: bool = False,
):
    """wav2vec 2.0 span mask ``(batch, tokens)`` (see the module docstring for the semantics of ``mask_prob``).

    :param mask_prob: wav2vec 2.0's ``mask_prob`` (0.65 in its pretraining): spans per window =
        ``floor(mask_prob * tokens / mask_length + u)``, at least ``min_masks``
    :param mask_length: tokens per span
    :param min_masks: least number of spans per window
    :param return_starts: also return the boolean ``(batch, tokens)`` map of span starts
    """
    if mask_length < 1 or mask_length > tokens:
        raise ValueError(f"mask_length must be in [1, {tokens}], got {mask_length}")
    if not 0.0 <= mask_prob <= mask_length:
        raise ValueError(f"mask_prob must be in [0, mask_length], got {mask_prob}")
    positions = tokens - mask_length + 1
    u = torch.rand(batch, device=device, generator=generator)
    n_spans = torch.floor(mask_prob * tokens / mask_length + u).long().clamp(min=min_masks, max=positions)
    # n_spans distinct starts per row: the n_spans positions with the smallest random keys
    keys = torch.rand(batch, positions, device=device, generator=generator)
    ranks = keys.argsort(dim=1).argsort(dim=1)
    starts = ranks < n_spans[:, None]
    # a token is masked if a span started at any of the mask_length positions up to and including it
    padded = torch.nn.functional.pad(starts.float(), (mask_length - 1, tokens - positions))
    covered = padded.unfold(1, mask_length, 1).amax(dim=-1)[:, :tokens]
    mask = covered > 0
    if return_starts:
        return mask, torch.nn.functional.pad(starts, (0, tokens - positions))
    return mask


def expand_to_samples(token_mask: torch.Tensor, token_samples: int) -> torch.Tensor:
    """Token mask ``(batch, tokens)`` to a sample mask ``(batch, 1, tokens * token_samples)``."""
    return token_mask.repeat_interleave(token_samples, dim=1)[:, None, :]


def mask_runs(mask: torch.Tensor) -> list[int]:
    """Lengths of the runs of consecutive True entries of a 1-D boolean mask (for statistics and tests)."""
    m = torch.nn.functional.pad(mask.long().flatten(), (1, 1))
    edges = m.diff()
    starts = (edges == 1).nonzero().flatten()
    ends = (edges == -1).nonzero().flatten()
    return (ends - starts).tolist()
