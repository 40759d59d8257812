"""The mLSTM branches' causal conv and SiLU in Triton (``seisbench_xlstm.triton_conv``) against the PyTorch form it
replaces (``triton_conv.causal_depthwise_conv`` and ``F.silu``): the output and the gradients of the input, the weights
and the bias.

Runs on CUDA, or on CPU under Triton's interpreter (``TRITON_INTERPRET=1``). Tolerances: float32 against the PyTorch
form in float64, ``1e-5`` relative L2 per tensor (both compute in float32; the weight and bias gradients sum over
steps in another order); bfloat16 (CUDA) ``1e-2`` (one rounding of each output to 8 significant bits).
"""

import pytest
import torch
import torch.nn.functional as F

from mlstm_calls import (
    assert_layer_unchanged_by_setting, compiled_layer_graph_breaks, output_and_grads, rel_err, triton_device_or_skip,
)

DEVICE = triton_device_or_skip("the Triton conv stage")

from seisbench_xlstm import bimlstm, triton_conv  # noqa: E402
from seisbench_xlstm.bimlstm import BiMLSTMLayer, BiMLSTMLayerConfig  # noqa: E402
from seisbench_xlstm.triton_conv import causal_conv_silu, causal_depthwise_conv  # noqa: E402


def reference(x, w, b):
    return F.silu(causal_depthwise_conv(x, w, b))


