"""Gumbel-softmax vector quantiser (wav2vec 2.0's product quantisation), written for this project.

Each input vector ``(..., in_dim)`` is mapped to ``groups`` logit vectors of ``codes`` entries. In training a code
is drawn per group with the Gumbel-softmax trick at temperature ``tau``: the forward pass uses the *hard* one-hot
choice, the backward pass the gradient of the soft Gumbel-softmax probabilities (straight-through estimator). In
evaluation the code is the argmax of the logits. The chosen codevectors (``codevector_dim / groups`` wide each) are
concatenated to a ``(..., codevector_dim)`` vector. The hard choice is never built as an ``(N, groups, codes)``
one-hot tensor: the forward gathers the chosen codevectors and the backward gives the soft probabilities the
gradient of the one-hot product (:class:`_StraightThroughLookup`); the values and gradients are those of torch's
``gumbel_softmax(hard=True)`` times the codebook with the same noise (test), with fewer passes over the
``(N, groups, codes)`` tensors (1.15x faster forward+backward on this project's 2-core CPU at 16,384 vectors; on an
H200 timed only together with the contrastive loss's flat gather and the mLSTM kernel's changes of 2026-11-30: recipe
2 at batch 256 1.10x, ``benchmarks/results/pretrain_gpu.md``).

Statistics (over the vectors given in ``mask``, or all vectors):

* ``prob_perplexity``: sum over groups of ``exp(entropy)`` of the codes' softmax probabilities averaged over the
  vectors (no Gumbel noise). It lies in ``[groups, groups * codes]`` and drives the diversity loss
  ``(groups * codes - prob_perplexity) / (groups * codes)``, which is 0 when every code is equally likely.
* ``code_perplexity``: the same for the hard code choices (how evenly the codes are really used).
* ``codes_in_use``: fraction of the ``groups * codes`` codes chosen at least once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["GumbelVectorQuantizer", "QuantizerOutput", "perplexity"]


@dataclass
class QuantizerOutput:
    """:ivar vectors: quantised vectors ``(..., codevector_dim)``
    :ivar codes: chosen code per group ``(..., groups)`` (int64)
    :ivar prob_perplexity: soft-probability perplexity, summed over groups (scalar tensor, differentiable)
    :ivar code_perplexity: hard-choice perplexity, summed over groups (scalar tensor)
    :ivar codes_in_use: fraction of all codes chosen at least once (scalar tensor)
    :ivar diversity_loss: ``(G * V - prob_perplexity) / (G * V)`` (scalar tensor, differentiable)
    """

    vectors: torch.Tensor
    codes: torch.Tensor
    prob_perplexity: torch.Tensor
    code_perplexity: torch.Tensor
    codes_in_use: torch.Tensor
    diversity_loss: torch.Tensor


def perplexity(probs: torch.Tensor) -> torch.Tensor:
    """Sum over groups of ``exp(entropy)`` of distributions ``(groups, codes)`` (each row sums to 1)."""
    entropy = -(probs * torch.log(probs.clamp_min(1e-7))).sum(dim=-1)
    return entropy.exp().sum()


class GumbelVectorQuantizer(nn.Module):
    """``(..., in_dim)`` to quantised ``(..., codevector_dim)`` with ``groups`` x ``codes`` codebook entries.

    :param in_dim: width of the input vectors
    :param groups: codebooks (product quantisation)
    :param codes: entries per codebook
    :param codevector_dim: width of the output (split evenly between the groups)
    """

    def __init__(self, in_dim: int, groups: int = 2, codes: int = 320, codevector_dim: int = 256):
        super().__init__()
        if codevector_dim % groups:
            raise ValueError(f"codevector_dim {codevector_dim} is not divisible by groups {groups}")
        self.groups, self.codes = groups, codes
        self.to_logits = nn.Linear(in_dim, groups * codes)
        self.codevectors = nn.Parameter(torch.empty(groups, codes, codevector_dim // groups))
        nn.init.normal_(self.to_logits.weight, std=1.0)
        nn.init.zeros_(self.to_logits.bias)
        nn.init.uniform_(self.codevectors)
        self.tau = 2.0

    @property
    def num_codes(self) -> int:
        return self.groups * self.codes

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> QuantizerOutput:
        """
        :param x: input vectors ``(..., in_dim)``
        :param mask: boolean ``x.shape[:-1]``: the vectors the statistics are computed over (all if None)
        """
        lead = x.shape[:-1]
        logits = self.to_logits(x).float().view(-1, self.groups, self.codes)  # (N, G, V)
        codevectors = self.codevectors.float()
        if self.training:
            # straight-through Gumbel-softmax: hard choice forward, soft gradient backward (the noise is drawn as
            # torch's F.gumbel_softmax draws it, so the same seed gives the same codes)
            gumbels = -torch.empty_like(logits).exponential_().log()
            soft = ((logits + gumbels) / self.tau).softmax(dim=-1)
            hard_index = soft.argmax(dim=-1)
            vectors = _StraightThroughLookup.apply(soft, hard_index, codevectors)
        else:
            hard_index = logits.argmax(dim=-1)
            vectors = _lookup(codevectors, hard_index)
        # averages over the selected vectors as weighted sums (no boolean indexing: no device synchronisation)
        weights = torch.ones(len(logits), device=x.device) if mask is None else mask.reshape(-1).float()
        weights = weights / weights.sum().clamp_min(1.0)
        prob_ppl = perplexity(torch.einsum("n,ngv->gv", weights, logits.softmax(dim=-1)))
        with torch.no_grad():  # the weighted count of every code's choices
            avg_hard = torch.zeros(self.num_codes, device=x.device).index_add_(
                0, _flat_codes(hard_index, self.codes).reshape(-1), weights.repeat_interleave(self.groups)
            ).view(self.groups, self.codes)
            code_ppl = perplexity(avg_hard)
            in_use = (avg_hard > 0).float().mean()
        vectors = vectors.reshape(*lead, -1)
        return QuantizerOutput(
            vectors=vectors,
            codes=hard_index.view(*lead, self.groups),
            prob_perplexity=prob_ppl,
            code_perplexity=code_ppl,
            codes_in_use=in_use,
            diversity_loss=(self.num_codes - prob_ppl) / self.num_codes,
        )


def _flat_codes(index: torch.Tensor, codes: int) -> torch.Tensor:
    """Code indices ``(N, G)`` per group to indices into all ``G * codes`` codes, ``(N, G)``."""
    return index + torch.arange(index.shape[-1], device=index.device) * codes


def _lookup(codevectors: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The chosen codevectors: ``codevectors`` ``(G, V, D/G)``, ``index`` ``(N, G)`` -> ``(N, G, D/G)``."""
    groups, codes, width = codevectors.shape
    return codevectors.reshape(groups * codes, width)[_flat_codes(index, codes)]


