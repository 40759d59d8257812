"""The per-step scalar work of the chunkwise Triton mLSTM's backward pass (:mod:`seisbench_xlstm.triton_mlstm`).

Around its two backward kernels the pass needs, per step ``t`` of every sequence (formulas in that module's
docstring), from ``delta_t = dh_t . h_t``, the stabiliser ``m_t``, the normaliser ``n~_t`` and the gates:

- before the kernels: the denominator ``den_t = max(|n~_t|, exp(-m_t)) + eps`` and, for the exact gradient, the
  gradient of the normaliser column ``dn~_t`` (:func:`normaliser_terms`);
- after them: the input-gate gradient ``di`` (the kernels' ``k . dk``, plus for the exact gradient the gradient of
  ``m_t`` through the max, a segment sum sent to the arg-max steps) and the forget-gate gradient ``df`` (a reverse
  cumulative sum over the sequence; :func:`gate_gradients`).

Two implementations of each, equal up to float32 summation order (``tests/test_triton_mlstm.py``):

- ``"torch"``: PyTorch operations, about 25 kernel launches a call on a GPU;
- ``"triton"``: two Triton kernels, one per phase. The second runs one program per sequence over blocks of steps
  from its end, with the reverse sums done as forward scans of the time-reversed block and carried between blocks.

:data:`IMPLEMENTATION` chooses: ``"triton"``, the faster on an H200 (below).

Shapes: ``delta``, ``m``, ``ntil``, ``i``, ``f``: ``(batch, heads, steps)`` (or any shape with steps last), float32
except the gates (any float dtype); ``di_parts``: ``(value blocks, batch, heads, steps)`` float32.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # only the "triton" implementation needs it
    triton = None
    tl = None

#: ``"torch"`` or ``"triton"`` (see the module docstring). Recipe 1's compiled training step at batch 128 on an H200
#: (``benchmarks/pretrain_speed.py --scalar-work torch triton --rounds 2``, 2026-11-30, one command, in turns):
#: 285.7 and 285.8 ms with ``"triton"`` against 291.2 and 308.2 ms with ``"torch"`` (and 282.2 / 287.3 against
#: 287.8 / 307.9 ms with the backward loop at 8 warps); recipe 2 at batch 256 varied more between turns than
#: between the two (188.8 to 204.2 ms either way; ``benchmarks/results/pretrain_gpu.md``).
IMPLEMENTATION = "triton"
IMPLEMENTATIONS = ("torch", "triton")
#: Steps per block of the Triton kernels (the second: at most; a shorter sequence is one block of its length rounded
#: up to a power of two).
BLOCK = 1024

if triton is not None:

    @triton.jit
    def _normaliser(delta, m, ntil, eps, CONSTANT: tl.constexpr):
        """``den``, ``dn~`` and the direct gradient of ``m`` of a block of steps (exact autograd of
        ``max(|n~|, exp(-m)) + eps``; ties of the max split the gradient in half, as ``torch.maximum``)."""
        e = tl.exp(-m)
        den = tl.maximum(tl.abs(ntil), e) + eps
        if CONSTANT:
            dntil = den * 0.0
            dm = dntil
        else:
            d_norm = -delta / den
            take_n = (tl.abs(ntil) > e).to(tl.float32) + 0.5 * (tl.abs(ntil) == e).to(tl.float32)
            dntil = d_norm * take_n * tl.where(ntil > 0, 1.0, tl.where(ntil < 0, -1.0, 0.0))
            dm = -d_norm * (1.0 - take_n) * e
        return den, dntil, dm

    @triton.jit
    def _normaliser_kernel(DELTA, M, NT, DEN, DNT, N, eps, CONSTANT: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        delta = tl.load(DELTA + offs, mask=mask, other=0.0)
        m = tl.load(M + offs, mask=mask, other=0.0)
        den, dntil, _ = _normaliser(delta, m, tl.load(NT + offs, mask=mask, other=0.0), eps, CONSTANT)
        tl.store(DEN + offs, den, mask=mask)
        tl.store(DNT + offs, dntil, mask=mask)

    @triton.jit
    def _segment_sum(value_a, start_a, value_b, start_b):
        """Combine of a segmented sum: ``b`` (the later element) starts a new segment where its flag is set."""
        return tl.where(start_b != 0, value_b, value_a + value_b), start_a | start_b

    @triton.jit
    def _gate_kernel(DELTA, M, NT, I, Fg, DI_parts, DI, DF, S, BHS, eps, NVB: tl.constexpr,
                     CONSTANT: tl.constexpr, BLOCK: tl.constexpr):
        """One program per sequence, blocks of steps from its end; inside a block the steps are read in reverse
        (``t = S - 1 - j``), so the reverse sums are forward scans over ``j``."""
        base = tl.program_id(0).to(tl.int64) * S
        j = tl.arange(0, BLOCK)
        last = j == BLOCK - 1
        carry_seg = tl.sum(tl.zeros((1,), dtype=tl.float32), axis=0)
        carry_sum = carry_seg
        start = S * 0  # a Triton value: a plain 0 would be a constexpr, which cannot be loop-carried
        while start < S:
            t = S - 1 - start - j
            mask = t >= 0
            delta = tl.load(DELTA + base + t, mask=mask, other=0.0)
            m = tl.load(M + base + t, mask=mask, other=0.0)
            ntil = tl.load(NT + base + t, mask=mask, other=0.0)
            di = tl.zeros((BLOCK,), dtype=tl.float32)
            for p in tl.static_range(NVB):
                di += tl.load(DI_parts + p * BHS + base + t, mask=mask, other=0.0)
            _den, dntil, dm_direct = _normaliser(delta, m, ntil, eps, CONSTANT)
            if CONSTANT:
                row_sum = delta  # the numerator's row sum: dnum_t . num_t = dh_t . h_t
            else:
                ig = tl.load(I + base + t, mask=mask, other=0.0).to(tl.float32)
                reset = (m == ig) & mask  # step t is its own arg-max and that of the steps up to the next reset
                # a segment (in reverse order) starts at t where step t + 1 resets, or at the sequence's end
                nxt = mask & (t + 1 < S)
                m_next = tl.load(M + base + t + 1, mask=nxt, other=0.0)
                i_next = tl.load(I + base + t + 1, mask=nxt, other=0.0).to(tl.float32)
                starts = tl.where(nxt, (m_next == i_next).to(tl.int32), 1)
                dm_total = tl.where(mask, dm_direct - delta - dntil * ntil, 0.0)
                seg, started = tl.associative_scan((dm_total, starts), 0, _segment_sum)
                seg += tl.where(started != 0, 0.0, carry_seg)
                carry_seg = tl.sum(tl.where(last, seg, 0.0), axis=0)
                di += tl.where(reset, seg, 0.0)
                row_sum = dm_direct  # the numerator's and the normaliser column's parts cancel
            d_lsf = tl.cumsum(tl.where(mask, row_sum - di, 0.0), axis=0) + carry_sum
            carry_sum = tl.sum(tl.where(last, d_lsf, 0.0), axis=0)
            fg = tl.load(Fg + base + t, mask=mask, other=0.0).to(tl.float32)
            tl.store(DI + base + t, di, mask=mask)
            tl.store(DF + base + t, d_lsf * tl.sigmoid(-fg), mask=mask)
            start += BLOCK


def _check(implementation: str) -> str:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"Unknown implementation {implementation!r}; known: {', '.join(IMPLEMENTATIONS)}")
    return implementation


def normaliser_terms(delta, m, ntil, eps: float, constant: bool, implementation: str | None = None):
    """``(den, dn~, dm)`` per step: ``dn~ = 0`` with ``constant`` (the stabiliser and the denominator held
    constant); ``dm``, the direct gradient of ``m`` through ``exp(-m)``, for :func:`gate_gradients` (``None`` where
    it is not needed: ``constant``, or the Triton implementation, whose second kernel recomputes it)."""
    if _check(implementation or IMPLEMENTATION) == "triton":
        den, dntil = torch.empty_like(m), torch.empty_like(m)
        n = m.numel()
        _normaliser_kernel[(triton.cdiv(n, BLOCK),)](delta, m, ntil, den, dntil, n, eps, CONSTANT=constant,
                                                    BLOCK=BLOCK)
        return den, dntil, None
    exp_neg_m = torch.exp(-m)
    den = torch.maximum(ntil.abs(), exp_neg_m) + eps
    if constant:
        return den, torch.zeros_like(ntil), None
    d_norm = -delta / den  # gradient of max(|n~|, exp(-m))
    take_n = (ntil.abs() > exp_neg_m).float() + 0.5 * (ntil.abs() == exp_neg_m).float()
    return den, d_norm * take_n * torch.sign(ntil), -d_norm * (1.0 - take_n) * exp_neg_m


def gate_gradients(delta, m, ntil, i, f, di_parts, terms, eps: float, constant: bool,
                   implementation: str | None = None):
    """``di`` and ``df`` (float32) from the kernels' per-value-block parts of ``k . dk`` and the ``terms`` that
    :func:`normaliser_terms` returned with the same implementation (see the module docstring)."""
    if _check(implementation or IMPLEMENTATION) == "triton":
        di, df = torch.empty_like(m), torch.empty_like(m)
        steps = m.shape[-1]
        block = min(BLOCK, triton.next_power_of_2(max(steps, 16)))  # short sequences: one block of their length
        _gate_kernel[(m.numel() // steps,)](delta, m, ntil, i.contiguous(), f.contiguous(), di_parts, di, df, steps,
                                            m.numel(), eps, NVB=di_parts.shape[0], CONSTANT=constant, BLOCK=block)
        return di, df
    di = di_parts[0] if di_parts.shape[0] == 1 else di_parts.sum(0)
    _den, dntil, dm_direct = terms
    if constant:
        row_sum = delta  # row sum of d a_t. through the numerator only: dnum_t . num_t = dh_t . h_t
    else:
        dm_total = dm_direct - delta - dntil * ntil  # = -delta * eps / den up to rounding
        reset = m == i.float()  # m_u == i_u: step u is its own arg-max, and j*(t) for the steps up to the next
        rows, steps = m.numel() // m.shape[-1], m.shape[-1]
        seg = (reset.long().cumsum(-1) - 1).clamp_min(0)
        seg = (seg + torch.arange(rows, device=m.device).view(*m.shape[:-1], 1) * steps).view(-1)
        seg_sum = torch.zeros(rows * steps, dtype=torch.float32, device=m.device).index_add_(0, seg,
                                                                                             dm_total.view(-1))
        di = di + reset.float() * seg_sum[seg].view(m.shape)
        row_sum = dm_direct  # the numerator's and the normaliser column's parts cancel
    # forget gates: dF_t = (row sum of d a_t.) - (column sum di_t); F = cumsum(logsigmoid(f))
    d_lsf = (row_sum - di).flip(-1).cumsum(-1).flip(-1)
    return di, d_lsf * torch.sigmoid(-f.float())