def inputs(steps, channels, size=4, dtype=torch.float32, n_dir=2, batch=3, strided=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if strided:  # a view whose leading axes are not contiguous (the channels are)
        x = torch.randn(n_dir, batch, steps, channels + 8, generator=g)[..., :channels]
    else:
        x = torch.randn(n_dir, batch, steps, channels, generator=g)
    w = 0.5 * torch.randn(n_dir, channels, size, generator=g)
    b = 0.3 * torch.randn(n_dir, channels, generator=g)
    dy = torch.randn(n_dir, batch, steps, channels, generator=g)
    return [x.to(DEVICE, dtype), w.to(DEVICE), b.to(DEVICE)], dy.to(DEVICE, dtype)


@pytest.mark.parametrize("steps,channels,size,strided", [
    (37, 64, 4, False), (100, 200, 4, True), (5, 16, 4, False), (64, 130, 2, False), (1, 8, 4, False),
    (300, 40, 3, False), (257, 16, 1, True),  # several programs' step ranges (triton_conv.BACKWARD_ROWS = 128)
])
@pytest.mark.parametrize("backward", triton_conv.BACKWARDS)
def test_float32_matches_the_pytorch_conv(steps, channels, size, strided, backward, monkeypatch):
    monkeypatch.setattr(triton_conv, "BACKWARD", backward)
    args, dy = inputs(steps, channels, size, strided=strided)
    got = output_and_grads(causal_conv_silu, args, dy)
    want = output_and_grads(reference, [a.double() for a in args], dy.double())
    assert [g.dtype for g in got[1:]] == [a.dtype for a in args]
    for name, g, w in zip(["y", "dx", "dw", "db"], got, want):
        assert rel_err(g, w) < 1e-5, (name, rel_err(g, w))


@pytest.mark.skipif(DEVICE != "cuda", reason="bfloat16: CUDA only (the interpreter's bf16 is not the GPU's)")
@pytest.mark.parametrize("backward", triton_conv.BACKWARDS)
def test_bfloat16_matches_the_pytorch_conv_in_float64(backward, monkeypatch):
    monkeypatch.setattr(triton_conv, "BACKWARD", backward)
    args, dy = inputs(1024, 384, dtype=torch.bfloat16, batch=8)
    got = output_and_grads(causal_conv_silu, args, dy)
    want = output_and_grads(reference, [a.double() for a in args], dy.double())
    for name, g, w in zip(["y", "dx", "dw", "db"], got, want):
        assert rel_err(g, w) < 1e-2, (name, rel_err(g, w))


@pytest.mark.parametrize("pre_grad", triton_conv.PRE_GRAD_DTYPES)
def test_pytorch_backward_in_bfloat16_matches_float64(pre_grad, monkeypatch):
    """The PyTorch backward on bfloat16 inputs (as under autocast), with the gradient of ``pre`` kept in float32 or
    rounded to bfloat16: within ``1e-2`` of the float64 gradients (one rounding to 8 significant bits), and the
    rounding really happens; on float32 inputs both settings give the same values."""

    def backward(setting, x, w, b, dy):
        monkeypatch.setattr(triton_conv, "PRE_GRAD_DTYPE", setting)
        return triton_conv._pytorch_backward(dy, x, w, b)

    (x, w, b), dy = inputs(300, 48, dtype=torch.bfloat16)
    got = backward(pre_grad, x, w, b, dy)
    want = output_and_grads(reference, [a.double() for a in (x, w, b)], dy.double())[1:]
    assert [g.dtype for g in got] == [torch.bfloat16, torch.float32, torch.float32]
    for name, g, r in zip(["dx", "dw", "db"], got, want):
        assert rel_err(g, r) < 1e-2, (name, rel_err(g, r))
    assert torch.equal(got[2], backward("float32", x, w, b, dy)[2]) == (pre_grad == "float32")
    (x, w, b), dy = inputs(50, 16)
    for g, r in zip(backward(pre_grad, x, w, b, dy), backward("float32", x, w, b, dy)):
        assert torch.equal(g, r)


@pytest.mark.parametrize("backward", triton_conv.BACKWARDS)
def test_heads_layout_outputs_and_gradients(backward, monkeypatch):
    """``causal_conv_silu_heads``: ``y`` and, laid out per head, ``y`` and ``x``; the gradients of all three summed
    into those of ``x``, the weights and the bias (float32 against the PyTorch form in float64, ``1e-5``)."""
    monkeypatch.setattr(triton_conv, "BACKWARD", backward)
    (x, w, b), _ = inputs(70, 24, batch=2)
    heads = 4
    directions, batch, steps, channels = x.shape

    def per_head(t):
        return t.reshape(directions, batch * steps, heads, channels // heads).transpose(1, 2)

    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(*s, generator=g).to(DEVICE) for s in (x.shape, per_head(x).shape, per_head(x).shape)]

    def reference_heads(x, w, b):
        y = reference(x, w, b)
        return y, per_head(y), per_head(x)

    def outputs_and_grads(fn, args):
        args = [a.detach().requires_grad_() for a in args]
        outs = fn(*args)
        loss = sum((o * gr.to(o.dtype)).sum() for o, gr in zip(outs, grads))
        return [o.detach() for o in outs] + list(torch.autograd.grad(loss, args))

    got = outputs_and_grads(lambda *a: triton_conv.causal_conv_silu_heads(*a, heads), [x, w, b])
    want = outputs_and_grads(reference_heads, [a.double() for a in (x, w, b)])
    assert [tuple(t.shape) for t in got[1:3]] == [(directions, heads, batch * steps, channels // heads)] * 2
    for name, a, r in zip(["y", "y per head", "x per head", "dx", "dw", "db"], got, want):
        assert rel_err(a, r) < 1e-5, (name, rel_err(a, r))


@pytest.mark.parametrize("form", ["per_head", "dense"])
def test_layer_is_the_same_with_the_conv_writing_the_heads_layout(form, monkeypatch):
    """``bimlstm.CONV_WRITES_HEAD_LAYOUT`` changes no output or gradient of the layer (Triton conv)."""
    monkeypatch.setattr(bimlstm, "CONV_STAGE", "triton")
    assert_layer_unchanged_by_setting(monkeypatch, "CONV_WRITES_HEAD_LAYOUT", (False, True), form, False, DEVICE)


def test_compiled_layer_keeps_the_heads_layout_conv_in_its_graph(monkeypatch):
    breaks = compiled_layer_graph_breaks(monkeypatch, DEVICE, [
        [(bimlstm, "CONV_STAGE", "torch")],
        [(bimlstm, "CONV_STAGE", "triton"), (bimlstm, "CONV_WRITES_HEAD_LAYOUT", True)],
    ])
    assert breaks[1] == breaks[0]


@pytest.mark.parametrize("form", ["per_head", "dense"])
def test_layer_gives_the_same_output_and_gradients_with_either_conv(form, monkeypatch):
    """The whole layer (native mLSTM kernel, float32) with the Triton conv equals the layer with the PyTorch conv:
    output, input gradient and every parameter's gradient, within ``1e-5`` relative L2 per tensor."""
    assert_layer_unchanged_by_setting(monkeypatch, "CONV_STAGE", ("torch", "triton"), form, False, DEVICE)


def test_operator_passes_opcheck():
    """The registered operators' schema, fake (compile-time) outputs and autograd registration
    (``torch.library.opcheck``)."""
    args, _ = inputs(37, 64)
    torch.library.opcheck(torch.ops.seisbench_xlstm.causal_conv_silu.default, [a.requires_grad_() for a in args])
    torch.library.opcheck(torch.ops.seisbench_xlstm.causal_conv_silu_heads.default, args + [4])


@pytest.mark.parametrize("backward", triton_conv.BACKWARDS)
def test_compiled_layer_keeps_the_conv_in_its_graph(backward, monkeypatch):
    """Under ``torch.compile`` the Triton conv adds no graph break (the gradients reaching its output from several
    consumers are then summed by compiled code), and the compiled layer equals the eager one with the PyTorch conv."""
    monkeypatch.setattr(triton_conv, "BACKWARD", backward)
    breaks = compiled_layer_graph_breaks(monkeypatch, DEVICE, [[(bimlstm, "CONV_STAGE", stage)]
                                                               for stage in ("torch", "triton")])
    assert breaks[1] == breaks[0]


def test_bad_shapes_and_unknown_setting_are_named(monkeypatch):
    (x, w, b), _ = inputs(8, 16)
    with pytest.raises(ValueError, match="weight must be"):
        causal_conv_silu(x, w[:, :8], b)
    with pytest.raises(ValueError, match="weight must be"):
        causal_conv_silu(x, w, b[:1])
    with pytest.raises(ValueError, match="kernel_size <= 4"):
        causal_conv_silu(x, torch.cat([w, w[..., :1]], dim=-1), b)
    with pytest.raises(ValueError, match=r"channels \(16\) must split into heads \(3\)"):
        triton_conv.causal_conv_silu_heads(x, w, b, 3)
    monkeypatch.setattr(triton_conv, "PRE_GRAD_DTYPE", "bf16")
    args = [a.requires_grad_() for a in (x, w, b)]
    with pytest.raises(ValueError, match="Unknown PRE_GRAD_DTYPE 'bf16'"):
        causal_conv_silu(*args).sum().backward()
    monkeypatch.setattr(triton_conv, "PRE_GRAD_DTYPE", "float32")
    monkeypatch.setattr(triton_conv, "BACKWARD", "cuda")
    args = [a.requires_grad_() for a in (x, w, b)]
    with pytest.raises(ValueError, match="Unknown conv backward 'cuda'"):
        causal_conv_silu(*args).sum().backward()
    monkeypatch.setattr(bimlstm, "CONV_STAGE", "cuda")
    layer = BiMLSTMLayer(BiMLSTMLayerConfig(embedding_dim=32, num_heads=4)).to(DEVICE)
    with pytest.raises(ValueError, match="Unknown conv stage 'cuda'"):
        layer(torch.randn(1, 8, 32, device=DEVICE), kernel="chunkwise--native_autograd")


def test_kernel_sizes_past_the_taps_run_in_pytorch(monkeypatch):
    """A layer whose conv is longer than the backward kernel's taps runs its conv in PyTorch under any setting."""
    torch.manual_seed(0)
    layer = BiMLSTMLayer(BiMLSTMLayerConfig(embedding_dim=32, num_heads=4, conv1d_kernel_size=5, dropout=0.0))
    layer = layer.to(DEVICE)
    x = torch.randn(2, 16, 32, device=DEVICE)
    outs = []
    for stage in ("torch", "triton"):
        monkeypatch.setattr(bimlstm, "CONV_STAGE", stage)
        outs.append(output_and_grads(lambda a: layer(a, kernel="chunkwise--native_autograd"), [x],
                                     torch.ones(2, 16, 32, device=DEVICE)))
    for g, w in zip(*outs):
        assert torch.equal(g, w)
