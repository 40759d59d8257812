import pytest
import torch

from seisbench_xlstm.bimlstm import BiMLSTMLayer, BiMLSTMLayerConfig


def _layer(share=False, d=32, seed=0):
    torch.manual_seed(seed)
    layer = BiMLSTMLayer(BiMLSTMLayerConfig(embedding_dim=d, qkv_proj_blocksize=4, share_projections=share))
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
