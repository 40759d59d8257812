import pytest
import torch

from seisbench_xlstm.bimlstm import BiMLSTMLayer, BiMLSTMLayerConfig


def _layer(share=False, d=32, seed=0, bias=False):
    torch.manual_seed(seed)
    config = BiMLSTMLayerConfig(embedding_dim=d, qkv_proj_blocksize=4, share_projections=share, bias=bias)
    layer = BiMLSTMLayer(config)
    # Random gates and norms so that both directions contribute visibly.
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return layer.eval()


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("length", [5, 100, 130])
def test_padded_native_matches_unpadded_reference(share, length):
    """Both directions are padded at the end of their own time order: real outputs equal the unpadded reference."""
    layer = _layer(share)
    x = torch.randn(2, length, 32)
    with torch.no_grad():
        y = layer(x, kernel="chunkwise--native_autograd")
        y_ref = layer(x, kernel="parallel--native_autograd")
    assert y.shape == x.shape
    torch.testing.assert_close(y, y_ref, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("share", [False, True])
def test_output_depends_on_past_and_future(share):
    layer = _layer(share)
    x = torch.randn(1, 64, 32, requires_grad=True)
    t = 30
    layer(x)[0, t].sum().backward()
    grad = x.grad[0].abs().sum(-1)
    assert grad[t + 1 :].sum() > 0, "no dependence on later inputs: backward direction missing"
    assert grad[:t].sum() > 0, "no dependence on earlier inputs: forward direction missing"


def test_each_direction_is_causal_in_its_own_order():
    layer = _layer(False)
    x = torch.randn(1, 48, 32)
    with torch.no_grad():
        up = layer.proj_up(layer.norm(x))
        inner = layer.config.inner_dim
        up_fw = up[..., : 2 * inner]
        h_full = layer.forward_direction(*up_fw.split(inner, -1))
        h_prefix = layer.forward_direction(*up_fw[:, :20].split(inner, -1))
    torch.testing.assert_close(h_full[:, :20], h_prefix, atol=1e-5, rtol=1e-4)


def test_shared_projections_roughly_halve_the_layer():
    separate = sum(p.numel() for p in BiMLSTMLayer(BiMLSTMLayerConfig(embedding_dim=128)).parameters())
    shared = sum(
        p.numel() for p in BiMLSTMLayer(BiMLSTMLayerConfig(embedding_dim=128, share_projections=True)).parameters()
    )
    assert 0.45 < shared / separate < 0.6


def test_inner_dim_rounding_and_validation():
    assert BiMLSTMLayerConfig(embedding_dim=176).inner_dim == 384  # 352 rounded up to a multiple of 64
    with pytest.raises(ValueError):
        BiMLSTMLayerConfig(embedding_dim=32, num_heads=5)


def test_backward_pass_runs_on_cpu_kernel():
    layer = _layer().train()
    x = torch.randn(2, 40, 32, requires_grad=True)
    layer(x).pow(2).mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in layer.parameters())


def _xlstm_reference_direction(direction, x_mlstm, z):
    """The direction computed with the xlstm components' own forward methods (conv, headwise linear, group norm)."""
    from seisbench_xlstm.kernels import mlstm_sequence

    batch, steps, inner = x_mlstm.shape
    heads = direction.config.num_heads
    x_conv = torch.nn.functional.silu(direction.conv1d(x_mlstm))
    q, k, v = direction.q_proj(x_conv), direction.k_proj(x_conv), direction.v_proj(x_mlstm)
    gate_in = torch.cat([q, k, v], -1)
    i, f = direction.igate(gate_in).transpose(1, 2), direction.fgate(gate_in).transpose(1, 2)
    split = lambda t: t.view(batch, steps, heads, -1).transpose(1, 2)  # noqa: E731
    h = mlstm_sequence(split(q), split(k), split(v), i, f, kernel="parallel--native_autograd")
    h = direction.outnorm(h).transpose(1, 2).reshape(batch, steps, inner)
    return (h + direction.learnable_skip * x_conv) * torch.nn.functional.silu(z)


