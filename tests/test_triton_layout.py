"""The autotuned launchers of this project's Triton stages (``seisbench_xlstm.triton_layout.autotuned``) on this CPU,
with a stand-in for Triton's autotuner (no GPU needed)."""

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from seisbench_xlstm import triton_layout


class SharedStateAutotuner:
    """Keeps the arguments of the call in progress on itself and clears them at the end, as Triton 3.6's
    ``Autotuner.run`` does (``self.nargs``, read again by ``_bench`` while the first call of a key is timed)."""

    def __init__(self, kernel):
        self.kernel, self.nargs = kernel, None

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.run(*args, grid=grid, **kwargs)

    def run(self, *args, grid, **kwargs):
        self.nargs = dict(enumerate(args))
        time.sleep(0.02)  # timing the launch settings
        seen = {**self.nargs}  # TypeError once another thread's call has cleared it
        self.nargs = None
        return seen


def test_autotuned_launches_take_turns_across_threads(monkeypatch):
    """annotate predicts two batches at a time in worker threads; their first launches of an autotuned kernel tune it
    at the same time. Triton's autotuner is not thread-safe (one thread's call clears the arguments another one is
    still timing with: ``TypeError: 'NoneType' object is not a mapping``, or reads the other's arguments), so the
    project's launchers take turns."""
    fake_triton = SimpleNamespace(Config=lambda kwargs, num_warps, num_stages: kwargs,
                                  autotune=lambda configs, key: SharedStateAutotuner)
    monkeypatch.setitem(sys.modules, "triton", fake_triton)
    monkeypatch.setattr(triton_layout, "interpreted", lambda: False)
    launcher = triton_layout.autotuned(lambda *args: None, [{"BLOCK": 16, "num_warps": 4, "num_stages": 2}], ["n"])
    start = threading.Barrier(4)

    def launch(i):
        start.wait()
        return launcher[(1,)](i)

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(launch, range(4))) == [{0: i} for i in range(4)]
