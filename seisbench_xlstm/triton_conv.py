"""The mLSTM branches' causal depthwise convolution and its SiLU in Triton, forward and backward.

Per direction ``d``, window ``b``, step ``t`` and channel ``c`` (kernel size ``K``, steps before the first are zero)::

    pre[t, c] = bias[d, c] + sum_{j < K} x[t + j - (K - 1), c] * w[d, c, j]
    y[t, c]   = silu(pre[t, c])

the function of :func:`seisbench_xlstm.bimlstm.causal_depthwise_conv` followed by ``F.silu`` (xLSTM's
``CausalConv1d`` and the activation after it), which the tests compare with.

Why. Compiled by ``torch.compile``, the PyTorch form wrote a zero-padded copy of the branch input in the forward pass
(saved for the backward), and its backward ran as four kernels, which also summed the gradients arriving from q, k
and the output stage: about 45 ms of recipe 1's 235 ms step with the layout copies (2026-11-30 profile,
``benchmarks/results/pretrain_profile_recipe1_b128_output_stage.txt``). Here the forward reads ``x`` and writes
``y``; the backward reads the summed gradient of ``y`` and ``x`` (recomputing ``pre`` for the ``K - 1`` steps after
each block, which the gradient of ``x`` needs) and writes the gradient of ``x``; the weights' and biases' gradients
are summed per program (deterministic partial sums, added up afterwards). Nothing is saved but ``x``.

The two kernels are registered operators (``torch.ops.seisbench_xlstm.causal_conv_silu`` and its backward, with
compile-time shapes), so ``torch.compile`` keeps them inside its graphs: no graph break, and the gradients that reach
the conv's output from q, k, the gates and the output stage are summed by compiled code before the backward kernel.

Layouts: ``x`` ``(directions, batch, steps, channels)`` with the last stride 1; ``w`` ``(directions, channels, K)``,
``bias`` ``(directions, channels)``. Arithmetic in float32; ``y`` and the gradient of ``x`` in the dtype of ``x``.
Not yet timed on a GPU: :data:`seisbench_xlstm.bimlstm.CONV_STAGE` keeps PyTorch until it is.
"""

from __future__ import annotations

import torch

from .triton_layout import last_axis_contiguous, leading_strides
from .triton_mlstm_kernels import tl, triton

#: Steps and channels per program, and warps of each kernel; not timed on a GPU yet. Compiled for sm_90 (``ptxas
#: -v``, bf16, kernel size 4): the forward at 4 warps 86 registers, the backward at 8 warps 148 (at 4 it spills).
BLOCK_STEPS = 32
BLOCK_CHANNELS = 128
FORWARD_WARPS = 4
BACKWARD_WARPS = 8