def test_fast_direction_matches_xlstm_components():
    layer = _layer(False)
    direction = layer.forward_direction
    x_m, z = torch.randn(2, 50, layer.config.inner_dim), torch.randn(2, 50, layer.config.inner_dim)
    with torch.no_grad():
        ref = _xlstm_reference_direction(direction, x_m, z)
        out = direction(x_m, z, kernel="parallel--native_autograd")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_dense_gemms_with_folded_gates_match_headwise_projections():
    """The GPU form (block-diagonal GEMMs with the gate weights folded in) equals per-head projections followed by
    the gate projections."""
    from seisbench_xlstm.bimlstm import _batched_linear, _qkv_gates_dense, headwise_linear

    torch.manual_seed(0)
    weights = tuple(torch.randn(2, 6, 4, 4) for _ in range(3))  # (directions, heads, d_out, d_in)
    gate_w = torch.randn(2, 8, 3 * 24)
    x_conv, x_m = torch.randn(2, 3, 7, 24), torch.randn(2, 3, 7, 24)
    q, k = headwise_linear(x_conv, weights[:2])
    (v,) = headwise_linear(x_m, weights[2:])
    gates = sum(_batched_linear(t, w) for t, w in zip((q, k, v), gate_w.split(24, dim=-1)))
    for dense, ref in zip(_qkv_gates_dense(x_conv, x_m, weights, gate_w), (q, k, v, gates)):
        torch.testing.assert_close(dense, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("share", [False, True])
def test_layer_matches_two_directions_of_xlstm_components(share, bias):
    """The stacked two-direction computation equals the plain definition: each direction with the xlstm
    components' own forward on its own time order, the backward one reversed back, then the down-projection
    (with and without the projections' biases)."""
    layer = _layer(share, bias=bias)
    x = torch.randn(2, 40, 32)
    inner = layer.config.inner_dim
    with torch.no_grad():
        x_norm = layer.norm(x)
        if share:
            up_fw = layer.proj_up(x_norm)
            up_bw = up_fw.flip(1)
        else:
            w_fw, w_bw = layer.proj_up.weight.split(2 * inner)
            b_fw, b_bw = layer.proj_up.bias.split(2 * inner) if bias else (0.0, 0.0)
            up_fw, up_bw = x_norm @ w_fw.T + b_fw, x_norm.flip(1) @ w_bw.T + b_bw
        h_fw = _xlstm_reference_direction(layer.forward_direction, *up_fw.split(inner, -1))
        h_bw = _xlstm_reference_direction(layer.backward_direction, *up_bw.split(inner, -1)).flip(1)
        h = h_fw + h_bw if share else torch.cat([h_fw, h_bw], -1)
        ref = x + layer.proj_down(h)
        out = layer(x, kernel="parallel--native_autograd")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_fused_form_for_compile_matches_dense_gemms():
    """The multiply-sum form used under torch.compile gives the same q, k, v and gates as the GEMM form."""
    from seisbench_xlstm.bimlstm import _qkv_gates_dense, _qkv_gates_fused

    torch.manual_seed(0)
    weights = tuple(torch.randn(2, 6, 4, 4) for _ in range(3))
    gate_w = torch.randn(2, 8, 3 * 24)
    x_conv, x_m = torch.randn(2, 3, 7, 24), torch.randn(2, 3, 7, 24)
    for fused, dense in zip(_qkv_gates_fused(x_conv, x_m, weights, gate_w), _qkv_gates_dense(x_conv, x_m, weights, gate_w)):
        torch.testing.assert_close(fused, dense, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("share", [False, True])
def test_wide_activations_stay_in_the_autocast_dtype(share, monkeypatch):
    """Under bf16 autocast the output gate's wide tensors (directions x batch x steps x inner) stay bf16 up to the
    down-projection: float32 norm outputs or float32 weights would promote them and double their memory traffic.
    Gradients still reach the float32 weights in float32."""
    from seisbench_xlstm import bimlstm

    layer = BiMLSTMLayer(BiMLSTMLayerConfig(embedding_dim=32, num_heads=4, share_projections=share))
    seen = []
    original = bimlstm._batched_linear

    def recording(x, weight):
        seen.append(x.dtype)
        return original(x, weight)

    monkeypatch.setattr(bimlstm, "_batched_linear", recording)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(2, 64, 32))
    assert seen[-1] == torch.bfloat16  # the down-projection's input
    y.float().square().mean().backward()
    for d in (layer.forward_direction, layer.backward_direction):
        assert d.learnable_skip.grad is not None and d.learnable_skip.grad.dtype == torch.float32
        assert d.outnorm.weight.grad is not None and torch.isfinite(d.outnorm.weight.grad).all()


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("form", ["dense", "per_head"])
def test_qkv_forms_give_the_same_layer(share, form, monkeypatch):
    """Every q/k/v form (the GPU ones forced on the CPU) gives the layer output and all weight gradients of the
    per-block einsum form, at a length the kernel pads."""
    from seisbench_xlstm import bimlstm

    layer = _layer(share=share, d=48).train()  # inner 128: 4 heads of 32, blocks of 4
    layer.dropout.p = 0.0
    x = torch.randn(2, 70, 48)
    results = []
    for chosen in ("einsum", form):
        monkeypatch.setattr(bimlstm, "CPU_QKV_FORM", chosen)
        layer.zero_grad()
        y = layer(x)
        y.square().mean().backward()
        results.append([y.detach()] + [p.grad.clone() for p in layer.parameters()])
    for reference, other in zip(*results):
        torch.testing.assert_close(other, reference, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("form", ["dense", "per_head"])
def test_token_groups_give_the_same_layer(share, form, monkeypatch):
    """The projections over groups of tokens (weight gradients summed over the groups) give the layer output and all
    weight gradients of one product over all tokens; a group count that does not divide the tokens falls back to
    one product."""
    from seisbench_xlstm import bimlstm

    layer = _layer(share=share, d=48).train()
    layer.dropout.p = 0.0
    x = torch.randn(2, 70, 48)  # 140 tokens
    monkeypatch.setattr(bimlstm, "CPU_QKV_FORM", form)
    products = []
    real_matmul = torch.matmul

    def counting_matmul(a, b):
        products.append(a.dim())
        return real_matmul(a, b)

    monkeypatch.setattr(torch, "matmul", counting_matmul)
    results, dims = [], []
    for size in (0, 35, 3):  # one product; 4 groups; 3 does not divide the tokens
        monkeypatch.setattr(bimlstm, "CPU_TOKENS_PER_GROUP", size)
        products.clear()
        layer.zero_grad()
        y = layer(x)
        y.square().mean().backward()
        results.append([y.detach()] + [p.grad.clone() for p in layer.parameters()])
        dims.append(sorted(products))
    assert dims[1] == [d + 1 for d in dims[0]] and dims[2] == dims[0]  # 4 groups: every product has a group axis
    for other in results[1:]:
        for reference, got in zip(results[0], other):
            torch.testing.assert_close(got, reference, atol=2e-5, rtol=1e-4)
    assert [bimlstm.token_groups(torch.zeros(1), n) for n in (140, 141, 3)] == [1, 47, 1]


def test_unknown_qkv_form_is_named(monkeypatch):
    from seisbench_xlstm import bimlstm

    monkeypatch.setattr(bimlstm, "CPU_QKV_FORM", "per-head")
    with pytest.raises(ValueError, match="per-head.*dense, per_head, fused, einsum"):
        _layer()(torch.randn(1, 16, 32))


def test_causal_conv_and_its_gradients_match_a_grouped_conv1d():
    """The channels-last causal depthwise convolution (shifted multiply-adds, accumulated in place) against PyTorch's
    grouped conv1d with left padding: outputs and the gradients of input, weight and bias, per direction."""
    import torch.nn.functional as F

    from seisbench_xlstm.triton_conv import causal_depthwise_conv

    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 3, 50, 8), torch.randn(2, 8, 4), torch.randn(2, 8)
    grad = torch.randn(2, 3, 50, 8)
    results = []
    for fn in ("ours", "conv1d"):
        inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
        xi, wi, bi = inputs
        if fn == "ours":
            y = causal_depthwise_conv(xi, wi, bi)
        else:
            y = torch.stack([F.conv1d(F.pad(xi[d].transpose(1, 2), (3, 0)), wi[d][:, None], bi[d], groups=8)
                             .transpose(1, 2) for d in range(2)])
        y.backward(grad)
        results.append([y.detach()] + [t.grad for t in inputs])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_per_head_form_falls_back_where_blocks_straddle_heads(monkeypatch):
    """Projection blocks wider than a head (block 16, heads of 8) cannot be split per head: the per_head form then
    computes the dense form, with the same output as the per-block products."""
    from seisbench_xlstm import bimlstm

    torch.manual_seed(0)
    layer = BiMLSTMLayer(BiMLSTMLayerConfig(embedding_dim=32, num_heads=8, qkv_proj_blocksize=16)).eval()
    x = torch.randn(2, 20, 32)
    assert bimlstm._qkv_form(torch.zeros(1, 1, 1, 64), 8, 16) == "dense"
    outputs = []
    for form in ("einsum", "per_head"):
        monkeypatch.setattr(bimlstm, "CPU_QKV_FORM", form)
        outputs.append(layer(x))
    torch.testing.assert_close(outputs[1], outputs[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("form", ["dense", "per_head", "einsum"])
def test_head_dim_padding_in_the_layout_copies_changes_nothing(form, monkeypatch):
    """With a kernel that runs at a larger head dim (forced here: 32 -> 48 on the native kernel), the layer lays out
    q, k, v at that head dim itself (zero columns, rescaled queries) and crops the output: the kernel receives the
    padded inputs, and the layer output and every weight gradient equal the unpadded layer's."""
    from seisbench_xlstm import bimlstm

    layer = _layer(d=48).train()  # inner 128: 4 heads of 32, blocks of 4
    layer.dropout.p = 0.0
    x = torch.randn(2, 70, 48)
    monkeypatch.setattr(bimlstm, "CPU_QKV_FORM", form)
    from mlstm_calls import record_kernel_calls

    calls = record_kernel_calls(monkeypatch)
    results = []
    for kernel_dim in (lambda hd, kernel: hd, lambda hd, kernel: 48):
        monkeypatch.setattr(bimlstm, "kernel_head_dim", kernel_dim)
        layer.zero_grad()
        y = layer(x, kernel="chunkwise--native_autograd")
        y.square().mean().backward()
        results.append([y.detach()] + [p.grad.clone() for p in layer.parameters()])
    assert [tuple(t.shape[-1] for t in inputs[:3]) for inputs, _ in calls] == [(32, 32, 32), (48, 48, 48)]
    monkeypatch.setattr(bimlstm, "HEAD_PAD_IN_LAYOUT", False)  # the benchmarks' switch: mlstm_sequence pads instead
    layer(x, kernel="chunkwise--native_autograd")
    assert tuple(t.shape[-1] for t in calls[-1][0][:3]) == (32, 32, 32)
    for reference, other in zip(*results):
        torch.testing.assert_close(other, reference, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("share", [False, True])
def test_q_and_k_from_one_product_change_nothing(monkeypatch, share):
    """``bimlstm.QK_ONE_PRODUCT`` (q/k/v form per_head): q and k from one product, split again for the native
    kernel: the layer's output and every gradient as with two products (CPU; the Triton kernel's side is in
    ``test_triton_mlstm.py``)."""
    from mlstm_calls import assert_layer_unchanged_by_setting

    assert_layer_unchanged_by_setting(monkeypatch, "QK_ONE_PRODUCT", (False, True), "per_head", share, "cpu")
