"""The two self-supervised recipes as ``nn.Module`` objects around a backbone (no training loop here).

Both take a batch of normalised windows ``(batch, 3, samples)`` and return a dict with the ``loss`` to minimise
and scalar statistics to log. A *time step* is a token of ``backbone.token_stride`` = 4 samples (1024 tokens for
4096 samples; see :mod:`pretrain.masking`).

**Recipe 1, masked reconstruction** (:class:`MaskedReconstruction`): 75% of the tokens of every window are masked
(exactly, uniformly at random). The input samples of masked tokens are replaced by a fill value: ``"zero"``
(default: 0 is the window's mean after the per-channel normalisation) or ``"learned"`` (one learned value per
channel). The backbone's per-sample features go through a per-sample linear head (a 1x1 convolution to 3
channels), and the loss is the MSE against the unmasked normalised input over the masked samples only.

**Recipe 2, contrastive + vector quantisation** (:class:`ContrastiveVQ`, wav2vec 2.0's objective on the backbone's
token stage): ``tokens = backbone.embed(x)``; wav2vec 2.0 span masking (``mask_prob`` 0.65, spans of 10 tokens);
masked tokens are replaced by a learned mask embedding; ``context = Linear(backbone.encode(masked tokens))`` to
``final_dim`` (256); targets = Gumbel-softmax quantiser (2 groups x 320 codes, codevectors 256 wide in total) of the
*unmasked* tokens; for every masked token, 100 negatives from other masked tokens of the same window; InfoNCE on
cosine similarity / 0.1, negatives equal to the positive left out; plus ``diversity_weight`` (0.1) times the
codebook diversity loss. The decoder is not used by this recipe (it is trained when fine-tuning the picker) and is
frozen while it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from .losses import info_nce_windows, masked_mse, sample_negatives
from .masking import expand_to_samples, random_token_mask, seeded_token_mask, span_mask
from .quantizer import GumbelVectorQuantizer

__all__ = ["MaskedReconstructionConfig", "ContrastiveConfig", "MaskedReconstruction", "ContrastiveVQ", "build_recipe"]


@dataclass
class MaskedReconstructionConfig:
    """Recipe 1. :param mask_ratio: fraction of tokens masked per window; :param mask_fill: ``"zero"`` or
    ``"learned"`` (value put into the masked input samples)."""

    mask_ratio: float = 0.75
    mask_fill: str = "zero"


@dataclass
class ContrastiveConfig:
    """Recipe 2 (defaults = the seed table; see the module docstring)."""

    mask_prob: float = 0.65
    mask_length: int = 10
    min_masks: int = 2
    final_dim: int = 256
    num_groups: int = 2
    num_codes: int = 320
    codevector_dim: int = 256
    tau_start: float = 2.0
    tau_end: float = 0.5
    num_negatives: int = 100
    logit_temperature: float = 0.1
    diversity_weight: float = 0.1


def _token_count(backbone, samples: int) -> int:
    return samples // backbone.token_stride


def token_dim(backbone) -> int:
    """Width of the tokens :meth:`embed` returns (``d_model`` of the sequential backbone, ``dims[0]`` of the U-Net)."""
    config = backbone.config
    return int(config.d_model) if hasattr(config, "d_model") else int(config.dims[0])


class MaskedReconstruction(nn.Module):
    """Recipe 1 on ``backbone`` (see the module docstring)."""

    def __init__(self, backbone: nn.Module, config: MaskedReconstructionConfig | None = None):
        super().__init__()
        self.config = config or MaskedReconstructionConfig()
        if self.config.mask_fill not in ("zero", "learned"):
            raise ValueError(f"mask_fill must be 'zero' or 'learned', got {self.config.mask_fill!r}")
        self.backbone = backbone
        in_channels = backbone.config.in_channels
        self.head = nn.Conv1d(backbone.out_channels, in_channels, 1)
        self.fill = nn.Parameter(torch.zeros(1, in_channels, 1)) if self.config.mask_fill == "learned" else None

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, seeds: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """:param x: normalised windows ``(batch, channels, samples)``
        :param seeds: one seed per window for its mask (:func:`~pretrain.masking.seeded_token_mask`; training runs
            pass the windows' own seeds); else the masks come from ``generator`` (or the global RNG)
        :return: ``loss`` (masked MSE) and ``mask_fraction``"""
        batch, _, samples = x.shape
        tokens, ratio = _token_count(self.backbone, samples), self.config.mask_ratio
        if seeds is not None:
            if len(seeds) != batch:
                raise ValueError(f"{len(seeds)} mask seeds for {batch} windows")
            token_mask = seeded_token_mask(seeds, tokens, ratio, x.device)
        else:
            token_mask = random_token_mask(batch, tokens, ratio, x.device, generator)
        sample_mask = expand_to_samples(token_mask, self.backbone.token_stride)
        fill = self.fill.to(x.dtype) if self.fill is not None else torch.zeros((), dtype=x.dtype, device=x.device)
        masked = torch.where(sample_mask, fill, x)
        prediction = self.head(self.backbone(masked))
        return {"loss": masked_mse(prediction, x, sample_mask), "mask_fraction": token_mask.float().mean()}


class ContrastiveVQ(nn.Module):
    """Recipe 2 on ``backbone`` (see the module docstring)."""

    def __init__(self, backbone: nn.Module, config: ContrastiveConfig | None = None):
        super().__init__()
        self.config = c = config or ContrastiveConfig()
        self.backbone = backbone
        # the decoder is not part of this objective: frozen, so that every trainable parameter gets a gradient at
        # every step (what DDP expects without its search for unused parameters) and AdamW leaves it alone
        backbone.decoder.requires_grad_(False)
        d_model = token_dim(backbone)
        self.mask_embedding = nn.Parameter(torch.empty(d_model).uniform_())
        self.project_context = nn.Linear(d_model, c.final_dim)
        self.quantizer = GumbelVectorQuantizer(d_model, c.num_groups, c.num_codes, c.codevector_dim)
        self.project_targets = (
            nn.Linear(c.codevector_dim, c.final_dim) if c.codevector_dim != c.final_dim else nn.Identity()
        )

    def set_temperature(self, tau: float) -> None:
        self.quantizer.tau = float(tau)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """:param x: normalised windows ``(batch, channels, samples)``
        :return: ``loss``, ``contrastive_loss``, ``diversity_loss``, ``prob_perplexity``, ``code_perplexity``,
            ``codes_in_use``, ``mask_fraction``, ``temperature``"""
        c = self.config
        tokens, _ = self.backbone.embed(x)  # (batch, T, d_model)
        batch, n_tokens, _ = tokens.shape
        token_mask = span_mask(batch, n_tokens, c.mask_prob, c.mask_length, c.min_masks, x.device, generator)
        masked_tokens = torch.where(token_mask[..., None], self.mask_embedding.to(tokens.dtype), tokens)
        context = self.project_context(self.backbone.encode(masked_tokens))
        quantized = self.quantizer(tokens, mask=token_mask)
        targets = self.project_targets(quantized.vectors)
        anchors, negatives = sample_negatives(token_mask, c.num_negatives, generator)
        contrastive = info_nce_windows(
            context, targets, anchors, negatives, c.logit_temperature, target_codes=quantized.codes
        )
        loss = contrastive + c.diversity_weight * quantized.diversity_loss
        return {
            "loss": loss,
            "contrastive_loss": contrastive.detach(),
            "diversity_loss": quantized.diversity_loss.detach(),
            "prob_perplexity": quantized.prob_perplexity.detach(),
            "code_perplexity": quantized.code_perplexity,
            "codes_in_use": quantized.codes_in_use,
            "mask_fraction": token_mask.float().mean(),
            "temperature": torch.tensor(self.quantizer.tau, device=x.device),
        }


RECIPES = {MaskedReconstructionConfig: MaskedReconstruction, ContrastiveConfig: ContrastiveVQ}


def build_recipe(backbone: nn.Module, config) -> nn.Module:
    """The recipe module for a :class:`MaskedReconstructionConfig` or :class:`ContrastiveConfig`."""
    for config_type, cls in RECIPES.items():
        if isinstance(config, config_type):
            return cls(backbone, config)
    raise TypeError(f"No recipe for config {type(config).__name__}; expected one of {[t.__name__ for t in RECIPES]}")
