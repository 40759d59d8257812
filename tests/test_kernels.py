import pytest
import torch

from seisbench_xlstm import kernels
from seisbench_xlstm.kernels import kernel_shape, mlstm_sequence, resolve_kernel


@pytest.mark.parametrize(
    "length,padded,chunk",
    [(1, 16, 16), (16, 16, 16), (17, 32, 32), (100, 128, 128), (128, 128, 128), (129, 256, 128), (1024, 1024, 128)],
)
def test_kernel_shape_rules(length, padded, chunk):
    shape = kernel_shape(length)
    assert (shape.padded_length, shape.chunk_size) == (padded, chunk)
    # Triton and native rules: multiple of 16, power of two below 128, else multiple of the chunk size
    assert shape.padded_length % 16 == 0 and shape.padded_length % shape.chunk_size == 0
    if shape.padded_length < 128:
        assert shape.padded_length & (shape.padded_length - 1) == 0


def test_kernel_shape_rejects_empty():
    with pytest.raises(ValueError):
        kernel_shape(0)


def test_resolve_kernel_on_cpu(monkeypatch):
    monkeypatch.delenv(kernels.KERNEL_ENV_VAR, raising=False)
    assert resolve_kernel("auto", torch.device("cpu")) == kernels.NATIVE_KERNEL
    with pytest.raises(RuntimeError, match="needs CUDA"):
        resolve_kernel(kernels.TRITON_KERNEL, torch.device("cpu"))
    with pytest.raises(ValueError, match="Known kernels"):
        resolve_kernel("chunkwise--typo", torch.device("cpu"))


def test_kernel_env_override_and_default(monkeypatch):
    monkeypatch.setenv(kernels.KERNEL_ENV_VAR, "parallel--native_autograd")
    assert resolve_kernel("auto", torch.device("cpu")) == "parallel--native_autograd"
    monkeypatch.delenv(kernels.KERNEL_ENV_VAR)
    kernels.set_default_kernel("chunkwise--native_custbw")
    try:
        assert resolve_kernel("auto", torch.device("cpu")) == "chunkwise--native_custbw"
    finally:
        kernels.set_default_kernel("auto")


def _random_inputs(length, batch=2, heads=2, dh=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, length, dh, generator=g) for _ in range(3))
    i = torch.randn(batch, heads, length, generator=g)
    f = 3.0 + torch.randn(batch, heads, length, generator=g)
    return q, k, v, i, f


@pytest.mark.parametrize("length", [1, 7, 16, 100, 128, 300])
def test_native_chunkwise_matches_parallel_reference(length):
    inputs = _random_inputs(length)
    h_chunk = mlstm_sequence(*inputs, kernel="chunkwise--native_autograd")
    h_ref = mlstm_sequence(*inputs, kernel="parallel--native_autograd")  # unpadded quadratic reference
    assert h_chunk.shape == inputs[2].shape
    torch.testing.assert_close(h_chunk, h_ref, atol=2e-4, rtol=1e-3)


def test_padding_never_changes_real_outputs():
    q, k, v, i, f = _random_inputs(100)
    h = mlstm_sequence(q, k, v, i, f, kernel="chunkwise--native_autograd")
    # The first 50 outputs of a causal recurrence only see the first 50 inputs.
    h_prefix = mlstm_sequence(q[:, :, :50], k[:, :, :50], v[:, :, :50], i[:, :, :50], f[:, :, :50])
    torch.testing.assert_close(h[:, :, :50], h_prefix, atol=2e-5, rtol=1e-4)


def test_cpu_chunk_size_is_64():
    shape = kernel_shape(1000, 64)
    assert (shape.padded_length, shape.chunk_size) == (1024, 64)
    assert kernel_shape(40, 64).padded_length == 64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the TFLA Triton kernels)")
@pytest.mark.parametrize("head_dim,steps", [(96, 1024), (64, 256), (128, 256), (256, 64)])
def test_tfla_gradients_match_the_quadratic_reference_on_gpu(head_dim, steps):
    """Output and all five input gradients of the kernel the library runs on GPUs (TFLA, bf16) against the quadratic
    ``parallel--native_autograd`` in float32 on the same rounded inputs, at the backbones' head dims."""
    torch.manual_seed(0)
    shape = (2, 4, steps, head_dim)
    q, k, v = (torch.randn(shape, device="cuda").bfloat16().float() for _ in range(3))
    i, f = torch.randn(shape[:3], device="cuda"), 3.0 + torch.randn(shape[:3], device="cuda")
    grad = torch.randn(shape, device="cuda")
    results = []
    for kernel in ("auto", "parallel--native_autograd"):
        inputs = [t.clone().requires_grad_() for t in (q, k, v, i, f)]
        h = mlstm_sequence(*inputs, kernel=kernel)
        h.backward(grad)
        results.append([h.detach()] + [t.grad for t in inputs])
    for name, a, b in zip(("h", "dq", "dk", "dv", "di", "df"), *results):
        rel = float((a - b).norm() / b.norm())
        assert rel < 3e-2, f"{name}: TFLA vs quadratic reference relative error {rel:.2e}"