if triton is not None:

    @triton.jit
    def _conv_program(batch, steps, channels, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
        """This program's (direction, window), its steps and channels, and the channels' mask."""
        pid_row = tl.program_id(0).to(tl.int64)
        t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        return pid_row, pid_row // batch, pid_row % batch, t, c, c < channels

    @triton.jit
    def _pre_activation(X, W, BIAS, d, b, rows, c, cmask, steps, channels, sx_d, sx_b, sx_t,
                        K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
        """``pre`` at ``rows`` (may lie outside ``[0, steps)``: zero rows there) and channels ``c``, float32."""
        acc = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
        for j in tl.static_range(K):
            src = rows + (j - (K - 1))
            mask = ((src >= 0) & (src < steps))[:, None] & cmask[None, :]
            x = tl.load(X + d * sx_d + b * sx_b + src[:, None] * sx_t + c[None, :], mask=mask, other=0.0)
            w = tl.load(W + (d * channels + c) * K + j, mask=cmask, other=0.0).to(tl.float32)
            acc += x.to(tl.float32) * w[None, :]
        bias = tl.load(BIAS + d * channels + c, mask=cmask, other=0.0).to(tl.float32)
        return acc + bias[None, :]

    @triton.jit
    def _conv_silu_fwd_kernel(
        X, W, BIAS, Y, sx_d, sx_b, sx_t, sy_d, sy_b, sy_t, batch, steps, channels,
        K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        pid_row, d, b, t, c, cmask = _conv_program(batch, steps, channels, BLOCK_T, BLOCK_C)
        pre = _pre_activation(X, W, BIAS, d, b, t, c, cmask, steps, channels, sx_d, sx_b, sx_t, K, BLOCK_T,
                              BLOCK_C)
        y = pre * tl.sigmoid(pre)
        mask = (t < steps)[:, None] & cmask[None, :]
        tl.store(Y + d * sy_d + b * sy_b + t[:, None] * sy_t + c[None, :], y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _conv_silu_bwd_kernel(
        X, W, BIAS, DY, DX, DW_PART, DB_PART,
        sx_d, sx_b, sx_t, sdy_d, sdy_b, sdy_t, sdx_d, sdx_b, sdx_t, batch, steps, channels,
        K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        pid_row, d, b, t, c, cmask = _conv_program(batch, steps, channels, BLOCK_T, BLOCK_C)
        dx = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
        # x[s] feeds pre[s + (K - 1) - j] through w[j]: the gradient of pre at the K shifted row blocks
        for j in tl.static_range(K):
            rows = t + (K - 1 - j)
            pre = _pre_activation(X, W, BIAS, d, b, rows, c, cmask, steps, channels, sx_d, sx_b, sx_t, K, BLOCK_T,
                                  BLOCK_C)
            mask = (rows < steps)[:, None] & cmask[None, :]
            dy = tl.load(DY + d * sdy_d + b * sdy_b + rows[:, None] * sdy_t + c[None, :], mask=mask, other=0.0)
            sig = tl.sigmoid(pre)
            dpre = dy.to(tl.float32) * sig * (1.0 + pre * (1.0 - sig))
            w = tl.load(W + (d * channels + c) * K + j, mask=cmask, other=0.0).to(tl.float32)
            dx += dpre * w[None, :]
        # the last shift (j = K - 1) has rows == t: dpre is this block's own gradient of pre, for the weights and bias
        mask = (t < steps)[:, None] & cmask[None, :]
        tl.store(DX + d * sdx_d + b * sdx_b + t[:, None] * sdx_t + c[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        part = ((pid_row * tl.num_programs(1) + tl.program_id(1)) * (K + 1)) * channels
        for j in tl.static_range(K):  # dw[c, j] = sum_t dpre[t] * x[t + j - (K - 1)]
            src = t + (j - (K - 1))
            xmask = ((src >= 0) & (src < steps))[:, None] & cmask[None, :]
            x = tl.load(X + d * sx_d + b * sx_b + src[:, None] * sx_t + c[None, :], mask=xmask, other=0.0)
            tl.store(DW_PART + part + j * channels + c, tl.sum(dpre * x.to(tl.float32), axis=0), mask=cmask)
        tl.store(DB_PART + part + K * channels + c, tl.sum(dpre, axis=0), mask=cmask)


def _grid(x: torch.Tensor) -> tuple[int, int, int]:
    directions, batch, steps, channels = x.shape
    return directions * batch, triton.cdiv(steps, BLOCK_STEPS), triton.cdiv(channels, BLOCK_CHANNELS)


@torch.library.custom_op("seisbench_xlstm::causal_conv_silu", mutates_args=())
def _conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The forward kernel as an operator that ``torch.compile`` keeps inside its graphs (no graph break: the gradients
    arriving at ``y`` from several consumers are summed by the compiled code before the backward operator)."""
    directions, batch, steps, channels = x.shape
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    _conv_silu_fwd_kernel[_grid(x)](
        x, weight.float().contiguous(), bias.float().contiguous(), y, *leading_strides(x, 3), *leading_strides(y, 3),
        batch, steps, channels, K=weight.shape[-1], BLOCK_T=BLOCK_STEPS, BLOCK_C=BLOCK_CHANNELS,
        num_warps=FORWARD_WARPS,
    )
    return y


@_conv_silu.register_fake
def _(x, weight, bias):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("seisbench_xlstm::causal_conv_silu_backward", mutates_args=())
def _conv_silu_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``x``, ``weight`` and ``bias`` (each in its dtype) from the gradient ``dy`` of the output."""
    directions, batch, steps, channels = x.shape
    size = weight.shape[-1]
    dy = last_axis_contiguous(dy)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    grid = _grid(x)
    # per program (direction, window, step block): K weight rows and the bias row over all channels
    parts = torch.empty(directions, batch * grid[1], size + 1, channels, dtype=torch.float32, device=x.device)
    _conv_silu_bwd_kernel[grid](
        x, weight.float().contiguous(), bias.float().contiguous(), dy, dx, parts, parts, *leading_strides(x, 3),
        *leading_strides(dy, 3), *leading_strides(dx, 3), batch, steps, channels, K=size, BLOCK_T=BLOCK_STEPS,
        BLOCK_C=BLOCK_CHANNELS, num_warps=BACKWARD_WARPS,
    )
    sums = parts.sum(1)  # (directions, K + 1, channels)
    # contiguous, as the fake (compile-time) outputs below
    return dx, sums[:, :size].transpose(1, 2).to(weight.dtype).contiguous(), sums[:, size].to(bias.dtype).contiguous()


@_conv_silu_backward.register_fake
def _(dy, x, weight, bias):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty(weight.shape, dtype=weight.dtype, device=weight.device),
            torch.empty(bias.shape, dtype=bias.dtype, device=bias.device))


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dy):
    return _conv_silu_backward(dy, *ctx.saved_tensors)


_conv_silu.register_autograd(_backward, setup_context=_save_inputs)


def causal_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``silu(causal depthwise conv(x) + bias)`` (module docstring) in two Triton kernels.

    :param x: ``(directions, batch, steps, channels)``
    :param weight: ``(directions, channels, kernel_size)``
    :param bias: ``(directions, channels)``
    :return: ``(directions, batch, steps, channels)`` in the dtype of ``x``
    """
    if triton is None:
        raise RuntimeError("causal_conv_silu needs the triton package")
    directions, batch, steps, channels = x.shape
    if weight.dim() != 3 or weight.shape[:2] != (directions, channels) or bias.shape != (directions, channels):
        raise ValueError(f"weight must be (directions, channels, kernel_size) and bias (directions, channels) with "
                         f"(directions, channels) = {(directions, channels)}, got {tuple(weight.shape)}, "
                         f"{tuple(bias.shape)}")
    return _conv_silu(last_axis_contiguous(x), weight, bias)