class _StraightThroughLookup(torch.autograd.Function):
    """The hard one-hot choice times the codebook, with the gradient of the soft probabilities.

    Equals ``einsum("ngv,gvd->ngd", y_hard - y_soft.detach() + y_soft, codevectors)`` (torch's
    ``gumbel_softmax(hard=True)`` followed by the codebook product) without building the ``(N, G, V)`` one-hot
    tensors: the forward gathers the chosen rows, the backward gives ``soft`` the gradient ``grad @ codevectors^T``
    and the codebook the gradients of its chosen rows (an index-add). The backward runs under the forward's autocast
    state (bf16 products in mixed-precision training, as the einsum it replaces ran).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, soft, index, codevectors):
        ctx.save_for_backward(index, codevectors)
        ctx.soft_dtype = soft.dtype
        return _lookup(codevectors, index)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        index, codevectors = ctx.saved_tensors
        groups, codes, width = codevectors.shape
        grad_soft = torch.einsum("ngd,gvd->ngv", grad, codevectors).to(ctx.soft_dtype)
        grad_codevectors = torch.zeros(groups * codes, width, device=grad.device, dtype=grad.dtype).index_add_(
            0, _flat_codes(index, codes).reshape(-1), grad.reshape(-1, width)).view(groups, codes, width)
        return grad_soft, None, grad_codevectors
