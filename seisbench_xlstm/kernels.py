"""Run-time choice of the mLSTM kernel and the call into ``mlstm_kernels``.

The mLSTM recurrence of every layer is computed by :class:`mlstm_kernels.torch.backend_module.mLSTMBackend`.
Which kernel runs is decided at run time from the device of the inputs, never stored in model weights or
saved model arguments, so weights trained on a GPU load on a CPU and the reverse:

- CUDA with Triton installed: this project's own chunkwise Triton kernel ``chunkwise--seisbench_triton``
  (:data:`OWN_TRITON_KERNEL`, :mod:`seisbench_xlstm.triton_mlstm`: exact gradient, any head dim, chunk 64, bf16) for
  calls of at least :data:`OWN_KERNEL_MIN_SEQUENCES` sequences (batch x directions x heads), else
  ``chunkwise--triton_xl_chunk`` (TFLA), chunk size 128, bf16.
- otherwise (CPU): ``chunkwise--native_autograd``, chunk size :func:`native_chunk_size` (32 or 64, at most the
  padded length), float32.

Users can override the choice with :func:`set_default_kernel`, with the ``SEISBENCH_XLSTM_KERNEL`` environment
variable, or per model (``model.set_kernel(...)``). The own kernel also runs on a CPU under Triton's interpreter
(``TRITON_INTERPRET=1``, for tests).

Triton 3.6 aborts while compiling ``triton_xl_chunk`` unless ``DISABLE_LLVM_OPT=1`` is in the environment before
the first compilation. :func:`resolve_kernel` sets it (if unset) whenever a Triton kernel is chosen, so users never
meet that compiler crash.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from .triton_layout import interpreted

AUTO = "auto"
TRITON_KERNEL = "chunkwise--triton_xl_chunk"
NATIVE_KERNEL = "chunkwise--native_autograd"
OWN_TRITON_KERNEL = "chunkwise--seisbench_triton"
#: Chunk size of :data:`OWN_TRITON_KERNEL`. On an H200 (benchmarks/results/triton_mlstm_speed.md, one run per chunk
#: size, each against TFLA in the same run) 64 gave the better ratio at the sequential backbone's call and the U-Net's
#: deepest level, 32 at the U-Net's other two; 64 needs fewer chunks on long records.
OWN_TRITON_CHUNK = 64
#: Fewest sequences (batch x heads of one kernel call, the two directions counted in the batch) for which ``"auto"``
#: takes :data:`OWN_TRITON_KERNEL` on CUDA. The own kernel runs one program per sequence (and block of value
#: columns) over all its chunks, so it needs many sequences to fill a GPU; TFLA also spreads the chunks. Measured on an
#: H200 (benchmarks/results/triton_mlstm_speed.md, triton_mlstm_speed_long.md), forward+backward, own / TFLA time:
#: at the backbones' calls (512 and 1,024 sequences) 0.46 to 0.73 (forward alone 0.28 to 0.89); with 8 sequences of
#: 16,384 or 65,536 steps 2.0 to 4.6 (of 4,096 and 1,024 steps 1.0 and 0.83), with 32 sequences of 8,192 steps 2.4.
#: Between 32 and 512 sequences nothing was timed, so TFLA is kept there.
OWN_KERNEL_MIN_SEQUENCES = 512
#: Kernels a user may select. The quadratic ``parallel--native_autograd`` is a reference for tests only:
#: its memory grows with the square of the sequence length.
KNOWN_KERNELS = (
    AUTO,
    TRITON_KERNEL,
    "chunkwise--triton_limit_chunk",
    "chunkwise--triton_xl_chunk_siging",
    NATIVE_KERNEL,
    "chunkwise--native_custbw",
    "parallel--native_autograd",
    OWN_TRITON_KERNEL,
)
KERNEL_ENV_VAR = "SEISBENCH_XLSTM_KERNEL"
#: Whether ``torch.compile`` (``set_compile(True)``) compiles the native CPU kernel together with the layer around it
#: (its element-wise work on ``(chunk, chunk)`` gate matrices fuses; PyTorch operations only, unlike the Triton
#: kernels, which always run as they are). Measured on this project's 2 CPU cores (forward, no grad, float32, 128
#: sequences of 4 heads, 2026-11-30): 1,024 steps of head dim 64 (chunk 32) 568 against 727 ms eager, 256 steps of
#: head dim 128 (chunk 64) 287 against 509 ms.
COMPILE_NATIVE_KERNEL = True

_default_kernel = AUTO


def set_default_kernel(kernel: str) -> None:
    """Sets the process-wide kernel choice used by every model whose own kernel is ``"auto"``.

    :param kernel: One of :data:`KNOWN_KERNELS`.
    """
    global _default_kernel
    _default_kernel = validate_kernel_name(kernel)


def validate_kernel_name(kernel: str) -> str:
    """Returns ``kernel`` if it is a known kernel name, else raises ``ValueError`` listing the known names."""
    if kernel not in KNOWN_KERNELS:
        raise ValueError(f"Unknown mLSTM kernel {kernel!r}. Known kernels: {', '.join(KNOWN_KERNELS)}.")
    return kernel


@lru_cache(maxsize=None)
def triton_available() -> bool:
    """True if the Triton TFLA kernels can be imported (needs CUDA and the ``triton`` package).

    Cached: it is asked in every layer's forward, and a failed import is retried from disk each time."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    from mlstm_kernels.torch.chunkwise import registry

    return "triton_xl_chunk" in registry


