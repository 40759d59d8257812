"""Masks, quantiser, losses and schedules of the pretraining recipes (pretrain/)."""

import math

import pytest
import torch

from pretrain.losses import info_nce, info_nce_windows, masked_mse, sample_negatives
from pretrain.masking import expand_to_samples, mask_runs, random_token_mask, span_mask
from pretrain.quantizer import GumbelVectorQuantizer, perplexity
from pretrain.schedules import annealed_temperature, warmup_cosine, warmup_steps


def test_random_token_mask_is_exactly_the_ratio():
    g = torch.Generator().manual_seed(0)
    mask = random_token_mask(16, 1024, 0.75, generator=g)
    assert mask.shape == (16, 1024)
    assert (mask.sum(dim=1) == 768).all()
    # positions differ between windows and are spread over the window
    assert not (mask[0] == mask[1]).all()
    assert 0.7 < mask[:, :512].float().mean() < 0.8


def test_expand_to_samples():
    mask = torch.tensor([[True, False, True]])
    assert expand_to_samples(mask, 4).tolist() == [[[True] * 4 + [False] * 4 + [True] * 4]]


def test_span_mask_statistics():
    g = torch.Generator().manual_seed(1)
    mask, starts = span_mask(256, 1024, 0.65, 10, generator=g, return_starts=True)
    n_starts = starts.sum(dim=1).float()
    # wav2vec 2.0: floor(0.65 * 1024 / 10 + u) spans = 66 or 67 per window
    assert set(n_starts.tolist()) <= {66.0, 67.0}
    assert abs(n_starts.mean().item() - 66.56) < 0.1
    realised = mask.float().mean().item()
    p = 0.065
    assert abs(realised - (1 - (1 - p) ** 10)) < 0.01  # about 0.49: lower than 0.65 because spans overlap
    # every masked run is made of whole spans: at least 10 tokens, and it starts at a span start
    for row in range(8):
        runs = mask_runs(mask[row])
        assert min(runs) >= 10
        assert sum(runs) == mask[row].sum()
        first = torch.nn.functional.pad(mask[row].long(), (1, 0)).diff() == 1
        assert starts[row][first].all()
    # isolated starts (no other start within 10 tokens on either side) give runs of exactly 10 tokens
    row = starts[0].nonzero().flatten().tolist()
    isolated = [
        s for i, s in enumerate(row)
        if (i == 0 or s - row[i - 1] > 10) and (i == len(row) - 1 or row[i + 1] - s > 10)
    ]
    assert isolated
    for s in isolated:
        assert mask[0, s : s + 10].all()
        assert s + 10 == 1024 or not mask[0, s + 10]


def test_span_mask_min_masks_and_bounds():
    mask, starts = span_mask(4, 40, 0.0, 10, min_masks=2, return_starts=True)
    assert (starts.sum(dim=1) == 2).all()
    assert not starts[:, 31:].any()  # spans never run past the end
    with pytest.raises(ValueError):
        span_mask(1, 5, 0.5, 10)


def test_quantizer_hard_forward_straight_through_gradient():
    torch.manual_seed(0)
    q = GumbelVectorQuantizer(8, groups=2, codes=5, codevector_dim=6).train()
    q.tau = 2.0
    x = torch.randn(3, 7, 8, requires_grad=True)
    out = q(x)
    assert out.vectors.shape == (3, 7, 6)
    assert out.codes.shape == (3, 7, 2)
    # forward: exactly one codevector per group (hard one-hot)
    cv = q.codevectors.detach()
    expected = torch.cat([cv[g][out.codes[..., g]] for g in range(2)], dim=-1)
    torch.testing.assert_close(out.vectors, expected)
    # backward: gradients reach the logits (straight-through), not only the chosen codevectors
    out.vectors.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert q.to_logits.weight.grad.abs().sum() > 0
    assert 1.0 <= out.code_perplexity.item() <= 10 and 1.0 <= out.prob_perplexity.item() <= 10


