"""The bidirectional mLSTM layer that both backbones are built from.

Design (xLSTM's mLSTM layer, run in both time directions)::

    x ── LayerNorm ── up-projection ──┬─ forward direction:  x_m ─ causal conv ─ SiLU ─ q,k ┐
                                      │                      x_m ─────────────────────── v ──┤ mLSTM cell ─ MH-LN ─ (+ skip) ─ * SiLU(z)
                                      └─ backward direction: the same on the time-reversed sequence, reversed back
    y = x + Dropout(down-projection(forward ⊕ backward))

Each direction has its own causal conv (kernel 4), headwise q/k/v projections, exponential input gate, sigmoid
forget gate, multi-head layer norm and learnable skip, so each direction is causal in its own time order and the
layer output at time ``t`` depends on the whole sequence.

Weight sharing between the directions is the one knob the parameter budgets drive
(:attr:`BiMLSTMLayerConfig.share_projections`):

- ``False`` (the sequential backbone): each direction has its own up- and down-projection. The two directions'
  outputs are concatenated and mapped back by one ``(2 * inner) -> d_model`` projection, which is the sum of two
  separate down-projections.
- ``True`` (the U-Net): one up-projection feeds both directions and the directions' outputs are summed before one
  down-projection. The up/down projections hold about 95% of a layer's weights, so sharing them halves the layer
  while keeping direction-specific recurrences.

Sizes follow xLSTM: the inner dimension is ``proj_factor * d_model`` rounded up to a multiple of 64.
Components (causal conv, headwise linear, multi-head layer norm, initialisers) come from the ``xlstm`` package;
the recurrence runs on ``mlstm_kernels`` (see :mod:`seisbench_xlstm.kernels`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from xlstm.components.conv import CausalConv1d, CausalConv1dConfig
from xlstm.components.init import bias_linspace_init_, small_init_init_, wang_init_
from xlstm.components.linear_headwise import LinearHeadwiseExpand, LinearHeadwiseExpandConfig
from xlstm.components.ln import LayerNorm, MultiHeadLayerNorm

from .bimlstm_config import BiMLSTMLayerConfig  # noqa: F401 (re-exported: the layer's configuration)
from .kernels import AUTO, kernel_head_dim, mlstm_sequence, mlstm_sequence_qk, query_scale
from .triton_conv import TAPS as CONV_TRITON_TAPS
from .triton_conv import causal_conv_silu, causal_conv_silu_heads, causal_depthwise_conv
from .triton_input_stage import TAPS as INPUT_STAGE_TAPS
from .triton_input_stage import mlstm_input_stage, sub_channels
from .triton_output_gate import normed_output_gate, triton


#: How q/k/v and the gates are computed on GPUs; all forms give the same values (tests compare them):
#:
#: - ``"per_head"`` (the default): one GEMM per mLSTM head whose output is already in the kernel's layout
#:   (:func:`_qkv_gates_per_head`): 1/heads of the dense FLOPs and no layout copies of q, k, v, at more peak
#:   memory. Faster than dense in every pair measured on an H200, e.g. recipe 1 with the own kernel 322.1 against
#:   344.5 ms a step (73.5 against 60.2 GiB; 2026-11-30, benchmarks/results/pretrain_gpu.md).
#: - ``"dense"``: block-diagonal GEMMs over the whole inner width (:func:`_qkv_gates_dense`), then a layout copy per
#:   tensor for the kernel.
#: - ``"fused"``: multiply-sums the compiler fuses (:func:`_qkv_gates_fused`; only inside ``torch.compile``, else
#:   dense). 1222 ms a step where dense took 360 (recipe 1, 2026-11-29).
GPU_QKV_FORM = "per_head"
#: The same on CPUs: ``"per_head"``, ``"einsum"`` (per-block products) or another GPU form. per_head annotated an hour
#: of one station with the U-Net in 17% less time than einsum (2 cores, annotate_cpu_1h.md).
CPU_QKV_FORM = "per_head"
QKV_FORMS = ("dense", "per_head", "fused", "einsum")
#: The projections' products over all tokens run on GPUs over groups of this many tokens, whose weight gradients
#: are summed afterwards: one product's weight gradient, a reduction over all ``batch * steps`` tokens into a small
#: matrix, ran at a third to a half of memory bandwidth on an H200. 0: one product (also where it does not divide
#: the tokens). The same values up to the order of summation. Recipe 1 at batch 128 on an H200 (2026-11-30, in
#: turns): 266.2 and 266.3 ms a step with 1024 against 281.9 and 281.3 with one product; recipe 2 189.3 against 196.1.
GPU_TOKENS_PER_GROUP = 1024
#: The same on CPUs (0: one product; not timed otherwise).
CPU_TOKENS_PER_GROUP = 0
#: Where head dims the kernel cannot take (``kernels.kernel_head_dim``: TFLA at 96) are zero-padded: ``True`` in
#: the layout copies of :func:`mlstm_branches`, ``False`` in :func:`seisbench_xlstm.kernels.mlstm_sequence`. Same
#: values. Recipe 1 with TFLA on an H200 (2026-11-30): per_head 349.8 against 382.6 ms a step, dense 423.4 against
#: 400.1. This project's own kernel needs no padding.
HEAD_PAD_IN_LAYOUT = True
#: Where the mLSTM branches' output stage runs (each head's norm of the cell outputs, the norm's weight, the learnable
#: skip and the SiLU output gate): ``"triton"`` (:mod:`seisbench_xlstm.triton_output_gate`: one kernel forward, one
#: backward; on CPU tensors only under Triton's interpreter), ``"torch"`` (PyTorch operations, which ``torch.compile``
#: fuses where the model is compiled), or ``"auto"``: Triton on CUDA where it is installed (up to
#: :data:`OUTPUT_STAGE_MAX_AUTO_HEAD_DIM`), else PyTorch. Norms with a bias or without a weight always run in PyTorch.
#: Same function; the kernels compute in float32 and round once, PyTorch rounds the normalised outputs to the
#: activations' dtype first.
OUTPUT_STAGE = "auto"
STAGE_SETTINGS = ("auto", "torch", "triton")  # the values of OUTPUT_STAGE and CONV_STAGE
#: Largest head dim for which ``"auto"`` takes the Triton output stage. Forward+backward of one layer's stage on an
#: H200 (``benchmarks/output_stage_speed.py``, 2026-11-30, ``benchmarks/results/output_stage_speed.md``), Triton
#: against compiled PyTorch: head dim 96 (recipe 1) 1.29 against 1.77 ms, 64 1.72 against 2.15, 128 0.93 against 1.15,
#: but 256 (64 steps) 1.22 against 0.81 ms.
OUTPUT_STAGE_MAX_AUTO_HEAD_DIM = 128
#: Whether compiled layers keep the Triton output stage (registered operators, as the conv's) inside their graphs:
#: one graph break fewer a layer. The same values either way. On an H200 (2026-11-30, ninth session run 1, round 1)
#: recipe 1 took 217.7 ms a step with ``False`` (``torch.compiler.disable``) and 217.8 with ``True``.
OUTPUT_STAGE_IN_GRAPH = False
#: Where the branches' causal conv and its SiLU run: ``"triton"`` (:mod:`seisbench_xlstm.triton_conv`: one kernel
#: forward, no padded copy; the backward as :data:`seisbench_xlstm.triton_conv.BACKWARD` says), ``"torch"`` (its
#: ``causal_depthwise_conv``, fused by ``torch.compile`` where the model is compiled) or ``"auto"`` (Triton on
#: CUDA, kernel sizes up to :data:`seisbench_xlstm.triton_conv.TAPS`). On an H200, torch -> auto (2026-11-30): recipe
#: 1 221.0 -> 217.0 ms a step (70.5 -> 66.0 GiB), recipe 2 165.3 -> 160.8 ms (41.8 -> 39.3 GiB).
CONV_STAGE = "auto"
#: With the Triton conv and q/k/v form ``per_head``: the conv kernel also writes its output and input laid out per
#: head (:func:`seisbench_xlstm.triton_conv.causal_conv_silu_heads`) instead of two layout copies (6.1 ms a step of
#: recipe 1, seventh session's profile). The same values. Slower on an H200 (2026-11-30, ninth session run 1): recipe
#: 1 223.9 against 217.7 ms a step (61.5 against 66.0 GiB).
CONV_WRITES_HEAD_LAYOUT = False
#: With q/k/v form ``per_head``: q and k from one product, the halves of each row of one tensor, read and given its
#: gradient in place by this project's Triton kernel (:func:`seisbench_xlstm.kernels.mlstm_sequence_qk`). H200 (tenth
#: session run 1): recipe 1 213.3 against 219.0 ms a step (61.5 against 66.0 GiB), recipe 2 156.1 against 160.6 ms.
QK_ONE_PRODUCT = True
#: Where the branches' input stage runs (the conv and its SiLU, the headwise q/k/v and the gates) with q/k/v form
#: ``per_head``, q and k as one tensor and no head padding: ``"triton"`` (:mod:`seisbench_xlstm.triton_input_stage`:
#: one kernel forward, two backward, outputs in the mLSTM kernel's layout; on CPU tensors only under Triton's
#: interpreter), ``"torch"`` (:data:`CONV_STAGE`, then :func:`_qkv_gates_per_head`) or ``"auto"`` (Triton on CUDA
#: where it is installed). Layers whose head dim, block size, conv or gates the kernels cannot take run the torch
#: stage under any setting. The same function. Slower on an H200 (2026-11-30, fourteenth session, in turns): recipe 1
#: 322.2 against 209.9 ms a step, at 51.2 against 61.7 GiB peak memory (the kernels: triton_input_stage's docstring).
INPUT_STAGE = "torch"


class MLSTMDirection(nn.Module):
    """The direction-specific part of a bidirectional mLSTM layer: conv, q/k/v, gates, cell and output gate.

    Works in its own time order (the caller reverses the sequence for the backward direction).
    """

    def __init__(self, config: BiMLSTMLayerConfig):
        super().__init__()
        self.config = config
        inner = config.inner_dim
        self.conv1d = CausalConv1d(CausalConv1dConfig(feature_dim=inner, kernel_size=config.conv1d_kernel_size))
        proj_heads = inner // config.qkv_proj_blocksize
        self.q_proj, self.k_proj, self.v_proj = (
            LinearHeadwiseExpand(LinearHeadwiseExpandConfig(in_features=inner, num_heads=proj_heads, bias=False))
            for _ in range(3)
        )
        self.igate = nn.Linear(3 * inner, config.num_heads)
        self.fgate = nn.Linear(3 * inner, config.num_heads)
        self.outnorm = MultiHeadLayerNorm(ndim=inner, weight=True, bias=False)
        self.learnable_skip = nn.Parameter(torch.ones(inner))
        self.reset_parameters()

    def reset_parameters(self):
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            small_init_init_(proj.weight, dim=self.config.embedding_dim)
        self.conv1d.reset_parameters()
        nn.init.zeros_(self.fgate.weight)
        bias_linspace_init_(self.fgate.bias, start=3.0, end=6.0)
        nn.init.zeros_(self.igate.weight)
        nn.init.normal_(self.igate.bias, mean=0.0, std=0.1)
        self.outnorm.reset_parameters()
        nn.init.ones_(self.learnable_skip)

    def forward(self, x_mlstm: torch.Tensor, z: torch.Tensor, kernel: str = AUTO) -> torch.Tensor:
        """
        :param x_mlstm: mLSTM-branch input ``(batch, steps, inner)``
        :param z: output-gate branch ``(batch, steps, inner)``
        :param kernel: mLSTM kernel name or ``"auto"``
        :return: gated hidden states ``(batch, steps, inner)``

        Same function as xLSTM's ``mLSTMLayer`` branch; computed by :func:`mlstm_branches`, which
        :class:`BiMLSTMLayer` calls with both directions at once.
        """
        return mlstm_branches(x_mlstm[None], z[None], [self], kernel)[0]


def mlstm_branches(
    x_mlstm: torch.Tensor, z: torch.Tensor, directions: list[MLSTMDirection], kernel: str = AUTO
) -> torch.Tensor:
    """Several mLSTM branches of the same shape, each with its own weights, computed together.

    The weights of the directions are stacked along a leading axis, so every step is one batched operation for
    all directions and one mLSTM kernel call (directions stacked along the kernel's batch axis). Same function as
    xLSTM's components (``CausalConv1d``, ``LinearHeadwiseExpand``, ``MultiHeadLayerNorm``) applied per
    direction, with fewer and larger GPU operations.

    :param x_mlstm: mLSTM-branch inputs ``(directions, batch, steps, inner)``, each in its own time order
    :param z: output-gate branches ``(directions, batch, steps, inner)``
    :param directions: one :class:`MLSTMDirection` per leading index
    :param kernel: mLSTM kernel name or ``"auto"``; with a resolved name (as the backbones pass) q, k and v are laid
        out at the head dim that kernel runs at (:func:`seisbench_xlstm.kernels.kernel_head_dim`): zero-padded in
        the layout copy they get anyway, queries rescaled, the output cropped before the norm, instead of padded
        copies inside :func:`seisbench_xlstm.kernels.mlstm_sequence`
    :return: gated hidden states ``(directions, batch, steps, inner)``
    """
    n_dir, batch, steps, inner = x_mlstm.shape
    heads = directions[0].config.num_heads
    head_dim = inner // heads
    # "auto" (or HEAD_PAD_IN_LAYOUT off): head_dim here, and mlstm_sequence pads if it must
    kernel_dim = kernel_head_dim(head_dim, kernel) if HEAD_PAD_IN_LAYOUT else head_dim

    form = _qkv_form(x_mlstm, heads, directions[0].config.qkv_proj_blocksize)
    if form == "per_head":
        x_conv, q, k, v, i, f = per_head_inputs(x_mlstm, directions, kernel_dim)
        h = mlstm_sequence(q, k, v, i, f, kernel=kernel) if k is not None else mlstm_sequence_qk(q, v, i, f, kernel)
        h = h[..., :head_dim]  # (directions * heads, batch, steps, hd)
        return _output_stage(h.unflatten(0, (n_dir, heads)), x_conv, z, directions)
    (w_q, w_k, w_v), gate_w, gate_b = _branch_weights(directions)
    x_conv, _ = _conv_stage(x_mlstm, directions)
    if form == "fused":
        q, k, v, gates = _qkv_gates_fused(x_conv, x_mlstm, (w_q, w_k, w_v), gate_w)
    elif form == "dense":
        q, k, v, gates = _qkv_gates_dense(x_conv, x_mlstm, (w_q, w_k, w_v), gate_w)
    else:
        q, k = headwise_linear(x_conv, (w_q, w_k))
        (v,) = headwise_linear(x_mlstm, (w_v,))
        gates = sum(_batched_linear(t, w) for t, w in zip((q, k, v), gate_w.split(inner, dim=-1)))
    gates = gates + gate_b[:, None, None]
    # (directions * batch, heads, steps, ...): the directions become part of the kernel's batch axis (views only)
    i, f = gates.flatten(0, 1).transpose(1, 2).split(heads, dim=1)

    def split_heads(t, scale=1.0):  # the kernels need contiguous inputs; under torch.compile this fuses into the
        t = t.reshape(n_dir * batch, steps, heads, head_dim)  # producer, and so do the padding and the scale
        if kernel_dim != head_dim:
            t = F.pad(t * scale, (0, kernel_dim - head_dim))
        return t.transpose(1, 2).contiguous()

    q = split_heads(q, query_scale(head_dim, kernel_dim))
    h = mlstm_sequence(q, split_heads(k), split_heads(v), i, f, kernel=kernel)[..., :head_dim]
    return _output_stage(h.unflatten(0, (n_dir, batch)).transpose(1, 2), x_conv, z, directions)


def per_head_inputs(x_mlstm: torch.Tensor, directions: list[MLSTMDirection], kernel_dim: int | None = None):
    """The input stage of q/k/v form ``per_head``: the conv output and the mLSTM kernel's inputs, in Triton
    (:mod:`seisbench_xlstm.triton_input_stage`) where :data:`INPUT_STAGE` says so and the branches allow it, else
    :func:`_conv_stage` and :func:`_qkv_gates_per_head`.

    :param x_mlstm: ``(directions, batch, steps, inner)``
    :param kernel_dim: head dim of q, k, v for the kernel (default the head dim; larger: zero-padded, PyTorch stage)
    :return: ``x_conv`` ``(directions, batch, steps, inner)`` and q, k, v, i, f as :func:`_qkv_gates_per_head`
        returns them (k None: q holds q and k)
    """
    heads = directions[0].config.num_heads
    head_dim = x_mlstm.shape[-1] // heads
    qkv, gate_w, gate_b = _branch_weights(directions)
    if kernel_dim in (None, head_dim) and _triton_input_stage(x_mlstm, directions, head_dim):
        x_conv, qk, v, i, f = mlstm_input_stage(x_mlstm, *_conv_weights(directions), *qkv,
                                                *_folded_gate_weights(qkv, gate_w), gate_b, heads)
        return x_conv, qk, None, v, i, f
    x_conv, heads_layout = _conv_stage(x_mlstm, directions, heads)
    return x_conv, *_qkv_gates_per_head(x_conv, x_mlstm, qkv, gate_w, gate_b, heads, kernel_dim, heads_layout)


#: :func:`normed_output_gate` hidden from ``torch.compile`` (its kernels run as they are; the code around them is
#: compiled in graphs of their own), as the layers run it unless :data:`OUTPUT_STAGE_IN_GRAPH`.
_opaque_normed_output_gate = torch.compiler.disable(normed_output_gate)


def _stacked(directions: list[MLSTMDirection], get) -> torch.Tensor:
    """One tensor per direction, stacked along a new leading axis."""
    return torch.stack([get(d) for d in directions])


def _conv_weights(directions: list[MLSTMDirection]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The directions' conv weights ``(directions, inner, kernel)`` and biases ``(directions, inner)`` (or None)."""
    conv = directions[0].conv1d.conv
    return (_stacked(directions, lambda d: d.conv1d.conv.weight[:, 0]),
            None if conv.bias is None else _stacked(directions, lambda d: d.conv1d.conv.bias))


def _branch_weights(directions: list[MLSTMDirection]):
    """The directions' headwise q/k/v weights (three ``(directions, blocks, block, block)``), gate weights
    ``(directions, 2 * heads, 3 * inner)`` and gate biases ``(directions, 2 * heads)``, stacked."""
    qkv = tuple(_stacked(directions, lambda d, n=n: getattr(d, n).weight) for n in ("q_proj", "k_proj", "v_proj"))
    return (qkv, _stacked(directions, lambda d: torch.cat([d.igate.weight, d.fgate.weight])),
            _stacked(directions, lambda d: torch.cat([d.igate.bias, d.fgate.bias])))


def _qkv_form(x: torch.Tensor, heads: int, blocksize: int) -> str:
    form = GPU_QKV_FORM if x.is_cuda else CPU_QKV_FORM
    if form not in QKV_FORMS:
        raise ValueError(f"Unknown q/k/v form {form!r}; known forms: {', '.join(QKV_FORMS)}")
    if form == "fused" and not torch.compiler.is_compiling():
        return "dense"  # the fused form would materialise d_out times the input outside the compiler
    if form == "per_head" and (x.shape[-1] // heads) % blocksize:
        return "dense"  # projection blocks that straddle two heads
    return form


def _output_stage(h: torch.Tensor, x_conv: torch.Tensor, z: torch.Tensor, directions: list[MLSTMDirection]):
    """Cell outputs ``h`` ``(directions, heads, batch, steps, head_dim)`` (any strides) to the gated hidden states
    ``(directions, batch, steps, inner)``: each head's norm, then :func:`_output_gate`; in Triton where
    :data:`OUTPUT_STAGE` says so."""
    n_dir, heads, batch, steps, head_dim = h.shape
    eps = directions[0].outnorm.eps
    if _triton_output_stage(x_conv, directions, head_dim):
        gate = normed_output_gate if OUTPUT_STAGE_IN_GRAPH else _opaque_normed_output_gate
        return gate(h, x_conv, z, _stacked(directions, lambda d: d.outnorm.weight_proxy),
                    _stacked(directions, lambda d: d.learnable_skip), eps)
    h = F.layer_norm(h, (head_dim,), eps=eps).to(x_conv.dtype)
    return _output_gate(h.permute(0, 2, 3, 1, 4).reshape(n_dir, batch, steps, heads * head_dim), x_conv, z, directions)


def _triton_output_stage(x: torch.Tensor, directions: list[MLSTMDirection], head_dim: int) -> bool:
    norm = directions[0].outnorm
    if norm.weight is None or norm.bias is not None:  # the kernels take a weight and no bias
        return False
    return _in_triton(OUTPUT_STAGE, "output stage", x) and (
        OUTPUT_STAGE == "triton" or head_dim <= OUTPUT_STAGE_MAX_AUTO_HEAD_DIM)


def _in_triton(setting: str, what: str, x: torch.Tensor) -> bool:
    """Whether a stage set to ``setting`` (one of :data:`STAGE_SETTINGS`) runs in Triton for inputs like ``x``."""
    if setting not in STAGE_SETTINGS:
        raise ValueError(f"Unknown {what} {setting!r}; known: {', '.join(STAGE_SETTINGS)}")
    return setting == "triton" or (setting == "auto" and x.is_cuda and triton is not None)


def _triton_input_stage(x: torch.Tensor, directions: list[MLSTMDirection], head_dim: int) -> bool:
    """Whether the input stage runs in Triton (:data:`INPUT_STAGE`) for these branches: q and k as one tensor, a
    conv with a bias and at most :data:`seisbench_xlstm.triton_input_stage.TAPS` taps, a head dim the kernels tile."""
    config, conv = directions[0].config, directions[0].conv1d.conv
    return _in_triton(INPUT_STAGE, "input stage", x) and QK_ONE_PRODUCT and conv.bias is not None and (
        conv.kernel_size[0] <= INPUT_STAGE_TAPS) and sub_channels(head_dim, config.qkv_proj_blocksize) > 0


def _conv_stage(x_mlstm: torch.Tensor, directions: list[MLSTMDirection], heads: int = 0):
    """The causal depthwise conv of each direction and its SiLU, ``(directions, batch, steps, inner)``, in Triton
    where :data:`CONV_STAGE` says so; and, with ``heads`` and :data:`CONV_WRITES_HEAD_LAYOUT`, the conv's output and
    input laid out per head as the Triton kernel writes them (else None)."""
    weight, bias = _conv_weights(directions)
    if bias is not None and weight.shape[-1] <= CONV_TRITON_TAPS and _in_triton(CONV_STAGE, "conv stage", x_mlstm):
        if heads and CONV_WRITES_HEAD_LAYOUT:
            y, y_heads, x_heads = causal_conv_silu_heads(x_mlstm, weight, bias, heads)
            return y, (y_heads, x_heads)
        return causal_conv_silu(x_mlstm, weight, bias), None
    return F.silu(causal_depthwise_conv(x_mlstm, weight, bias)), None


def _output_gate(h: torch.Tensor, x_conv: torch.Tensor, z: torch.Tensor, directions: list[MLSTMDirection]):
    """Normalised cell outputs ``h`` ``(directions, batch, steps, inner)`` to the gated hidden states: the norm's
    weight (and bias), the learnable skip of the conv output and the SiLU output gate."""
    # The wide tensors stay in the activations' dtype (bf16 under autocast; the callers cast the norm's output):
    # autocast runs the norm in float32, and float32 weights would promote every product after it, doubling the
    # memory traffic of the output gate and of its backward pass. No-ops in float32.
    act = x_conv.dtype

    norm_w = [d.outnorm.weight_proxy for d in directions]
    if norm_w[0] is not None:
        h = h * torch.stack(norm_w).to(act)[:, None, None]
    if directions[0].outnorm.bias is not None:
        h = h + _stacked(directions, lambda d: d.outnorm.bias).to(act)[:, None, None]
    skip = _stacked(directions, lambda d: d.learnable_skip).to(act)[:, None, None]
    return (h + skip * x_conv) * F.silu(z)


def _batched_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(directions, batch, steps, d_in)`` times per-direction ``(directions, d_out, d_in)`` weights: one batched
    GEMM (over :func:`token_groups` groups of the tokens), ``(directions, batch, steps, d_out)``."""
    n_dir, batch, steps, d_in = x.shape
    return _token_matmul(x.reshape(n_dir, batch * steps, d_in), weight.transpose(1, 2)).view(n_dir, batch, steps, -1)


def token_groups(x: torch.Tensor, tokens: int) -> int:
    """How many groups of tokens the projections of ``x`` (``tokens`` rows) run over: groups of
    :data:`GPU_TOKENS_PER_GROUP` tokens on GPUs (:data:`CPU_TOKENS_PER_GROUP` on CPUs) where that divides ``tokens``,
    else 1."""
    size = GPU_TOKENS_PER_GROUP if x.is_cuda else CPU_TOKENS_PER_GROUP
    return tokens // size if 0 < size < tokens and tokens % size == 0 else 1


def _token_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight`` for ``x`` ``(..., tokens, d_in)`` and ``weight`` ``(..., d_in, d_out)`` with the same leading
    dims, over :func:`token_groups` groups of the tokens: ``(..., tokens, d_out)``. With groups, the weight is
    broadcast over a group axis, so autograd sums the groups' weight gradients (``tokens / groups`` each)."""
    tokens = x.shape[-2]
    groups = token_groups(x, tokens)
    if groups == 1:
        return torch.matmul(x, weight)
    grouped = x.unflatten(-2, (groups, tokens // groups))  # (..., groups, tokens / groups, d_in)
    return torch.matmul(grouped, weight.unsqueeze(-3)).flatten(-3, -2)


def headwise_linear(x: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """xlstm's ``LinearHeadwiseExpand`` of one input with several per-direction ``(directions, heads, d_out, d_in)``
    weights, as per-head ``einsum`` (the cheap form on CPUs; GPUs use :func:`_qkv_gates_dense`).

    :param x: ``(directions, batch, steps, heads * d_in)``
    :return: one ``(directions, batch, steps, heads * d_out)`` output per weight
    """
    outputs = []
    for w in weights:
        out = torch.einsum("zbthd,zhod->zbtho", x.unflatten(-1, (w.shape[1], -1)), w)
        outputs.append(out.flatten(-2))
    return outputs


def _qkv_gates_dense(
    x_conv: torch.Tensor, x_mlstm: torch.Tensor, qkv_weights: tuple[torch.Tensor, ...], gate_w: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """q, k, v and the gate pre-activations (without bias) in two batched GEMMs.

    The headwise q/k/v projections become block-diagonal matrices (more FLOPs than per-head products, but tensor
    cores make one large GEMM far faster than many tiny ones), and since the gates are linear in q, k and v, their
    weights are folded into the same GEMMs as extra output columns (``gate_q @ W_q + gate_k @ W_k`` on the conv
    output, ``gate_v @ W_v`` on the branch input) instead of three thin GEMMs over q, k and v.

    :param x_conv: ``(directions, batch, steps, inner)``, input of q and k
    :param x_mlstm: ``(directions, batch, steps, inner)``, input of v
    :param qkv_weights: headwise weights ``(directions, heads, d_out, d_in)`` of q, k, v
    :param gate_w: ``(directions, 2 * heads, 3 * inner)``, the input and forget gate weights over ``[q, k, v]``
    :return: q, k, v ``(directions, batch, steps, inner)`` and gates ``(directions, batch, steps, 2 * heads)``
    """
    inner = x_conv.shape[-1]
    w_q, w_k, w_v = (_block_diagonal(w) for w in qkv_weights)
    g_q, g_k, g_v = gate_w.split(inner, dim=-1)
    out_conv = _batched_linear(x_conv, torch.cat([w_q, w_k, g_q @ w_q + g_k @ w_k], dim=1))
    out_mlstm = _batched_linear(x_mlstm, torch.cat([w_v, g_v @ w_v], dim=1))
    q, k, gates_qk = out_conv.split([inner, inner, gate_w.shape[1]], dim=-1)
    v, gates_v = out_mlstm.split([inner, gate_w.shape[1]], dim=-1)
    return q, k, v, gates_qk + gates_v


def _qkv_gates_per_head(
    x_conv: torch.Tensor,
    x_mlstm: torch.Tensor,
    qkv_weights: tuple[torch.Tensor, ...],
    gate_w: torch.Tensor,
    gate_b: torch.Tensor,
    heads: int,
    kernel_dim: int | None = None,
    heads_layout: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, ...]:
    """q, k, v and the gates directly in the mLSTM kernel's layout, with one GEMM per mLSTM head.

    Each mLSTM head's q/k/v depend only on that head's slice of the inputs (the projection blocks lie inside
    heads), so the inputs are laid out per head once, ``(directions, heads, batch * steps, head_dim)``, and
    multiplied by each head's block-diagonal ``(head_dim, head_dim)`` matrix: ``1 / heads`` of the FLOPs of
    :func:`_qkv_gates_dense`, and outputs that are already contiguous kernel inputs. The kernel treats its two
    leading axes alike (every pair is an independent sequence), so ``directions * heads`` becomes its batch axis and
    the windows its head axis. The gates (linear in q, k, v) come from the folded weights of
    :func:`_qkv_gates_dense` on the token-major inputs.

    :param x_conv: ``(directions, batch, steps, inner)``, input of q and k
    :param x_mlstm: ``(directions, batch, steps, inner)``, input of v
    :param qkv_weights: headwise weights ``(directions, blocks, block, block)`` of q, k, v
    :param gate_w: ``(directions, 2 * heads, 3 * inner)``; :param gate_b: ``(directions, 2 * heads)``
    :param kernel_dim: head dim of q, k, v for the kernel (default ``head_dim``); larger: each head's matrices get
        zero output rows (and the query matrix the factor :func:`seisbench_xlstm.kernels.query_scale`), so the GEMMs
        write the padded layout directly
    :param heads_layout: ``x_conv`` and ``x_mlstm`` already laid out per head (the Triton conv writes them), else
        copied here
    :return: q, k, v ``(directions * heads, batch, steps, kernel_dim)`` and the input and forget gate
        pre-activations ``(directions * heads, batch, steps)``; with :data:`QK_ONE_PRODUCT` q and k as one tensor
        ``(directions * heads, batch, steps, 2 * kernel_dim)`` in place of q, and None for k
    """
    n_dir, batch, steps, inner = x_conv.shape
    head_dim = inner // heads
    kernel_dim = kernel_dim or head_dim

    def per_head(x):  # one layout copy of each input
        return x.reshape(n_dir, batch * steps, heads, head_dim).transpose(1, 2)

    def head_matrices(w, scale=1.0):  # (directions, blocks, b, b) -> (directions, heads, kernel_dim, head_dim)
        blocks = w.reshape(n_dir * heads, w.shape[1] // heads, *w.shape[2:])
        matrices = _block_diagonal(blocks).view(n_dir, heads, head_dim, head_dim)  # each head's block-diagonal
        return F.pad(matrices * scale, (0, 0, 0, kernel_dim - head_dim)) if kernel_dim != head_dim else matrices

    w_q, w_k, w_v = qkv_weights
    xc, xm = heads_layout or (per_head(x_conv), per_head(x_mlstm))
    scale = query_scale(head_dim, kernel_dim)
    def product(x, matrices):  # (directions, heads, batch * steps, d) -> (directions * heads, batch, steps, d_out)
        return _token_matmul(x, matrices.transpose(-1, -2)).view(n_dir * heads, batch, steps, matrices.shape[-2])

    if QK_ONE_PRODUCT:
        q, k = product(xc, torch.cat([head_matrices(w_q, scale), head_matrices(w_k)], dim=-2)), None
    else:
        q, k = product(xc, head_matrices(w_q, scale)), product(xc, head_matrices(w_k))
    v = product(xm, head_matrices(w_v))
    gates = _folded_gates(x_conv, x_mlstm, qkv_weights, gate_w) + gate_b[:, None, None]
    i, f = gates.permute(0, 3, 1, 2).split(heads, dim=1)  # (directions, heads, batch, steps)
    return q, k, v, i.reshape(n_dir * heads, batch, steps), f.reshape(n_dir * heads, batch, steps)


def _folded_gates(
    x_conv: torch.Tensor, x_mlstm: torch.Tensor, qkv_weights: tuple[torch.Tensor, ...], gate_w: torch.Tensor
) -> torch.Tensor:
    """Gate pre-activations (without bias) ``(directions, batch, steps, 2 * heads)`` straight from the inputs of q, k
    and v: the gates are linear in q, k and v, so their weights fold into the headwise projections (two thin GEMMs
    instead of three over q, k and v)."""
    on_conv, on_input = _folded_gate_weights(qkv_weights, gate_w)
    return _batched_linear(x_conv, on_conv) + _batched_linear(x_mlstm, on_input)


def _folded_gate_weights(qkv_weights: tuple[torch.Tensor, ...], gate_w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The gates' weights ``(directions, 2 * heads, 3 * inner)`` over ``[q, k, v]`` folded into the headwise
    projections: those on the conv output (the input of q and k) and on the branch input (that of v), each
    ``(directions, 2 * heads, inner)``."""
    g_q, g_k, g_v = gate_w.split(gate_w.shape[-1] // 3, dim=-1)
    w_q, w_k, w_v = (_block_diagonal(w) for w in qkv_weights)
    return g_q @ w_q + g_k @ w_k, g_v @ w_v


def _qkv_gates_fused(
    x_conv: torch.Tensor, x_mlstm: torch.Tensor, qkv_weights: tuple[torch.Tensor, ...], gate_w: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """The form of :func:`_qkv_gates_dense` for ``torch.compile`` (same shapes and values): each headwise projection
    as a broadcast multiply-sum over its small blocks, for the compiler to fuse with the conv before it and the
    kernel's layout change (eager, it would materialise ``d_out`` times the input: used only while compiling).
    Gates: thin GEMMs with folded weights. The compiled training step on an H200 was 3.4x slower than with the dense
    GEMMs, so it is an alternative for benchmarks, not the default of :data:`GPU_QKV_FORM`."""
    w_q, w_k, w_v = qkv_weights

    def headwise(x, w):
        n_dir, heads, d_out, d_in = w.shape
        product = x.unflatten(-1, (heads, 1, d_in)) * w.to(x.dtype)[:, None, None]  # (..., heads, d_out, d_in)
        return product.sum(-1).flatten(-2)

    gates = _folded_gates(x_conv, x_mlstm, qkv_weights, gate_w)
    return headwise(x_conv, w_q), headwise(x_conv, w_k), headwise(x_mlstm, w_v), gates


def _block_diagonal(weight: torch.Tensor) -> torch.Tensor:
    """``(directions, heads, d_out, d_in)`` blocks to ``(directions, heads * d_out, heads * d_in)`` block-diagonal
    matrices in one broadcast (``torch.block_diag`` launches one copy per block: hundreds of tiny kernels)."""
    n_dir, heads, d_out, d_in = weight.shape
    eye = torch.eye(heads, dtype=weight.dtype, device=weight.device)
    return (weight[:, :, :, None, :] * eye[:, None, :, None]).reshape(n_dir, heads * d_out, heads * d_in)


class BiMLSTMLayer(nn.Module):
    """Pre-norm residual bidirectional mLSTM layer.

    Input and output ``(batch, steps, embedding_dim)``; any number of steps.
    """

    def __init__(self, config: BiMLSTMLayerConfig):
        super().__init__()
        self.config = config
        d, inner = config.embedding_dim, config.inner_dim
        n_proj = 1 if config.share_projections else 2
        self.norm = LayerNorm(ndim=d, weight=True, bias=False)
        self.proj_up = nn.Linear(d, n_proj * 2 * inner, bias=config.bias)
        self.forward_direction = MLSTMDirection(config)
        self.backward_direction = MLSTMDirection(config)
        self.proj_down = nn.Linear(n_proj * inner, d, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()

    def reset_parameters(self):
        self.norm.reset_parameters()
        small_init_init_(self.proj_up.weight, dim=self.config.embedding_dim)
        wang_init_(self.proj_down.weight, dim=self.config.embedding_dim, num_blocks=self.config.num_blocks)
        for lin in (self.proj_up, self.proj_down):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, kernel: str = AUTO) -> torch.Tensor:
        """
        :param x: ``(batch, steps, embedding_dim)``
        :param kernel: mLSTM kernel name or ``"auto"`` (see :mod:`seisbench_xlstm.kernels`)
        :return: ``(batch, steps, embedding_dim)``

        Both directions run stacked along a leading axis (:func:`mlstm_branches`): the backward direction sees
        the time-reversed sequence, and its output is reversed back after the down-projection, where the tensor is
        narrow.
        """
        inner, d = self.config.inner_dim, self.config.embedding_dim
        x_norm = self.norm(x)
        both = torch.stack([x_norm, x_norm.flip(1)])  # (2, batch, steps, d): each direction in its own time order
        x_mlstm, z = self._up_projections(both)
        if self.config.share_projections:
            w_down = self.proj_down.weight.expand(2, d, inner)
        else:
            w_down = self.proj_down.weight.view(d, 2, inner).transpose(0, 1)
        h = mlstm_branches(x_mlstm, z, [self.forward_direction, self.backward_direction], kernel)
        out = _batched_linear(h, w_down)
        out = out[0] + out[1].flip(1)
        if self.proj_down.bias is not None:
            out = out + self.proj_down.bias
        return x + self.dropout(out)

    def _up_projections(self, both: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The up-projection of ``both`` ``(2, batch, steps, d_model)`` (each direction in its own time order) to the
        mLSTM branch input and the output-gate branch, each ``(2, batch, steps, inner)``.

        Two products, one per branch, rather than one product split afterwards: the gradients of the two branches
        then flow into the weights and the input without being copied into one ``2 * inner`` wide tensor first (on
        GPUs that copy read and wrote four activation-sized tensors a layer)."""
        inner, d = self.config.inner_dim, self.config.embedding_dim
        weight = self.proj_up.weight.view(-1, 2, inner, d)  # (projections, branch, inner, d_model)
        bias = None if self.proj_up.bias is None else self.proj_up.bias.view(-1, 2, 1, 1, inner)
        tokens = both.flatten(0, 2)  # shared projections: one product over both directions' tokens
        branches = []
        for branch in range(2):
            if self.config.share_projections:
                out = _token_matmul(tokens, weight[0, branch].t()).view(*both.shape[:3], inner)
            else:
                out = _batched_linear(both, weight[:, branch])
            branches.append(out if bias is None else out + bias[:, branch])
        return branches[0], branches[1]