def resolve_kernel(requested: str, device: torch.device, sequences: int | None = None) -> str:
    """Turns a requested kernel name (possibly ``"auto"``) into the kernel that runs on ``device``.

    Precedence for ``"auto"``: the ``SEISBENCH_XLSTM_KERNEL`` environment variable, then
    :func:`set_default_kernel`, then the device rule: on CUDA (with Triton) :data:`OWN_TRITON_KERNEL` for calls of at
    least :data:`OWN_KERNEL_MIN_SEQUENCES` ``sequences`` and TFLA for fewer or when ``sequences`` is not given;
    native chunkwise elsewhere. A Triton kernel requested for a CPU tensor raises ``RuntimeError``.

    :param sequences: sequences of the kernel call (batch x directions x heads), for the CUDA rule
    """
    kernel = validate_kernel_name(requested)
    if kernel == AUTO:
        kernel = validate_kernel_name(os.environ.get(KERNEL_ENV_VAR, _default_kernel))
    if kernel == AUTO:
        if device.type == "cuda" and triton_available():
            own = sequences is not None and sequences >= OWN_KERNEL_MIN_SEQUENCES
            kernel = OWN_TRITON_KERNEL if own else TRITON_KERNEL
        else:
            kernel = NATIVE_KERNEL
    if "triton" in kernel:
        if device.type != "cuda" and not (kernel == OWN_TRITON_KERNEL and interpreted()):
            raise RuntimeError(f"mLSTM kernel {kernel!r} needs CUDA tensors, got tensors on {device}.")
        # Triton 3.6's LLVM SLP vectoriser aborts on the xl_chunk kernels; this must be set before compiling.
        os.environ.setdefault("DISABLE_LLVM_OPT", "1")
    return kernel


@dataclass(frozen=True)
class KernelShape:
    """Padded sequence length and chunk size a kernel needs for a sequence of ``length`` steps."""

    padded_length: int
    chunk_size: int


