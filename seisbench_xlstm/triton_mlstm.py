"""Chunkwise mLSTM forward and backward in Triton, for the small heads of this project (head dims 64 to 256).

Formulation (identical to ``mlstm_kernels``' ``parallel--native_autograd``, eps passed by the caller)::

    lsf_t  = logsigmoid(f_t),           F_t = sum_{s<=t} lsf_s
    a_tj   = F_t - F_j + i_j            (j <= t; the log of the gate product)
    m_t    = max_{j<=t} a_tj            (stabiliser)
    C~_tj  = (q_t . k_j) * DHQK**-0.5 * exp(a_tj - m_t)
    n~_t   = sum_j C~_tj
    h_t    = sum_j C~_tj v_j / (max(|n~_t|, exp(-m_t)) + eps)

The stabiliser cancels except through ``eps``: ``h_t = X_t / (max(|Y_t|, 1) + eps * exp(m_t))`` with X, Y the
unstabilised sums (``exp(a_tj)`` in place of ``exp(a_tj - m_t)``), so ``m_t`` matters only where the stabilised
normaliser ``max(|n~_t|, exp(-m_t))`` is not large against ``eps`` (then so does its gradient). ``m_t`` follows the
recurrence ``m_t = max(m_{t-1} + lsf_t, i_t)`` with ``m_{-1} = -inf`` (as the parallel reference;
``mlstm_kernels``' chunkwise kernels start from ``m = 0`` instead, which changes outputs by at most ``eps`` relative
because ``max(|Y|, 1) >= 1``).

Design. The state ``C`` (DHQK x block_v), ``n`` (DHQK) and the scalar stabiliser are carried in float32 over the
chunks of ``L`` steps, stabilised by ``m`` of each chunk's last step; per chunk the output is the gated, stabilised
L x L intra-chunk product plus the inter-chunk part ``q C``; gate preprocessing (log-sigmoid, cumulative sums inside
the chunk, stabiliser) happens in the kernels. The forward runs in one pass (one program per (batch*head, value
block) loops over the chunks in order) or, where a program's state tile is large (:data:`TWO_PASS_FORWARD_MIN_STATE`),
in two: a state pass (the same loop with only the state update) stores the states at every chunk's start, then one
program per (batch*head, value block, chunk) computes all chunks in parallel. With gradients the states at the
chunks' starts ((S/L) x DHQK x DHHV per sequence), ``m_t`` and ``n~_t`` are kept for the backward pass. ``C`` is
stored in the input dtype: both passes use it only as an operand of a product in that dtype (``q C`` forward,
``dnum C^T`` backward), so storing it rounded gives the same values as rounding it after a float32 load; ``n`` stays
float32. The parallelism is (batch*head) x value blocks (x chunks in the parallel passes), which fills the GPU at the
backbones' training and annotate batches and not for a few long sequences (there :mod:`seisbench_xlstm.kernels`
keeps TFLA).

Two gradient conventions (``constant_normaliser``; reference: ``seisbench_xlstm.kernels.quadratic_mlstm``).
``False`` (default): the exact gradient of the formula, as autograd of ``mlstm_kernels``' parallel/autograd kernels.
``True``: ``m_t`` and the whole denominator ``max(|n~_t|, exp(-m_t)) + eps`` are constants for the backward pass,
the convention of ``mlstm_kernels``' custom backward passes (``native_custbw`` and the TFLA Triton kernels used on
GPUs). Outputs and dv agree; dq, dk, di and df differ by about their own size. With ``True`` gradient reaches the
gates and q, k only through the numerator: the kernel gets no normaliser column (``dntil = 0``), there is no
``dm`` term and no arg-max routing; ``di_j = k_j . dk_j`` still holds, and the row sum of the gradient of ``a_t.``
is ``dnum_t . num_t = dh_t . h_t``, so ``dF_t = dh_t . h_t - di_t``.

Backward, in two kernels as the two-pass forward: a state-gradient pass loops over the chunks in reverse with only
the update of ``dC``, ``dn`` (gradients of the stabilised states) and stores them at every chunk's end (``dC`` in the
input dtype, for the same reason as ``C``); then one program per (batch*head, value block, chunk), all in parallel,
computes dq (from the state at the chunk's start), dk, dv (from the state gradient at its end) and the input-gate
term ``k_j . dk_j`` from one computation of the chunk's scores. With one chunk only the second kernel runs. With one
value block dq, dk and the gate term are written in their final dtype; with several, as float32 parts per value
block, summed afterwards.
The per-step scalars (O(S) work; :mod:`seisbench_xlstm.triton_mlstm_scalars`, in PyTorch or in two Triton kernels)
follow from these properties of the exact (autograd) gradient (the constant convention: see above):

- the gradient of the input gate except through the max is ``di_j = k_j . dk_j``;
- the total gradient of ``a_tj`` summed over ``j`` equals ``dm_t`` through ``exp(-m_t)`` only, so
  ``dF_t = dm_direct_t - di_t`` and ``d lsf = reverse cumsum(dF)``;
- autograd sends the gradient of ``m_t`` (through the max, ``-delta_t * eps / den_t`` with
  ``delta_t = dh_t . h_t``) to the arg-max ``j*(t)``. ``j*(t)`` is the last step ``u <= t`` with ``m_u == i_u``,
  so the term is a segment sum added to ``di`` at those steps. Ties of the max are resolved by that rule, not by
  ``torch.max``'s choice; ties of ``max(|n~|, exp(-m))`` split the gradient in half as ``torch.maximum`` does.

Inputs: q, k ``(batch, heads, steps, DHQK)``, v ``(batch, heads, steps, DHHV)``, gate pre-activations i, f
``(batch, heads, steps)``; float32, bfloat16 or float16 (q, k, v one dtype). The products run in the input dtype
(bf16 tensor cores) with float32 accumulation; float32 inputs use IEEE float32 products. Head dims need not be powers
of two (masked). ``steps`` must be a multiple of the chunk size. No initial or final states.
"""

