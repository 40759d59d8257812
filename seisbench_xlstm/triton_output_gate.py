"""The output stage of the mLSTM branches in Triton: each head's layer norm of the cell outputs, the norm's weight,
the learnable skip of the conv output and the SiLU output gate, forward and backward, each in one pass over memory.

Per direction ``d``, head ``j``, step ``t`` and feature ``c`` of the head (``u = j * head_dim + c``, the feature in
the branch's inner width)::

    xhat = (h[d, j, t, c] - mean_c) * rstd          (mean, biased variance over the head's features; rstd with eps)
    y[d, t, u] = (xhat * w[d, u] + skip[d, u] * x_conv[d, t, u]) * silu(z[d, t, u])

which is the PyTorch branch of ``seisbench_xlstm.bimlstm._output_stage`` (each head's ``F.layer_norm``, then
``bimlstm._output_gate``: xLSTM's ``MultiHeadLayerNorm`` without bias, ``learnable_skip`` and the ``z`` gate), the
reference the tests compare with.

Why. Compiled by ``torch.compile``, the backward pass of that PyTorch code ran as four kernels on an H200 that read
13 and wrote 3 activation-sized tensors (the head's features lie strided in ``x_conv``'s layout, so the row sums of
the norm's gradient went to kernels of their own): 1.34 ms a layer of recipe 1 at batch 128 (2026-11-30 profile,
``benchmarks/results/pretrain_profile_recipe1_b128_e7681f9.txt``). Measured per layer on the H200, forward and
backward (``benchmarks/results/output_stage_speed.md``): 1.29 against 1.77 ms at recipe 1's shape. Here the backward
reads ``dy``, ``h``, ``x_conv`` and ``z`` once and writes ``dh``, ``dx_conv`` and ``dz`` once; the weights'
gradients are summed per program (deterministic partial sums, added up afterwards). The forward reads ``h``,
``x_conv``, ``z`` and writes ``y`` and the per-row mean and rstd (float32) for the backward.

The two kernels are registered operators (``torch.ops.seisbench_xlstm.normed_output_gate`` and its backward), which
compiled graphs can keep; the layers call them outside their graphs unless
:data:`seisbench_xlstm.bimlstm.OUTPUT_STAGE_IN_GRAPH`.

Layouts: ``h`` ``(directions, heads, batch, steps, head_dim)`` with any strides whose last is 1 (the mLSTM kernel's
output, viewed); ``x_conv``, ``z`` ``(directions, batch, steps, heads * head_dim)``, last stride 1; ``w`` and
``skip`` ``(directions, heads * head_dim)``. Arithmetic in float32; ``y`` in the dtype of ``x_conv``, each gradient
in the dtype of its input.
"""

from __future__ import annotations

import torch

from .triton_layout import autotuned, interpreter_setting, last_axis_contiguous, leading_strides
from .triton_mlstm_kernels import tl, triton

#: Launch settings the autotuner chooses from per head dim on the first call of each kernel (not under the
#: interpreter, which cannot time them and runs the first): rows per loop step (``BLOCK_T``), warps, and the
#: software-pipelining stages of the loop over a program's rows.
TUNING = [{"BLOCK_T": 16, "num_warps": 4, "num_stages": 2}, {"BLOCK_T": 8, "num_warps": 4, "num_stages": 2},
          {"BLOCK_T": 16, "num_warps": 8, "num_stages": 2}]
#: Steps per program, looped over in blocks of ``BLOCK_T`` (fixed, not tuned: the backward pass's partial sums of
#: the weights' gradients are laid out by it).
ROWS_PER_PROGRAM = 64