def kernel_shape(length: int, max_chunk_size: int = 128) -> KernelShape:
    """Shape rules of the mlstm_kernels kernels.

    Triton kernels: the length must be a multiple of 16, a power of two below 128, else a multiple of the chunk
    size. Native chunkwise kernels: a multiple of the chunk size. We pad to a power of two below
    ``max_chunk_size`` and to a multiple of ``max_chunk_size`` above it, which satisfies both.
    """
    if length < 1:
        raise ValueError("mLSTM sequence length must be at least 1")
    if length <= max_chunk_size:
        padded = min(max(16, 1 << (length - 1).bit_length()), max_chunk_size)
        return KernelShape(padded_length=padded, chunk_size=padded)
    padded = -(-length // max_chunk_size) * max_chunk_size
    return KernelShape(padded_length=padded, chunk_size=max_chunk_size)


def kernel_head_dim(head_dim: int, kernel: str) -> int:
    """Head dim a kernel runs at: the Triton (TFLA) kernels tile the head dim in blocks of up to 64 without masking
    the last block, so they give wrong results, and raise no error, unless it is a power of two or a multiple of 64
    (``mlstm_kernels`` 2.0.6 has that check commented out in ``get_head_dim_block_size``). Measured on an H200
    (``benchmarks/results/tfla_agreement.md``): at head dim 96 the output was 1% to 23% off the quadratic
    reference depending on batch and length, at 64 and 128 about 1% everywhere (bf16). Other head dims are padded
    with zeros to the next size that is either (96 -> 128, 160 -> 192); the native kernels take any head dim."""
    if not kernel.startswith("chunkwise--triton") or head_dim & (head_dim - 1) == 0 or head_dim % 64 == 0:
        return head_dim  # the native kernels and this project's own Triton kernel mask the head dim
    return min(1 << (head_dim - 1).bit_length(), -(-head_dim // 64) * 64)


def query_scale(head_dim: int, kernel_dim: int) -> float:
    """Factor on the queries of a call whose head dim is zero-padded from ``head_dim`` to ``kernel_dim``: the
    kernels scale ``q.k`` by ``kernel_dim ** -0.5``, the mLSTM by ``head_dim ** -0.5``."""
    return (kernel_dim / head_dim) ** 0.5


def native_chunk_size(head_dim: int) -> int:
    """Largest chunk of the native CPU kernel for a head dim (TFLA uses 128). Measured on 2 CPU cores, forward of 128
    sequences: 1,024 steps of head dim 64 take 161 ms with chunk 32 and 197 ms with 64; head dim 96: 283 / 280 ms;
    head dim 128 over 256 steps: 108 / 99 ms; chunk 128 is slower everywhere (294 ms at head dim 64)."""
    return 32 if head_dim <= 64 else 64


def kernel_chunk_size(kernel: str, head_dim: int) -> int:
    """Chunk size a resolved kernel runs at (at most; shorter sequences get a smaller power of two,
    :func:`kernel_shape`): TFLA 128, this project's Triton kernel :data:`OWN_TRITON_CHUNK`, native
    :func:`native_chunk_size`."""
    if kernel == OWN_TRITON_KERNEL:
        return OWN_TRITON_CHUNK
    return 128 if "triton" in kernel else native_chunk_size(head_dim)


@lru_cache(maxsize=None)
def _backend(kernel: str, chunk_size: int, autocast_dtype: str):
    from mlstm_kernels.torch.backend_module import mLSTMBackend, mLSTMBackendConfig

    return mLSTMBackend(
        mLSTMBackendConfig(
            chunkwise_kernel=kernel,
            mode="train",
            chunk_size=chunk_size,
            return_last_states=False,
            autocast_kernel_dtype=autocast_dtype,
        )
    )


def mlstm_sequence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    kernel: str = AUTO,
) -> torch.Tensor:
    """Causal mLSTM over a whole sequence of any length.

    Inputs of chunkwise kernels are zero-padded at the end to the kernel's shape rules (see :func:`kernel_shape`)
    and the output is cropped back; since the recurrence is causal, padding at the end never changes the real outputs.
    Queries are scaled by ``head_dim ** -0.5`` inside the kernels. Head dims the Triton kernels cannot take are
    zero-padded too (:func:`kernel_head_dim`), with the queries rescaled so that the scale stays that of the real
    head dim: zero columns add nothing to ``q.k``, and the padded value columns are cropped from the output. Callers
    that make a layout copy anyway can pad there instead (with :func:`query_scale`) and crop the output themselves,
    as :func:`seisbench_xlstm.bimlstm.mlstm_branches` does: inputs at a head dim the kernel takes are not padded.

    :param q: queries ``(batch, heads, steps, head_dim)``
    :param k: keys ``(batch, heads, steps, head_dim)``
    :param v: values ``(batch, heads, steps, head_dim)``
    :param i: input-gate pre-activations ``(batch, heads, steps)``
    :param f: forget-gate pre-activations ``(batch, heads, steps)``
    :param kernel: kernel name or ``"auto"``
    :return: hidden states ``(batch, heads, steps, head_dim)`` in the dtype of ``v``

    ``torch.compile`` compiles the code around this function (see
    :meth:`seisbench_xlstm.backbones.SequentialBackbone.set_compile`) and does not trace into the Triton kernels. It
    traces into the native CPU kernel when :data:`COMPILE_NATIVE_KERNEL` is on and ``kernel`` names it (as the
    backbones pass it, resolved), which fuses that kernel's element-wise work.
    """
    if _traces_native_kernel(kernel):
        return _sequence(q, k, v, i, f, kernel)
    return _opaque_sequence(q, k, v, i, f, kernel)


def _traces_native_kernel(kernel: str) -> bool:
    """Whether ``torch.compile`` is tracing and traces into the kernel call (:data:`COMPILE_NATIVE_KERNEL`)."""
    return COMPILE_NATIVE_KERNEL and kernel == NATIVE_KERNEL and torch.compiler.is_compiling()


def _sequence(q, k, v, i, f, kernel: str) -> torch.Tensor:
    """:func:`mlstm_sequence`'s work (the same arguments)."""
    resolved = resolve_kernel(kernel, q.device, sequences=q.shape[0] * q.shape[1])
    length = q.shape[2]
    own = resolved == OWN_TRITON_KERNEL
    shape = kernel_shape(length, kernel_chunk_size(resolved, q.shape[3]))
    # The quadratic reference kernels take any length: they run unpadded, which makes them the reference that
    # shows padding does not change real outputs.
    pad = 0 if resolved.startswith("parallel") else shape.padded_length - length
    head_dim = q.shape[3]
    pad_dim = kernel_head_dim(head_dim, resolved) - head_dim
    if pad or pad_dim:
        q, k, v = (F.pad(t, (0, pad_dim, 0, pad)) for t in (q, k, v))
        i, f = (F.pad(t, (0, pad)) for t in (i, f))
    if pad_dim:  # the kernel scales by (padded head dim) ** -0.5
        q = q * query_scale(head_dim, head_dim + pad_dim)
    # TFLA kernels run in bf16 (the gates' log-space arithmetic stays float32 inside the kernel); the native
    # CPU kernels in float32. Inputs are cast here so the kernel sees one dtype whether or not autocast is on.
    # (Triton's CPU interpreter computes bf16 products wrongly: float32 there.)
    kernel_dtype = torch.bfloat16 if "triton" in resolved and q.is_cuda else torch.float32
    if own:
        h = _own_kernel(q, k, v, i, f, shape.chunk_size)
    else:
        # traced (the native kernel under torch.compile): built in the graph, dynamo does not trace lru_cache
        make = _backend.__wrapped__ if torch.compiler.is_compiling() else _backend
        backend = make(resolved, shape.chunk_size, str(kernel_dtype).removeprefix("torch."))
        h = backend(*(t.to(kernel_dtype).contiguous() for t in (q, k, v, i, f)))
    return h[:, :, :length, :head_dim].to(v.dtype)


#: :func:`_sequence` hidden from ``torch.compile``: the kernels run as they are, the code around them is compiled.
_opaque_sequence = torch.compiler.disable(_sequence)


def mlstm_sequence_qk(qk: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                      kernel: str = AUTO) -> torch.Tensor:
    """:func:`mlstm_sequence` with q and k as the two halves of each row of ``qk`` ``(batch, heads, steps, 2 *
    head_dim)``. This project's Triton kernel reads them where they lie and returns their gradient in that layout
    (:func:`seisbench_xlstm.triton_mlstm.mlstm_chunkwise_triton` with ``k=None``); other kernels, and lengths or
    head dims that kernel would need padded, get q and k as two tensors. The same values either way. Traced by
    ``torch.compile`` as :func:`mlstm_sequence` is."""
    if _traces_native_kernel(kernel):
        return _sequence(*qk.chunk(2, dim=-1), v, i, f, kernel)
    return _opaque_sequence_qk(qk, v, i, f, kernel)


def _sequence_qk(qk, v, i, f, kernel: str) -> torch.Tensor:
    head_dim, length = qk.shape[3] // 2, qk.shape[2]
    resolved = resolve_kernel(kernel, qk.device, sequences=qk.shape[0] * qk.shape[1])
    shape = kernel_shape(length, kernel_chunk_size(resolved, head_dim))
    if (resolved != OWN_TRITON_KERNEL or shape.padded_length != length
            or kernel_head_dim(head_dim, resolved) != head_dim):
        return _sequence(*qk.split(head_dim, dim=-1), v, i, f, resolved)  # (a resolved name resolves to itself)
    return _own_kernel(qk, None, v, i, f, shape.chunk_size)


def _own_kernel(q, k, v, i, f, chunk_size: int) -> torch.Tensor:
    """This project's Triton kernel as :func:`_sequence` and :func:`_sequence_qk` call it: q, k (None: ``q`` holds
    both) and v in bf16 on GPUs (float32 under the interpreter, see :func:`_sequence`), the gates in float32."""
    from .triton_mlstm import mlstm_chunkwise_triton

    dtype = torch.bfloat16 if q.is_cuda else torch.float32
    q, k, v = (t if t is None else t.to(dtype) for t in (q, k, v))
    return mlstm_chunkwise_triton(q, k, v, i.float(), f.float(), chunk_size=chunk_size, eps=1e-6)


_opaque_sequence_qk = torch.compiler.disable(_sequence_qk)


def quadratic_mlstm(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    eps: float = 1e-6,
    constant_normaliser: bool = False,
) -> torch.Tensor:
    """The mLSTM written out quadratically (the function ``parallel--native_autograd`` computes), a reference for
    tests and benchmarks: memory grows with the square of the length.

    ``h_t = sum_j C_tj v_j / (max(|sum_j C_tj|, exp(-m_t)) + eps)`` with ``C_tj = q_t.k_j / sqrt(d) *
    exp(F_t - F_j + i_j - m_t)``, ``F`` the cumulative log-sigmoid forget gates and ``m_t = max_j (F_t - F_j + i_j)``.

    Two gradients of this function are in use. ``constant_normaliser=False``: the exact one (autograd of the
    formula; ``mlstm_kernels``' autograd kernels, so the library's CPU path). ``True``: the stabiliser ``m_t`` and
    the denominator are constants for autograd, the convention of ``mlstm_kernels``' custom backward passes
    (``native_custbw`` and the TFLA Triton kernels of the library's GPU path). Outputs and value gradients are the
    same; the q, k and gate gradients differ by about their own size.

    :param q: ``(batch, heads, steps, head_dim)``; k, v alike; i, f: ``(batch, heads, steps)``
    :return: ``(batch, heads, steps, head_dim)``
    """
    steps, head_dim = q.shape[2], q.shape[3]
    log_f = torch.nn.functional.logsigmoid(f).cumsum(-1)
    a = log_f[..., :, None] - log_f[..., None, :] + i[..., None, :]
    a = a.masked_fill(~torch.ones(steps, steps, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    m = a.max(-1, keepdim=True).values
    if constant_normaliser:
        m = m.detach()
    c = (q @ k.transpose(-1, -2)) * head_dim**-0.5 * torch.exp(a - m)
    denominator = torch.maximum(c.sum(-1, keepdim=True).abs(), torch.exp(-m)) + eps
    return (c @ v) / (denominator.detach() if constant_normaliser else denominator)
