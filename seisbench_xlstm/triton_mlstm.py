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
block, summed afterwards. Both state passes can instead run as a scan (:data:`STATE_PASS`: every chunk's own
contribution in parallel, then a pass that only multiplies and adds), and dq in a kernel of its own
(:data:`BACKWARD_DQ`); by default both at head dim 96 only, where they were timed faster.
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

from .triton_layout import interpreted
from .triton_mlstm_kernels import triton
from .triton_mlstm_scalars import gate_gradients, normaliser_terms

if triton is not None:
    from .triton_mlstm_kernels import (  # noqa: F401  (the kernels are this module's too, for benchmarks)
        _mlstm_bwd_chunk_kernel,
        _mlstm_bwd_chunk_states_kernel,
        _mlstm_bwd_dq_kernel,
        _mlstm_bwd_states_kernel,
        _mlstm_fwd_chunk_kernel,
        _mlstm_fwd_chunk_states_kernel,
        _mlstm_fwd_kernel,
        _mlstm_fwd_states_kernel,
        _row_dot_kernel,
        _state_scan_kernel,
    )


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


#: Software-pipelining stages of the two state passes' loops over the chunks (``tl.range(..., num_stages=...)``: the
#: loads of the next chunks are issued before this chunk's product); 1: a plain loop. The passes are sequential with
#: one program per (batch*head, value block), so they wait on memory. With 2 stages every global load of the loops is
#: a ``cp.async`` in the sm_90 PTX. On an H200 (``benchmarks/triton_mlstm_variants.py``, 2026-11-30, sixth session,
#: ``benchmarks/results/triton_mlstm_state_stages.md``; same values) forward+backward at 256x4x1024x96 3.18 ms with 2
#: stages and 3.15 with 3 against 3.53 ms with 1; recipe 1 240.8 against 248.9 ms a step.
STATE_PASS_STAGES = 2


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


#: ``num_warps`` of single kernels, overriding the launch settings above for them: keys of :data:`KERNELS`
#: (``"forward"``: :func:`_mlstm_fwd_kernel`, ``"forward_states"``: :func:`_mlstm_fwd_states_kernel` and so on;
#: ``"backward_dq"``: :func:`_mlstm_bwd_dq_kernel`, ``"state_scan"``: :func:`_state_scan_kernel`, whose default is
#: :data:`SCAN_WARPS`), for all tiles or, with ``@BDxBV`` (the padded head dim and the value columns of
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
KERNELS = ("forward", "forward_states", "forward_chunks", "backward_states", "backward_chunks", "backward_dq",
           "forward_chunk_states", "backward_chunk_states", "state_scan")


#: How the two state passes (the forward's states at the chunks' starts, the backward's state gradients at their
#: ends) run: ``"loop"``, one program per (batch*head, value block) loops over the chunks with a product a chunk
#: (:func:`_mlstm_fwd_states_kernel`, :func:`_mlstm_bwd_states_kernel`); ``"scan"``, every chunk's own
#: contribution in parallel (:func:`_mlstm_fwd_chunk_states_kernel`, :func:`_mlstm_bwd_chunk_states_kernel`, stored
#: in the input dtype), then a scan over the chunks that only multiplies and adds (:func:`_state_scan_kernel`, one
#: program per :data:`SCAN_ROWS` rows of a state); ``"auto"``, the scan at the tiles of :data:`SCAN_TILES`, else
#: the loop. The same values up to the rounding of the contributions to the input dtype. The loop is a chain of
#: products: at head dim 96 (tiles 128 x 128) one program an SM at 12.5% occupancy, 8 waves of 16 steps, DRAM
#: 18% busy (Nsight Compute on an H200, ``benchmarks/results/triton_mlstm_ncu.md``); the scan writes and reads the
#: contributions once more but has no chain of products. Measured on an H200 (2026-11-30, thirteenth session,
#: ``triton_mlstm_state_scan.md``, ``pretrain_gpu.md``): at 256x4x1024x96 forward 1.107 against 1.187 ms,
#: forward+backward 3.141 against 3.255; at 128x4x1024x64 (one-pass forward) 1.090 against 1.078 ms, at 128x4x256x128
#: (tiles 128 x 64) 1.666 against 1.169 ms (``triton_mlstm_backward_split.md``); recipe 2 (U-Net) 157.6 against
#: 155.6 ms a step.
STATE_PASS = "auto"
SCAN_TILES = ((128, 128),)
#: Rows of a state per program of the scan (:data:`STATE_PASS`), and its warps.
SCAN_ROWS = 32
SCAN_WARPS = 4


