"""Outputs and input gradients of one mLSTM call, and their relative errors, shared by the kernel tests
(``test_kernels.py``, ``test_triton_mlstm.py``, ``test_triton_mlstm_scalars.py``, ``test_triton_output_gate.py``,
``test_triton_conv.py``)."""

import torch

#: The output and the five input gradients of an mLSTM call, in the order :func:`output_and_grads` returns them.
NAMES = ("h", "dq", "dk", "dv", "di", "df")


def output_and_grads(fn, inputs, grad, dtype=None) -> list[torch.Tensor]:
    """``[h, dq, dk, dv, di, df]`` of ``fn`` on copies of ``inputs`` (q, k, v, i, f); q, k, v (and grad) cast to
    ``dtype`` if given."""
    xs = [x.detach().clone() for x in inputs]
    if dtype is not None:
        xs[:3] = [x.to(dtype) for x in xs[:3]]
        grad = grad.to(dtype)
    xs = [x.requires_grad_() for x in xs]
    h = fn(*xs)
    h.backward(grad)
    return [h.detach()] + [x.grad for x in xs]


def rel_errors(got, want) -> dict[str, float]:
    """Relative L2 error ``|got - want| / |want|`` of each of :data:`NAMES` (in float32)."""
    return {n: float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))
            for n, a, b in zip(NAMES, got, want)}


def triton_device_or_skip(what: str) -> str:
    """The device the Triton kernels' tests run on: ``"cuda"``, or ``"cpu"`` under Triton's interpreter
    (``TRITON_INTERPRET=1``). Skips the calling test module (call it at import) without triton, or without either.

    :param what: what needs it, for the skip reason
    """
    import os

    import pytest

    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("triton is not installed", allow_module_level=True)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if not (torch.cuda.is_available() or interpret):
        pytest.skip(f"{what} needs CUDA, or TRITON_INTERPRET=1 to run on CPU", allow_module_level=True)
    return "cuda" if torch.cuda.is_available() and not interpret else "cpu"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error ``|a - b| / |b|`` in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def assert_layer_unchanged_by_setting(monkeypatch, name: str, values: tuple, form: str, share: bool, device: str):
    """A bidirectional mLSTM layer (float32, native mLSTM kernel, random weights, loss ``sum(out ** 2)``) gives the
    same output, input gradient and parameter gradients, within ``1e-5`` relative L2 per tensor (float32 rounding,
    amplified by the loss's square), with ``seisbench_xlstm.bimlstm.<name>`` set to each of ``values`` (q/k/v form
    ``form`` on both device kinds, projections shared or not)."""
    from seisbench_xlstm import bimlstm

    torch.manual_seed(0)
    monkeypatch.setattr(bimlstm, "CPU_QKV_FORM", form)
    monkeypatch.setattr(bimlstm, "GPU_QKV_FORM", form)
    config = bimlstm.BiMLSTMLayerConfig(embedding_dim=32, num_heads=4, share_projections=share, dropout=0.0)
    layer = bimlstm.BiMLSTMLayer(config).to(device)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 40, 32, device=device)
    names = ["out", "dx"] + [n for n, _ in layer.named_parameters()]
    results = []
    for value in values:
        monkeypatch.setattr(bimlstm, name, value)
        layer.zero_grad()
        xg = x.clone().requires_grad_()
        out = layer(xg, kernel="chunkwise--native_autograd")
        out.square().sum().backward()
        results.append([out.detach(), xg.grad] + [p.grad.clone() for p in layer.parameters()])
    for other in results[1:]:
        for n, got, want in zip(names, other, results[0]):
            assert rel_err(got, want) < 1e-5, (name, n, rel_err(got, want))


def compiled_layer_graph_breaks(monkeypatch, device: str, settings: list[list[tuple]]) -> list[int]:
    """A small bidirectional layer (dropout off) compiled with each of ``settings`` (lists of ``(module, name,
    value)`` constants): its graph breaks, one count per settings; and its output and input gradient, which must equal
    the eager layer's with the first settings (``1e-5`` relative L2 on CPU; ``5e-3`` on CUDA, where the mLSTM
    kernel's products run in TF32, whose unit roundoff is 2**-11 = 4.9e-4: inductor's reordered float32 sums change
    some of the kernel's inputs in their last bits, which can round to the other TF32 neighbour, and the input
    gradient goes through about ten such products; measured 2.4e-3 for it on an H200). The mLSTM kernel: on CUDA
    this project's (inductor's code for the native one fails to build with Triton 3.6 there: "PassManager::run
    failed", H200, 2026-11-30), on CPU the native one."""
    torch.manual_seed(0)
    from seisbench_xlstm.bimlstm import BiMLSTMLayer, BiMLSTMLayerConfig

    layer = BiMLSTMLayer(BiMLSTMLayerConfig(embedding_dim=32, num_heads=4, dropout=0.0)).to(device)
    x = torch.randn(2, 40, 32, device=device)
    kernel = "chunkwise--seisbench_triton" if device == "cuda" else "chunkwise--native_autograd"

    def call(a):
        return layer(a, kernel=kernel)

    def apply(constants):
        for module, name, value in constants:
            monkeypatch.setattr(module, name, value)
        torch._dynamo.reset()

    apply(settings[0])
    want = output_and_grads(call, [x], torch.ones_like(x))
    breaks = []
    for constants in settings:
        apply(constants)
        breaks.append(torch._dynamo.explain(call)(x).graph_break_count)
        torch._dynamo.reset()
        got = output_and_grads(torch.compile(call), [x], torch.ones_like(x))
        for name, g, w in zip(["out", "dx"], got, want):
            assert rel_err(g, w) < (1e-5 if device == "cpu" else 5e-3), (constants, name, rel_err(g, w))
    torch._dynamo.reset()
    return breaks


def record_kernel_calls(monkeypatch) -> list[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
    """Patches the layers' two mLSTM entry points (``bimlstm.mlstm_sequence``, and ``bimlstm.mlstm_sequence_qk`` for q
    and k as one tensor, :data:`seisbench_xlstm.bimlstm.QK_ONE_PRODUCT`) to record every call; returns the list
    they fill with ``((q, k, v, i, f), h)``, q and k split where they came as one tensor."""
    from seisbench_xlstm import bimlstm

    separate, joined = bimlstm.mlstm_sequence, bimlstm.mlstm_sequence_qk
    calls = []

    def recorded(q, k, v, i, f, kernel):
        h = separate(q, k, v, i, f, kernel=kernel)
        calls.append(((q, k, v, i, f), h))
        return h

    def recorded_qk(qk, v, i, f, kernel):
        h = joined(qk, v, i, f, kernel=kernel)
        calls.append(((*qk.chunk(2, dim=-1), v, i, f), h))
        return h

    monkeypatch.setattr(bimlstm, "mlstm_sequence", recorded)
    monkeypatch.setattr(bimlstm, "mlstm_sequence_qk", recorded_qk)
    return calls
