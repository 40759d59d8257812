import pytest
import torch

from mlstm_calls import output_and_grads, rel_errors
from seisbench_xlstm import kernels
from seisbench_xlstm.kernels import kernel_shape, mlstm_sequence, quadratic_mlstm, resolve_kernel


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
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="needs CUDA"):  # the project's own kernel too, unless interpreted
        resolve_kernel(kernels.OWN_TRITON_KERNEL, torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_kernel(kernels.OWN_TRITON_KERNEL, torch.device("cpu")) == kernels.OWN_TRITON_KERNEL
    with pytest.raises(RuntimeError, match="needs CUDA"):  # TFLA does not run under the interpreter here
        resolve_kernel(kernels.TRITON_KERNEL, torch.device("cpu"))
    with pytest.raises(ValueError, match="Known kernels"):
        resolve_kernel("chunkwise--typo", torch.device("cpu"))


def test_auto_on_cuda_takes_the_own_kernel_for_many_sequences(monkeypatch):
    """CUDA rule of ``"auto"``: the own Triton kernel from OWN_KERNEL_MIN_SEQUENCES sequences, TFLA below and
    when the caller does not say (no CUDA is used: resolving only names the kernel)."""
    monkeypatch.delenv(kernels.KERNEL_ENV_VAR, raising=False)
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    cuda, n = torch.device("cuda"), kernels.OWN_KERNEL_MIN_SEQUENCES
    assert resolve_kernel("auto", cuda, sequences=n) == kernels.OWN_TRITON_KERNEL
    assert resolve_kernel("auto", cuda, sequences=n - 1) == kernels.TRITON_KERNEL
    assert resolve_kernel("auto", cuda) == kernels.TRITON_KERNEL
    assert resolve_kernel(kernels.TRITON_KERNEL, cuda, sequences=n) == kernels.TRITON_KERNEL  # a choice is kept
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    assert resolve_kernel("auto", cuda, sequences=n) == kernels.NATIVE_KERNEL


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


@pytest.mark.parametrize("head_dim,length,padded,chunk", [(64, 1000, 1024, 32), (96, 1000, 1024, 64),
                                                           (128, 250, 256, 64), (64, 40, 64, 32), (256, 20, 32, 32)])
def test_cpu_kernel_chunk_follows_the_head_dim(monkeypatch, head_dim, length, padded, chunk):
    """The native kernel runs with the chunk measured fastest for the head dim on CPUs, inputs padded to it."""
    calls = []
    real = kernels._backend

    def recording(kernel, chunk_size, dtype):
        backend = real(kernel, chunk_size, dtype)

        def run(q, *rest):
            calls.append((q.shape[2], chunk_size))
            return backend(q, *rest)

        return run

    monkeypatch.setattr(kernels, "_backend", recording)
    q = torch.randn(1, 1, length, head_dim)
    mlstm_sequence(q, q, q, torch.zeros(1, 1, length), torch.zeros(1, 1, length))
    assert calls == [(padded, chunk)]


def _random_call(shape, device="cpu", seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    qkv = [torch.randn(shape, generator=gen, device=device) for _ in range(3)]
    gates = [torch.randn(shape[:3], generator=gen, device=device), 3 + torch.randn(shape[:3], generator=gen, device=device)]
    return qkv + gates, torch.randn(shape, generator=gen, device=device)


def test_mlstm_kernels_gradient_conventions():
    """``mlstm_kernels`` has two gradients of one function: its autograd kernels give the exact gradient, its custom
    backward passes (``native_custbw``, and the TFLA kernels the library runs on GPUs) treat the stabiliser and the
    normaliser as constants. Outputs and value gradients agree; q, k and gate gradients differ by about their own
    size. (CPU training uses the first, GPU training the second.)"""
    from mlstm_kernels.torch import get_mlstm_kernel

    inputs, grad = _random_call((1, 2, 128, 32))
    exact = output_and_grads(quadratic_mlstm, inputs, grad)
    constant = output_and_grads(lambda *x: quadratic_mlstm(*x, constant_normaliser=True), inputs, grad)
    for name, options in (("parallel--native_autograd", {}), ("chunkwise--native_autograd", {"chunk_size": 32})):
        errors = rel_errors(output_and_grads(
            lambda *x, fn=get_mlstm_kernel(name): fn(*x, eps=1e-6, **options), inputs, grad), exact)
        assert max(errors.values()) < 1e-4, (name, errors)
    custom = get_mlstm_kernel("chunkwise--native_custbw")
    custom_out = output_and_grads(lambda *x: custom(*x, eps=1e-6, chunk_size=32), inputs, grad)
    assert max(rel_errors(custom_out, constant).values()) < 1e-4
    differ = rel_errors(custom_out, exact)
    assert differ["h"] < 1e-4 and differ["dv"] < 1e-4
    assert min(differ[n] for n in ("dq", "dk", "di", "df")) > 0.1


@pytest.mark.parametrize(
    "head_dim,kernel,expected",
    [(96, kernels.TRITON_KERNEL, 128), (160, kernels.TRITON_KERNEL, 192), (48, kernels.TRITON_KERNEL, 64),
     (200, kernels.TRITON_KERNEL, 256), (64, kernels.TRITON_KERNEL, 64), (128, kernels.TRITON_KERNEL, 128),
     (192, kernels.TRITON_KERNEL, 192), (32, kernels.TRITON_KERNEL, 32), (96, kernels.NATIVE_KERNEL, 96),
     (96, "chunkwise--triton_limit_chunk", 128), (96, kernels.OWN_TRITON_KERNEL, 96)],
)
def test_kernel_head_dim(head_dim, kernel, expected):
    """Triton kernels run at a power of two or a multiple of 64 (the head dims their tiling handles); the native
    kernels at any head dim."""
    assert kernels.kernel_head_dim(head_dim, kernel) == expected


def test_head_dim_padding_changes_no_output_or_gradient(monkeypatch):
    """The zero padding of the head dim (with its query rescaling) that the Triton kernels need at head dim 96 is
    exact: forced onto the native kernel on a CPU, outputs and all five input gradients equal the unpadded call."""
    inputs, grad = _random_call((2, 3, 100, 96))
    plain = output_and_grads(lambda *x: mlstm_sequence(*x, kernel=kernels.NATIVE_KERNEL), inputs, grad)
    monkeypatch.setattr(kernels, "kernel_head_dim", lambda head_dim, kernel: 128)
    padded = output_and_grads(lambda *x: mlstm_sequence(*x, kernel=kernels.NATIVE_KERNEL), inputs, grad)
    assert padded[0].shape == plain[0].shape
    errors = rel_errors(padded, plain)
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the TFLA Triton kernels)")
@pytest.mark.parametrize("head_dim,steps,batch", [(96, 1024, 2), (96, 256, 1), (64, 1024, 2), (64, 256, 2),
                                                  (128, 256, 2), (256, 64, 2)])
def test_tfla_follows_the_constant_normaliser_convention_on_gpu(head_dim, steps, batch):
    """Output and all five input gradients of the kernel the library runs on GPUs (TFLA, bf16) against the
    quadratic mLSTM with constant stabiliser and normaliser (its gradient convention, see
    :func:`test_mlstm_kernels_gradient_conventions`) in float32 on the same rounded inputs, at the backbones' head
    dims. The forget-gate gradient sums bf16 rounding over all later steps: at 1,024 steps it is 3.6% off at head
    dim 96 and 3.7% at head dim 64, which needs no padding (H200, 2026-11-30), so it gets a wider bound; the unpadded
    head-96 kernel was 16% off in the output and 139% in a gradient here."""
    inputs, grad = _random_call((batch, 4, steps, head_dim), device="cuda")
    inputs[:3] = [t.bfloat16().float() for t in inputs[:3]]
    tfla = output_and_grads(lambda *x: mlstm_sequence(*x, kernel="auto"), inputs, grad)
    reference = output_and_grads(lambda *x: quadratic_mlstm(*x, constant_normaliser=True), inputs, grad)
    errors = rel_errors(tfla, reference)
    bounds = {name: 6e-2 if name == "df" else 3e-2 for name in errors}
    assert all(errors[name] < bounds[name] for name in errors), errors