#: Where the backward computes dq: ``"joint"``, in the chunk kernel with dk and dv (seven products a chunk, one
#: computation of the chunk's scores); ``"separate"``, in a kernel of its own (:func:`_mlstm_bwd_dq_kernel`, three
#: products), the chunk kernel then doing dk and dv alone (six): two more products a chunk, fewer tiles alive in each
#: program (the joint kernel spills at head dim 96); ``"auto"``, separate at the tiles of :data:`SEPARATE_DQ_TILES`,
#: else joint. The same values. Measured as :data:`STATE_PASS`: forward+backward at 256x4x1024x96 3.181 against
#: 3.255 ms (3.066 against 3.141 with the scan), at 128x4x1024x64 1.105 against 1.078 ms; recipe 1 (both switches,
#: the sequential backbone, batch 128) 209.6 and 209.6 against 213.7 and 213.6 ms a step in turns, recipe 2 160.4
#: against 155.6 ms. dv in a third kernel as well (as many products as "separate", still fewer tiles alive) was
#: slower: 3.294 against 3.101 ms at 256x4x1024x96 with the scan, recipe 1 218.9 and 218.0 against 213.0 and 212.3
#: ms a step in turns (``triton_mlstm_backward_split.md``); removed again.
BACKWARD_DQ = "auto"
SEPARATE_DQ_TILES = ((128, 128),)


#: The switches :func:`_resolved` reads: their choices (the first the default, the second taken by ``"auto"``) and
#: the name of the constant that holds the tiles where ``"auto"`` takes the second.
_SWITCHES = {"STATE_PASS": (("loop", "scan"), "SCAN_TILES"),
             "BACKWARD_DQ": (("joint", "separate"), "SEPARATE_DQ_TILES")}


def _resolved(name: str, BD: int, BV: int) -> str:
    """The value of the switch ``name`` (:data:`STATE_PASS` or :data:`BACKWARD_DQ`: one of its choices, or
    ``"auto"``: the second choice at the tiles of its constant, else the first) for tiles ``(BD, BV)``."""
    choices, auto_tiles = _SWITCHES[name]
    value = globals()[name]
    if value == "auto":
        return choices[1] if (BD, BV) in globals()[auto_tiles] else choices[0]
    if value not in choices:
        raise ValueError(f"{name} must be 'auto', {choices[0]!r} or {choices[1]!r}, got {value!r}")
    return value


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


def _two_pass_forward(chunks: int, BD: int, BV: int) -> bool:
    """Whether a forward of ``chunks`` chunks at tiles ``(BD, BV)`` runs in two passes
    (:data:`TWO_PASS_FORWARD_MIN_STATE`)."""
    return chunks > 1 and BD * BV >= TWO_PASS_FORWARD_MIN_STATE


def _state_pass_stages() -> int:
    """:data:`STATE_PASS_STAGES`, or 1 under Triton's interpreter (which cannot run ``tl.range`` of a run-time
    bound)."""
    return 1 if interpreted() else STATE_PASS_STAGES


