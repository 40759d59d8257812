"""Losses of the two recipes: masked MSE (recipe 1) and wav2vec 2.0's contrastive InfoNCE (recipe 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masked_mse", "sample_negatives", "info_nce", "info_nce_windows"]


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, sample_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked samples only.

    :param prediction: ``(batch, channels, samples)``
    :param target: ``(batch, channels, samples)``
    :param sample_mask: boolean ``(batch, 1, samples)`` (or full shape): True where the input was masked
    :return: scalar: mean of ``(prediction - target) ** 2`` over masked samples and all channels
    """
    mask = sample_mask.expand_as(target).float()
    squared = (prediction.float() - target.float()).pow(2) * mask
    return squared.sum() / mask.sum().clamp_min(1.0)


def sample_negatives(
    token_mask: torch.Tensor, num_negatives: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every masked token, ``num_negatives`` other masked tokens of the same window (wav2vec 2.0).

    Draws are uniform with replacement over the window's *other* masked positions (never the position itself).
    A window with a single masked token has no other position: its negatives point at the token itself, so they
    equal the positive and :func:`info_nce` leaves them out.

    :param token_mask: boolean ``(batch, tokens)``
    :return: ``(anchors, negatives)``: ``anchors`` ``(N,)`` flat indices ``b * tokens + t`` of the masked tokens
        in row-major order, ``negatives`` ``(N, num_negatives)`` flat indices of their negatives
    """
    batch, tokens = token_mask.shape
    device = token_mask.device
    counts = token_mask.sum(dim=1)  # (batch,)
    anchors = token_mask.reshape(-1).nonzero().squeeze(1)  # (N,)
    row = anchors // tokens
    # rank of each masked token within its window: 0 .. counts[row] - 1
    rank = token_mask.long().cumsum(dim=1).reshape(-1)[anchors] - 1
    # per-window table of masked positions, padded: table[b, j] = flat index of the j-th masked token of window b
    table = torch.zeros(batch, int(counts.max().item()) if len(anchors) else 1, dtype=torch.long, device=device)
    table[row, rank] = anchors
    others = (counts[row] - 1).clamp_min(1)  # (N,)
    u = torch.rand(len(anchors), num_negatives, device=device, generator=generator)
    draw = (u * others[:, None]).long().clamp_max(others[:, None] - 1)
    draw = draw + (draw >= rank[:, None]).long()  # skip the anchor itself
    draw = torch.minimum(draw, (counts[row] - 1)[:, None])
    return anchors, table[row[:, None], draw]


def info_nce(
    context: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.1,
    return_logits: bool = False,
):
    """wav2vec 2.0's contrastive loss: cross-entropy of cosine similarities / ``temperature``, positive first.

    A negative identical to its positive (the same codevectors, which happens when both tokens got the same
    codes) is not a distractor: its logit is set to ``-inf``, as wav2vec 2.0 does.

    :param context: ``(N, dim)`` context vectors at the masked tokens
    :param positives: ``(N, dim)`` quantised targets at the same tokens
    :param negatives: ``(N, K, dim)`` quantised targets of the negatives
    :return: mean loss over the N tokens (and the ``(N, 1 + K)`` logits if ``return_logits``)
    """
    context, positives, negatives = context.float(), positives.float(), negatives.float()
    candidates = torch.cat([positives[:, None], negatives], dim=1)  # (N, 1 + K, dim)
    logits = F.cosine_similarity(context[:, None], candidates, dim=-1) / temperature
    same = (negatives == positives[:, None]).all(dim=-1)  # (N, K)
    logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same, float("-inf"))], dim=1)
    target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits, target)
    return (loss, logits) if return_logits else loss


def info_nce_windows(
    context: torch.Tensor,
    targets: torch.Tensor,
    anchors: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.1,
    target_codes: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`info_nce` for negatives given as token indices of the same window, without gathering vectors.

    Computes the cosine similarities of every context vector with every target of its window in one batched
    product ``(batch, tokens, tokens)`` and takes the logits of the positives and negatives from it in one flat
    ``gather`` (whose backward is a scatter-add, which on GPUs sums in no fixed order; indexing with two index
    tensors instead sorts the indices in its backward); gathering ``(N, K, dim)`` negative vectors instead would take
    gigabytes at the seed batch sizes.

    :param context: ``(batch, tokens, dim)``
    :param targets: ``(batch, tokens, dim)`` quantised targets
    :param anchors: ``(N,)`` flat indices ``b * tokens + t`` of the masked tokens (from :func:`sample_negatives`)
    :param negatives: ``(N, K)`` flat indices of their negatives (same window)
    :param target_codes: ``(batch, tokens, groups)`` code indices of the targets: a negative with the same codes
        as its positive is the same vector and is left out (compared as vectors when None)
    :return: mean loss over the N masked tokens; equals ``info_nce(context[anchors], targets[anchors],
        targets[negatives])``
    """
    batch, tokens, dim = context.shape
    c = F.normalize(context.float(), dim=-1, eps=1e-8)
    q = F.normalize(targets.float(), dim=-1, eps=1e-8)
    sims = torch.bmm(c, q.transpose(1, 2)) / temperature  # (batch, tokens, tokens)
    candidates = torch.cat([anchors[:, None], negatives], dim=1)  # (N, 1 + K): the positive first
    # the similarity of anchor b * tokens + t with candidate b * tokens + u lies at (b * tokens + t) * tokens + u
    logits = sims.reshape(-1).gather(0, (anchors[:, None] * tokens + candidates % tokens).reshape(-1))
    logits = logits.view(candidates.shape)
    if target_codes is not None:
        keys = _code_keys(target_codes.reshape(batch * tokens, -1))
        same = keys[negatives] == keys[anchors][:, None]
        if same.dim() == 3:  # more than two groups: compared per group
            same = same.all(dim=-1)
    else:
        flat = targets.reshape(batch * tokens, dim)
        same = (flat[negatives] == flat[anchors][:, None]).all(dim=-1)
    logits = logits.masked_fill(F.pad(same, (1, 0)), float("-inf"))  # never the positive (column 0)
    target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


def _code_keys(codes: torch.Tensor) -> torch.Tensor:
    """``(tokens, groups)`` code indices to one integer per token that is equal exactly where all groups' codes
    are (``(tokens,)``), for one or two groups of codes below 2**31 (one gather of an integer per negative instead of
    a row of codes); more groups come back unchanged, to be compared per group."""
    if codes.shape[1] == 1:
        return codes[:, 0]
    if codes.shape[1] == 2:
        return codes[:, 0].long() * 2**31 + codes[:, 1].long()
    return codes
