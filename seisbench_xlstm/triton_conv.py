"""The mLSTM branches' causal depthwise convolution and its SiLU in Triton, forward and backward.

Per direction ``d``, window ``b``, step ``t`` and channel ``c`` (kernel size ``K``, steps before the first are zero)::

    pre[t, c] = bias[d, c] + sum_{j < K} x[t + j - (K - 1), c] * w[d, c, j]
    y[t, c]   = silu(pre[t, c])

the function of :func:`causal_depthwise_conv` (the PyTorch form) followed by ``F.silu`` (xLSTM's
``CausalConv1d`` and the activation after it), which the tests compare with.

Why. Compiled by ``torch.compile``, the PyTorch form wrote a zero-padded copy of the branch input in the forward pass
(saved for the backward), and its backward ran as four kernels, which also summed the gradients arriving from q, k
and the output stage: about 45 ms of recipe 1's 235 ms step with the layout copies (2026-11-30 profile,
``benchmarks/results/pretrain_profile_recipe1_b128_output_stage.txt``). Here the forward reads ``x`` and writes
``y``. The backward (kernel sizes up to :data:`TAPS`) reads the summed gradient of ``y`` and ``x`` and writes the
gradient of ``x``: each program loops over :data:`BACKWARD_ROWS` steps, loading the seven shifted inputs of a block
once and recomputing ``pre`` at the block's rows and the three after it (the gradient of ``x`` needs them); the
weights' and biases' gradients are summed element-wise over the loop and once over rows at its end, one partial sum
per program, added up afterwards (deterministic). Nothing is saved but ``x``. (A first backward recomputed ``pre``
once per tap and summed over rows at every block: 2.6 ms against compiled PyTorch's 1.25 at recipe 1's shape.)

The two kernels are registered operators (``torch.ops.seisbench_xlstm.causal_conv_silu`` and its backward, with
compile-time shapes), so ``torch.compile`` keeps them inside its graphs: no graph break. Which backward runs:
:data:`BACKWARD`. The library's default is the forward kernel with the backward in PyTorch formulas
(:func:`_pytorch_backward`), which the compiled layer fuses with the sum of the gradients that reach the conv's output
from q, k, the gates and the output stage: faster in the training step than the backward kernel, which needs that sum
written out first.

Layouts: ``x`` ``(directions, batch, steps, channels)`` with the last stride 1; ``w`` ``(directions, channels, K)``,
``bias`` ``(directions, channels)``. Arithmetic in float32; ``y`` and the gradient of ``x`` in the dtype of ``x``.
Which stage the layers run: :data:`seisbench_xlstm.bimlstm.CONV_STAGE`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .triton_layout import autotuned, interpreter_setting, last_axis_contiguous, leading_strides
from .triton_mlstm_kernels import tl, triton

#: The forward kernel's steps and channels per program and its warps. Compiled for sm_90 (``ptxas -v``, bf16, kernel
#: size 4): 86 registers, 92 writing the heads layout too (:func:`causal_conv_silu_heads`). On an H200 0.17 against
#: 0.51 ms for compiled PyTorch at recipe 1's shape (2026-11-30, ``benchmarks/results/conv_stage_speed.md``).
BLOCK_STEPS = 32
BLOCK_CHANNELS = 128
FORWARD_WARPS = 4
#: The backward pass of the Triton stage: ``"triton"`` (the kernel below) or ``"pytorch"`` (:func:`_pytorch_backward`,
#: compiled with the layer where the layer is compiled). On an H200 (2026-11-30, recipe 1 at batch 128, compiled,
#: ``benchmarks/results/pretrain_gpu.md``): the kernel is faster on its own (forward+backward 1.40 against 1.76 ms
#: for compiled PyTorch at recipe 1's shape, ``conv_stage_speed.md``) but not in the step (219.9 against 221.2 ms;
#: recipe 2 173.5 against 167.6, slower): the gradients arriving at the conv's output must then be summed into a
#: tensor of their own first. Forward kernel with the PyTorch backward: 217.0 against 221.0 ms, recipe 2 160.8
#: against 165.3 (eighth session, run 4).
BACKWARD = "pytorch"
BACKWARDS = ("triton", "pytorch")
#: The PyTorch backward's gradient of ``pre`` (the tensor the compiled code may write between its kernels): in
#: ``"float32"`` (measured, 2026-11-30) or rounded to the activations' dtype (``"activations"``: bf16 under autocast,
#: half the bytes; PyTorch's own conv backward under autocast kept it in bf16 too). On an H200 (2026-11-30, recipe 1,
#: in turns): 217.6 and 217.8 ms a step in float32 against 217.5 and 217.2 rounded and converted back before their
#: uses; 217.9 against 217.4 (second round) with the rounded tensor converted at each use, as now.
PRE_GRAD_DTYPE = "float32"
PRE_GRAD_DTYPES = ("float32", "activations")
#: The backward kernel's taps: kernel sizes up to this are zero-padded in front (same function); larger ones run in
#: PyTorch (:func:`seisbench_xlstm.bimlstm._conv_stage`).
TAPS = 4
#: Steps per program of the backward kernel, looped over in blocks of ``BLOCK_T`` (fixed: the weights' partial sums
#: are laid out by it).
BACKWARD_ROWS = 128
#: Launch settings the autotuner chooses from for the backward kernel (per channel count; not under the
#: interpreter, which runs the first): steps a loop step, channels a program, warps, pipelining stages. Compiled
#: for sm_90 (``ptxas -v``, bf16), none spills: 255 registers at 8 warps and at 16 x 64 with 4, 168 at 8 x 128
#: with 4 and 8 x 64 with 2 (32 x 128 with 8 warps spilled).
BACKWARD_TUNING = [
    {"BLOCK_T": 16, "BLOCK_C": 128, "num_warps": 8, "num_stages": 2},
    {"BLOCK_T": 32, "BLOCK_C": 64, "num_warps": 8, "num_stages": 2},
    {"BLOCK_T": 16, "BLOCK_C": 64, "num_warps": 4, "num_stages": 2},
    {"BLOCK_T": 8, "BLOCK_C": 128, "num_warps": 4, "num_stages": 2},
    {"BLOCK_T": 8, "BLOCK_C": 64, "num_warps": 2, "num_stages": 2},
]


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
        X, W, BIAS, Y, Y_HEADS, X_HEADS, sx_d, sx_b, sx_t, sy_d, sy_b, sy_t, batch, steps, channels, heads, head_dim,
        K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, PER_HEAD: tl.constexpr,
    ):
        pid_row, d, b, t, c, cmask = _conv_program(batch, steps, channels, BLOCK_T, BLOCK_C)
        pre = _pre_activation(X, W, BIAS, d, b, t, c, cmask, steps, channels, sx_d, sx_b, sx_t, K, BLOCK_T,
                              BLOCK_C)
        y = (pre * tl.sigmoid(pre)).to(Y.dtype.element_ty)
        mask = (t < steps)[:, None] & cmask[None, :]
        tl.store(Y + d * sy_d + b * sy_b + t[:, None] * sy_t + c[None, :], y, mask=mask)
        if PER_HEAD:  # y and x also laid out per head, (directions, heads, batch * steps, head_dim) contiguous
            head = c // head_dim
            ph = ((d * heads + head[None, :]) * (batch * steps) + b * steps + t[:, None]) * head_dim + (
                c % head_dim)[None, :]
            tl.store(Y_HEADS + ph, y, mask=mask)
            x = tl.load(X + d * sx_d + b * sx_b + t[:, None] * sx_t + c[None, :], mask=mask, other=0.0)
            tl.store(X_HEADS + ph, x, mask=mask)

    @triton.jit
    def _rows(X, rows, c, cmask, steps, s_t):
        """``X[rows * s_t + c]`` in float32 (32-bit offsets from the window's start ``X``), zero at rows outside
        ``[0, steps)``."""
        mask = ((rows >= 0) & (rows < steps))[:, None] & cmask[None, :]
        return tl.load(X + rows[:, None] * s_t + c[None, :], mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _silu_grad(pre, dy):
        sig = tl.sigmoid(pre)
        return dy * sig * (1.0 + pre * (1.0 - sig))

    @triton.jit
    def _conv_silu_bwd_kernel(
        X, W, BIAS, DY, DX, PART, sx_d, sx_b, sx_t, sdy_d, sdy_b, sdy_t, sdx_d, sdx_b, sdx_t, batch, steps, channels,
        ROWS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        # Four taps (TAPS; smaller kernels arrive zero-padded in front). Over the program's ROWS steps, a block of
        # BLOCK_T steps t at a time: the seven shifted inputs x[t - 3] .. x[t + 3] are loaded once, pre and the
        # gradient of pre at rows t .. t + 3 recomputed from them; dx[t] = sum_j dpre[t + 3 - j] w[j]. The weights'
        # and bias' gradients (from the block's own rows) are summed element-wise in registers and over the rows
        # once at the end: one partial sum per program, added up afterwards.
        pid_row = tl.program_id(0).to(tl.int64)
        d, b = pid_row // batch, pid_row % batch
        c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < channels
        w0 = tl.load(W + (d * channels + c) * 4, mask=cmask, other=0.0)[None, :]
        w1 = tl.load(W + (d * channels + c) * 4 + 1, mask=cmask, other=0.0)[None, :]
        w2 = tl.load(W + (d * channels + c) * 4 + 2, mask=cmask, other=0.0)[None, :]
        w3 = tl.load(W + (d * channels + c) * 4 + 3, mask=cmask, other=0.0)[None, :]
        bias = tl.load(BIAS + d * channels + c, mask=cmask, other=0.0)[None, :]
        xw, dyw, dxw = X + d * sx_d + b * sx_b, DY + d * sdy_d + b * sdy_b, DX + d * sdx_d + b * sdx_b
        dw0 = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
        dw1 = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
        dw2 = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
        dw3 = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
        db = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
        t0 = tl.program_id(1) * ROWS
        end = tl.minimum(t0 + ROWS, steps)
        while t0 < end:  # while, not range(): see triton_mlstm_kernels (the interpreter and run-time bounds)
            t = t0 + tl.arange(0, BLOCK_T)
            xm3 = _rows(xw, t - 3, c, cmask, steps, sx_t)
            xm2 = _rows(xw, t - 2, c, cmask, steps, sx_t)
            xm1 = _rows(xw, t - 1, c, cmask, steps, sx_t)
            x0 = _rows(xw, t, c, cmask, steps, sx_t)
            xp1 = _rows(xw, t + 1, c, cmask, steps, sx_t)
            xp2 = _rows(xw, t + 2, c, cmask, steps, sx_t)
            xp3 = _rows(xw, t + 3, c, cmask, steps, sx_t)
            dp0 = _silu_grad(bias + w0 * xm3 + w1 * xm2 + w2 * xm1 + w3 * x0, _rows(dyw, t, c, cmask, steps, sdy_t))
            dp1 = _silu_grad(bias + w0 * xm2 + w1 * xm1 + w2 * x0 + w3 * xp1,
                             _rows(dyw, t + 1, c, cmask, steps, sdy_t))
            dp2 = _silu_grad(bias + w0 * xm1 + w1 * x0 + w2 * xp1 + w3 * xp2,
                             _rows(dyw, t + 2, c, cmask, steps, sdy_t))
            dp3 = _silu_grad(bias + w0 * x0 + w1 * xp1 + w2 * xp2 + w3 * xp3,
                             _rows(dyw, t + 3, c, cmask, steps, sdy_t))
            mask = (t < steps)[:, None] & cmask[None, :]
            dx = w3 * dp0 + w2 * dp1 + w1 * dp2 + w0 * dp3
            tl.store(dxw + t[:, None] * sdx_t + c[None, :], dx.to(DX.dtype.element_ty), mask=mask)
            dw0 += dp0 * xm3
            dw1 += dp0 * xm2
            dw2 += dp0 * xm1
            dw3 += dp0 * x0
            db += dp0
            t0 += BLOCK_T
        part = PART + (pid_row * tl.num_programs(1) + tl.program_id(1)) * 5 * channels + c
        tl.store(part, tl.sum(dw0, axis=0), mask=cmask)
        tl.store(part + channels, tl.sum(dw1, axis=0), mask=cmask)
        tl.store(part + 2 * channels, tl.sum(dw2, axis=0), mask=cmask)
        tl.store(part + 3 * channels, tl.sum(dw3, axis=0), mask=cmask)
        tl.store(part + 4 * channels, tl.sum(db, axis=0), mask=cmask)


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Causal depthwise convolution along the steps of ``(..., batch, steps, channels)``.

    :param weight: ``(..., channels, kernel)``, leading dims matching those of ``x`` before ``batch``
    :param bias: ``(..., channels)`` or None

    Equals xlstm's ``CausalConv1d`` (a grouped ``nn.Conv1d`` with left padding) but stays channels-last as
    ``kernel`` shifted multiply-adds, which on GPUs is an order of magnitude faster than the grouped convolution.
    """
    size = weight.shape[-1]
    steps = x.shape[-2]
    padded = F.pad(x, (0, 0, size - 1, 0))
    w = weight.to(x.dtype)[..., None, None, :, :]  # (..., 1, 1, channels, kernel)
    y = padded[..., 0:steps, :] * w[..., 0]
    for j in range(1, size):  # in place: no temporaries (4x faster on CPUs); y is saved by no backward function
        y.addcmul_(padded[..., j : j + steps, :], w[..., j])
    return y if bias is None else y.add_(bias.to(x.dtype)[..., None, None, :])


def _grid(x: torch.Tensor) -> tuple[int, int, int]:
    directions, batch, steps, channels = x.shape
    return directions * batch, triton.cdiv(steps, BLOCK_STEPS), triton.cdiv(channels, BLOCK_CHANNELS)


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int = 0) -> list[torch.Tensor]:
    """``[y]``, or with ``heads`` ``[y, y laid out per head, x laid out per head]`` (:func:`causal_conv_silu_heads`)."""
    directions, batch, steps, channels = x.shape
    outputs = [torch.empty_like(x, memory_format=torch.contiguous_format)]
    if heads:
        outputs += [x.new_empty(directions, heads, batch * steps, channels // heads) for _ in range(2)]
    y, y_heads, x_heads = outputs if heads else outputs * 3  # without heads: placeholders the kernel ignores
    _conv_silu_fwd_kernel[_grid(x)](
        x, weight.float().contiguous(), bias.float().contiguous(), y, y_heads, x_heads, *leading_strides(x, 3),
        *leading_strides(y, 3), batch, steps, channels, max(heads, 1), channels // max(heads, 1), K=weight.shape[-1],
        BLOCK_T=BLOCK_STEPS, BLOCK_C=BLOCK_CHANNELS, PER_HEAD=bool(heads), num_warps=FORWARD_WARPS,
    )
    return outputs


@torch.library.custom_op("seisbench_xlstm::causal_conv_silu", mutates_args=())
def _conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The forward kernel as an operator that ``torch.compile`` keeps inside its graphs (no graph break: the gradients
    arriving at ``y`` from several consumers are summed by the compiled code before the backward operator)."""
    return _forward(x, weight, bias)[0]


@_conv_silu.register_fake
def _(x, weight, bias):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("seisbench_xlstm::causal_conv_silu_heads", mutates_args=())
def _conv_silu_heads(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward kernel writing ``y`` and also ``y`` and ``x`` laid out per head (:func:`causal_conv_silu_heads`)."""
    y, y_heads, x_heads = _forward(x, weight, bias, heads)
    return y, y_heads, x_heads


@_conv_silu_heads.register_fake
def _(x, weight, bias, heads):
    directions, batch, steps, channels = x.shape
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            *(x.new_empty(directions, heads, batch * steps, channels // heads) for _ in range(2)))


def build_launchers() -> None:
    """(Re)builds the backward kernel's launcher from :data:`BACKWARD_TUNING`: autotuned, or the kernel itself under
    the interpreter. Runs at import; benchmarks that change :data:`BACKWARD_TUNING` call it again."""
    global _bwd_launcher
    _bwd_launcher = autotuned(_conv_silu_bwd_kernel, BACKWARD_TUNING, key=["channels"])


if triton is not None:
    build_launchers()


@torch.library.custom_op("seisbench_xlstm::causal_conv_silu_backward", mutates_args=())
def _conv_silu_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``x``, ``weight`` and ``bias`` (each in its dtype) from the gradient ``dy`` of the output."""
    directions, batch, steps, channels = x.shape
    size = weight.shape[-1]
    dy = last_axis_contiguous(dy)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    blocks = triton.cdiv(steps, BACKWARD_ROWS)
    # per program (direction, window, step block): the TAPS weight rows and the bias row over all channels
    parts = torch.empty(directions, batch * blocks, TAPS + 1, channels, dtype=torch.float32, device=x.device)
    taps = F.pad(weight.float(), (TAPS - size, 0)).contiguous()  # zero taps in front: the same causal conv
    _bwd_launcher[lambda meta: (directions * batch, blocks, triton.cdiv(channels, meta["BLOCK_C"]))](
        x, taps, bias.float().contiguous(), dy, dx, parts, *leading_strides(x, 3), *leading_strides(dy, 3),
        *leading_strides(dx, 3), batch, steps, channels, ROWS=BACKWARD_ROWS, **interpreter_setting(BACKWARD_TUNING),
    )
    sums = parts.sum(1)  # (directions, TAPS + 1, channels)
    # contiguous, as the fake (compile-time) outputs below
    dw = sums[:, TAPS - size:TAPS].transpose(1, 2).to(weight.dtype).contiguous()
    return dx, dw, sums[:, TAPS].to(bias.dtype).contiguous()


@_conv_silu_backward.register_fake
def _(dy, x, weight, bias):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty(weight.shape, dtype=weight.dtype, device=weight.device),
            torch.empty(bias.shape, dtype=bias.dtype, device=bias.device))


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])


def _pytorch_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """The gradients of :func:`_conv_silu_backward` in PyTorch operations (float32 arithmetic), which
    ``torch.compile`` traces into the layer's compiled backward graph: fused there with the sum of the gradients
    arriving at ``y``, instead of that sum written out for the kernel."""
    size, steps = weight.shape[-1], x.shape[-2]
    w = weight.float()[:, None, None]  # (directions, 1, 1, channels, kernel)
    padded = F.pad(x.float(), (0, 0, size - 1, 0))
    pre = bias.float()[:, None, None] + sum(padded[:, :, j:j + steps] * w[..., j] for j in range(size))
    sig = torch.sigmoid(pre)
    dpre = dy.float() * sig * (1.0 + pre * (1.0 - sig))
    # The tensor compiled code writes for the dx and weight-gradient kernels: dpre itself, or (``"activations"``) its
    # rounding, which every use below reads back as float32 (``.float()`` at each use, so that the tensor the uses
    # share is the bf16 one)
    stored = dpre.to(x.dtype) if PRE_GRAD_DTYPE == "activations" else dpre
    after = F.pad(stored, (0, 0, 0, size - 1))  # dx[s] = sum_j dpre[s + K - 1 - j] w[j]
    dx = sum(after[:, :, size - 1 - j:size - 1 - j + steps].float() * w[..., j] for j in range(size))
    dw = torch.stack([(stored.float() * padded[:, :, j:j + steps]).sum((1, 2)) for j in range(size)], dim=-1)
    return dx.to(x.dtype), dw.to(weight.dtype), stored.float().sum((1, 2)).to(bias.dtype)


def _input_grads(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """The gradients of ``x``, ``weight`` and ``bias`` as :data:`BACKWARD` says."""
    if BACKWARD not in BACKWARDS:
        raise ValueError(f"Unknown conv backward {BACKWARD!r}; known: {', '.join(BACKWARDS)}")
    if PRE_GRAD_DTYPE not in PRE_GRAD_DTYPES:
        raise ValueError(f"Unknown PRE_GRAD_DTYPE {PRE_GRAD_DTYPE!r}; known: {', '.join(PRE_GRAD_DTYPES)}")
    return (_conv_silu_backward if BACKWARD == "triton" else _pytorch_backward)(dy, x, weight, bias)


def _backward(ctx, dy):
    return _input_grads(dy, *ctx.saved_tensors)


def _token_major(per_head: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``(directions, heads, batch * steps, head_dim)`` back to ``shape`` ``(directions, batch, steps, channels)``."""
    directions, batch, steps, channels = shape
    return per_head.view(directions, -1, batch, steps, channels // per_head.shape[1]).permute(0, 2, 3, 1, 4).reshape(
        shape)


def _backward_heads(ctx, dy, dy_heads, dx_heads):
    """The gradients of both layouts of ``y`` summed before the conv's backward; that of ``x``'s copy added after."""
    x, weight, bias = ctx.saved_tensors
    if dy_heads is not None:
        dy = _token_major(dy_heads, x.shape) if dy is None else dy + _token_major(dy_heads, x.shape)
    dx, dw, db = _input_grads(torch.zeros_like(x) if dy is None else dy, x, weight, bias)
    return (dx if dx_heads is None else dx + _token_major(dx_heads, x.shape)), dw, db, None


_conv_silu.register_autograd(_backward, setup_context=_save_inputs)
_conv_silu_heads.register_autograd(_backward_heads, setup_context=_save_inputs)


def causal_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``silu(causal depthwise conv(x) + bias)`` (module docstring) in two Triton kernels.

    :param x: ``(directions, batch, steps, channels)``
    :param weight: ``(directions, channels, kernel_size)``
    :param bias: ``(directions, channels)``
    :return: ``(directions, batch, steps, channels)`` in the dtype of ``x``
    """
    _check(x, weight, bias)
    return _conv_silu(last_axis_contiguous(x), weight, bias)


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int = 1) -> None:
    """Clear errors for inputs the kernels cannot take."""
    if triton is None:
        raise RuntimeError("causal_conv_silu needs the triton package")
    directions, batch, steps, channels = x.shape
    if weight.dim() != 3 or weight.shape[:2] != (directions, channels) or bias.shape != (directions, channels) or (
            weight.shape[-1] > TAPS):
        raise ValueError(f"weight must be (directions, channels, kernel_size <= {TAPS}) and bias (directions, "
                         f"channels) with (directions, channels) = {(directions, channels)}, got {tuple(weight.shape)}, "
                         f"{tuple(bias.shape)}")
    if heads < 1 or channels % heads:
        raise ValueError(f"channels ({channels}) must split into heads ({heads})")


def causal_conv_silu_heads(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`causal_conv_silu` whose kernel also writes ``y`` and ``x`` laid out per head, the layout of the
    per-head q/k/v products (``bimlstm._qkv_gates_per_head``), instead of separate layout copies of both.

    :param x: ``(directions, batch, steps, channels)``; ``weight``, ``bias`` as :func:`causal_conv_silu`
    :param heads: heads the channels split into (``channels % heads == 0``)
    :return: ``y`` ``(directions, batch, steps, channels)``, ``y`` and ``x`` as ``(directions, heads, batch * steps,
        channels / heads)`` (contiguous)
    """
    _check(x, weight, bias, heads)
    return _conv_silu_heads(last_axis_contiguous(x), weight, bias, heads)