def _scan_states(c_states, n_states, m_states, delta_c, delta_n, scal_a, scal_b, meta: dict, reverse: bool) -> None:
    """:func:`_state_scan_kernel` over states ``(batch*head, chunks, DHQK, DHHV)`` in the value blocks of ``meta``:
    forward (stabilised, ``m_states`` written) or, ``reverse``, the backward's state gradients (``m_states``
    unused)."""
    BH, NC, D, DV = c_states.shape
    rows = min(SCAN_ROWS, meta["BD"])
    warps = _kernel_meta({"BD": meta["BD"], "BV": meta["BV"], "num_warps": SCAN_WARPS}, "state_scan")["num_warps"]
    _state_scan_kernel[(BH, triton.cdiv(DV, meta["BV"]), triton.cdiv(D, rows))](
        c_states, n_states, m_states, delta_c, delta_n, scal_a, scal_b, NC, D=D, DV=DV, RB=rows, BV=meta["BV"],
        REVERSE=reverse, STABILISED=not reverse, STAGES=_state_pass_stages(), num_warps=warps, num_stages=1)


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
    """``k`` None: ``q`` holds q and k as the two halves of each row (see :func:`mlstm_chunkwise_triton`)."""

    @staticmethod
    def forward(ctx, q, k, v, i, f, chunk_size, eps, block_v, constant_normaliser):
        qk_row = 0  # the kernels' QK_ROW: 0 for separate q and k
        if k is None:
            q = q.contiguous()
            qk_row = q.shape[-1]
            if qk_row % 2:
                raise ValueError(f"q and k together need an even last dim, got {qk_row}")
            q, k = q[..., :qk_row // 2], q[..., qk_row // 2:]
        B, NH, S, D = q.shape
        DV = v.shape[-1]
        L = min(chunk_size, S)
        if L < 16 or L & (L - 1) or S % L:
            raise ValueError(f"steps ({S}) must be a multiple of the chunk size ({L}), a power of two >= 16")
        if not (q.dtype == k.dtype == v.dtype) or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
            raise ValueError("q, k, v must share dtype and (batch, heads, steps); q and k their head dim")
        if i.shape != q.shape[:3] or f.shape != q.shape[:3]:
            raise ValueError("gates i, f must have shape (batch, heads, steps)")
        if not qk_row:
            q, k = q.contiguous(), k.contiguous()
        v, i, f = (x.contiguous() for x in (v, i, f))
        BD, BV = _tiles(D, DV, block_v)
        if BV < 16 or BV & (BV - 1):
            raise ValueError(f"block_v ({BV}) must be a power of two >= 16")
        NC, BH = S // L, B * NH
        save = any(ctx.needs_input_grad[:5])
        h = torch.empty_like(v)
        f32 = dict(dtype=torch.float32, device=q.device)
        m = ntil = c_states = n_states = h  # never written unless needed
        two_pass = _two_pass_forward(NC, BD, BV)
        if save:
            m, ntil = torch.empty(B, NH, S, **f32), torch.empty(B, NH, S, **f32)
        if save or two_pass:
            # C in the input dtype: both passes use it only rounded to that dtype, as an operand of a product
            c_states = torch.empty(BH, NC, D, DV, dtype=q.dtype, device=q.device)
            n_states = torch.empty(BH, NC, D, **f32)
        nvb = triton.cdiv(DV, BV)
        meta = dict(D=D, DV=DV, L=L, BD=BD, BV=BV, PREC=_prec(q.dtype), QK_ROW=qk_row, **_launch_config(BD, BV))
        if two_pass:
            m_states = torch.empty(BH, NC, **f32)
            if _resolved("STATE_PASS", BD, BV) == "scan":
                delta_c, delta_n = torch.empty_like(c_states), torch.empty_like(n_states)
                # zeros: the scan also reads the last chunk's scalars, and drops the update they make
                f_last, m_loc = torch.zeros(BH, NC, **f32), torch.zeros(BH, NC, **f32)
                _mlstm_fwd_chunk_states_kernel[(BH, nvb, NC - 1)](
                    k, v, i, f, delta_c, delta_n, f_last, m_loc, S, NC, **_kernel_meta(meta, "forward_chunk_states"))
                _scan_states(c_states, n_states, m_states, delta_c, delta_n, f_last, m_loc, meta, reverse=False)
            else:
                _mlstm_fwd_states_kernel[(BH, nvb)](k, v, i, f, c_states, n_states, m_states, S, NC,
                                                    STAGES=_state_pass_stages(), **_kernel_meta(meta, "forward_states"))
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
        qk_row = meta["QK_ROW"]
        if qk_row:  # dq and dk as the halves of one tensor's rows, as q and k came
            dqk_part = torch.empty(nvb, B, NH, S, qk_row, dtype=part_dtype, device=q.device)
            dq_part, dk_part = dqk_part[..., :D], dqk_part[..., D:]
        else:
            dq_part = torch.empty(nvb, B, NH, S, D, dtype=part_dtype, device=q.device)
            dk_part = torch.empty_like(dq_part)
        di_part = torch.empty(nvb, B, NH, S, dtype=torch.float32, device=q.device)
        dv = torch.empty_like(v)
        scalars = (i, f, dh, m, den, dntil)
        later = NC > 1
        dc_states, dn_states = c_states, n_states  # not read with one chunk
        if later:  # the state gradients at the chunks' ends, as the forward's states (and so in the same dtypes)
            dc_states, dn_states = torch.empty_like(c_states), torch.empty_like(n_states)
            if _resolved("STATE_PASS", meta["BD"], BV) == "scan":
                delta_c, delta_n = torch.empty_like(c_states), torch.empty_like(n_states)
                decay = torch.zeros(BH, NC, dtype=torch.float32, device=q.device)
                _mlstm_bwd_chunk_states_kernel[(BH, nvb, NC - 1)](
                    q, *scalars, delta_c, delta_n, decay, D**-0.5, S, NC, **_kernel_meta(meta, "backward_chunk_states"))
                _scan_states(dc_states, dn_states, decay, delta_c, delta_n, decay, decay, meta, reverse=True)
            else:
                _mlstm_bwd_states_kernel[(BH, nvb)](
                    q, *scalars, dc_states, dn_states, D**-0.5, S, NC, STAGES=_state_pass_stages(),
                    **_kernel_meta(meta, "backward_states"))
        dq_here = _resolved("BACKWARD_DQ", meta["BD"], BV) == "joint"
        if not dq_here:
            _mlstm_bwd_dq_kernel[(BH, nvb, NC)](k, v, *scalars, c_states, n_states, dq_part, D**-0.5, S, NC, BH * S,
                                                **_kernel_meta(meta, "backward_dq"))
        _mlstm_bwd_chunk_kernel[(BH, nvb, NC)](
            q, k, v, *scalars, c_states, n_states, dc_states, dn_states, dq_part, dk_part, dv, di_part,
            D**-0.5, S, NC, BH * S, LATER=later, DQ_HERE=dq_here, **_kernel_meta(meta, "backward_chunks"))
        di, df = gate_gradients(delta, m, ntil, i, f, di_part, terms, eps, constant)
        gates = (dv, di.to(i.dtype), df.to(f.dtype), None, None, None, None)
        if qk_row:
            return (dqk_part[0] if nvb == 1 else dqk_part.sum(0)).to(q.dtype), None, *gates
        dq, dk = (dq_part[0], dk_part[0]) if nvb == 1 else (dq_part.sum(0), dk_part.sum(0))
        return dq.to(q.dtype), dk.to(k.dtype), *gates


def mlstm_chunkwise_triton(
    q: torch.Tensor,
    k: torch.Tensor | None,
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
    :param k: keys ``(batch, heads, steps, head_dim_qk)``; or None, and ``q`` holds queries and keys as the two
        halves of each row, ``(batch, heads, steps, 2 * head_dim_qk)``, as one product over their common input
        writes them: the kernels read the halves where they lie, and the gradient of ``q`` comes in that layout, one
        tensor (no copies of q and k, and their gradients met). The same values as with ``q.chunk(2, -1)``.
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
