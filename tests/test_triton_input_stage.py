"""The mLSTM branches' input stage in Triton (``seisbench_xlstm.triton_input_stage``: conv, SiLU, headwise q/k/v and
gates) against the PyTorch functions it replaces: outputs and the gradients of every input, and the whole layer with
``bimlstm.INPUT_STAGE`` set either way.

Runs on CUDA, or on CPU under Triton's interpreter (``TRITON_INTERPRET=1``). Tolerances: float32 against the PyTorch
form in float64, ``1e-5`` relative L2 per tensor (both compute in float32; products and the weights' gradients sum
in another order); bfloat16 (CUDA) ``1e-2``: one rounding of each output to 8 significant bits, as in the PyTorch
path under autocast (there the conv output and the gradients reaching the products are rounded as well).
"""

import pytest
import torch
import torch.nn.functional as F

from mlstm_calls import assert_layer_unchanged_by_setting, compiled_layer_graph_breaks, rel_err, triton_device_or_skip

DEVICE = triton_device_or_skip("the Triton input stage")

from seisbench_xlstm import bimlstm, triton_input_stage  # noqa: E402
from seisbench_xlstm.bimlstm import BiMLSTMLayer, BiMLSTMLayerConfig, headwise_linear  # noqa: E402
from seisbench_xlstm.triton_conv import causal_depthwise_conv  # noqa: E402
from seisbench_xlstm.triton_input_stage import mlstm_input_stage  # noqa: E402

NATIVE = "chunkwise--native_autograd"
NAMES = ("x_conv", "qk", "v", "i", "f", "dx", "dconv_w", "dconv_b", "dw_q", "dw_k", "dw_v", "dgate_c", "dgate_m",
         "dgate_b")


def reference(x, conv_w, conv_b, w_q, w_k, w_v, gate_c, gate_m, gate_b, heads):
    """The PyTorch functions of the stage (conv and SiLU, xLSTM's headwise projections, the folded gates), laid out
    as the kernel writes them."""
    n_dir, batch, steps, channels = x.shape
    hd = channels // heads
    xc = F.silu(causal_depthwise_conv(x, conv_w, conv_b))
    q, k = headwise_linear(xc, (w_q, w_k))
    (v,) = headwise_linear(x, (w_v,))

    def per_head(t):
        return t.unflatten(-1, (heads, hd)).permute(0, 3, 1, 2, 4).reshape(n_dir * heads, batch, steps, hd)

    gates = (xc @ gate_c.transpose(1, 2)[:, None] + x @ gate_m.transpose(1, 2)[:, None]
             + gate_b[:, None, None]).permute(0, 3, 1, 2)  # (directions, 2 * heads, batch, steps)
    i, f = (g.reshape(n_dir * heads, batch, steps) for g in gates.split(heads, dim=1))
    return xc, torch.cat([per_head(q), per_head(k)], dim=-1), per_head(v), i, f