if triton is not None:

    @triton.jit
    def _program(batch, heads, steps, HD: tl.constexpr, BLOCK_D: tl.constexpr):
        """This program's (direction, head, window) and row block, its features and their mask."""
        pid_row = tl.program_id(0).to(tl.int64)
        b = pid_row % batch
        j = (pid_row // batch) % heads
        d = pid_row // (batch * heads)
        c = tl.arange(0, BLOCK_D)
        return pid_row, tl.program_id(1), d, j, b, c, c < HD

    @triton.jit
    def _output_gate_fwd_kernel(
        H, XC, Z, W, SKIP, Y, MEAN, RSTD,
        sh_d, sh_j, sh_b, sh_t, sx_d, sx_b, sx_t, sz_d, sz_b, sz_t, sy_d, sy_b, sy_t,
        batch, heads, steps, inner, eps,
        HD: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, BLOCK_T: tl.constexpr,
    ):
        pid_row, pid_t, d, j, b, c, cmask = _program(batch, heads, steps, HD, BLOCK_D)
        u = j * HD + c  # the features in the inner width
        w = tl.load(W + d * inner + u, mask=cmask, other=0.0).to(tl.float32)
        skip = tl.load(SKIP + d * inner + u, mask=cmask, other=0.0).to(tl.float32)
        for r in tl.range(0, ROWS, BLOCK_T):
            t = pid_t * ROWS + r + tl.arange(0, BLOCK_T)
            mask = (t < steps)[:, None] & cmask[None, :]
            h = tl.load(H + d * sh_d + j * sh_j + b * sh_b + t[:, None] * sh_t + c[None, :], mask=mask, other=0.0)
            h = h.to(tl.float32)
            mean = tl.sum(h, axis=1) / HD
            diff = tl.where(mask, h - mean[:, None], 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / HD + eps)
            xc = tl.load(XC + d * sx_d + b * sx_b + t[:, None] * sx_t + u[None, :], mask=mask, other=0.0)
            z = tl.load(Z + d * sz_d + b * sz_b + t[:, None] * sz_t + u[None, :], mask=mask, other=0.0)
            z = z.to(tl.float32)
            y = (diff * rstd[:, None] * w[None, :] + skip[None, :] * xc.to(tl.float32)) * (z * tl.sigmoid(z))
            tl.store(Y + d * sy_d + b * sy_b + t[:, None] * sy_t + u[None, :], y.to(Y.dtype.element_ty), mask=mask)
            rows = pid_row * steps + t
            tl.store(MEAN + rows, mean, mask=t < steps)
            tl.store(RSTD + rows, rstd, mask=t < steps)

    @triton.jit
    def _output_gate_bwd_kernel(
        DY, H, XC, Z, W, SKIP, MEAN, RSTD, DH, DXC, DZ, DW_PART, DSKIP_PART,
        sh_d, sh_j, sh_b, sh_t, sx_d, sx_b, sx_t, sz_d, sz_b, sz_t, sdy_d, sdy_b, sdy_t,
        sdh_d, sdh_j, sdh_b, sdh_t, sdx_d, sdx_b, sdx_t, sdz_d, sdz_b, sdz_t,
        batch, heads, steps, inner, blocks,
        HD: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, BLOCK_T: tl.constexpr,
    ):
        pid_row, pid_t, d, j, b, c, cmask = _program(batch, heads, steps, HD, BLOCK_D)
        u = j * HD + c
        w = tl.load(W + d * inner + u, mask=cmask, other=0.0).to(tl.float32)
        skip = tl.load(SKIP + d * inner + u, mask=cmask, other=0.0).to(tl.float32)
        # the weights' gradients summed element-wise over the loop and over rows once at the end: a sum over rows
        # spans warps (shared memory), which bounded the kernel when it ran every step (ncu on an H200, 2026-11-30)
        dw = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        dskip = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        for r in tl.range(0, ROWS, BLOCK_T):
            t = pid_t * ROWS + r + tl.arange(0, BLOCK_T)
            mask = (t < steps)[:, None] & cmask[None, :]
            rows = pid_row * steps + t
            mean = tl.load(MEAN + rows, mask=t < steps, other=0.0)
            rstd = tl.load(RSTD + rows, mask=t < steps, other=0.0)
            h = tl.load(H + d * sh_d + j * sh_j + b * sh_b + t[:, None] * sh_t + c[None, :], mask=mask, other=0.0)
            xhat = tl.where(mask, (h.to(tl.float32) - mean[:, None]) * rstd[:, None], 0.0)
            xc = tl.load(XC + d * sx_d + b * sx_b + t[:, None] * sx_t + u[None, :], mask=mask, other=0.0)
            xc = xc.to(tl.float32)
            z = tl.load(Z + d * sz_d + b * sz_b + t[:, None] * sz_t + u[None, :], mask=mask, other=0.0)
            z = z.to(tl.float32)
            dy = tl.load(DY + d * sdy_d + b * sdy_b + t[:, None] * sdy_t + u[None, :], mask=mask, other=0.0)
            dy = dy.to(tl.float32)
            sig = tl.sigmoid(z)
            gated = dy * z * sig  # the gradient of the gate's input (xhat * w + skip * x_conv)
            dz = dy * (xhat * w[None, :] + skip[None, :] * xc) * sig * (1.0 + z * (1.0 - sig))
            tl.store(DZ + d * sdz_d + b * sdz_b + t[:, None] * sdz_t + u[None, :], dz.to(DZ.dtype.element_ty),
                     mask=mask)
            dxc = gated * skip[None, :]
            tl.store(DXC + d * sdx_d + b * sdx_b + t[:, None] * sdx_t + u[None, :], dxc.to(DXC.dtype.element_ty),
                     mask=mask)
            dxhat = gated * w[None, :]
            row_mean = tl.sum(dxhat, axis=1) / HD
            row_proj = tl.sum(dxhat * xhat, axis=1) / HD
            dh = rstd[:, None] * (dxhat - row_mean[:, None] - xhat * row_proj[:, None])
            tl.store(DH + d * sdh_d + j * sdh_j + b * sdh_b + t[:, None] * sdh_t + c[None, :],
                     dh.to(DH.dtype.element_ty), mask=mask)
            dw += gated * xhat
            dskip += gated * xc
        part = (pid_row * blocks + pid_t) * HD + c  # this program's partial sums of the weights' gradients
        tl.store(DW_PART + part, tl.sum(dw, axis=0), mask=cmask)
        tl.store(DSKIP_PART + part, tl.sum(dskip, axis=0), mask=cmask)


def build_launchers() -> None:
    """(Re)builds the two kernels' launchers from :data:`TUNING`: autotuned, or the kernels themselves under the
    interpreter. Runs at import; benchmarks that change :data:`TUNING` call it again."""
    global _fwd_launcher, _bwd_launcher
    _fwd_launcher = autotuned(_output_gate_fwd_kernel, TUNING, key=["HD"])
    _bwd_launcher = autotuned(_output_gate_bwd_kernel, TUNING, key=["HD"])


if triton is not None:
    build_launchers()


def _launch_shape(h: torch.Tensor) -> tuple[tuple[int, int], dict]:
    """The grid (one program per (direction, head, window) and :data:`ROWS_PER_PROGRAM` steps) and the tile sizes;
    under the interpreter also the row block the autotuner chooses elsewhere."""
    directions, heads, batch, steps, hd = h.shape
    grid = (directions * heads * batch, triton.cdiv(steps, ROWS_PER_PROGRAM))
    tiles = {"HD": hd, "BLOCK_D": max(16, triton.next_power_of_2(hd)), "ROWS": ROWS_PER_PROGRAM}
    return grid, {**tiles, **interpreter_setting(TUNING)}


@torch.library.custom_op("seisbench_xlstm::normed_output_gate", mutates_args=())
def _gate(
    h: torch.Tensor, x_conv: torch.Tensor, z: torch.Tensor, w: torch.Tensor, skip: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel as an operator (``torch.compile`` can keep it inside its graphs): ``y`` and each row's mean
    and rstd ``(2, rows)``, float32, for the backward."""
    directions, heads, batch, steps, hd = h.shape
    y = torch.empty(x_conv.shape, dtype=x_conv.dtype, device=x_conv.device)
    stats = torch.empty(2, directions * heads * batch * steps, dtype=torch.float32, device=h.device)
    grid, tiles = _launch_shape(h)
    _fwd_launcher[grid](
        h, x_conv, z, w.float().contiguous(), skip.float().contiguous(), y, stats[0], stats[1],
        *leading_strides(h, 4), *leading_strides(x_conv, 3), *leading_strides(z, 3), *leading_strides(y, 3),
        batch, heads, steps, heads * hd, eps, **tiles,
    )
    return y, stats


@_gate.register_fake
def _(h, x_conv, z, w, skip, eps):
    rows = h.shape[0] * h.shape[1] * h.shape[2] * h.shape[3]
    return (torch.empty(x_conv.shape, dtype=x_conv.dtype, device=x_conv.device),
            torch.empty(2, rows, dtype=torch.float32, device=h.device))


@torch.library.custom_op("seisbench_xlstm::normed_output_gate_backward", mutates_args=())
def _gate_backward(
    dy: torch.Tensor, h: torch.Tensor, x_conv: torch.Tensor, z: torch.Tensor, w: torch.Tensor, skip: torch.Tensor,
    stats: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``h``, ``x_conv``, ``z``, ``w`` and ``skip`` (each in its dtype) from the gradient ``dy``."""
    directions, heads, batch, steps, hd = h.shape
    inner = heads * hd
    dy = last_axis_contiguous(dy)
    dh = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    dxc = torch.empty(x_conv.shape, dtype=x_conv.dtype, device=x_conv.device)
    dz = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    grid, tiles = _launch_shape(h)
    blocks = grid[1]
    # each program's partial sums of the weights' gradients, at ((direction, head, window) * blocks + block):
    # one sum over axis 3 gives each direction's gradient per feature
    parts = torch.empty(2, directions, heads, batch * blocks, hd, dtype=torch.float32, device=h.device)
    _bwd_launcher[grid](
        dy, h, x_conv, z, w.float().contiguous(), skip.float().contiguous(), stats[0], stats[1], dh, dxc, dz,
        parts[0], parts[1], *leading_strides(h, 4), *leading_strides(x_conv, 3), *leading_strides(z, 3),
        *leading_strides(dy, 3), *leading_strides(dh, 4), *leading_strides(dxc, 3), *leading_strides(dz, 3),
        batch, heads, steps, inner, blocks, **tiles,
    )
    dw, dskip = parts.sum(3).view(2, directions, inner)  # views of one tensor: copied (outputs must not alias)
    return dh, dxc, dz, dw.to(w.dtype, copy=True), dskip.to(skip.dtype, copy=True)


@_gate_backward.register_fake
def _(dy, h, x_conv, z, w, skip, stats):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (h, x_conv, z, w, skip))


def _save_for_backward(ctx, inputs, output):
    h, x_conv, z, w, skip, _ = inputs
    ctx.save_for_backward(h, x_conv, z, w, skip, output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, dy, dstats):
    return (*_gate_backward(dy, *ctx.saved_tensors), None)


_gate.register_autograd(_backward, setup_context=_save_for_backward)


def normed_output_gate(
    h: torch.Tensor, x_conv: torch.Tensor, z: torch.Tensor, w: torch.Tensor, skip: torch.Tensor, eps: float
) -> torch.Tensor:
    """``(LN_head(h) * w + skip * x_conv) * silu(z)`` (module docstring) in two Triton kernels.

    :param h: cell outputs ``(directions, heads, batch, steps, head_dim)``
    :param x_conv: conv outputs ``(directions, batch, steps, heads * head_dim)``
    :param z: output-gate branch ``(directions, batch, steps, heads * head_dim)``
    :param w: the norm's weights ``(directions, heads * head_dim)``
    :param skip: the learnable skip ``(directions, heads * head_dim)``
    :param eps: the norm's eps
    :return: ``(directions, batch, steps, heads * head_dim)`` in the dtype of ``x_conv``
    """
    if triton is None:
        raise RuntimeError("normed_output_gate needs the triton package")
    directions, heads, batch, steps, hd = h.shape
    if x_conv.shape != (directions, batch, steps, heads * hd) or z.shape != x_conv.shape:
        raise ValueError(f"x_conv and z must be (directions, batch, steps, heads * head_dim) = "
                         f"{(directions, batch, steps, heads * hd)}, got {tuple(x_conv.shape)}, {tuple(z.shape)}")
    if w.shape != (directions, heads * hd) or skip.shape != w.shape:
        raise ValueError(f"w and skip must be (directions, inner) = {(directions, heads * hd)}, got "
                         f"{tuple(w.shape)}, {tuple(skip.shape)}")
    h, x_conv, z = (last_axis_contiguous(t) for t in (h, x_conv, z))
    return _gate(h, x_conv, z, w, skip, eps)[0]