from __future__ import annotations

import os

import torch

from .triton_mlstm_scalars import gate_gradients, normaliser_terms

try:
    import triton
    import triton.language as tl
except ImportError:  # the package works without triton; only mlstm_chunkwise_triton needs it
    triton = None
    tl = None

if triton is not None:
    _NEG = tl.constexpr(-1.0e30)  # stabiliser before the first step (finite, so that differences never give nan)

    @triton.jit
    def _logsigmoid(x):
        # min(x, 0) - log1p(exp(-|x|)); log1p(z) = log(u) * z / (u - 1) with u = 1 + z is exact to float32 rounding
        z = tl.exp(-tl.abs(x))
        u = 1.0 + z
        log1p = tl.where(u == 1.0, z, tl.log(u) * z / tl.where(u == 1.0, 1.0, u - 1.0))
        return tl.minimum(x, 0.0) - log1p

    @triton.jit
    def _program_block(D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr):
        """This program's (batch*head, value block: grid axes 0, 1) and the offsets and masks of its chunk, head dim
        and values."""
        pid_v = tl.program_id(1)
        offs_d = tl.arange(0, BD)
        offs_v = pid_v * BV + tl.arange(0, BV)
        return tl.program_id(0).to(tl.int64), pid_v, tl.arange(0, L), offs_d, offs_v, offs_d < D, offs_v < DV

    @triton.jit
    def _chunk_offsets(pid_bh, c, S, offs_l, offs_d, offs_v, D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr):
        """Steps, q/k offsets and value offsets of chunk ``c`` of this program's sequence and value block."""
        t = c * L + offs_l
        qk_off = pid_bh * S * D + t[:, None] * D + offs_d[None, :]
        return t, qk_off, pid_bh * S * DV + t[:, None] * DV + offs_v[None, :]

    @triton.jit
    def _load_chunk(Q, K, V, pid_bh, c, S, offs_l, offs_d, offs_v, mask_d, mask_v,
                    D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr):
        """Steps, q/k and value offsets and the q, k, v tiles of chunk ``c`` of this program's sequence and value
        block."""
        t, qk_off, v_off = _chunk_offsets(pid_bh, c, S, offs_l, offs_d, offs_v, D, DV, L)
        q = tl.load(Q + qk_off, mask=mask_d[None, :], other=0.0)
        k = tl.load(K + qk_off, mask=mask_d[None, :], other=0.0)
        return t, qk_off, v_off, q, k, tl.load(V + v_off, mask=mask_v[None, :], other=0.0)

    @triton.jit
    def _chunk_gates(I, Fg, gate_off, offs_l, L: tl.constexpr):
        """Input gates, chunk-local cumulative log forget gates and their last value of one chunk."""
        ig = tl.load(I + gate_off + offs_l).to(tl.float32)
        lsf = _logsigmoid(tl.load(Fg + gate_off + offs_l).to(tl.float32))
        fc = tl.cumsum(lsf, axis=0)
        f_last = tl.sum(tl.where(offs_l == L - 1, fc, 0.0), axis=0)
        return ig, fc, f_last

    @triton.jit
    def _log_decay(ig, fc, offs_l):
        """``a_tj`` of the chunk less ``F`` at its start (``-inf`` above the diagonal)."""
        return tl.where(offs_l[:, None] >= offs_l[None, :], fc[:, None] - fc[None, :] + ig[None, :], float("-inf"))

    @triton.jit
    def _state_offsets(pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, D: tl.constexpr, DV: tl.constexpr):
        """Offsets and mask of chunk ``c``'s (DHQK x block_v) block in a per-chunk matrix-state tensor
        ``(batch*head, chunks, DHQK, DHHV)``, and the offsets of its vector in ``(batch*head, chunks, DHQK)``."""
        st = (pid_bh * NC + c) * D
        return (st + offs_d[:, None]) * DV + offs_v[None, :], mask_d[:, None] & mask_v[None, :], st + offs_d

    @triton.jit
    def _store_state(C_states, N_states, C, n, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, first,
                     D: tl.constexpr, DV: tl.constexpr):
        """Store one chunk's matrix state block and (value block 0 only) its vector state."""
        c_off, c_mask, n_off = _state_offsets(pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, D, DV)
        tl.store(C_states + c_off, C.to(C_states.dtype.element_ty), mask=c_mask)
        tl.store(N_states + n_off, n, mask=mask_d & first)

    @triton.jit
    def _load_state(C_states, N_states, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v,
                    D: tl.constexpr, DV: tl.constexpr):
        c_off, c_mask, n_off = _state_offsets(pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, D, DV)
        return tl.load(C_states + c_off, mask=c_mask, other=0.0), tl.load(N_states + n_off, mask=mask_d, other=0.0)

    @triton.jit
    def _zero_state(BD: tl.constexpr, BV: tl.constexpr):
        """``C``, ``n`` and the stabiliser before the first step."""
        m_state = tl.sum(tl.zeros((1,), dtype=tl.float32), axis=0) + _NEG
        return tl.zeros((BD, BV), dtype=tl.float32), tl.zeros((BD,), dtype=tl.float32), m_state

    # ---- forward: per-chunk math ----

    @triton.jit
    def _fwd_chunk_output(q, k, v, ig, fc, offs_l, C, n, m_state, scale, eps, PREC: tl.constexpr):
        """``h``, ``m_t`` and ``n~_t`` of one chunk from its q, k, v, gates and the state (C, n, stabiliser) at its
        start."""
        DT = q.dtype
        log_d = _log_decay(ig, fc, offs_l)
        m = tl.maximum(tl.max(log_d, axis=1), fc + m_state)
        ctil = tl.dot(q, tl.trans(k), input_precision=PREC) * scale * tl.exp(log_d - m[:, None])
        b = tl.exp(fc + m_state - m) * scale  # decay of the state into each step, with the qk scale
        num = tl.dot(ctil.to(DT), v, input_precision=PREC)
        num += b[:, None] * tl.dot(q, C.to(DT), input_precision=PREC)
        ntil = tl.sum(ctil, axis=1) + b * tl.sum(q.to(tl.float32) * n[None, :], axis=1)
        den = tl.maximum(tl.abs(ntil), tl.exp(-m)) + eps
        return num / den[:, None], m, ntil

    @triton.jit
    def _fwd_store_output(H, M_out, N_out, h, m, ntil, row, v_off, mask_v, first, SAVE: tl.constexpr):
        tl.store(H + v_off, h.to(H.dtype.element_ty), mask=mask_v[None, :])
        if SAVE:
            tl.store(M_out + row, m, mask=first & (row >= 0))
            tl.store(N_out + row, ntil, mask=first & (row >= 0))

    @triton.jit
    def _fwd_state_update(k, v, ig, fc, f_last, C, n, m_state, PREC: tl.constexpr):
        """The state (C, n, stabiliser) at the end of a chunk from the one at its start; the stabiliser is ``m`` of
        the chunk's last step, ``max(f_last + m_state, max_j a_Lj)`` (bitwise the value ``_fwd_chunk_output``
        gives)."""
        a_last = f_last - fc + ig
        m_next = tl.maximum(tl.max(a_last, axis=0), f_last + m_state)
        kw = k.to(tl.float32) * tl.exp(a_last - m_next)[:, None]
        g = tl.exp(f_last + m_state - m_next)
        C = g * C + tl.dot(tl.trans(kw.to(k.dtype)), v, input_precision=PREC)
        return C, g * n + tl.sum(kw, axis=0), m_next

    @triton.jit
    def _mlstm_fwd_kernel(
        Q, K, V, I, Fg, H, M_out, N_out, C_states, N_states,
        scale, eps, S, NC,
        D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
        SAVE: tl.constexpr, PREC: tl.constexpr,
    ):
        """Sequential schedule: one program per (batch*head, value block) over all chunks in order."""
        pid_bh, pid_v, offs_l, offs_d, offs_v, mask_d, mask_v = _program_block(D, DV, L, BD, BV)
        first = pid_v == 0
        C, n, m_state = _zero_state(BD, BV)
        # while, not range(): Triton 3.6's interpreter cannot take range() of a run-time bound under numpy 2.4.
        # The counter must be a Triton value (a plain 0 would be a constexpr, which cannot be loop-carried).
        c = pid_v * 0
        while c < NC:
            t, qk_off, v_off, q, k, v = _load_chunk(Q, K, V, pid_bh, c, S, offs_l, offs_d, offs_v, mask_d, mask_v,
                                                    D, DV, L)
            ig, fc, f_last = _chunk_gates(I, Fg, pid_bh * S + c * L, offs_l, L)
            if SAVE:  # state at the start of this chunk
                _store_state(C_states, N_states, C, n, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, first, D, DV)
            h, m, ntil = _fwd_chunk_output(q, k, v, ig, fc, offs_l, C, n, m_state, scale, eps, PREC)
            _fwd_store_output(H, M_out, N_out, h, m, ntil, pid_bh * S + t, v_off, mask_v, first, SAVE)
            C, n, m_state = _fwd_state_update(k, v, ig, fc, f_last, C, n, m_state, PREC)
            c += 1

    @triton.jit
    def _mlstm_fwd_states_kernel(
        K, V, I, Fg, C_states, N_states, M_states, S, NC,
        D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
        PREC: tl.constexpr,
    ):
        """The states (C, n, stabiliser) at the start of every chunk: one program per (batch*head, value block)
        over the chunks in order, with only the state update per chunk (the first pass of the two-pass forward)."""
        pid_bh, pid_v, offs_l, offs_d, offs_v, mask_d, mask_v = _program_block(D, DV, L, BD, BV)
        first = pid_v == 0
        C, n, m_state = _zero_state(BD, BV)
        c = pid_v * 0  # a Triton value (see the forward kernel)
        while c < NC:
            _store_state(C_states, N_states, C, n, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, first, D, DV)
            tl.store(M_states + pid_bh * NC + c, m_state, mask=first)
            _t, qk_off, v_off = _chunk_offsets(pid_bh, c, S, offs_l, offs_d, offs_v, D, DV, L)
            k = tl.load(K + qk_off, mask=mask_d[None, :], other=0.0)
            v = tl.load(V + v_off, mask=mask_v[None, :], other=0.0)
            ig, fc, f_last = _chunk_gates(I, Fg, pid_bh * S + c * L, offs_l, L)
            C, n, m_state = _fwd_state_update(k, v, ig, fc, f_last, C, n, m_state, PREC)
            c += 1

    @triton.jit
    def _mlstm_fwd_chunk_kernel(
        Q, K, V, I, Fg, H, M_out, N_out, C_states, N_states, M_states,
        scale, eps, S, NC,
        D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
        SAVE: tl.constexpr, PREC: tl.constexpr,
    ):
        """The outputs of one chunk from the state at its start (the second pass of the two-pass forward): one
        program per (batch*head, value block, chunk), all chunks in parallel."""
        pid_bh, pid_v, offs_l, offs_d, offs_v, mask_d, mask_v = _program_block(D, DV, L, BD, BV)
        c = tl.program_id(2)
        t, _qk_off, v_off, q, k, v = _load_chunk(Q, K, V, pid_bh, c, S, offs_l, offs_d, offs_v, mask_d, mask_v,
                                                 D, DV, L)
        ig, fc, _f_last = _chunk_gates(I, Fg, pid_bh * S + c * L, offs_l, L)
        C, n = _load_state(C_states, N_states, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, D, DV)
        m_state = tl.load(M_states + pid_bh * NC + c)
        h, m, ntil = _fwd_chunk_output(q, k, v, ig, fc, offs_l, C, n, m_state, scale, eps, PREC)
        _fwd_store_output(H, M_out, N_out, h, m, ntil, pid_bh * S + t, v_off, mask_v, pid_v == 0, SAVE)

    # ---- backward: per-chunk math ----

    @triton.jit
    def _bwd_chunk_scalars(I, Fg, DH, M_in, DEN, DNT, pid_bh, c, S, t, v_off, offs_l, mask_v, ncol, q,
                           L: tl.constexpr):
        """Per-step inputs of one chunk's backward: ``dnum = dh / den`` (in the dtype of q), the normaliser
        column's gradient (value block 0 only), the gates, ``m_t``, the stabiliser of the state at the chunk's start
        and at its end."""
        ig, fc, f_last = _chunk_gates(I, Fg, pid_bh * S + c * L, offs_l, L)
        row = pid_bh * S + t
        m = tl.load(M_in + row)
        dh = tl.load(DH + v_off, mask=mask_v[None, :], other=0.0).to(tl.float32)
        dnum = (dh / tl.load(DEN + row)[:, None]).to(q.dtype)
        dnt = tl.load(DNT + row) * ncol
        m_prev = tl.load(M_in + pid_bh * S + c * L - 1, mask=c > 0, other=_NEG)
        m_last = tl.sum(tl.where(offs_l == L - 1, m, 0.0), axis=0)
        return dnum, dnt, ig, fc, f_last, m, m_prev, m_last

    @triton.jit
    def _bwd_chunk_ds(q, k, v, dnum, dnt, ig, fc, m, offs_l, scale, PREC: tl.constexpr):
        """The gated, stabilised intra-chunk scores ``ctil`` (float32) and the gradient of their ungated products
        ``ds`` (in the dtype of q) of one chunk."""
        p = tl.exp(_log_decay(ig, fc, offs_l) - m[:, None])
        ctil = tl.dot(q, tl.trans(k), input_precision=PREC) * scale * p
        dctil = tl.dot(dnum, tl.trans(v), input_precision=PREC) + dnt[:, None]
        return ctil, (dctil * p * scale).to(q.dtype)

    @triton.jit
    def _bwd_chunk_dq(ds, k, dnum, dnt, fc, m, m_prev, c_start, n_start, scale, PREC: tl.constexpr):
        """dq (float32, this value block's part) of one chunk: its intra-chunk part and the queries' read of the
        state at the chunk's start."""
        b = tl.exp(fc + m_prev - m) * scale
        return tl.dot(ds, k, input_precision=PREC) + b[:, None] * (
            tl.dot(dnum, tl.trans(c_start.to(k.dtype)), input_precision=PREC) + dnt[:, None] * n_start[None, :])

    @triton.jit
    def _bwd_chunk_dk_dv(ctil, ds, q, k, v, dnum, ig, fc, f_last, m_last, dC, dn, ncol, PREC: tl.constexpr):
        """dk (float32, this value block's part) and dv of one chunk, given the state gradient (dC, dn) at its end."""
        DT = q.dtype
        dk = tl.dot(tl.trans(ds), q, input_precision=PREC)
        dv = tl.dot(tl.trans(ctil.to(DT)), dnum, input_precision=PREC)
        # keys and values of this chunk feed all later steps through dC (stabilised by m_last)
        w = tl.exp(f_last - fc + ig - m_last)
        dk += w[:, None] * (tl.dot(v, tl.trans(dC.to(DT)), input_precision=PREC) + ncol * dn[None, :])
        dv += w[:, None] * tl.dot(k, dC.to(DT), input_precision=PREC)
        return dk, dv

    @triton.jit
    def _bwd_state_update(q, dnum, dnt, fc, f_last, m, m_prev, m_last, dC, dn, scale, PREC: tl.constexpr):
        """The state gradient (dC, dn) at the start of a chunk from the one at its end."""
        b = tl.exp(fc + m_prev - m) * scale
        g = tl.exp(f_last + m_prev - m_last)
        qb = q.to(tl.float32) * b[:, None]
        dC = g * dC + tl.dot(tl.trans(qb.to(q.dtype)), dnum, input_precision=PREC)
        return dC, g * dn + tl.sum(qb * dnt[:, None], axis=0)

    @triton.jit
    def _row_dot_kernel(A, B, OUT, N, DV: tl.constexpr, BDV: tl.constexpr, ROWS: tl.constexpr):
        """``OUT[r] = A[r, :] . B[r, :]`` in float32 for ``N`` rows of ``DV`` values (``dh_t . h_t``)."""
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BDV)
        off, mask = rows[:, None] * DV + cols[None, :], (rows[:, None] < N) & (cols[None, :] < DV)
        a = tl.load(A + off, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(B + off, mask=mask, other=0.0).to(tl.float32)
        tl.store(OUT + rows, tl.sum(a * b, axis=1), mask=rows < N)

    @triton.jit
    def _mlstm_bwd_states_kernel(
        Q, I, Fg, DH, M_in, DEN, DNT, DC_states, DN_states,
        scale, S, NC,
        D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
        PREC: tl.constexpr,
    ):
        """The state gradients (dC, dn) at the end of every chunk: one program per (batch*head, value block) over
        the chunks in reverse, with only the state-gradient update per chunk; stores them as the forward stores
        the states (dC in the input dtype, dn by value block 0)."""
        pid_bh, pid_v, offs_l, offs_d, offs_v, mask_d, mask_v = _program_block(D, DV, L, BD, BV)
        first = pid_v == 0
        ncol = first.to(tl.float32)
        dC, dn, _unused = _zero_state(BD, BV)
        c = pid_v * 0 + NC - 1  # a Triton value (see the forward kernel)
        while c > 0:
            _store_state(DC_states, DN_states, dC, dn, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, first, D, DV)
            t, qk_off, v_off = _chunk_offsets(pid_bh, c, S, offs_l, offs_d, offs_v, D, DV, L)
            q = tl.load(Q + qk_off, mask=mask_d[None, :], other=0.0)
            dnum, dnt, _ig, fc, f_last, m, m_prev, m_last = _bwd_chunk_scalars(
                I, Fg, DH, M_in, DEN, DNT, pid_bh, c, S, t, v_off, offs_l, mask_v, ncol, q, L)
            dC, dn = _bwd_state_update(q, dnum, dnt, fc, f_last, m, m_prev, m_last, dC, dn, scale, PREC)
            c -= 1
        _store_state(DC_states, DN_states, dC, dn, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, first, D, DV)

    @triton.jit
    def _mlstm_bwd_chunk_kernel(
        Q, K, V, I, Fg, DH, M_in, DEN, DNT, C_states, N_states, DC_states, DN_states, DQ, DK, DVout, DI,
        scale, S, NC, BHS,
        D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
        PREC: tl.constexpr, LATER: tl.constexpr,
    ):
        """dq, dk, dv and the input-gate term ``di_j = k_j . dk_j`` of one chunk: one program per (batch*head,
        value block, chunk), all chunks in parallel, given the states at the chunks' start (from the forward) and
        the state gradients at their end (from :func:`_mlstm_bwd_states_kernel`; ``LATER`` false: one chunk, no
        later steps, none needed). dq, dk and di are this value block's part: in their final dtype with one value
        block, else float32 parts per value block, summed afterwards."""
        pid_bh, pid_v, offs_l, offs_d, offs_v, mask_d, mask_v = _program_block(D, DV, L, BD, BV)
        c = tl.program_id(2)
        # the normaliser is an extra value column of ones; only value block 0 counts its contributions
        ncol = (pid_v == 0).to(tl.float32)
        part = pid_v.to(tl.int64) * BHS
        t, qk_off, v_off, q, k, v = _load_chunk(Q, K, V, pid_bh, c, S, offs_l, offs_d, offs_v, mask_d, mask_v,
                                                D, DV, L)
        dnum, dnt, ig, fc, f_last, m, m_prev, m_last = _bwd_chunk_scalars(
            I, Fg, DH, M_in, DEN, DNT, pid_bh, c, S, t, v_off, offs_l, mask_v, ncol, q, L)
        ctil, ds = _bwd_chunk_ds(q, k, v, dnum, dnt, ig, fc, m, offs_l, scale, PREC)
        c_start, n_start = _load_state(C_states, N_states, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, D, DV)
        dq = _bwd_chunk_dq(ds, k, dnum, dnt, fc, m, m_prev, c_start, n_start, scale, PREC)
        tl.store(DQ + part * D + qk_off, dq.to(DQ.dtype.element_ty), mask=mask_d[None, :])
        if LATER:
            dC, dn = _load_state(DC_states, DN_states, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, D, DV)
        else:
            dC, dn, _unused = _zero_state(BD, BV)
        dk, dv = _bwd_chunk_dk_dv(ctil, ds, q, k, v, dnum, ig, fc, f_last, m_last, dC, dn, ncol, PREC)
        tl.store(DK + part * D + qk_off, dk.to(DK.dtype.element_ty), mask=mask_d[None, :])
        tl.store(DVout + v_off, dv.to(DVout.dtype.element_ty), mask=mask_v[None, :])
        tl.store(DI + part + pid_bh * S + t, tl.sum(k.to(tl.float32) * dk, axis=1))


def _next_pow2(x: int) -> int:
    return 1 << (int(x) - 1).bit_length()


def _default_block_v(dv: int, dqk: int) -> int:
    """Value columns per program: all of a small head (up to 64, or a head of up to 128 that is not a power of two,
    such as 96: one masked block of 128 instead of three of 32, which recompute q.k^T each; 1.4x faster forward and
    backward at 256x4x1024x96 on an H200), else 64. At 128x4x64x256 (the U-Net's deepest level) 64 columns with 4
    warps took 1.29 ms forward and backward against 1.56 ms with 32 columns and 8 warps, the former default
    (``benchmarks/results/triton_mlstm_unet_sweep.md``)."""
    if dv <= 64 or (dv <= 128 and dqk <= 128 and dv != _next_pow2(dv)):
        return max(16, _next_pow2(dv))
    for bv in (64, 32, 16):
        if dv % bv == 0:
            return bv
    return 64


#: The forward runs in two passes (from 2 chunks on; :func:`_mlstm_fwd_states_kernel`, then
#: :func:`_mlstm_fwd_chunk_kernel`) where a program's state tile (:func:`_tiles`: padded head dim x value columns) has
#: at least this many elements, else in one (:func:`_mlstm_fwd_kernel`). The same products in the same order (on GPUs
#: up to the rounding of the compiled products: 1 bf16 unit in the last place of h). Without gradients the two passes
#: write and read the states in addition. On an H200 (``benchmarks/triton_mlstm_variants.py``, 2026-11-30, sixth
#: session, ``benchmarks/results/triton_mlstm_two_pass.md``), two passes against one: at 256x4x1024x96 (128 x 128,
#: where the one-pass program spills 208 registers) forward 1.26 against 1.54 ms, forward+backward 4.51 against
#: 4.79 ms; at 128x4x256x128 (128 x 64) forward 0.335 against 0.348 ms; at 128x4x1024x64 (64 x 64, no spills)
#: forward 0.294 against 0.271 ms, forward+backward 1.098 against 1.075 ms.
TWO_PASS_FORWARD_MIN_STATE = 128 * 64


#: Launch settings of every kernel of this module. 8 warps: ptxas (sm_90, bf16) spills fewer registers than with 4
#: at every head dim and chunk size tried (static counts, not timings). ``benchmarks/triton_mlstm_speed.py --warps
#: --stages`` times other settings side by side.
LAUNCH = {"num_warps": 8, "num_stages": 1}
#: Launch settings timed faster than ``LAUNCH`` for a (padded head dim, block_v) pair on an H200, forward+backward,
#: each against 8 warps in the same run: (128, 128), head dim 96 padded at 256x4x1024x96: 8.99 against 9.83 ms
#: (``benchmarks/results/triton_mlstm_launch_sweep.md``); (64, 64) at 128x4x1024x64: 1.62 against 1.85 ms, and
#: (256, 64) at 128x4x64x256: 1.29 against 1.49 ms (``triton_mlstm_unet_sweep.md``; there (128, 64) was faster
#: with 8 warps, 1.51 against 1.82 ms, and keeps ``LAUNCH``). Other pairs keep ``LAUNCH``.
TUNED_LAUNCH = {(128, 128): {"num_warps": 4, "num_stages": 1}, (64, 64): {"num_warps": 4, "num_stages": 1},
                (256, 64): {"num_warps": 4, "num_stages": 1}}


#: ``num_warps`` of single kernels, overriding the launch settings above for them: keys ``"forward"``,
#: ``"forward_states"``, ``"forward_chunks"``, ``"backward_states"``, ``"backward_chunks"`` (:func:`_mlstm_fwd_kernel`,
#: :func:`_mlstm_fwd_states_kernel`, :func:`_mlstm_fwd_chunk_kernel`, :func:`_mlstm_bwd_states_kernel`,
#: :func:`_mlstm_bwd_chunk_kernel`), for all tiles or, with ``@BDxBV`` (the padded head dim and the value columns of
#: :func:`_tiles`), for those tiles only (which wins); a kernel not named here runs with those settings.
#:
#: - The two state passes at 8 warps: compiled for an H200 (sm_90, bf16, ``benchmarks/triton_mlstm_registers.py``,
#:   static counts, not times) at head dim 96 they spill 424 and 704 bytes at 4 warps and none at 8.
#: - The backward's chunk kernel at 8 warps, except at the tiles of head dim 96 (128 x 128), where 4 warps were
#:   faster: forward+backward on an H200 (``benchmarks/triton_mlstm_variants.py``, 2026-11-30, sixth session,
#:   ``benchmarks/results/triton_mlstm_two_pass.md``) 3.56 against 4.51 ms at 256x4x1024x96, though ptxas spills
#:   124 registers there at 4 warps and 72 at 8; at 128x4x1024x64 8 warps were faster (1.10 against 1.24 ms). With
#:   one chunk the kernel does what the former reverse loop did, which was faster at 8 warps (1.428 against 1.824 ms
#:   at 128x4x64x256, ``triton_mlstm_speed.md`` of 2026-11-30).
#: - 8 warps for the one-pass forward were slower (1.87 and 1.84 ms at two U-Net shapes, same source).
#: - State passes over value blocks of 64 columns (twice the programs, no extra work) were no faster at 256x4x1024x96:
#:   3.51 ms at 4 warps, 4.55 at 8, against 3.52 (``triton_mlstm_state_blocks.md``); not kept.
KERNEL_WARPS: dict[str, int] = {"forward_states": 8, "backward_states": 8, "backward_chunks": 8,
                                "backward_chunks@128x128": 4}
KERNELS = ("forward", "forward_states", "forward_chunks", "backward_states", "backward_chunks")


def _kernel_meta(meta: dict, kernel: str) -> dict:
    """The launch metadata ``meta`` with ``num_warps`` of :data:`KERNEL_WARPS` for ``kernel`` at the tiles of
    ``meta`` (``"kernel@BDxBV"``), else for ``kernel``, if it has one."""
    names = {key.split("@")[0] for key in KERNEL_WARPS}
    if kernel not in KERNELS or not names <= set(KERNELS):
        raise ValueError(f"KERNEL_WARPS keys must be among {', '.join(KERNELS)} (each optionally with @BDxBV); "
                         f"got {sorted(KERNEL_WARPS)}")
    for key in (f"{kernel}@{meta['BD']}x{meta['BV']}", kernel):
        if key in KERNEL_WARPS:
            return {**meta, "num_warps": KERNEL_WARPS[key]}
    return meta


def _tiles(dqk: int, dv: int, block_v: int | None = None) -> tuple[int, int]:
    """``(BD, BV)``: the padded q/k head dim and the value columns per program the kernels run with."""
    return max(16, _next_pow2(dqk)), block_v or _default_block_v(dv, dqk)


def _launch_config(BD: int, BV: int) -> dict:
    return dict(TUNED_LAUNCH.get((BD, BV), LAUNCH))


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a.float() * b.float()).sum(-1)`` in one pass over contiguous ``a``, ``b`` (no float32 copies)."""
    n, dv, rows = a.numel() // a.shape[-1], a.shape[-1], 32
    out = torch.empty(a.shape[:-1], dtype=torch.float32, device=a.device)
    _row_dot_kernel[(triton.cdiv(n, rows),)](a, b, out, n, DV=dv, BDV=max(16, _next_pow2(dv)), ROWS=rows)
    return out


def _prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


class _MLSTMChunkwiseTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f, chunk_size, eps, block_v, constant_normaliser):
        B, NH, S, D = q.shape
        DV = v.shape[-1]
        L = min(chunk_size, S)
        if L < 16 or L & (L - 1) or S % L:
            raise ValueError(f"steps ({S}) must be a multiple of the chunk size ({L}), a power of two >= 16")
        if not (q.dtype == k.dtype == v.dtype) or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
            raise ValueError("q, k, v must share dtype and (batch, heads, steps); q and k their head dim")
        if i.shape != q.shape[:3] or f.shape != q.shape[:3]:
            raise ValueError("gates i, f must have shape (batch, heads, steps)")
        q, k, v, i, f = (x.contiguous() for x in (q, k, v, i, f))
        BD, BV = _tiles(D, DV, block_v)
        if BV < 16 or BV & (BV - 1):
            raise ValueError(f"block_v ({BV}) must be a power of two >= 16")
        NC, BH = S // L, B * NH
        save = any(ctx.needs_input_grad[:5])
        h = torch.empty_like(v)
        f32 = dict(dtype=torch.float32, device=q.device)
        m = ntil = c_states = n_states = h  # never written unless needed
        two_pass = NC > 1 and BD * BV >= TWO_PASS_FORWARD_MIN_STATE
        if save:
            m, ntil = torch.empty(B, NH, S, **f32), torch.empty(B, NH, S, **f32)
        if save or two_pass:
            # C in the input dtype: both passes use it only rounded to that dtype, as an operand of a product
            c_states = torch.empty(BH, NC, D, DV, dtype=q.dtype, device=q.device)
            n_states = torch.empty(BH, NC, D, **f32)
        nvb = triton.cdiv(DV, BV)
        meta = dict(D=D, DV=DV, L=L, BD=BD, BV=BV, PREC=_prec(q.dtype), **_launch_config(BD, BV))
        if two_pass:
            m_states = torch.empty(BH, NC, **f32)
            _mlstm_fwd_states_kernel[(BH, nvb)](k, v, i, f, c_states, n_states, m_states, S, NC,
                                                **_kernel_meta(meta, "forward_states"))
            _mlstm_fwd_chunk_kernel[(BH, nvb, NC)](
                q, k, v, i, f, h, m, ntil, c_states, n_states, m_states, D**-0.5, eps, S, NC, SAVE=save,
                **_kernel_meta(meta, "forward_chunks"))
        else:
            _mlstm_fwd_kernel[(BH, nvb)](
                q, k, v, i, f, h, m, ntil, c_states, n_states, D**-0.5, eps, S, NC, SAVE=save,
                **_kernel_meta(meta, "forward"))
        if save:
            ctx.save_for_backward(q, k, v, i, f, h, m, ntil, c_states, n_states)
            ctx.config = (eps, constant_normaliser, meta)
        return h

    @staticmethod
    def backward(ctx, dh):
        q, k, v, i, f, h, m, ntil, c_states, n_states = ctx.saved_tensors
        eps, constant, meta = ctx.config
        B, NH, S, D = q.shape
        DV = v.shape[-1]
        BH, NC, BV = B * NH, S // meta["L"], meta["BV"]
        dh = dh.contiguous()
        delta = _row_dot(dh, h)  # dh . h
        terms = normaliser_terms(delta, m, ntil, eps, constant)  # den, dn~ (0 with constant), ...
        den, dntil = terms[:2]

        nvb = triton.cdiv(DV, BV)
        # One value block (head dims up to 64, and 96): the kernel writes dq, dk in the input dtype and di whole,
        # with no float32 parts to sum and cast afterwards; several: float32 parts per value block.
        part_dtype = q.dtype if nvb == 1 else torch.float32
        dq_part = torch.empty(nvb, B, NH, S, D, dtype=part_dtype, device=q.device)
        dk_part = torch.empty_like(dq_part)
        di_part = torch.empty(nvb, B, NH, S, dtype=torch.float32, device=q.device)
        dv = torch.empty_like(v)
        scalars = (i, f, dh, m, den, dntil)
        later = NC > 1
        dc_states, dn_states = c_states, n_states  # not read with one chunk
        if later:  # the state gradients at the chunks' ends, as the forward's states (and so in the same dtypes)
            dc_states, dn_states = torch.empty_like(c_states), torch.empty_like(n_states)
            _mlstm_bwd_states_kernel[(BH, nvb)](q, *scalars, dc_states, dn_states, D**-0.5, S, NC,
                                                **_kernel_meta(meta, "backward_states"))
        _mlstm_bwd_chunk_kernel[(BH, nvb, NC)](
            q, k, v, *scalars, c_states, n_states, dc_states, dn_states, dq_part, dk_part, dv, di_part,
            D**-0.5, S, NC, BH * S, LATER=later, **_kernel_meta(meta, "backward_chunks"))
        dq, dk = (dq_part[0], dk_part[0]) if nvb == 1 else (dq_part.sum(0), dk_part.sum(0))
        di, df = gate_gradients(delta, m, ntil, i, f, di_part, terms, eps, constant)
        return dq.to(q.dtype), dk.to(k.dtype), dv, di.to(i.dtype), df.to(f.dtype), None, None, None, None


def mlstm_chunkwise_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    chunk_size: int = 64,
    eps: float = 1e-6,
    block_v: int | None = None,
    constant_normaliser: bool = False,
) -> torch.Tensor:
    """Causal mLSTM over a whole sequence, chunkwise in Triton, differentiable in q, k, v, i and f.

    :param q: queries ``(batch, heads, steps, head_dim_qk)``; scaled by ``head_dim_qk ** -0.5`` inside
    :param k: keys ``(batch, heads, steps, head_dim_qk)``
    :param v: values ``(batch, heads, steps, head_dim_v)`` (same dtype as q and k: float32, bfloat16 or float16)
    :param i: input-gate pre-activations ``(batch, heads, steps)``
    :param f: forget-gate pre-activations ``(batch, heads, steps)``
    :param chunk_size: steps per chunk (a power of two >= 16, capped at ``steps``); ``steps`` must be a multiple
    :param eps: added to the normaliser
    :param block_v: value columns per program (default: see :func:`_default_block_v`)
    :param constant_normaliser: gradient convention: ``False`` the exact gradient of the formula, ``True`` the
        stabiliser and the denominator held constant (as ``mlstm_kernels``' TFLA kernels); the output is the same
    :return: hidden states ``(batch, heads, steps, head_dim_v)`` in the dtype of v

    Sets ``DISABLE_LLVM_OPT=1`` in the environment if it is unset (Triton reads it when it compiles a kernel).
    """
    if triton is None:
        raise ImportError("mlstm_chunkwise_triton needs the 'triton' package, which is not installed")
    # Compile as the library's TFLA path and every speed figure of this kernel do: with Triton 3.6's LLVM optimiser
    # off (seisbench_xlstm.kernels.resolve_kernel). A CUDA fault at head dim 96 (bf16) once came from a process that
    # had it on; with it on the same test passed on 2026-11-30 (benchmarks/results/triton_mlstm_speed.md). A value the
    # user set is kept.
    os.environ.setdefault("DISABLE_LLVM_OPT", "1")
    return _MLSTMChunkwiseTriton.apply(q, k, v, i, f, chunk_size, eps, block_v, bool(constant_normaliser))
