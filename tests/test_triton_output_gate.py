"""The mLSTM branches' output stage in Triton (``seisbench_xlstm.triton_output_gate``) against the PyTorch stage it
replaces (``bimlstm._output_stage`` with ``OUTPUT_STAGE = "torch"``): the output and the gradients of the cell
outputs, the conv output, the gate branch, the norm's weight and the skip.

Runs on CUDA, or on CPU under Triton's interpreter (``TRITON_INTERPRET=1``). Tolerances: float32 against the
PyTorch stage in float64, ``1e-5`` relative L2 per tensor (both compute in float32; the sums over steps of the weight
gradients run in another order); bfloat16 (CUDA) against the float64 stage on the same rounded inputs, ``1e-2``
(one rounding of each output to 8 significant bits: about ``2 ** -9`` relative per element).
"""

import pytest
import torch
import torch.nn.functional as F

from mlstm_calls import (
    assert_layer_unchanged_by_setting, compiled_layer_graph_breaks, output_and_grads, rel_err, triton_device_or_skip,
)

DEVICE = triton_device_or_skip("the Triton output stage")

from seisbench_xlstm import bimlstm  # noqa: E402
from seisbench_xlstm.bimlstm import BiMLSTMLayer, BiMLSTMLayerConfig  # noqa: E402
from seisbench_xlstm.triton_output_gate import normed_output_gate  # noqa: E402

EPS = 1e-6


def reference(h, x_conv, z, w, skip, eps=EPS):
    """The stage as PyTorch computes it in the library (``bimlstm._output_stage``'s PyTorch branch), written out."""
    n_dir, heads, batch, steps, hd = h.shape
    normed = F.layer_norm(h, (hd,), eps=eps).permute(0, 2, 3, 1, 4).reshape(n_dir, batch, steps, heads * hd)
    return (normed * w[:, None, None] + skip[:, None, None] * x_conv) * F.silu(z)


def inputs(layout, hd, steps, dtype=torch.float32, n_dir=2, heads=3, batch=2, seed=0):
    """Random inputs; ``layout`` of h: "per_head" (the kernel's own output, contiguous), "dense" (windows before heads,
    as the dense q/k/v forms leave it) or "sliced" (the head dim cropped from a padded one)."""
    g = torch.Generator().manual_seed(seed)
    inner = heads * hd
    if layout == "per_head":
        h = torch.randn(n_dir, heads, batch, steps, hd, generator=g)
    elif layout == "dense":
        h = torch.randn(n_dir, batch, heads, steps, hd, generator=g).transpose(1, 2)
    else:
        h = torch.randn(n_dir, heads, batch, steps, hd + 32, generator=g)[..., :hd]
    h = 3.0 * h + 0.5  # an offset and a scale for the norm to remove
    x_conv, z = (torch.randn(n_dir, batch, steps, inner, generator=g) for _ in range(2))
    w, skip = (1.0 + 0.3 * torch.randn(n_dir, inner, generator=g) for _ in range(2))
    dy = torch.randn(n_dir, batch, steps, inner, generator=g)
    return [t.to(DEVICE, dtype) for t in (h, x_conv, z)] + [t.to(DEVICE) for t in (w, skip)], dy.to(DEVICE, dtype)


@pytest.mark.parametrize("layout", ["per_head", "dense", "sliced"])
@pytest.mark.parametrize("hd,steps", [(96, 37), (64, 64), (16, 5), (256, 33)])
def test_float32_matches_the_pytorch_stage(layout, hd, steps):
    args, dy = inputs(layout, hd, steps)
    got = output_and_grads(lambda *a: normed_output_gate(*a, EPS), args, dy)
    want = output_and_grads(reference, [a.double() for a in args], dy.double())
    assert [g.dtype for g in got[1:]] == [a.dtype for a in args]  # each gradient in its input's dtype
    for name, g, w in zip(["y", "dh", "dx_conv", "dz", "dw", "dskip"], got, want):
        assert rel_err(g, w) < 1e-5, (name, rel_err(g, w))


@pytest.mark.skipif(DEVICE != "cuda", reason="bfloat16 products: CUDA only (the interpreter's bf16 is not the GPU's)")
def test_bfloat16_matches_the_pytorch_stage_in_float64():
    args, dy = inputs("per_head", 96, 1024, dtype=torch.bfloat16, batch=8)
    got = output_and_grads(lambda *a: normed_output_gate(*a, EPS), args, dy)
    want = output_and_grads(reference, [a.double() for a in args], dy.double())
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.bfloat16
    for name, g, w in zip(["y", "dh", "dx_conv", "dz", "dw", "dskip"], got, want):
        assert rel_err(g, w) < 1e-2, (name, rel_err(g, w))


@pytest.mark.parametrize("form", ["per_head", "dense"])
@pytest.mark.parametrize("share", [False, True])
def test_layer_gives_the_same_output_and_gradients_with_either_stage(form, share, monkeypatch):
    """The whole layer (native mLSTM kernel, float32) with the Triton stage equals the layer with the PyTorch stage:
    output, input gradient and every parameter's gradient, within ``1e-5`` relative L2 per tensor."""
    assert_layer_unchanged_by_setting(monkeypatch, "OUTPUT_STAGE", ("torch", "triton"), form, share, DEVICE)


def test_operators_pass_opcheck():
    """The registered operators' schema, fake (compile-time) outputs and autograd registration
    (``torch.library.opcheck``)."""
    args, _ = inputs("sliced", 16, 8)
    torch.library.opcheck(torch.ops.seisbench_xlstm.normed_output_gate.default,
                          [a.requires_grad_() for a in args] + [EPS])


def test_compiled_layer_can_keep_the_stage_in_its_graph(monkeypatch):
    """``bimlstm.OUTPUT_STAGE_IN_GRAPH``: outside the compiled graphs the Triton stage adds a graph break, inside it
    adds none (as many as the PyTorch stage); compiled, the layer equals the eager one with the PyTorch stage."""
    breaks = compiled_layer_graph_breaks(monkeypatch, DEVICE, [
        [(bimlstm, "OUTPUT_STAGE", "torch")],
        [(bimlstm, "OUTPUT_STAGE", "triton"), (bimlstm, "OUTPUT_STAGE_IN_GRAPH", False)],
        [(bimlstm, "OUTPUT_STAGE", "triton"), (bimlstm, "OUTPUT_STAGE_IN_GRAPH", True)],
    ])
    assert breaks[2] == breaks[0] < breaks[1]


def test_bad_shapes_and_unknown_stage_are_named(monkeypatch):
    args, _ = inputs("per_head", 16, 8)
    h, x_conv, z, w, skip = args
    with pytest.raises(ValueError, match="x_conv and z must be"):
        normed_output_gate(h, x_conv[..., :-1], z, w, skip, EPS)
    with pytest.raises(ValueError, match="w and skip must be"):
        normed_output_gate(h, x_conv, z, w[:1], skip, EPS)
    monkeypatch.setattr(bimlstm, "OUTPUT_STAGE", "fused")
    layer = BiMLSTMLayer(BiMLSTMLayerConfig(embedding_dim=32, num_heads=4)).to(DEVICE)
    with pytest.raises(ValueError, match="Unknown output stage 'fused'"):
        layer(torch.randn(1, 8, 32, device=DEVICE), kernel="chunkwise--native_autograd")
