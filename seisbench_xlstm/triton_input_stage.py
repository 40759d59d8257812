"""The input stage of the mLSTM branches in Triton: the causal conv and its SiLU, the headwise q/k/v projections and
the gates, written straight into the mLSTM kernel's layout, forward and backward.

Per direction ``d``, window ``b``, step ``t`` and channel ``c`` of the branch's inner width (kernel size up to 4,
steps before the first are zero; ``W_q``, ``W_k``, ``W_v`` block-diagonal with blocks of ``block`` channels, the
headwise projections; ``G_c``, ``G_m`` the gate weights folded into the inputs of q, k and v)::

    x_conv[t, c] = silu(bias[c] + sum_j x[t + j - 3, c] * w[c, j])
    q = x_conv W_q^T,  k = x_conv W_k^T,  v = x W_v^T          (per head: qk = [q | k], v, both (heads, t, head_dim))
    gates[t, g] = x_conv[t] . G_c[g] + x[t] . G_m[g] + gate_bias[g]      (g < heads: input gates, else forget gates)

the function of ``seisbench_xlstm.bimlstm``'s PyTorch path (its conv stage, then ``_qkv_gates_per_head`` with q and
k as one tensor), which the tests compare with.

Why. That path runs as about a dozen passes over activation-sized tensors forward (the conv, the per-head layout
copies of its input and output, one product each for q/k and v and two for the gates) and more backward (their
transposed products, the weights' gradients as products over all tokens, the layout copies back, the conv's
backward): about 65 ms of recipe 1's ~210 ms step on an H200 (2026-11-30 profile,
``benchmarks/results/pretrain_profile_recipe1_b128_de3a214.txt``). Here the forward reads ``x`` once and writes
``x_conv``, ``qk``, ``v`` and the gates; the backward reads the gradients of those and ``x`` and writes the
gradient of ``x`` (and the conv's pre-activation gradient once, which its transposed conv reads back).

Measured. Slower, so not the library's default: recipe 1 on an H200 took 322.2 ms a step against 209.9 with the
PyTorch stage (2026-11-30, ``benchmarks/results/pretrain_gpu.md``, fourteenth session), at 51.19 against 61.73 GiB
peak memory. The kernels took 34.7 (forward) and 102.1 and 39.0 ms (backward) a step, bound by instructions and
latency at 12.5 to 18.8% occupancy, DRAM 5 to 13% busy (Nsight Compute,
``benchmarks/results/triton_input_stage_ncu_2x128x1024x384.txt``).

How. The channels are taken in sub-blocks of :data:`SUB_CHANNELS` (32 or 16, within one head, a multiple of the
block size), on which the projections are small dense products (each sub-block's block-diagonal matrix, on tensor
cores) and the gates a product with the sub-block's columns of the folded weights, summed over sub-blocks. The
weights' gradients are the transposed products summed over each program's rows (deterministic partial sums, added
up afterwards; only the diagonal blocks of the projections' are kept). Nothing is saved for the backward but ``x``:
``x_conv`` is recomputed where needed.

The kernels are registered operators (``torch.ops.seisbench_xlstm.mlstm_input_stage`` and its backward), which
``torch.compile`` keeps inside its graphs. Which stage the layers run: :data:`seisbench_xlstm.bimlstm.INPUT_STAGE`.

Layouts: ``x`` ``(directions, batch, steps, channels)``, last stride 1; conv ``w`` ``(directions, channels, K)``,
``bias`` ``(directions, channels)``; headwise weights ``(directions, channels / block, block, block)``; folded gate
weights ``(directions, 2 * heads, channels)``, their bias ``(directions, 2 * heads)``. Outputs: ``x_conv`` as ``x``;
``qk`` ``(directions * heads, batch, steps, 2 * head_dim)``, ``v`` ``(directions * heads, batch, steps, head_dim)``
in the dtype of ``x``; gates ``(2, directions * heads, batch, steps)`` float32 (input, forget). Products with bf16
inputs accumulate in float32; float32 inputs run them in full float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .triton_layout import autotuned, interpreter_setting, last_axis_contiguous, leading_strides
from .triton_mlstm_kernels import tl, triton

#: Channel sub-block widths, in order of preference: the first that divides the head dim and is a multiple of the
#: projections' block size is taken (else the stage cannot run: :func:`sub_channels` returns 0).
SUB_CHANNELS = (32, 16)
#: The conv's largest kernel size (smaller ones are zero-padded in front: the same causal conv).
TAPS = 4
#: Launch settings the autotuner chooses from per channel count and head dim on the first call of each kernel (not
#: under the interpreter, which runs the first): steps per program (forward) or per loop step (backward), warps,
#: pipelining stages. Compiled for sm_90 at recipe 1's shape (``ptxas -v``, bf16, head dim 96), none of these spills
#: but the first backward kernel's with 8 warps (12 bytes); the forward spilled 300 bytes at 128 steps with 4 warps,
#: the first backward kernel 184 to 312 bytes at 16 steps with 2 warps, 32 with 4 and 64 with 8.
FORWARD_TUNING = [{"BLOCK_T": 32, "num_warps": 4, "num_stages": 1}, {"BLOCK_T": 64, "num_warps": 4, "num_stages": 1},
                  {"BLOCK_T": 64, "num_warps": 8, "num_stages": 1}, {"BLOCK_T": 128, "num_warps": 8, "num_stages": 1}]
BACKWARD_CONV_TUNING = [{"BLOCK_T": 16, "num_warps": 4, "num_stages": 1},
                        {"BLOCK_T": 32, "num_warps": 8, "num_stages": 1}]
BACKWARD_X_TUNING = [{"BLOCK_T": 16, "num_warps": 4, "num_stages": 1}, {"BLOCK_T": 32, "num_warps": 4, "num_stages": 1},
                     {"BLOCK_T": 64, "num_warps": 8, "num_stages": 1}]
#: Steps per backward program, looped over in blocks of the tuned ``BLOCK_T`` (fixed: the partial sums of the weights'
#: gradients are laid out by it).
BACKWARD_ROWS = 256


def sub_channels(head_dim: int, block: int) -> int:
    """The channel sub-block width of the kernels for ``head_dim`` and projection block size ``block``, 0 if none
    of :data:`SUB_CHANNELS` fits."""
    return next((s for s in SUB_CHANNELS if head_dim % s == 0 and s % block == 0), 0)


if triton is not None:

    @triton.jit
    def _shifted(xw, t, shift, cols, steps, sx_t):
        """The input tile ``x[t + shift]`` at channels ``cols``, float32, zero outside ``[0, steps)``."""
        rows = t + shift
        mask = ((rows >= 0) & (rows < steps))[:, None]
        return tl.load(xw + rows[:, None] * sx_t + cols[None, :], mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _taps(xw, t, cols, steps, sx_t):
        """The four shifted input tiles ``x[t - 3] .. x[t]`` of the conv."""
        return (_shifted(xw, t, -3, cols, steps, sx_t), _shifted(xw, t, -2, cols, steps, sx_t),
                _shifted(xw, t, -1, cols, steps, sx_t), _shifted(xw, t, 0, cols, steps, sx_t))

    @triton.jit
    def _conv_weights(CW, CB, d, channels, cols):
        """The four taps and the bias of channels ``cols`` of direction ``d``, float32 rows ``(1, SUB)``."""
        base = CW + (d * channels + cols) * 4
        w0 = tl.load(base)[None, :]
        w1 = tl.load(base + 1)[None, :]
        w2 = tl.load(base + 2)[None, :]
        w3 = tl.load(base + 3)[None, :]
        return w0, w1, w2, w3, tl.load(CB + d * channels + cols)[None, :]

    @triton.jit
    def _projection(WT, d, cb, subs, which, SUB: tl.constexpr, TRANSPOSED: tl.constexpr):
        """Sub-block ``cb``'s projection matrix ``which`` (0: q, 1: k, 2: v), ``(SUB, SUB)``, input channels along the
        rows (``TRANSPOSED``: along the columns)."""
        s = tl.arange(0, SUB)
        return tl.load(WT + ((d * subs + cb) * 3 + which) * SUB * SUB + s[:, None] * (1 if TRANSPOSED else SUB)
                       + s[None, :] * (SUB if TRANSPOSED else 1))

    @triton.jit
    def _gate_columns(GT, d, cb, subs, which, SUB: tl.constexpr, GP: tl.constexpr):
        """Sub-block ``cb``'s columns of the gate weights ``which`` (0: on ``x_conv``, 1: on ``x``), ``(SUB, GP)``."""
        base = GT + ((d * subs + cb) * 2 + which) * SUB * GP
        return tl.load(base + tl.arange(0, SUB)[:, None] * GP + tl.arange(0, GP)[None, :])

    @triton.jit
    def _gate_rows(GT, d, cb, subs, which, SUB: tl.constexpr, GP: tl.constexpr):
        """The same, transposed: ``(GP, SUB)``."""
        base = GT + ((d * subs + cb) * 2 + which) * SUB * GP
        return tl.load(base + tl.arange(0, SUB)[None, :] * GP + tl.arange(0, GP)[:, None])

    @triton.jit
    def _head_rows(d, heads, batch, steps, b, t, cb, HD: tl.constexpr, SUB: tl.constexpr):
        """Row indices ``(direction * heads + head, window, t)`` of the per-head tensors for sub-block ``cb``, and
        the sub-block's columns within its head."""
        head = (cb * SUB) // HD
        rows = ((d * heads + head) * batch + b) * steps + t
        return rows, (cb * SUB) % HD + tl.arange(0, SUB)

    @triton.jit
    def _token_offsets(d, batch, b, steps, t, channels, cols):
        """Offsets of steps ``t`` and channels ``cols`` of window ``b`` of direction ``d`` in a contiguous
        ``(directions, batch, steps, channels)`` tensor, ``(BLOCK_T, SUB)``."""
        return ((d * batch + b) * steps + t)[:, None] * channels + cols[None, :]

    @triton.jit
    def _gate_offsets(G, d, n_dir, heads, batch, steps, b, t, GP: tl.constexpr):
        """Pointers of the gates ``(2, directions * heads, batch, steps)`` for this program's steps ``t`` and gate
        columns ``(BLOCK_T, GP)`` (columns ``g < heads``: input gates, then forget gates), and their mask."""
        g = tl.arange(0, GP)
        which, head = g // heads, g % heads
        ptr = G + ((which * n_dir + d) * heads + head)[None, :] * (batch * steps) + b * steps + t[:, None]
        return ptr, (t < steps)[:, None] & (g < 2 * heads)[None, :]

    @triton.jit
    def _sub_block_program(batch, channels, SUB: tl.constexpr):
        """This program's (direction, window) index (grid axis 0), direction, window, channel sub-block (axis 2), the
        sub-block's channels and the number of sub-blocks."""
        pid = tl.program_id(0).to(tl.int64)
        cb = tl.program_id(2)
        return pid, pid // batch, pid % batch, cb, cb * SUB + tl.arange(0, SUB), channels // SUB

    @triton.jit
    def _store_blocks(PART, acc, SUB: tl.constexpr, BS: tl.constexpr):
        """The diagonal ``BS x BS`` blocks of ``acc`` ``(SUB, SUB)`` (``[in, out]``) at ``PART`` as ``(SUB / BS, out,
        in)``, the layout of the headwise weights."""
        i, o = tl.arange(0, SUB)[:, None], tl.arange(0, SUB)[None, :]
        tl.store(PART + (o // BS) * BS * BS + (o % BS) * BS + i % BS, acc, mask=(i // BS) == (o // BS))

    @triton.jit
    def _store_gate_columns(PART, acc, heads, SUB: tl.constexpr, GP: tl.constexpr):
        """The ``2 * heads`` gate columns of ``acc`` ``(SUB, GP)`` at ``PART`` as ``(2 * heads, SUB)``."""
        i, g = tl.arange(0, SUB)[:, None], tl.arange(0, GP)[None, :]
        tl.store(PART + g * SUB + i, acc, mask=g < 2 * heads)

    @triton.jit
    def _gate_gradients(DG, d, n_dir, heads, batch, steps, b, t, GP: tl.constexpr):
        """The gates' gradients ``(BLOCK_T, GP)`` at steps ``t`` (zero in the padded columns), float32."""
        ptr, mask = _gate_offsets(DG, d, n_dir, heads, batch, steps, b, t, GP)
        return tl.load(ptr, mask=mask, other=0.0)

    @triton.jit
    def _input_fwd_kernel(
        X, CW, CB, WT, GT, XC, QK, V, GPART, sx_d, sx_b, sx_t, n_dir, batch, steps, channels, heads,
        HD: tl.constexpr, SUB: tl.constexpr, GP: tl.constexpr, BLOCK_T: tl.constexpr, PREC: tl.constexpr,
    ):
        # Program (direction, window), BLOCK_T steps, sub-block cb: x_conv, q, k, v of the sub-block's channels and
        # its part of the gates (the parts of all sub-blocks are summed afterwards).
        pid, d, b, cb, cols, subs = _sub_block_program(batch, channels, SUB)
        t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        tmask = (t < steps)[:, None]
        x0, x1, x2, x3 = _taps(X + d * sx_d + b * sx_b, t, cols, steps, sx_t)
        w0, w1, w2, w3, bias = _conv_weights(CW, CB, d, channels, cols)
        pre = bias + w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3
        xc = (pre * tl.sigmoid(pre)).to(XC.dtype.element_ty)
        tl.store(XC + _token_offsets(d, batch, b, steps, t, channels, cols), xc, mask=tmask)
        xm = x3.to(XC.dtype.element_ty)
        rows, hc = _head_rows(d, heads, batch, steps, b, t, cb, HD, SUB)
        q = tl.dot(xc, _projection(WT, d, cb, subs, 0, SUB, False), input_precision=PREC)
        tl.store(QK + rows[:, None] * (2 * HD) + hc[None, :], q.to(QK.dtype.element_ty), mask=tmask)
        k = tl.dot(xc, _projection(WT, d, cb, subs, 1, SUB, False), input_precision=PREC)
        tl.store(QK + rows[:, None] * (2 * HD) + HD + hc[None, :], k.to(QK.dtype.element_ty), mask=tmask)
        v = tl.dot(xm, _projection(WT, d, cb, subs, 2, SUB, False), input_precision=PREC)
        tl.store(V + rows[:, None] * HD + hc[None, :], v.to(V.dtype.element_ty), mask=tmask)
        gates = tl.dot(xc, _gate_columns(GT, d, cb, subs, 0, SUB, GP), input_precision=PREC)
        gates += tl.dot(xm, _gate_columns(GT, d, cb, subs, 1, SUB, GP), input_precision=PREC)
        ptr, mask = _gate_offsets(GPART + cb.to(tl.int64) * (2 * n_dir * heads * batch * steps), d, n_dir, heads,
                                  batch, steps, b, t, GP)
        tl.store(ptr, gates, mask=mask)

    @triton.jit
    def _input_bwd_conv_kernel(
        DXC, DQK, DG, X, CW, CB, WT, GT, DPRE, PART, sx_d, sx_b, sx_t, sd_d, sd_b, sd_t,
        n_dir, batch, steps, channels, heads,
        HD: tl.constexpr, SUB: tl.constexpr, GP: tl.constexpr, BS: tl.constexpr, ROWS: tl.constexpr,
        BLOCK_T: tl.constexpr, PREC: tl.constexpr,
    ):
        # Program (direction, window), ROWS steps, sub-block cb: the gradient of x_conv (from q, k, the gates and
        # the output stage), of the conv's pre-activation (written for the second kernel), and this program's
        # partial sums of the gradients of the q and k matrices, the gates' x_conv weights and the conv's taps and
        # bias.
        pid, d, b, cb, cols, subs = _sub_block_program(batch, channels, SUB)
        DT = X.dtype.element_ty
        w0, w1, w2, w3, bias = _conv_weights(CW, CB, d, channels, cols)
        xw = X + d * sx_d + b * sx_b
        acc_q = tl.zeros([SUB, SUB], dtype=tl.float32)
        acc_k = tl.zeros([SUB, SUB], dtype=tl.float32)
        acc_g = tl.zeros([SUB, GP], dtype=tl.float32)
        dw0 = tl.zeros([SUB], dtype=tl.float32)
        dw1 = tl.zeros([SUB], dtype=tl.float32)
        dw2 = tl.zeros([SUB], dtype=tl.float32)
        dw3 = tl.zeros([SUB], dtype=tl.float32)
        db = tl.zeros([SUB], dtype=tl.float32)
        t0 = tl.program_id(1) * ROWS
        end = tl.minimum(t0 + ROWS, steps)
        while t0 < end:
            t = t0 + tl.arange(0, BLOCK_T)
            tmask = (t < steps)[:, None]
            rows, hc = _head_rows(d, heads, batch, steps, b, t, cb, HD, SUB)
            dq = tl.load(DQK + rows[:, None] * (2 * HD) + hc[None, :], mask=tmask, other=0.0).to(DT)
            dk = tl.load(DQK + rows[:, None] * (2 * HD) + HD + hc[None, :], mask=tmask, other=0.0).to(DT)
            dg = _gate_gradients(DG, d, n_dir, heads, batch, steps, b, t, GP).to(DT)
            dxc = tl.load(DXC + d * sd_d + b * sd_b + t[:, None] * sd_t + cols[None, :], mask=tmask, other=0.0)
            # the weights loaded where they are used (L1 hits): held across the loop, they spilled (ptxas, sm_90)
            dxc = dxc.to(tl.float32) + tl.dot(dq, _projection(WT, d, cb, subs, 0, SUB, True), input_precision=PREC)
            dxc += tl.dot(dk, _projection(WT, d, cb, subs, 1, SUB, True), input_precision=PREC)
            dxc += tl.dot(dg, _gate_rows(GT, d, cb, subs, 0, SUB, GP), input_precision=PREC)
            x0, x1, x2, x3 = _taps(xw, t, cols, steps, sx_t)
            pre = bias + w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3
            sig = tl.sigmoid(pre)
            xc = (pre * sig).to(DT)
            dpre = tl.where(tmask, dxc * sig * (1.0 + pre * (1.0 - sig)), 0.0)
            tl.store(DPRE + _token_offsets(d, batch, b, steps, t, channels, cols), dpre, mask=tmask)
            xct = tl.trans(xc)
            acc_q += tl.dot(xct, dq, input_precision=PREC)
            acc_k += tl.dot(xct, dk, input_precision=PREC)
            acc_g += tl.dot(xct, dg, input_precision=PREC)
            dw0 += tl.sum(dpre * x0, axis=0)
            dw1 += tl.sum(dpre * x1, axis=0)
            dw2 += tl.sum(dpre * x2, axis=0)
            dw3 += tl.sum(dpre * x3, axis=0)
            db += tl.sum(dpre, axis=0)
            t0 += BLOCK_T
        # this program's partial sums: q's and k's blocks, the gates' columns, the conv's taps and bias
        part = PART + ((pid * tl.num_programs(1) + tl.program_id(1)) * subs + cb) * (
            2 * SUB * BS + 2 * heads * SUB + 5 * SUB)
        _store_blocks(part, acc_q, SUB, BS)
        _store_blocks(part + SUB * BS, acc_k, SUB, BS)
        _store_gate_columns(part + 2 * SUB * BS, acc_g, heads, SUB, GP)
        taps = part + 2 * SUB * BS + 2 * heads * SUB + tl.arange(0, SUB)
        tl.store(taps, dw0)
        tl.store(taps + SUB, dw1)
        tl.store(taps + 2 * SUB, dw2)
        tl.store(taps + 3 * SUB, dw3)
        tl.store(taps + 4 * SUB, db)

    @triton.jit
    def _input_bwd_x_kernel(
        DPRE, DV, DG, X, CW, CB, WT, GT, DX, PART, sx_d, sx_b, sx_t, n_dir, batch, steps, channels, heads,
        HD: tl.constexpr, SUB: tl.constexpr, GP: tl.constexpr, BS: tl.constexpr, ROWS: tl.constexpr,
        BLOCK_T: tl.constexpr, PREC: tl.constexpr,
    ):
        # Same programs: the gradient of x (the conv's transpose of the pre-activation gradient, v's and the gates'
        # transposed products) and the partial sums of the gradients of the v matrix and the gates' x weights.
        pid, d, b, cb, cols, subs = _sub_block_program(batch, channels, SUB)
        DT = X.dtype.element_ty
        w0, w1, w2, w3, _ = _conv_weights(CW, CB, d, channels, cols)
        xw = X + d * sx_d + b * sx_b
        pw = DPRE + (d * batch + b) * steps * channels
        acc_v = tl.zeros([SUB, SUB], dtype=tl.float32)
        acc_g = tl.zeros([SUB, GP], dtype=tl.float32)
        t0 = tl.program_id(1) * ROWS
        end = tl.minimum(t0 + ROWS, steps)
        while t0 < end:
            t = t0 + tl.arange(0, BLOCK_T)
            tmask = (t < steps)[:, None]
            rows, hc = _head_rows(d, heads, batch, steps, b, t, cb, HD, SUB)
            dv = tl.load(DV + rows[:, None] * HD + hc[None, :], mask=tmask, other=0.0).to(DT)
            dg = _gate_gradients(DG, d, n_dir, heads, batch, steps, b, t, GP).to(DT)
            dx = (w3 * _shifted(pw, t, 0, cols, steps, channels) + w2 * _shifted(pw, t, 1, cols, steps, channels)
                  + w1 * _shifted(pw, t, 2, cols, steps, channels) + w0 * _shifted(pw, t, 3, cols, steps, channels))
            dx += tl.dot(dv, _projection(WT, d, cb, subs, 2, SUB, True), input_precision=PREC)
            dx += tl.dot(dg, _gate_rows(GT, d, cb, subs, 1, SUB, GP), input_precision=PREC)
            tl.store(DX + _token_offsets(d, batch, b, steps, t, channels, cols), dx.to(DX.dtype.element_ty), mask=tmask)
            xt = tl.trans(tl.load(xw + t[:, None] * sx_t + cols[None, :], mask=tmask, other=0.0))
            acc_v += tl.dot(xt, dv, input_precision=PREC)
            acc_g += tl.dot(xt, dg, input_precision=PREC)
            t0 += BLOCK_T
        part = PART + ((pid * tl.num_programs(1) + tl.program_id(1)) * subs + cb) * (SUB * BS + 2 * heads * SUB)
        _store_blocks(part, acc_v, SUB, BS)
        _store_gate_columns(part + SUB * BS, acc_g, heads, SUB, GP)


def build_launchers() -> None:
    """(Re)builds the three kernels' launchers from the tuning lists: autotuned, or the kernels themselves under the
    interpreter. Runs at import; benchmarks that change the lists call it again."""
    global _fwd_launcher, _bwd_conv_launcher, _bwd_x_launcher
    _fwd_launcher = autotuned(_input_fwd_kernel, FORWARD_TUNING, key=["channels", "HD"])
    _bwd_conv_launcher = autotuned(_input_bwd_conv_kernel, BACKWARD_CONV_TUNING, key=["channels", "HD"])
    _bwd_x_launcher = autotuned(_input_bwd_x_kernel, BACKWARD_X_TUNING, key=["channels", "HD"])


if triton is not None:
    build_launchers()


def _sub_block_matrices(w: torch.Tensor, sub: int) -> torch.Tensor:
    """Headwise weights ``(directions, channels / block, block, block)`` (``[out, in]`` per block) to each channel
    sub-block's block-diagonal matrix, transposed: ``(directions, channels / sub, sub, sub)`` ``[in, out]``."""
    n_dir, blocks, block, _ = w.shape
    per_sub = sub // block
    eye = torch.eye(per_sub, dtype=w.dtype, device=w.device)
    grouped = w.reshape(n_dir, blocks // per_sub, per_sub, block, block)  # (d, subs, k, out, in)
    full = grouped[:, :, :, :, None, :] * eye[:, None, :, None]  # (d, subs, k, out, k', in)
    return full.reshape(n_dir, blocks // per_sub, sub, sub).transpose(-1, -2)


def _gate_columns_tensor(gate_c: torch.Tensor, gate_m: torch.Tensor, sub: int, gp: int) -> torch.Tensor:
    """Folded gate weights ``(directions, 2 * heads, channels)`` (two of them) to ``(directions, channels / sub, 2,
    sub, gp)``: each sub-block's columns, gates zero-padded to ``gp``."""
    n_dir, gates, channels = gate_c.shape
    both = F.pad(torch.stack([gate_c, gate_m], dim=1), (0, 0, 0, gp - gates))  # (d, 2, gp, channels)
    return both.view(n_dir, 2, gp, channels // sub, sub).permute(0, 3, 1, 4, 2)


def launch_constants(dtype: torch.dtype, head_dim: int, block: int, gates: int) -> dict:
    """The kernels' compile-time constants for inputs of ``dtype``, head dim, projection block size and ``gates``
    (``2 * heads``) gate columns (padded to ``GP``, at least 16 for the products)."""
    return {"HD": head_dim, "SUB": sub_channels(head_dim, block), "GP": max(16, triton.next_power_of_2(gates)),
            "PREC": "ieee" if dtype == torch.float32 else "tf32"}


def _sub_block_sums(parts: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Partial sums ``(directions, programs, subs, sum(sizes))`` summed over the programs and split into pieces of
    ``sizes`` values a sub-block, each ``(directions, subs, size)``."""
    return list(parts.sum(1).split(sizes, dim=-1))


def _per_channel(piece: torch.Tensor, rows: int) -> torch.Tensor:
    """A piece ``(directions, subs, rows * sub)`` laid out ``(rows, sub)`` per sub-block to ``(directions, rows,
    channels)``."""
    n_dir, subs, size = piece.shape
    return piece.view(n_dir, subs, rows, size // rows).transpose(1, 2).reshape(n_dir, rows, -1)


def _prepared(x, conv_w, conv_b, w_q, w_k, w_v, gate_c, gate_m, consts):
    """The kernels' weights: conv taps ``(directions, channels, 4)`` and bias in float32; the projections'
    sub-block matrices ``(directions, subs, 3, SUB, SUB)`` and the gates' columns in the dtype of ``x``."""
    sub, gp = consts["SUB"], consts["GP"]
    taps = F.pad(conv_w.float(), (TAPS - conv_w.shape[-1], 0)).contiguous()
    wt = torch.stack([_sub_block_matrices(w.to(x.dtype), sub) for w in (w_q, w_k, w_v)], dim=2).contiguous()
    gt = _gate_columns_tensor(gate_c.to(x.dtype), gate_m.to(x.dtype), sub, gp).contiguous()
    return taps, conv_b.float().contiguous(), wt, gt


@torch.library.custom_op("seisbench_xlstm::mlstm_input_stage", mutates_args=())
def _input_stage(
    x: torch.Tensor, conv_w: torch.Tensor, conv_b: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
    w_v: torch.Tensor, gate_c: torch.Tensor, gate_m: torch.Tensor, gate_b: torch.Tensor, heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward kernel as an operator: ``x_conv``, ``qk``, ``v`` and the gates (module docstring)."""
    n_dir, batch, steps, channels = x.shape
    head_dim = channels // heads
    consts = launch_constants(x.dtype, head_dim, w_q.shape[-1], gate_c.shape[1])
    taps, bias, wt, gt = _prepared(x, conv_w, conv_b, w_q, w_k, w_v, gate_c, gate_m, consts)
    x_conv, qk, v = _empty_activations(x, heads)
    subs = channels // consts["SUB"]
    parts = torch.empty(subs, 2, n_dir * heads, batch, steps, dtype=torch.float32, device=x.device)
    _fwd_launcher[lambda meta: (n_dir * batch, triton.cdiv(steps, meta["BLOCK_T"]), subs)](
        x, taps, bias, wt, gt, x_conv, qk, v, parts, *leading_strides(x, 3), n_dir, batch, steps, channels, heads,
        **consts, **interpreter_setting(FORWARD_TUNING),
    )
    # the sub-blocks' parts summed; the biases (directions, [input, forget] x heads) -> (2, directions * heads)
    gates = parts.sum(0) + gate_b.float().view(n_dir, 2, heads).transpose(0, 1).reshape(2, -1, 1, 1)
    return x_conv, qk, v, gates


def _empty_activations(x: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uninitialised ``x_conv``, ``qk`` and ``v`` for input ``x`` (the gates come from the sub-blocks' sum)."""
    n_dir, batch, steps, channels = x.shape
    head_dim = channels // heads
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
            x.new_empty(n_dir * heads, batch, steps, 2 * head_dim), x.new_empty(n_dir * heads, batch, steps, head_dim))


@_input_stage.register_fake
def _(x, conv_w, conv_b, w_q, w_k, w_v, gate_c, gate_m, gate_b, heads):
    n_dir, batch, steps, _ = x.shape
    gates = torch.empty(2, n_dir * heads, batch, steps, dtype=torch.float32, device=x.device)
    return (*_empty_activations(x, heads), gates)


@torch.library.custom_op("seisbench_xlstm::mlstm_input_stage_backward", mutates_args=())
def _input_stage_backward(
    dx_conv: torch.Tensor, dqk: torch.Tensor, dv: torch.Tensor, dgates: torch.Tensor, x: torch.Tensor,
    conv_w: torch.Tensor, conv_b: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor,
    gate_c: torch.Tensor, gate_m: torch.Tensor, gate_b: torch.Tensor, heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    """Gradients of ``x``, the conv's taps and bias, the three headwise weights, the two folded gate weights and the
    gates' bias (each in its input's dtype) from those of the four outputs."""
    n_dir, batch, steps, channels = x.shape
    head_dim = channels // heads
    block = w_q.shape[-1]
    consts = launch_constants(x.dtype, head_dim, block, gate_c.shape[1])
    sub = consts["SUB"]
    subs = channels // sub
    taps, bias, wt, gt = _prepared(x, conv_w, conv_b, w_q, w_k, w_v, gate_c, gate_m, consts)
    dx_conv, dqk, dv, dgates = (t.contiguous() for t in (dx_conv, dqk, dv, dgates))
    dpre = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    grid = (n_dir * batch, triton.cdiv(steps, BACKWARD_ROWS), subs)
    gates = 2 * heads
    sizes1, sizes2 = [sub * block, sub * block, gates * sub, 5 * sub], [sub * block, gates * sub]
    parts1 = torch.empty(n_dir, batch * grid[1], subs, sum(sizes1), dtype=torch.float32, device=x.device)
    parts2 = torch.empty(n_dir, batch * grid[1], subs, sum(sizes2), dtype=torch.float32, device=x.device)
    _bwd_conv_launcher[grid](
        dx_conv, dqk, dgates, x, taps, bias, wt, gt, dpre, parts1, *leading_strides(x, 3),
        *leading_strides(dx_conv, 3), n_dir, batch, steps, channels, heads, BS=block, ROWS=BACKWARD_ROWS, **consts,
        **interpreter_setting(BACKWARD_CONV_TUNING),
    )
    _bwd_x_launcher[grid](
        dpre, dv, dgates, x, taps, bias, wt, gt, dx, parts2, *leading_strides(x, 3), n_dir, batch, steps, channels,
        heads, BS=block, ROWS=BACKWARD_ROWS, **consts, **interpreter_setting(BACKWARD_X_TUNING),
    )
    dw_q, dw_k, dgate_c, conv = _sub_block_sums(parts1, sizes1)
    dw_v, dgate_m = _sub_block_sums(parts2, sizes2)
    conv = _per_channel(conv, 5)  # (directions, taps + bias, channels)
    dconv_w = conv[:, TAPS - conv_w.shape[-1]:TAPS].transpose(1, 2)
    dgate_b = dgates.sum((2, 3)).view(2, n_dir, heads).transpose(0, 1).reshape(n_dir, gates)
    weight_grads = [(g.reshape(w.shape), w) for g, w in ((dw_q, w_q), (dw_k, w_k), (dw_v, w_v))]
    weight_grads += [(_per_channel(dgate_c, gates), gate_c), (_per_channel(dgate_m, gates), gate_m)]
    return (dx, dconv_w.to(conv_w.dtype).contiguous(), conv[:, TAPS].to(conv_b.dtype).contiguous(),
            *(g.to(w.dtype).contiguous() for g, w in weight_grads), dgate_b.to(gate_b.dtype).contiguous())


@_input_stage_backward.register_fake
def _(dx_conv, dqk, dv, dgates, x, conv_w, conv_b, w_q, w_k, w_v, gate_c, gate_m, gate_b, heads):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device)
                 for t in (x, conv_w, conv_b, w_q, w_k, w_v, gate_c, gate_m, gate_b))


def _save_for_backward(ctx, inputs, output):
    *tensors, heads = inputs
    ctx.save_for_backward(*tensors)
    ctx.heads = heads


def _backward(ctx, dx_conv, dqk, dv, dgates):
    return (*_input_stage_backward(dx_conv, dqk, dv, dgates, *ctx.saved_tensors, ctx.heads), None)


_input_stage.register_autograd(_backward, setup_context=_save_for_backward)


def mlstm_input_stage(
    x: torch.Tensor, conv_w: torch.Tensor, conv_b: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
    w_v: torch.Tensor, gate_c: torch.Tensor, gate_m: torch.Tensor, gate_b: torch.Tensor, heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mLSTM branches' conv, SiLU, q/k/v and gates (module docstring) in one Triton kernel, backward in two.

    :param x: branch inputs ``(directions, batch, steps, channels)``
    :param conv_w: conv taps ``(directions, channels, kernel_size <= 4)``; :param conv_b: ``(directions, channels)``
    :param w_q: headwise weights ``(directions, channels / block, block, block)``, as ``w_k`` and ``w_v``
    :param gate_c: gate weights on ``x_conv`` ``(directions, 2 * heads, channels)``; :param gate_m: on ``x``
    :param gate_b: gate biases ``(directions, 2 * heads)``
    :param heads: mLSTM heads per direction (``channels / heads`` must admit a width of :data:`SUB_CHANNELS`)
    :return: ``x_conv`` ``(directions, batch, steps, channels)``, ``qk`` ``(directions * heads, batch, steps, 2 *
        head_dim)``, ``v`` ``(directions * heads, batch, steps, head_dim)`` and the input and forget gates
        ``(directions * heads, batch, steps)`` (float32)
    """
    if triton is None:
        raise RuntimeError("mlstm_input_stage needs the triton package")
    n_dir, batch, steps, channels = x.shape
    block = w_q.shape[-1]
    if heads < 1 or channels % heads or not sub_channels(channels // heads, block):
        raise ValueError(f"head dim {channels / heads:g} ({channels} channels, {heads} heads) with projection blocks "
                         f"of {block} admits no channel sub-block of {SUB_CHANNELS}")
    if conv_w.dim() != 3 or tuple(conv_w.shape[:2]) != (n_dir, channels) or conv_w.shape[-1] > TAPS:
        raise ValueError(f"conv_w must be {(n_dir, channels)} + (kernel_size <= {TAPS},), got {tuple(conv_w.shape)}")
    gate_shape, proj_shape = (n_dir, 2 * heads, channels), (n_dir, channels // block, block, block)
    for name, t, shape in (("conv_b", conv_b, (n_dir, channels)), ("gate_c", gate_c, gate_shape),
                           ("gate_m", gate_m, gate_shape), ("gate_b", gate_b, (n_dir, 2 * heads)),
                           ("w_q", w_q, proj_shape), ("w_k", w_k, proj_shape), ("w_v", w_v, proj_shape)):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {shape}, got {tuple(t.shape)}")
    x_conv, qk, v, gates = _input_stage(last_axis_contiguous(x), conv_w, conv_b, w_q, w_k, w_v, gate_c, gate_m,
                                        gate_b, heads)
    return x_conv, qk, v, gates[0], gates[1]