def inputs(steps, heads, head_dim, block, size=4, n_dir=2, batch=3, strided=False, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    channels = heads * head_dim
    x = torch.randn(n_dir, batch, steps, channels + (8 if strided else 0), generator=g)[..., :channels]
    weights = [0.5 * torch.randn(n_dir, channels, size, generator=g), 0.3 * torch.randn(n_dir, channels, generator=g)]
    weights += [0.3 * torch.randn(n_dir, channels // block, block, block, generator=g) for _ in range(3)]
    weights += [0.1 * torch.randn(n_dir, 2 * heads, channels, generator=g) for _ in range(2)]
    weights += [torch.randn(n_dir, 2 * heads, generator=g)]
    return [x.to(DEVICE, dtype)] + [w.to(DEVICE) for w in weights]


def outputs_and_grads(fn, args, heads, seed=1):
    """The five outputs and the gradients of all nine inputs for random output gradients (the same for any ``fn``)."""
    args = [a.detach().clone().requires_grad_() for a in args]
    outs = fn(*args, heads)
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(o.shape, generator=g).to(o.device) for o in outs]
    loss = sum((o.double() * gr.double()).sum() for o, gr in zip(outs, grads))
    return [o.detach() for o in outs] + list(torch.autograd.grad(loss, args))


@pytest.mark.parametrize("steps,heads,head_dim,block,size,strided", [
    (77, 2, 32, 8, 4, False),   # sub-blocks of 32, several per head
    (600, 4, 16, 4, 4, True),   # three backward programs along the steps (BACKWARD_ROWS = 256), 16-wide sub-blocks
    (5, 1, 16, 4, 2, False),    # fewer steps than one block; a shorter conv (zero taps in front)
    (1, 2, 16, 16, 4, False),   # one step; the block as wide as the sub-block
    (40, 3, 32, 4, 3, True),
])
def test_float32_matches_the_pytorch_functions(steps, heads, head_dim, block, size, strided):
    args = inputs(steps, heads, head_dim, block, size, strided=strided)
    got = outputs_and_grads(mlstm_input_stage, args, heads)
    want = outputs_and_grads(reference, [a.double() for a in args], heads)
    assert [g.dtype for g in got[5:]] == [a.dtype for a in args]
    for name, g, w in zip(NAMES, got, want):
        assert g.shape == w.shape, name
        assert rel_err(g, w) < 1e-5, (name, rel_err(g, w))


@pytest.mark.skipif(DEVICE != "cuda", reason="bfloat16: CUDA only (the interpreter's bf16 is not the GPU's)")
@pytest.mark.parametrize("heads,head_dim,block", [(4, 96, 8), (4, 64, 4), (4, 256, 4)])
def test_bfloat16_matches_float64_at_the_backbones_head_dims(heads, head_dim, block):
    args = inputs(1024, heads, head_dim, block, dtype=torch.bfloat16, batch=4)
    got = outputs_and_grads(mlstm_input_stage, args, heads)
    want = outputs_and_grads(reference, [a.double() for a in args], heads)
    for name, g, w in zip(NAMES, got, want):
        assert rel_err(g, w) < 1e-2, (name, rel_err(g, w))


def _count_calls(monkeypatch) -> list:
    calls = []

    def counted(*args):
        calls.append(args[0].shape)
        return mlstm_input_stage(*args)

    monkeypatch.setattr(bimlstm, "mlstm_input_stage", counted)
    return calls


@pytest.mark.parametrize("share", [False, True])
def test_layer_is_the_same_with_the_triton_input_stage(share, monkeypatch):
    """The whole layer (native mLSTM kernel, float32): output, input gradient and every parameter's gradient within
    ``1e-5`` with ``INPUT_STAGE`` ``"torch"`` and ``"triton"``, and the Triton stage really ran."""
    calls = _count_calls(monkeypatch)
    assert_layer_unchanged_by_setting(monkeypatch, "INPUT_STAGE", ("torch", "triton"), "per_head", share, DEVICE)
    assert len(calls) == 1


def test_layers_the_kernels_cannot_take_run_the_torch_stage(monkeypatch):
    """Head dim 4 (no sub-block of 16 or 32), a conv of 5 taps, q and k as two tensors, or a q/k/v form other than
    per_head: the PyTorch stage, under ``INPUT_STAGE = "triton"``."""
    calls = _count_calls(monkeypatch)
    monkeypatch.setattr(bimlstm, "INPUT_STAGE", "triton")
    x = torch.randn(1, 8, 48, device=DEVICE)
    BiMLSTMLayer(BiMLSTMLayerConfig(embedding_dim=32, num_heads=16)).to(DEVICE)(x[..., :32], kernel=NATIVE)
    BiMLSTMLayer(BiMLSTMLayerConfig(embedding_dim=32, num_heads=4, conv1d_kernel_size=5)).to(DEVICE)(
        x[..., :32], kernel=NATIVE)
    monkeypatch.setattr(bimlstm, "QK_ONE_PRODUCT", False)
    BiMLSTMLayer(BiMLSTMLayerConfig(embedding_dim=32, num_heads=4)).to(DEVICE)(x[..., :32], kernel=NATIVE)
    monkeypatch.setattr(bimlstm, "QK_ONE_PRODUCT", True)
    monkeypatch.setattr(bimlstm, "CPU_QKV_FORM", "dense")
    monkeypatch.setattr(bimlstm, "GPU_QKV_FORM", "dense")
    BiMLSTMLayer(BiMLSTMLayerConfig(embedding_dim=32, num_heads=4)).to(DEVICE)(x[..., :32], kernel=NATIVE)
    assert calls == []


def test_auto_takes_triton_on_cuda_only(monkeypatch):
    calls = _count_calls(monkeypatch)
    monkeypatch.setattr(bimlstm, "INPUT_STAGE", "auto")
    layer = BiMLSTMLayer(BiMLSTMLayerConfig(embedding_dim=32, num_heads=4)).to(DEVICE)
    layer(torch.randn(1, 8, 32, device=DEVICE), kernel=NATIVE)
    assert len(calls) == (DEVICE == "cuda")


def test_operators_pass_opcheck():
    """The registered operators' schema, fake (compile-time) outputs and autograd registration."""
    args = inputs(37, 2, 16, 4)
    torch.library.opcheck(torch.ops.seisbench_xlstm.mlstm_input_stage.default,
                          [a.requires_grad_() for a in args] + [2])


def test_compiled_layer_keeps_the_input_stage_in_its_graph(monkeypatch):
    """Under ``torch.compile`` the Triton input stage adds no graph break, and the compiled layer equals the eager
    one with the PyTorch stage."""
    breaks = compiled_layer_graph_breaks(monkeypatch, DEVICE, [[(bimlstm, "INPUT_STAGE", stage)]
                                                               for stage in ("torch", "triton")])
    assert breaks[1] == breaks[0]


def test_bad_inputs_and_unknown_setting_are_named(monkeypatch):
    args = inputs(8, 2, 16, 4)
    with pytest.raises(ValueError, match=r"head dim 16 \(32 channels, 2 heads\) with projection blocks of 32"):
        mlstm_input_stage(args[0], *args[1:3], *(torch.zeros(2, 1, 32, 32) for _ in range(3)), *args[6:], 2)
    with pytest.raises(ValueError, match=r"head dim 10.6667 \(32 channels, 3 heads\)"):
        mlstm_input_stage(*args, 3)
    bad = list(args)
    bad[1] = torch.cat([args[1], args[1][..., :1]], dim=-1)
    with pytest.raises(ValueError, match=r"conv_w must be \(2, 32\) \+ \(kernel_size <= 4,\)"):
        mlstm_input_stage(*bad, 2)
    bad = list(args)
    bad[6] = args[6][:, :3]
    with pytest.raises(ValueError, match=r"gate_c must be \(2, 4, 32\)"):
        mlstm_input_stage(*bad, 2)
    bad = list(args)
    bad[4] = args[4][:, :4]
    with pytest.raises(ValueError, match=r"w_k must be \(2, 8, 4, 4\)"):
        mlstm_input_stage(*bad, 2)
    monkeypatch.setattr(bimlstm, "INPUT_STAGE", "cuda")
    layer = BiMLSTMLayer(BiMLSTMLayerConfig(embedding_dim=32, num_heads=4)).to(DEVICE)
    with pytest.raises(ValueError, match="Unknown input stage 'cuda'"):
        layer(torch.randn(1, 8, 32, device=DEVICE), kernel=NATIVE)


def test_sub_channels_follow_head_dim_and_block():
    assert [triton_input_stage.sub_channels(hd, b) for hd, b in [(96, 8), (64, 4), (256, 4), (16, 4), (48, 8),
                                                                 (12, 4), (32, 64)]] == [32, 32, 32, 16, 16, 0, 0]
