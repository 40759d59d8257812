"""The Triton kernels of :mod:`seisbench_xlstm.triton_mlstm` and their per-chunk math (formulation, design and
launch settings: that module's docstring). Layouts: q, k ``(batch*heads, steps, DHQK)``, v, h ``(batch*heads, steps,
DHHV)``, gates ``(batch*heads, steps)``, per-chunk states ``(batch*heads, chunks, DHQK, DHHV)``, all contiguous; or
q, k (and dq, dk) the two halves of rows of ``QK_ROW = 2 * DHQK`` values, one tensor ``(batch*heads, steps, 2 *
DHQK)`` (the kernels' ``QK_ROW``; 0: DHQK, separate tensors).

Without the ``triton`` package this module defines nothing but ``triton = tl = None``.
"""

from __future__ import annotations

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
    def _chunk_offsets(pid_bh, c, S, offs_l, offs_d, offs_v, D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
                       QK_ROW: tl.constexpr):
        """Steps, q/k offsets and value offsets of chunk ``c`` of this program's sequence and value block."""
        t = c * L + offs_l
        ROW: tl.constexpr = D if QK_ROW == 0 else QK_ROW
        qk_off = pid_bh * S * ROW + t[:, None] * ROW + offs_d[None, :]
        return t, qk_off, pid_bh * S * DV + t[:, None] * DV + offs_v[None, :]

    @triton.jit
    def _qk_part_offset(pid_v, BHS, D: tl.constexpr, QK_ROW: tl.constexpr):
        """Offset of value block ``pid_v``'s part in a dq or dk tensor of parts (each ``BHS`` rows of q/k's row
        length)."""
        ROW: tl.constexpr = D if QK_ROW == 0 else QK_ROW
        return pid_v.to(tl.int64) * BHS * ROW

    @triton.jit
    def _load_chunk(Q, K, V, pid_bh, c, S, offs_l, offs_d, offs_v, mask_d, mask_v,
                    D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, QK_ROW: tl.constexpr):
        """Steps, q/k and value offsets and the q, k, v tiles of chunk ``c`` of this program's sequence and value
        block."""
        t, qk_off, v_off = _chunk_offsets(pid_bh, c, S, offs_l, offs_d, offs_v, D, DV, L, QK_ROW)
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
        SAVE: tl.constexpr, PREC: tl.constexpr, QK_ROW: tl.constexpr = 0,
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
                                                    D, DV, L, QK_ROW)
            ig, fc, f_last = _chunk_gates(I, Fg, pid_bh * S + c * L, offs_l, L)
            if SAVE:  # state at the start of this chunk
                _store_state(C_states, N_states, C, n, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, first, D, DV)
            h, m, ntil = _fwd_chunk_output(q, k, v, ig, fc, offs_l, C, n, m_state, scale, eps, PREC)
            _fwd_store_output(H, M_out, N_out, h, m, ntil, pid_bh * S + t, v_off, mask_v, first, SAVE)
            C, n, m_state = _fwd_state_update(k, v, ig, fc, f_last, C, n, m_state, PREC)
            c += 1

    @triton.jit
    def _fwd_states_step(K, V, I, Fg, C_states, N_states, M_states, pid_bh, c, S, NC, offs_l, offs_d, offs_v, mask_d,
                         mask_v, first, C, n, m_state, D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr,
                         PREC: tl.constexpr, QK_ROW: tl.constexpr):
        """Chunk ``c`` of the forward's state pass: stores the state at its start, returns the one at its end."""
        _store_state(C_states, N_states, C, n, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, first, D, DV)
        tl.store(M_states + pid_bh * NC + c, m_state, mask=first)
        _t, qk_off, v_off = _chunk_offsets(pid_bh, c, S, offs_l, offs_d, offs_v, D, DV, L, QK_ROW)
        k = tl.load(K + qk_off, mask=mask_d[None, :], other=0.0)
        v = tl.load(V + v_off, mask=mask_v[None, :], other=0.0)
        ig, fc, f_last = _chunk_gates(I, Fg, pid_bh * S + c * L, offs_l, L)
        return _fwd_state_update(k, v, ig, fc, f_last, C, n, m_state, PREC)

    @triton.jit
    def _mlstm_fwd_states_kernel(
        K, V, I, Fg, C_states, N_states, M_states, S, NC,
        D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
        PREC: tl.constexpr, STAGES: tl.constexpr, QK_ROW: tl.constexpr = 0,
    ):
        """The states (C, n, stabiliser) at the start of every chunk: one program per (batch*head, value block)
        over the chunks in order, with only the state update per chunk (the first pass of the two-pass forward).
        ``STAGES`` > 1: a software-pipelined loop (the next chunks' loads issued before this chunk's product), else a
        plain one."""
        pid_bh, pid_v, offs_l, offs_d, offs_v, mask_d, mask_v = _program_block(D, DV, L, BD, BV)
        first = pid_v == 0
        C, n, m_state = _zero_state(BD, BV)
        if STAGES > 1:
            for c in tl.range(0, NC, num_stages=STAGES):
                C, n, m_state = _fwd_states_step(K, V, I, Fg, C_states, N_states, M_states, pid_bh, c, S, NC, offs_l,
                                                 offs_d, offs_v, mask_d, mask_v, first, C, n, m_state, D, DV, L, PREC,
                                                 QK_ROW)
        else:
            c = pid_v * 0  # a Triton value (see the forward kernel)
            while c < NC:
                C, n, m_state = _fwd_states_step(K, V, I, Fg, C_states, N_states, M_states, pid_bh, c, S, NC, offs_l,
                                                 offs_d, offs_v, mask_d, mask_v, first, C, n, m_state, D, DV, L, PREC,
                                                 QK_ROW)
                c += 1

    @triton.jit
    def _mlstm_fwd_chunk_states_kernel(
        K, V, I, Fg, DELTA_C, DELTA_N, F_LAST, M_LOC, S, NC,
        D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
        PREC: tl.constexpr, QK_ROW: tl.constexpr = 0,
    ):
        """Each chunk's own contribution to the state, all chunks in parallel (the first half of the forward's state
        pass as a scan; :func:`_state_scan_kernel` the second): one program per (batch*head, value block, chunk
        ``c < NC - 1``) writes ``dC_c = sum_j exp(a_Lj - m_c) k_j v_j^T`` (input dtype), ``dn_c`` and the scalars
        ``F`` of the chunk's last step and ``m_c = max_j a_Lj`` (the chunk's state update from a zero state)."""
        pid_bh, pid_v, offs_l, offs_d, offs_v, mask_d, mask_v = _program_block(D, DV, L, BD, BV)
        c = tl.program_id(2)
        first = pid_v == 0
        _t, qk_off, v_off = _chunk_offsets(pid_bh, c, S, offs_l, offs_d, offs_v, D, DV, L, QK_ROW)
        k = tl.load(K + qk_off, mask=mask_d[None, :], other=0.0)
        v = tl.load(V + v_off, mask=mask_v[None, :], other=0.0)
        ig, fc, f_last = _chunk_gates(I, Fg, pid_bh * S + c * L, offs_l, L)
        zero_c, zero_n, m_none = _zero_state(BD, BV)
        dC, dn, m_loc = _fwd_state_update(k, v, ig, fc, f_last, zero_c, zero_n, m_none, PREC)
        _store_state(DELTA_C, DELTA_N, dC, dn, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, first, D, DV)
        tl.store(F_LAST + pid_bh * NC + c, f_last, mask=first)
        tl.store(M_LOC + pid_bh * NC + c, m_loc, mask=first)

    @triton.jit
    def _state_scan_step(C_states, N_states, M_states, DELTA_C, DELTA_N, SCAL_A, SCAL_B, pid_bh, c, NC, rows, offs_v,
                         mask_r, mask_v, first, C, n, m, store_m, last, D: tl.constexpr, DV: tl.constexpr,
                         STABILISED: tl.constexpr):
        """Chunk ``c`` of :func:`_state_scan_kernel`: stores the state, returns it updated with the chunk's own
        contribution (unless ``last``)."""
        _store_state(C_states, N_states, C, n, pid_bh, c, NC, rows, offs_v, mask_r, mask_v, first, D, DV)
        if STABILISED:
            tl.store(M_states + pid_bh * NC + c, m, mask=store_m)
            f_last = tl.load(SCAL_A + pid_bh * NC + c)
            m_loc = tl.load(SCAL_B + pid_bh * NC + c)
            m_next = tl.maximum(f_last + m, m_loc)
            g, w = tl.exp(f_last + m - m_next), tl.exp(m_loc - m_next)
        else:
            m_next, g, w = m, tl.load(SCAL_A + pid_bh * NC + c), 1.0
        d_c, d_n = _load_state(DELTA_C, DELTA_N, pid_bh, c, NC, rows, offs_v, mask_r & ~last, mask_v, D, DV)
        return g * C + w * d_c.to(tl.float32), g * n + w * d_n, m_next

    @triton.jit
    def _state_scan_kernel(
        C_states, N_states, M_states, DELTA_C, DELTA_N, SCAL_A, SCAL_B, NC,
        D: tl.constexpr, DV: tl.constexpr, RB: tl.constexpr, BV: tl.constexpr,
        REVERSE: tl.constexpr, STABILISED: tl.constexpr, STAGES: tl.constexpr,
    ):
        """The second half of a state pass as a scan: one program per (batch*head, value block, block of ``RB`` rows
        of the state) walks the chunks (in reverse with ``REVERSE``), stores the state (``C_states`` in their dtype,
        ``N_states`` by value block 0) and adds the chunk's own contribution ``DELTA_C``, ``DELTA_N``:
        element-wise work, so the sequential part is one multiply-add a chunk. ``STABILISED`` (forward): the
        stabiliser follows ``m' = max(F_last + m, m_c)`` from ``SCAL_A = F_last`` and ``SCAL_B = m_c`` of every
        chunk, the state ``exp(F_last + m - m') C + exp(m_c - m') dC_c`` and ``M_states`` gets ``m``; else (the
        backward's state gradients) ``C' = SCAL_A_c * C + dC_c``."""
        pid_bh = tl.program_id(0).to(tl.int64)
        pid_v = tl.program_id(1)
        rows = tl.program_id(2) * RB + tl.arange(0, RB)
        offs_v = pid_v * BV + tl.arange(0, BV)
        mask_r, mask_v = rows < D, offs_v < DV
        first = pid_v == 0
        store_m = first & (tl.program_id(2) == 0)
        C, n, m = _zero_state(RB, BV)
        if STAGES > 1:
            for j in tl.range(0, NC, num_stages=STAGES):
                c = NC - 1 - j if REVERSE else j
                C, n, m = _state_scan_step(C_states, N_states, M_states, DELTA_C, DELTA_N, SCAL_A, SCAL_B, pid_bh, c,
                                           NC, rows, offs_v, mask_r, mask_v, first, C, n, m, store_m, j == NC - 1,
                                           D, DV, STABILISED)
        else:
            j = pid_v * 0  # a Triton value (see the forward kernel)
            while j < NC:
                c = NC - 1 - j if REVERSE else j
                C, n, m = _state_scan_step(C_states, N_states, M_states, DELTA_C, DELTA_N, SCAL_A, SCAL_B, pid_bh, c,
                                           NC, rows, offs_v, mask_r, mask_v, first, C, n, m, store_m, j == NC - 1,
                                           D, DV, STABILISED)
                j += 1

    @triton.jit
    def _mlstm_fwd_chunk_kernel(
        Q, K, V, I, Fg, H, M_out, N_out, C_states, N_states, M_states,
        scale, eps, S, NC,
        D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
        SAVE: tl.constexpr, PREC: tl.constexpr, QK_ROW: tl.constexpr = 0,
    ):
        """The outputs of one chunk from the state at its start (the second pass of the two-pass forward): one
        program per (batch*head, value block, chunk), all chunks in parallel."""
        pid_bh, pid_v, offs_l, offs_d, offs_v, mask_d, mask_v = _program_block(D, DV, L, BD, BV)
        c = tl.program_id(2)
        t, _qk_off, v_off, q, k, v = _load_chunk(Q, K, V, pid_bh, c, S, offs_l, offs_d, offs_v, mask_d, mask_v,
                                                 D, DV, L, QK_ROW)
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
    def _bwd_chunk_dscores(v, dnum, dnt, ig, fc, m, offs_l, scale, PREC: tl.constexpr):
        """The intra-chunk gates ``p = exp(a_tj - m_t)`` of one chunk and the gradient of its ungated score
        products ``ds`` (in the dtype of dnum)."""
        p = tl.exp(_log_decay(ig, fc, offs_l) - m[:, None])
        dctil = tl.dot(dnum, tl.trans(v), input_precision=PREC) + dnt[:, None]
        return p, (dctil * p * scale).to(dnum.dtype)

    @triton.jit
    def _bwd_chunk_ds(q, k, v, dnum, dnt, ig, fc, m, offs_l, scale, PREC: tl.constexpr):
        """The gated, stabilised intra-chunk scores ``ctil`` (float32) and the gradient of their ungated products
        ``ds`` (in the dtype of q) of one chunk."""
        p, ds = _bwd_chunk_dscores(v, dnum, dnt, ig, fc, m, offs_l, scale, PREC)
        return tl.dot(q, tl.trans(k), input_precision=PREC) * scale * p, ds

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
    def _bwd_states_step(Q, I, Fg, DH, M_in, DEN, DNT, DC_states, DN_states, pid_bh, c, S, NC, offs_l, offs_d, offs_v,
                         mask_d, mask_v, first, ncol, dC, dn, scale, D: tl.constexpr, DV: tl.constexpr,
                         L: tl.constexpr, PREC: tl.constexpr, QK_ROW: tl.constexpr):
        """Chunk ``c`` of the backward's state pass: stores the state gradient at its end, returns the one at its
        start."""
        _store_state(DC_states, DN_states, dC, dn, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, first, D, DV)
        t, qk_off, v_off = _chunk_offsets(pid_bh, c, S, offs_l, offs_d, offs_v, D, DV, L, QK_ROW)
        q = tl.load(Q + qk_off, mask=mask_d[None, :], other=0.0)
        dnum, dnt, _ig, fc, f_last, m, m_prev, m_last = _bwd_chunk_scalars(
            I, Fg, DH, M_in, DEN, DNT, pid_bh, c, S, t, v_off, offs_l, mask_v, ncol, q, L)
        return _bwd_state_update(q, dnum, dnt, fc, f_last, m, m_prev, m_last, dC, dn, scale, PREC)

    @triton.jit
    def _mlstm_bwd_chunk_states_kernel(
        Q, I, Fg, DH, M_in, DEN, DNT, DELTA_C, DELTA_N, G,
        scale, S, NC,
        D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
        PREC: tl.constexpr, QK_ROW: tl.constexpr = 0,
    ):
        """Each chunk's own contribution to the state gradient, all chunks ``c >= 1`` in parallel (one program per
        (batch*head, value block, chunk - 1)): ``dC_c`` (input dtype), ``dn_c`` and the decay ``G_c`` of the state
        gradient across the chunk, for :func:`_state_scan_kernel` (``REVERSE``, not ``STABILISED``)."""
        pid_bh, pid_v, offs_l, offs_d, offs_v, mask_d, mask_v = _program_block(D, DV, L, BD, BV)
        c = tl.program_id(2) + 1
        first = pid_v == 0
        t, qk_off, v_off = _chunk_offsets(pid_bh, c, S, offs_l, offs_d, offs_v, D, DV, L, QK_ROW)
        q = tl.load(Q + qk_off, mask=mask_d[None, :], other=0.0)
        dnum, dnt, _ig, fc, f_last, m, m_prev, m_last = _bwd_chunk_scalars(
            I, Fg, DH, M_in, DEN, DNT, pid_bh, c, S, t, v_off, offs_l, mask_v, first.to(tl.float32), q, L)
        zero_c, zero_n, _unused = _zero_state(BD, BV)
        dC, dn = _bwd_state_update(q, dnum, dnt, fc, f_last, m, m_prev, m_last, zero_c, zero_n, scale, PREC)
        _store_state(DELTA_C, DELTA_N, dC, dn, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, first, D, DV)
        tl.store(G + pid_bh * NC + c, tl.exp(f_last + m_prev - m_last), mask=first)

    @triton.jit
    def _mlstm_bwd_states_kernel(
        Q, I, Fg, DH, M_in, DEN, DNT, DC_states, DN_states,
        scale, S, NC,
        D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
        PREC: tl.constexpr, STAGES: tl.constexpr, QK_ROW: tl.constexpr = 0,
    ):
        """The state gradients (dC, dn) at the end of every chunk: one program per (batch*head, value block) over
        the chunks in reverse, with only the state-gradient update per chunk; stores them as the forward stores
        the states (dC in the input dtype, dn by value block 0). ``STAGES``: as :func:`_mlstm_fwd_states_kernel`."""
        pid_bh, pid_v, offs_l, offs_d, offs_v, mask_d, mask_v = _program_block(D, DV, L, BD, BV)
        first = pid_v == 0
        ncol = first.to(tl.float32)
        dC, dn, _unused = _zero_state(BD, BV)
        if STAGES > 1:
            for j in tl.range(0, NC - 1, num_stages=STAGES):  # chunks NC - 1 down to 1
                dC, dn = _bwd_states_step(Q, I, Fg, DH, M_in, DEN, DNT, DC_states, DN_states, pid_bh, NC - 1 - j, S,
                                          NC, offs_l, offs_d, offs_v, mask_d, mask_v, first, ncol, dC, dn, scale,
                                          D, DV, L, PREC, QK_ROW)
        else:
            c = pid_v * 0 + NC - 1  # a Triton value (see the forward kernel)
            while c > 0:
                dC, dn = _bwd_states_step(Q, I, Fg, DH, M_in, DEN, DNT, DC_states, DN_states, pid_bh, c, S, NC,
                                          offs_l, offs_d, offs_v, mask_d, mask_v, first, ncol, dC, dn, scale,
                                          D, DV, L, PREC, QK_ROW)
                c -= 1
        _store_state(DC_states, DN_states, dC, dn, pid_bh, pid_v * 0, NC, offs_d, offs_v, mask_d, mask_v, first,
                     D, DV)

    @triton.jit
    def _bwd_chunk_store_dq(C_states, N_states, DQ, pid_bh, pid_v, c, NC, BHS, qk_off, offs_d, offs_v, mask_d, mask_v,
                            k, dnum, dnt, ds, fc, m, m_prev, scale, D: tl.constexpr, DV: tl.constexpr,
                            PREC: tl.constexpr, QK_ROW: tl.constexpr):
        """Writes dq of one chunk (this value block's part) from ``ds`` and the state at the chunk's start."""
        c_start, n_start = _load_state(C_states, N_states, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, D, DV)
        dq = _bwd_chunk_dq(ds, k, dnum, dnt, fc, m, m_prev, c_start, n_start, scale, PREC)
        tl.store(DQ + _qk_part_offset(pid_v, BHS, D, QK_ROW) + qk_off, dq.to(DQ.dtype.element_ty), mask=mask_d[None, :])

    @triton.jit
    def _mlstm_bwd_dq_kernel(
        K, V, I, Fg, DH, M_in, DEN, DNT, C_states, N_states, DQ,
        scale, S, NC, BHS,
        D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
        PREC: tl.constexpr, QK_ROW: tl.constexpr = 0,
    ):
        """dq of one chunk alone (:func:`_mlstm_bwd_chunk_kernel` with ``DQ_HERE`` false does the rest): one
        program per (batch*head, value block, chunk); three products instead of the seven of the joint kernel's
        chunk, and fewer tiles alive at once."""
        pid_bh, pid_v, offs_l, offs_d, offs_v, mask_d, mask_v = _program_block(D, DV, L, BD, BV)
        c = tl.program_id(2)
        ncol = (pid_v == 0).to(tl.float32)
        t, qk_off, v_off = _chunk_offsets(pid_bh, c, S, offs_l, offs_d, offs_v, D, DV, L, QK_ROW)
        k = tl.load(K + qk_off, mask=mask_d[None, :], other=0.0)
        v = tl.load(V + v_off, mask=mask_v[None, :], other=0.0)
        dnum, dnt, ig, fc, _f_last, m, m_prev, _m_last = _bwd_chunk_scalars(
            I, Fg, DH, M_in, DEN, DNT, pid_bh, c, S, t, v_off, offs_l, mask_v, ncol, k, L)
        _p, ds = _bwd_chunk_dscores(v, dnum, dnt, ig, fc, m, offs_l, scale, PREC)
        _bwd_chunk_store_dq(C_states, N_states, DQ, pid_bh, pid_v, c, NC, BHS, qk_off, offs_d, offs_v, mask_d, mask_v,
                            k, dnum, dnt, ds, fc, m, m_prev, scale, D, DV, PREC, QK_ROW)

    @triton.jit
    def _mlstm_bwd_chunk_kernel(
        Q, K, V, I, Fg, DH, M_in, DEN, DNT, C_states, N_states, DC_states, DN_states, DQ, DK, DVout, DI,
        scale, S, NC, BHS,
        D: tl.constexpr, DV: tl.constexpr, L: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
        PREC: tl.constexpr, LATER: tl.constexpr, QK_ROW: tl.constexpr = 0, DQ_HERE: tl.constexpr = True,
    ):
        """dq, dk, dv and the input-gate term ``di_j = k_j . dk_j`` of one chunk: one program per (batch*head,
        value block, chunk), all chunks in parallel, given the states at the chunks' start (from the forward) and
        the state gradients at their end (from :func:`_mlstm_bwd_states_kernel`; ``LATER`` false: one chunk, no
        later steps, none needed). dq, dk and di are this value block's part: in their final dtype with one value
        block, else float32 parts per value block, summed afterwards. ``DQ_HERE`` false: no dq
        (:func:`_mlstm_bwd_dq_kernel` writes it)."""
        pid_bh, pid_v, offs_l, offs_d, offs_v, mask_d, mask_v = _program_block(D, DV, L, BD, BV)
        c = tl.program_id(2)
        # the normaliser is an extra value column of ones; only value block 0 counts its contributions
        ncol = (pid_v == 0).to(tl.float32)
        part = pid_v.to(tl.int64) * BHS
        t, qk_off, v_off, q, k, v = _load_chunk(Q, K, V, pid_bh, c, S, offs_l, offs_d, offs_v, mask_d, mask_v,
                                                D, DV, L, QK_ROW)
        dnum, dnt, ig, fc, f_last, m, m_prev, m_last = _bwd_chunk_scalars(
            I, Fg, DH, M_in, DEN, DNT, pid_bh, c, S, t, v_off, offs_l, mask_v, ncol, q, L)
        ctil, ds = _bwd_chunk_ds(q, k, v, dnum, dnt, ig, fc, m, offs_l, scale, PREC)
        if DQ_HERE:
            _bwd_chunk_store_dq(C_states, N_states, DQ, pid_bh, pid_v, c, NC, BHS, qk_off, offs_d, offs_v, mask_d,
                                mask_v, k, dnum, dnt, ds, fc, m, m_prev, scale, D, DV, PREC, QK_ROW)
        if LATER:
            dC, dn = _load_state(DC_states, DN_states, pid_bh, c, NC, offs_d, offs_v, mask_d, mask_v, D, DV)
        else:
            dC, dn, _unused = _zero_state(BD, BV)
        dk, dv = _bwd_chunk_dk_dv(ctil, ds, q, k, v, dnum, ig, fc, f_last, m_last, dC, dn, ncol, PREC)
        tl.store(DK + _qk_part_offset(pid_v, BHS, D, QK_ROW) + qk_off, dk.to(DK.dtype.element_ty), mask=mask_d[None, :])
        tl.store(DVout + v_off, dv.to(DVout.dtype.element_ty), mask=mask_v[None, :])
        tl.store(DI + part + pid_bh * S + t, tl.sum(k.to(tl.float32) * dk, axis=1))
