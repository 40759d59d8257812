"""Helpers shared by the benchmark scripts: timing, continuous test data, machine description."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path
from unittest import mock

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEISBENCH_XLSTM_SHARED_DATA", REPO / ".." / "shared" / "data"))


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}, torch {torch.__version__}"


def synchronize():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds (after warm-up), with CUDA synchronisation."""
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def continuous_station(hours: float, data_dir: Path | None = None):
    """``hours`` of one real 3-component 100 Hz station (O2.WILZ, 2 h in ../shared/data/continuous-ok) tiled in
    time to the requested length; real waveforms rather than random numbers, as annotate sees in production."""
    import obspy

    folder = Path(data_dir or SHARED_DATA / "continuous-ok")
    files = sorted(folder.glob("*.mseed"))
    if not files:
        raise FileNotFoundError(f"No miniSEED files in {folder} (set SEISBENCH_XLSTM_SHARED_DATA)")
    base = obspy.Stream()
    for f in files:
        base += obspy.read(str(f))
    base.merge(fill_value=0)
    n = int(round(hours * 3600 * 100))
    out = obspy.Stream()
    for tr in base:
        reps = int(np.ceil(n / tr.stats.npts))
        data = np.tile(tr.data.astype(np.float32), reps)[:n]
        out += obspy.Trace(data, header=dict(tr.stats, npts=n))
    return out


#: The values an option ``no|yes|both`` stands for (``--compile``, ``--checkpointing``, ...): both = without, then with.
NO_YES_BOTH = {"no": [False], "yes": [True], "both": [False, True]}


#: A report's hand-written notes start at this line: regenerating the report from its CSV keeps them.
REPORT_NOTES_MARKER = "<!-- Hand-written notes below: kept when the tables above are regenerated. -->"


def write_report(lines: list[str], out: Path | None) -> str:
    """Joins report lines, prints them and, if ``out`` is given, writes them there (folders created). Where ``out``
    already holds :data:`REPORT_NOTES_MARKER`, that line and everything after it stay below the new lines."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        old = out.read_text() if out.is_file() else ""
        at = old.find(REPORT_NOTES_MARKER)
        out.write_text(text if at < 0 else text + "\n" + old[at:])
    return text


#: Tiny backbone configurations for CPU smoke runs of the speed scripts (as tests/tiny.py).
TINY_BACKBONES = {
    "sequential": dict(d_model=32, num_layers=2, qkv_proj_blocksize=4, stem_channels=[8, 16],
                       decoder_channels=[16, 16]),
    "unet": dict(dims=[16, 32, 64], layers_per_stage=1, stem_channels=[8, 16], decoder_channels=[16, 16]),
}


def load_average() -> str:
    """The 1/5/15-minute load averages and the core count, e.g. ``"load 3.1/3.4/3.6 on 2 cores"``."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load {one:.1f}/{five:.1f}/{fifteen:.1f} on {os.cpu_count()} cores"


def continuous_stations(hours: float, stations: int, data_dir: Path | None = None):
    """``stations`` stations of ``hours`` each, made from the real O2.WILZ record (:func:`continuous_station`):
    station ``k`` (code ``W00``, ``W01``, ...) starts ``k / stations`` of the way into the 2 h record, so the
    stations' windows differ while every sample is real data."""
    import obspy

    if stations < 1:
        raise ValueError(f"stations must be at least 1, got {stations}")
    base = continuous_station(2.0, data_dir)  # the real record, once
    period = base[0].stats.npts
    n = int(round(hours * 3600 * 100))
    out = obspy.Stream()
    for k in range(stations):
        shift = (k * period) // stations
        for tr in base:
            data = np.roll(tr.data, -shift) if shift else tr.data
            reps = int(np.ceil(n / len(data)))
            out += obspy.Trace(np.tile(data, reps)[:n].copy(), header=dict(tr.stats, npts=n, station=f"W{k:02d}"))
    return out


def shared_dataset_path(name: str, shared: Path, data_cache: str | Path | None = None) -> Path:
    """The folder of a dataset of ../shared/data: ``nz-dfdp`` converted once by the ingest tool with its default
    options (``seisbench_xlstm.data.ingest_cached``, into ``data_cache`` or the SeisBench cache), others as they are.

    :raises FileNotFoundError: the data are absent
    """
    from seisbench_xlstm.data import ingest_cached

    if name == "nz-dfdp":
        if not (shared / "nz-dfdp" / "WAV").is_dir():
            raise FileNotFoundError(f"{shared / 'nz-dfdp'} is absent")
        return ingest_cached(shared / "nz-dfdp" / "WAV", shared / "nz-dfdp" / "REA", "nordic", "nz-dfdp", data_cache)
    if not (shared / name).is_dir():
        raise FileNotFoundError(f"{shared / name} is absent")
    return shared / name


#: (batch x 2 directions, heads, padded steps, head dim) of the backbones' mLSTM kernel calls at their training
#: batches: the sequential backbone, then the U-Net's three levels.
MLSTM_CALL_SHAPES = [(256, 4, 1024, 96), (128, 4, 1024, 64), (128, 4, 256, 128), (128, 4, 64, 256)]


