"""When each step of one SeisBench ``annotate`` call runs: the pipeline's timeline, for ``annotate_speed.py --profile``.

SeisBench's ``annotate`` runs its steps in asyncio tasks and worker threads. :func:`pipeline_timeline` wraps the
steps of one model (SeisBench's methods, and for the xLSTM pickers the record steps of
:mod:`seisbench_xlstm.records` they call) and records for each call its start, duration and thread. A step that
runs long before the first prediction, or one that keeps the predictions waiting, shows as such:

    with pipeline_timeline(model) as steps:
        model.annotate(stream)
    print("\\n".join(timeline_table(steps, total_seconds)))
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time

#: SeisBench's steps, in pipeline order (methods of ``WaveformModel``); those a model lacks are skipped.
SEISBENCH_STEPS = ("annotate_stream_pre", "stream_to_array", "_cut_fragments_array", "_predict_windows",
                   "_stack_predictions_array", "_stack_predictions_array_ext", "_predictions_to_stream")
#: The record steps the xLSTM pickers call (functions of ``seisbench_xlstm.records`` as imported by ``pickers``).
RECORD_STEPS = ("headers_copy", "split_at_gaps", "check_components", "data_spans", "demean_segments",
                "bridge_gaps", "pad_short_records", "keep_spans")


@contextlib.contextmanager
def pipeline_timeline(model):
    """Records the steps of ``model``'s annotate calls inside the block: yields a list that fills with
    ``(step, start_s, seconds, thread)``, times from the start of the block."""
    from seisbench_xlstm import pickers

    calls: list[tuple[str, float, float, str]] = []
    t0 = time.perf_counter()

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.perf_counter()
                calls.append((name, start - t0, end - start, threading.current_thread().name))

        return wrapper

    patched = []  # (owner, name, had_own_attribute, old)
    for name in SEISBENCH_STEPS:
        if hasattr(model, name):  # an instance attribute shadows the class's method for SeisBench's self.<step>()
            patched.append((model, name, name in vars(model), getattr(model, name)))
    if isinstance(model, pickers._XLSTMPicker):
        patched += [(pickers, name, True, getattr(pickers, name)) for name in RECORD_STEPS if hasattr(pickers, name)]
    try:
        for owner, name, _, old in patched:
            setattr(owner, name, timed(name, old))
        yield calls
    finally:
        for owner, name, had_own, old in reversed(patched):
            if had_own:
                setattr(owner, name, old)
            else:
                delattr(owner, name)


def timeline_table(calls, total_s: float) -> list[str]:
    """Markdown rows: per step, its calls, summed seconds, first start, last end and threads, in order of first
    start; the first prediction's start is where the GPU first gets work."""
    steps: dict[str, list] = {}
    for name, start, seconds, thread in calls:
        s = steps.setdefault(name, [0, 0.0, start, start + seconds, set()])
        s[0] += 1
        s[1] += seconds
        s[2] = min(s[2], start)
        s[3] = max(s[3], start + seconds)
        s[4].add("main" if thread == "MainThread" else "worker")
    lines = [f"One annotate call, {total_s:.2f} s:", "",
             "| step | calls | seconds (sum) | first start (s) | last end (s) | thread |", "|---|---|---|---|---|---|"]
    for name, (n, seconds, first, last, threads) in sorted(steps.items(), key=lambda kv: kv[1][2]):
        lines.append(f"| {name} | {n} | {seconds:.3f} | {first:.3f} | {last:.3f} | {', '.join(sorted(threads))} |")
    return lines