def _reference_quantizer_vectors(q, x):
    """The quantiser's training forward written with torch's gumbel_softmax and one-hot products (what the
    quantiser computed before its straight-through lookup)."""
    logits = q.to_logits(x).float().view(-1, q.groups, q.codes)
    one_hot = torch.nn.functional.gumbel_softmax(logits, tau=q.tau, hard=True, dim=-1)
    vectors = torch.einsum("ngv,gvd->ngd", one_hot, q.codevectors.float()).reshape(*x.shape[:-1], -1)
    return vectors, one_hot.argmax(-1).view(*x.shape[:-1], q.groups), one_hot.detach().mean(0)


def test_quantizer_lookup_equals_gumbel_softmax_one_hot_products():
    """The straight-through lookup gives the codes, vectors and gradients (input, logit weights, codebook) of
    torch's hard gumbel_softmax times the codebook, with the same noise; the hard-choice statistics too."""
    q = GumbelVectorQuantizer(8, groups=2, codes=5, codevector_dim=6).train()
    x = torch.randn(3, 40, 8)
    upstream = torch.randn(3, 40, 6)
    results = []
    for how in ("reference", "lookup"):
        q.zero_grad()
        xi = x.clone().requires_grad_()
        torch.manual_seed(7)  # the same Gumbel noise
        if how == "reference":
            vectors, codes, avg_hard = _reference_quantizer_vectors(q, xi)
            code_ppl = perplexity(avg_hard)
        else:
            out = q(xi)
            vectors, codes, code_ppl = out.vectors, out.codes, out.code_perplexity
        (vectors * upstream).sum().backward()
        results.append((vectors.detach(), codes, code_ppl, xi.grad, q.to_logits.weight.grad.clone(),
                        q.codevectors.grad.clone()))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected)
    assert results[0][5].abs().sum() > 0 and results[0][3].abs().sum() > 0


def test_quantizer_eval_is_argmax_and_perplexity_bounds():
    torch.manual_seed(1)
    q = GumbelVectorQuantizer(16, groups=2, codes=320, codevector_dim=256).eval()
    x = torch.randn(4, 100, 16)
    out = q(x)
    logits = q.to_logits(x).view(4, 100, 2, 320)
    assert torch.equal(out.codes, logits.argmax(-1))
    assert 1.0 <= out.prob_perplexity.item() <= 640
    assert 1.0 <= out.code_perplexity.item() <= 640
    assert 0 < out.codes_in_use.item() <= 1
    # statistics over the masked vectors only equal those of the subset
    mask = torch.rand(4, 100, generator=torch.Generator().manual_seed(2)) < 0.3
    on_mask, subset = q(x, mask=mask), q(x[mask])
    for key in ("prob_perplexity", "code_perplexity", "codes_in_use", "diversity_loss"):
        torch.testing.assert_close(getattr(on_mask, key), getattr(subset, key))
    # a collapsed codebook (one code per group) has perplexity = groups, and the largest diversity loss
    with torch.no_grad():
        q.to_logits.weight.zero_()
        q.to_logits.bias.zero_()
        q.to_logits.bias[[0, 320]] = 100.0
    collapsed = q(x)
    assert collapsed.code_perplexity.item() == pytest.approx(2.0)
    assert collapsed.prob_perplexity.item() == pytest.approx(2.0, abs=1e-3)
    assert collapsed.codes_in_use.item() == pytest.approx(2 / 640)
    assert collapsed.diversity_loss.item() == pytest.approx(638 / 640, abs=1e-5)


