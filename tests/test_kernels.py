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


def _write_params(tmp_path, monkeypatch, text):
    path = tmp_path / "tfla_params.json"
    path.write_text(text)
    monkeypatch.setattr(kernels, "TFLA_PARAMS_FILE", path)
    kernels._tfla_params_table.cache_clear()
    return path


def test_tuned_tfla_settings_exact_shapes_only(tmp_path, monkeypatch):
    _write_params(tmp_path, monkeypatch, '{"shapes": [{"head_dim": 96, "padded_steps": 1024, '
                  '"settings": {"chunk_size": 64, "num_stages_intra": 2}}]}')
    try:
        assert kernels.tuned_tfla_settings(96, 1024) == {"chunk_size": 64, "num_stages_intra": 2}
        assert kernels.tuned_tfla_settings(96, 2048) == {}  # another length: the kernel's defaults
        assert kernels.tuned_tfla_settings(64, 1024) == {}
        monkeypatch.setenv(kernels.TFLA_TUNED_ENV_VAR, "0")
        assert kernels.tuned_tfla_settings(96, 1024) == {}
    finally:
        kernels._tfla_params_table.cache_clear()


def test_tuned_tfla_settings_corrupt_file_names_it(tmp_path, monkeypatch):
    path = _write_params(tmp_path, monkeypatch, '{"shapes": [{"head_dim": 96}]}')
    try:
        with pytest.raises(RuntimeError, match=str(path.name)):
            kernels.tuned_tfla_settings(96, 1024)
    finally:
        kernels._tfla_params_table.cache_clear()


def test_shipped_tfla_params_are_valid():
    """The file the package ships parses and lists only settings the tuning script may set."""
    kernels._tfla_params_table.cache_clear()
    table = kernels._tfla_params_table()
    assert table, f"{kernels.TFLA_PARAMS_FILE} is missing or empty"
    allowed = {"chunk_size", "recompute_states_in_bw", "siz_b_L_parallel", "siz_b_L_loop", "siz_b_DH_parallel",
               "siz_b_DH_loop", "num_warps_intra", "num_stages_intra", "num_warps_inter", "num_stages_inter"}
    for dim, steps, settings in table:
        assert set(settings) <= allowed
        assert steps % settings.get("chunk_size", 128) == 0 or steps < 128


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the TFLA Triton kernels)")
@pytest.mark.parametrize("head_dim,steps", [(96, 1024), (128, 256), (256, 64), (128, 200)])
def test_tuned_tfla_settings_agree_with_defaults_on_gpu(monkeypatch, head_dim, steps):
    torch.manual_seed(0)
    shape = (8, 4, steps, head_dim)
    q, k, v = (torch.randn(shape, device="cuda", requires_grad=True) for _ in range(3))
    i, f = (torch.randn(shape[:3], device="cuda", requires_grad=True) for _ in range(2))
    results = []
    for tuned in ("1", "0"):
        monkeypatch.setenv(kernels.TFLA_TUNED_ENV_VAR, tuned)
        for t in (q, k, v, i, f):
            t.grad = None
        h = mlstm_sequence(q, k, v, i, f + 3.0)
        h.square().sum().backward()
        results.append([h.detach().clone()] + [t.grad.clone() for t in (q, k, v, i, f)])
    for a, b in zip(*results):  # bf16 kernels: summation order differs between tilings
        assert float((a - b).norm() / b.norm()) < 3e-2
