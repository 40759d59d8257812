"""Test set-up shared by all tests.

SeisBench reads ``SEISBENCH_CACHE_ROOT`` when it is imported, so it is pointed at a fresh temporary folder here,
before any test module imports seisbench: tests never see a user's cache and never reach the network.
"""

import os
import tempfile
from pathlib import Path

import pytest
import torch

_CACHE = tempfile.mkdtemp(prefix="seisbench-xlstm-test-cache-")
os.environ["SEISBENCH_CACHE_ROOT"] = _CACHE
os.environ.setdefault("SEISBENCH_XLSTM_KERNEL", "auto")

#: Real data with analyst picks (never committed): ../shared/data relative to the repository root.
SHARED_DATA = Path(os.environ.get("SEISBENCH_XLSTM_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data; skips the test with a reason where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set SEISBENCH_XLSTM_SHARED_DATA to its path)")
    return SHARED_DATA.resolve()


@pytest.fixture
def cache_root() -> Path:
    """The temporary SEISBENCH_CACHE_ROOT of this test session."""
    return Path(_CACHE)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread; two OpenMP threads stall badly when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["sequential", "unet"])
def model(request):
    """Each tiny picker (``tests/tiny.py``), in eval mode, seeded."""
    from seisbench_xlstm import XLSTMSeqPicker, XLSTMUNetPicker
    from tiny import TINY_SEQUENTIAL, TINY_UNET

    torch.manual_seed(0)
    if request.param == "sequential":
        return XLSTMSeqPicker(backbone_config=TINY_SEQUENTIAL).eval()
    return XLSTMUNetPicker(backbone_config=TINY_UNET).eval()


@pytest.fixture
def compile_counter(monkeypatch):
    """The backbones' compiled layer function through dynamo with the eager backend (guards and recompiles as with
    inductor, no code generation: fast on a CPU); yields the counter of compiled frames."""
    from functools import lru_cache

    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    from seisbench_xlstm import backbones
    from seisbench_xlstm.bimlstm import BiMLSTMLayer

    counter = CompileCounter()
    monkeypatch.setattr(backbones, "compiled_layer_forward",
                        lru_cache(None)(lambda: torch.compile(BiMLSTMLayer.forward, dynamic=False, backend=counter)))
    torch._dynamo.reset()
    yield counter
    torch._dynamo.reset()