def test_info_nce_hand_computed():
    # context [1, 0]; positive [0.6, 0.8] (cos 0.6); negatives [0, 1] (cos 0), [0.8, 0.6] (cos 0.8) and one equal
    # to the positive
    context = torch.tensor([[1.0, 0.0]])
    positive = torch.tensor([[0.6, 0.8]])
    negatives = torch.tensor([[[0.0, 1.0], [0.8, 0.6], [0.6, 0.8]]])
    loss, logits = info_nce(context, positive, negatives, temperature=0.1, return_logits=True)
    assert logits[0, :3].tolist() == pytest.approx([6.0, 0.0, 8.0], rel=1e-5)
    assert logits[0, 3].item() == float("-inf")  # equal to the positive: left out
    expected = -math.log(math.exp(6) / (math.exp(6) + math.exp(0) + math.exp(8)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the same negative, if it were counted, would change the loss
    counted = -math.log(math.exp(6) / (2 * math.exp(6) + math.exp(0) + math.exp(8)))
    assert abs(loss.item() - counted) > 0.05


def test_negatives_come_from_other_masked_tokens_of_the_same_window():
    g = torch.Generator().manual_seed(2)
    mask = span_mask(3, 200, 0.65, 10, generator=g)
    anchors, negatives = sample_negatives(mask, 50, generator=g)
    flat = mask.reshape(-1)
    assert torch.equal(anchors, flat.nonzero().flatten())
    assert flat[negatives].all()  # masked tokens only
    assert (negatives // 200 == (anchors // 200)[:, None]).all()  # same window
    assert not (negatives == anchors[:, None]).any()  # never the anchor itself
    # roughly uniform over the other masked tokens
    row0 = anchors[anchors // 200 == 0][0]
    draws = sample_negatives(mask, 20000, generator=g)[1][anchors == row0][0]
    counts = torch.bincount(draws, minlength=600)[flat.nonzero().flatten()]
    counts = counts[counts > 0]
    assert len(counts) == int(mask[0].sum()) - 1
    assert counts.float().std() / counts.float().mean() < 0.2


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_indexed_info_nce_equals_reference(groups):
    """The loss from the windows' similarity matrix equals the loss over gathered vectors, and so do the gradients
    of the context and the targets; negatives equal to their positive (the same codes in every group) are left out
    whether they are found by codes (1, 2 or 3 groups) or by vectors."""
    g = torch.Generator().manual_seed(3)
    batch, tokens, dim = 2, 64, 8
    context = torch.randn(batch, tokens, dim, generator=g)
    codes = torch.randint(0, 2, (batch, tokens, groups), generator=g)  # few codes: many negatives equal the positive
    table = torch.randn(groups, 2, dim, generator=g)
    targets = sum(table[j][codes[..., j]] for j in range(groups))  # the same vector exactly where all codes agree
    mask = span_mask(batch, tokens, 0.65, 10, generator=g)
    anchors, negatives = sample_negatives(mask, 10, generator=g)
    results = []
    for how in ("reference", "codes", "vectors"):
        c, t = context.clone().requires_grad_(), targets.clone().requires_grad_()
        if how == "reference":
            flat_c, flat_t = c.reshape(-1, dim), t.reshape(-1, dim)
            loss = info_nce(flat_c[anchors], flat_t[anchors], flat_t[negatives], 0.1)
        else:
            loss = info_nce_windows(c, t, anchors, negatives, 0.1, target_codes=codes if how == "codes" else None)
        loss.backward()
        results.append((loss.detach(), c.grad, t.grad))
    same = (codes.reshape(-1, groups)[negatives] == codes.reshape(-1, groups)[anchors][:, None]).all(-1)
    assert same.any() and not same.all()  # the case is exercised
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            torch.testing.assert_close(a, b)


def test_masked_mse_ignores_unmasked_samples():
    target = torch.zeros(1, 3, 8)
    prediction = torch.ones(1, 3, 8)
    prediction[..., 4:] = 100.0  # errors outside the mask do not count
    mask = torch.tensor([[[True] * 4 + [False] * 4]])
    assert masked_mse(prediction, target, mask).item() == pytest.approx(1.0)


def test_learning_rate_schedule():
    total, warm = 452_100, warmup_steps(452_100, 0.1)
    assert warm == 45_210
    assert warmup_cosine(0, total, warm) == pytest.approx(1 / warm)
    assert warmup_cosine(warm - 1, total, warm) == pytest.approx(1.0)
    assert warmup_cosine(warm, total, warm) == pytest.approx(1.0)
    middle = warm + (total - warm) // 2
    assert warmup_cosine(middle, total, warm) == pytest.approx(0.5, abs=1e-4)
    assert warmup_cosine(total, total, warm) == pytest.approx(0.0)
    assert warmup_cosine(total + 10, total, warm, min_ratio=0.1) == pytest.approx(0.1)
    values = [warmup_cosine(s, total, warm) for s in range(warm, total, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_temperature_annealing():
    assert annealed_temperature(0, 1000) == pytest.approx(2.0)
    assert annealed_temperature(500, 1000) == pytest.approx(1.0)  # geometric: sqrt(2.0 * 0.5)
    assert annealed_temperature(1000, 1000) == pytest.approx(0.5)
    assert annealed_temperature(5000, 1000) == pytest.approx(0.5)