def parse_call_shapes(texts: list[str] | None) -> list[tuple[int, ...]]:
    """``["256x4x1024x96", ...]`` -> shapes (:data:`MLSTM_CALL_SHAPES` when ``texts`` is empty or None)."""
    if not texts:
        return list(MLSTM_CALL_SHAPES)
    shapes = [tuple(int(x) for x in s.split("x")) for s in texts]
    if any(len(s) != 4 for s in shapes):
        raise ValueError("shapes are batch x heads x steps x head_dim, e.g. 256x4x1024x96")
    return shapes


def backbone_kernel(backbone, batch: int, device) -> str:
    """The mLSTM kernel ``backbone``'s layers run for ``batch`` windows on ``device`` (all layers of both backbones
    have the same heads, so the first layer's kernel)."""
    from seisbench_xlstm.bimlstm import BiMLSTMLayer

    return backbone.kernel_for(next(m for m in backbone.modules() if isinstance(m, BiMLSTMLayer)), batch, device)


def random_mlstm_inputs(shape, seed: int = 0, device: str = "cuda"):
    """Random bf16 q, k, v and float32 gate pre-activations (forget gates around 3, as trained layers have them) of
    one mLSTM kernel call ``(batch, heads, steps, head_dim)``, all requiring gradients, and a random output
    gradient."""
    import torch

    b, heads, steps, dim = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    qkv = [torch.randn(b, heads, steps, dim, device=device, generator=gen, dtype=torch.bfloat16) for _ in range(3)]
    i = torch.randn(b, heads, steps, device=device, generator=gen)
    f = 3.0 + torch.randn(b, heads, steps, device=device, generator=gen)
    grad = torch.randn(b, heads, steps, dim, device=device, generator=gen, dtype=torch.bfloat16)
    return [t.requires_grad_() for t in (*qkv, i, f)], grad


def forward_backward(fn, inputs, grad) -> list:
    """``fn(*inputs)`` and its backward pass with output gradient ``grad``: the output and each input's gradient
    (the inputs' old gradients cleared first)."""
    for t in inputs:
        t.grad = None
    h = fn(*inputs)
    h.backward(grad)
    return [h.detach()] + [t.grad for t in inputs]


def relative_error(a, b) -> float:
    """``|a - b| / |b|`` (L2, in float32)."""
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


_LIBRARY_QKV_FORMS: tuple[str, str] | None = None


def set_qkv_form(form: str | None) -> None:
    """The q/k/v form of the xLSTM layers (``seisbench_xlstm.bimlstm``) on GPUs and, for CPU smoke runs, on CPUs;
    ``None`` restores the library's defaults."""
    global _LIBRARY_QKV_FORMS
    from seisbench_xlstm import bimlstm

    if _LIBRARY_QKV_FORMS is None:
        _LIBRARY_QKV_FORMS = (bimlstm.GPU_QKV_FORM, bimlstm.CPU_QKV_FORM)
    bimlstm.GPU_QKV_FORM, bimlstm.CPU_QKV_FORM = (form, form) if form else _LIBRARY_QKV_FORMS


def parse_kernel_warps(text: str | None, library: dict) -> dict:
    """``"backward_chunks=8,forward=8"`` -> ``{"backward_chunks": 8, "forward": 8}``; None or ``"none"``:
    ``library``."""
    if text is None or text == "none":
        return dict(library)
    return {k: int(v) for k, v in (item.split("=", 1) for item in text.split(","))}


def patch_constants(stack: contextlib.ExitStack, constants: tuple) -> None:
    """Sets one combination of :func:`library_constants` (``(module, name, value)`` triples) after undoing the
    previous one held by ``stack``; ``stack.close()`` restores the library's values."""
    stack.close()
    for module, name, value in constants:
        stack.enter_context(mock.patch.object(module, name, value))


def constants_label(constants: tuple) -> list[str]:
    """``"MODULE.NAME VALUE"`` of each constant of one combination, for the labels of report rows."""
    return [f"{m.__name__.rsplit('.', 1)[-1]}.{n} {v}" for m, n, v in constants]


def library_constants(specs: list[str]) -> list[tuple]:
    """Every combination of the ``--setting`` values: a list of ``((module, name, value), ...)``; values are Python
    literals where they parse as one, else strings. An unknown module or constant is an error that names it."""
    import ast
    import importlib
    import itertools

    choices = []
    for spec in specs:
        target, _, values = spec.partition("=")
        module_name, _, name = target.rpartition(".")
        if not values or not module_name:
            raise SystemExit(f"--setting {spec!r}: expected MODULE.NAME=VALUE[,VALUE], e.g. bimlstm.OUTPUT_STAGE=torch")
        module = importlib.import_module(f"seisbench_xlstm.{module_name}")
        if not hasattr(module, name):
            raise SystemExit(f"--setting {spec!r}: seisbench_xlstm.{module_name} has no {name}")

        def literal(text):
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text

        choices.append([(module, name, literal(v)) for v in values.split(",")])
    return [tuple(c) for c in itertools.product(*choices)]
