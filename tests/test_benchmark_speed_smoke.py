"""Smoke runs of the speed scripts with tiny sizes (results are not checked for speed: no timed tests)."""

import csv
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import annotate_speed  # noqa: E402
import window_cost  # noqa: E402
from common import continuous_stations  # noqa: E402


def test_stations_are_real_data_shifted_per_station(shared_data):
    st = continuous_stations(0.01, 3, shared_data / "continuous-ok")
    assert len(st) == 9 and {tr.stats.station for tr in st} == {"W00", "W01", "W02"}
    assert all(tr.stats.npts == 3600 for tr in st)
    z = [tr.data for tr in st if tr.stats.channel.endswith("Z")]
    assert not any((z[0] == z[k]).all() for k in (1, 2))


def test_annotate_speed_writes_table_and_csv(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("SEISBENCH_XLSTM_SHARED_DATA", str(shared_data))
    out = tmp_path / "annotate.md"
    assert annotate_speed.main(["--hours", "0.01", "--stations", "2", "--tiny", "--repeats", "1",
                                "--baseline-repeats", "1",
                                "--models", "XLSTMUNetPicker", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert [r["model"] for r in rows] == ["PhaseNet", "XLSTMUNetPicker (tiny)"]  # PhaseNet always, as reference
    assert float(rows[0]["ratio_to_phasenet"]) == 1.0
    for r in rows:  # throughput = 2 stations x 0.01 h / seconds
        assert abs(float(r["station_hours_per_s"]) * float(r["seconds"]) - 0.02) < 1e-9
    assert "smoke run, not a measurement" in out.read_text()


def test_annotate_speed_compile_both_gives_an_eager_and_a_compiled_row(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("SEISBENCH_XLSTM_SHARED_DATA", str(shared_data))
    compiled = []
    monkeypatch.setattr(annotate_speed.XLSTMUNetPicker, "set_compile",
                        lambda self, enabled=True: compiled.append(enabled) or self)  # compiling itself is slow
    out = tmp_path / "annotate.md"
    assert annotate_speed.main(["--hours", "0.01", "--stations", "1", "--tiny", "--repeats", "1",
                                "--baseline-repeats", "1", "--compile", "both",
                                "--models", "XLSTMUNetPicker", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert [r["settings"].endswith("compiled layers") for r in rows] == [False, False, True]
    assert compiled == [False, True]


def test_annotate_speed_measures_each_kernel_given(shared_data, tmp_path, monkeypatch):
    """``--kernels``: one row per kernel, the backbone set to it before its runs (``None``: the run-time choice)."""
    monkeypatch.setenv("SEISBENCH_XLSTM_SHARED_DATA", str(shared_data))
    seen = []
    real = annotate_speed.annotate_seconds

    def annotate_seconds(model, stream, repeats=2, **kwargs):
        if hasattr(model, "backbone"):
            seen.append(model.backbone.kernel)
        return real(model, stream, repeats, **kwargs)

    monkeypatch.setattr(annotate_speed, "annotate_seconds", annotate_seconds)
    out = tmp_path / "annotate.md"
    assert annotate_speed.main(["--hours", "0.01", "--stations", "1", "--tiny", "--repeats", "1",
                                "--baseline-repeats", "1", "--kernels", "chunkwise--native_custbw",
                                "chunkwise--native_autograd", "--models", "XLSTMSeqPicker", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert [r["settings"].split("kernel ")[-1] for r in rows[1:]] == ["chunkwise--native_custbw",
                                                                     "chunkwise--native_autograd"]
    assert seen == ["chunkwise--native_custbw"] * 2 + ["chunkwise--native_autograd"] * 2  # warm-up, then timed


def test_window_cost_stops_a_kernel_after_out_of_memory(tmp_path, monkeypatch):
    real = window_cost.measure

    def measure(backbone, x, mode, repeats):
        if backbone.kernel.startswith("parallel") and x.shape[-1] >= 512:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(backbone, x, mode, repeats)

    monkeypatch.setattr(window_cost, "measure", measure)
    out = tmp_path / "cost.md"
    assert window_cost.main(["--tiny", "--backbones", "sequential", "--lengths", "256", "512", "1024",
                             "--repeats", "1", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    status = {(r["kernel"], int(r["samples"])): r["status"] for r in rows}
    assert status[("chunkwise--native_autograd", 1024)] == "ok"
    assert status[("parallel--native_autograd", 256)] == "ok"
    assert status[("parallel--native_autograd", 512)] == "OOM"
    assert status[("parallel--native_autograd", 1024)] == "not tried (OOM before)"
    assert "| sequential (tiny) | parallel--native_autograd | forward | 512 | 128 | OOM |" in out.read_text()


def test_kernel_tuning_records_the_backbones_call_shapes():
    """The shapes kernel_tuning.py tunes are the mLSTM calls the two recipes really make (both directions stacked
    along the batch), and its settings file parses."""
    import kernel_tuning

    shapes = kernel_tuning.call_shapes()
    assert shapes == {(256, 4, 1024, 96): "sequential", (128, 4, 1024, 64): "unet", (128, 4, 256, 128): "unet",
                      (128, 4, 64, 256): "unet"}
    listed = kernel_tuning.listed_settings()
    assert {(dim, steps) for dim, steps, _ in listed} == {(s[3], s[2]) for s in shapes}
    assert all(set(settings) <= set(kernel_tuning.SEARCH_SPACE) for _, _, settings in listed)


def test_triton_speed_reference_check_finds_a_wrong_kernel(monkeypatch):
    """triton_mlstm_speed.py's check against the float32 quadratic reference (here on a CPU, with the native
    chunkwise kernel standing in for both GPU kernels, and a wrong one whose keys are negated)."""
    import triton_mlstm_speed as speed
    from mlstm_kernels.torch import get_mlstm_kernel

    native = get_mlstm_kernel("chunkwise--native_autograd")

    def run(q, k, v, i, f, sign=1.0):
        return native(q.float(), sign * k.float(), v.float(), i, f, eps=1e-6, chunk_size=16).to(q.dtype)

    monkeypatch.setattr(speed, "DEVICE", "cpu")
    monkeypatch.setattr(speed, "kernels", lambda steps, chunk, block_v: {"ours": run,
                                                                          "tfla": lambda *x: run(*x, sign=-1.0)})
    row = speed.against_reference((8, 4, 32, 16), 16, None)
    assert float(row["ours_vs_exact"].split()[0]) < 3e-2  # bf16 inputs, float32 arithmetic
    assert float(row["ours_vs_constant"].split()[0]) > 0.1  # the native autograd kernel: exact gradients
    assert float(row["tfla_vs_exact"].split()[0]) > 0.1 and float(row["tfla_vs_constant"].split()[0]) > 0.1


def test_triton_speed_runs_tfla_at_the_library_head_dim(monkeypatch):
    """triton_mlstm_speed.py's TFLA call at head dim 96 goes through the library's padding (96 -> 128, queries
    rescaled, output cropped): with the native kernel standing in for TFLA (on a CPU) it equals the unpadded call,
    and TFLA receives head dim 128."""
    import sys
    import types

    import torch
    from mlstm_kernels.torch import get_mlstm_kernel

    import triton_mlstm_speed as speed
    from seisbench_xlstm import kernels

    native = get_mlstm_kernel("chunkwise--native_autograd")
    seen = []

    def stand_in(kernel, chunk_size, dtype):  # kernels._backend for TFLA, on the CPU
        assert kernel == kernels.TRITON_KERNEL

        def run(q, k, v, i, f):
            seen.append(q.shape[-1])
            return native(q, k, v, i, f, eps=1e-6, chunk_size=chunk_size)
        return run

    resolve = kernels.resolve_kernel
    monkeypatch.setattr(kernels, "resolve_kernel",
                        lambda name, device, sequences=None: name if name == kernels.TRITON_KERNEL
                        else resolve(name, device, sequences))
    monkeypatch.setattr(kernels, "_backend", stand_in)
    monkeypatch.setitem(sys.modules, "seisbench_xlstm.triton_mlstm", types.SimpleNamespace(mlstm_chunkwise_triton=None))
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 256, 96) for _ in range(3))
    i, f = torch.randn(2, 4, 256), 3 + torch.randn(2, 4, 256)
    h = speed.kernels(256, 64, None)["tfla"](q, k, v, i, f)
    reference = native(q, k, v, i, f, eps=1e-6, chunk_size=128)
    assert seen == [128] and h.shape == reference.shape
    assert float((h - reference).norm() / reference.norm()) < 1e-5


def test_triton_variants_report_reads_both_record_forms(tmp_path):
    """The report of saved JSON lines: this script's records and the first runs' (``llvm_opt_off``,
    ``regs_spills``), one row per shape and variant, kernels absent in a version left empty, the agreement line."""
    import json

    import triton_mlstm_variants

    first = [{"llvm_opt_off": "1", "shape": "8x1x64x16", "variant": "old", "fwd_ms": 1.0, "fwbw_ms": 2.0,
              "peak_gib": 9.9, "regs_spills": {"_mlstm_fwd_kernel": [255, 3], "_mlstm_bwd_kernel": [255, 7]}},
             {"llvm_opt_off": "1", "shape": "8x1x64x16", "max_abs_diff_fp32_vs_input_states": {"h": 0.0, "dq": 0.5}}]
    second = [{"llvm_opt": "on", "shape": "8x1x64x16", "variant": "new", "fwd_ms": 0.5, "fwbw_ms": 1.5,
               "mlstm_fwd_kernel_regs_spills": [128, 0], "mlstm_bwd_kernel_regs_spills": [200, 1],
               "mlstm_bwd_dq_kernel_regs_spills": [96, 0]}]
    files = []
    for n, records in enumerate((first, second)):
        files.append(tmp_path / f"run{n}.jsonl")
        files[-1].write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = tmp_path / "variants.md"
    triton_mlstm_variants.main(["--report", *map(str, files), "--out", str(out)])
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert [(r["run"], r["llvm_opt"], r["variant"]) for r in rows] == [("1", "off", "old"), ("2", "on", "new")]
    assert rows[0]["mlstm_bwd_kernel_regs_spills"] == "255/7" and rows[0]["mlstm_bwd_dq_kernel_regs_spills"] == ""
    assert rows[1]["mlstm_bwd_dq_kernel_regs_spills"] == "96/0"
    assert "every other of each shape and run: 0.5." in out.read_text()


def test_triton_registers_reports_every_kernel(tmp_path):
    """Compiles the kernels for sm_90 without a GPU (needs triton, and not its interpreter; skipped otherwise)."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("compiling for a GPU target needs Triton's compiler, not its interpreter")
    import triton_mlstm_registers

    rows = triton_mlstm_registers.main(["--shapes", "128x4x64x64", "128x4x128x96", "--out",
                                        str(tmp_path / "registers.md")])
    # as the library launches them: one chunk: one pass, no state-gradient kernel; two chunks of head dim 96 (tiles
    # 128 x 128): the state passes as contributions and scans, dq in a kernel of its own
    assert [r["kernel"] for r in rows] == [
        "forward", "backward_chunks",
        "forward_chunk_states", "state_scan (forward)", "forward_chunks", "backward_chunk_states",
        "state_scan (backward)", "backward_dq", "backward_chunks", "scalars_normaliser", "scalars_gates"]
    assert all(0 < r["registers"] <= 255 and r["stack_bytes"] >= 0 for r in rows)
    assert len(list(csv.DictReader(open(tmp_path / "registers.csv")))) == 11


def test_triton_registers_compiles_at_each_setting(tmp_path):
    """``--setting``: the kernels each value of a library constant launches, labelled with it (needs triton's
    compiler, as above)."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("compiling for a GPU target needs Triton's compiler, not its interpreter")
    import triton_mlstm_registers

    rows = triton_mlstm_registers.main(["--shapes", "128x4x128x64", "--setting", "triton_mlstm.STATE_PASS=loop,scan",
                                        "--out", str(tmp_path / "registers.md")])
    kernels = {setting: [r["kernel"] for r in rows if r.get("settings") == setting]
               for setting in ("triton_mlstm.STATE_PASS loop", "triton_mlstm.STATE_PASS scan")}
    assert "backward_states" in kernels["triton_mlstm.STATE_PASS loop"]
    assert "backward_chunk_states" not in kernels["triton_mlstm.STATE_PASS loop"]
    assert {"backward_chunk_states", "state_scan (backward)"} <= set(kernels["triton_mlstm.STATE_PASS scan"])
    assert "triton_mlstm.STATE_PASS scan" in (tmp_path / "registers.md").read_text()


def test_triton_speed_times_tfla_once_a_shape(monkeypatch, tmp_path):
    """triton_mlstm_speed.py times TFLA in the first row of a shape only; later rows (other settings of our kernel)
    repeat its figures. Here on a CPU, with the native kernel standing in for both and a stand-in timer."""
    import types

    import triton_mlstm_speed as speed
    from common import random_mlstm_inputs
    from seisbench_xlstm.kernels import mlstm_sequence

    calls = []

    def stand_ins(steps, chunk, block_v):
        return {name: lambda *x, name=name: (calls.append(name), mlstm_sequence(*x))[1] for name in ("ours", "tfla")}

    def cpu_inputs(shape, seed=0, device="cpu"):
        inputs, grad = random_mlstm_inputs(shape, seed, "cpu")
        return [t.detach().float().requires_grad_() for t in inputs], grad.float()

    monkeypatch.setitem(sys.modules, "triton.testing", types.SimpleNamespace(do_bench=lambda fn, **_: (fn(), 1.0)[1]))
    for name, value in (("DEVICE", "cpu"), ("machine", lambda: "cpu"), ("kernels", stand_ins),
                        ("random_mlstm_inputs", cpu_inputs)):
        monkeypatch.setattr(speed, name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 0)
    out = tmp_path / "speed.md"
    assert speed.main(["--shapes", "2x2x64x16", "--kernel-warps", "none", "forward=8", "--out", str(out)]) == 0
    assert calls.count("tfla") * 2 == calls.count("ours")  # two rows of ours, one of TFLA
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    library = ",".join(f"{k}={v}" for k, v in sys.modules["seisbench_xlstm.triton_mlstm"].KERNEL_WARPS.items())
    assert [r["kernel_warps"] for r in rows] == [library, "forward=8"]  # "none": the library's
    assert rows[0]["tfla_fwbw_ms"] == rows[1]["tfla_fwbw_ms"] and rows[1]["rel_err_h"] == "0.0e+00"


def test_triton_speed_peak_counts_the_call_not_what_the_process_holds(monkeypatch):
    """``call_peak_gib``: the inputs read plus the most the call allocated, not the device's whole peak (which
    counted the outputs the script keeps for its agreement columns, so that the figures grew from row to row).
    Stand-in CUDA memory counters: 5 GiB held before the call, 1.5 GiB allocated by it at its peak."""
    import triton_mlstm_speed as speed

    gib = 2**30
    held = {"now": 5 * gib, "peak": 5 * gib}

    def call():
        held["peak"] = max(held["peak"], held["now"] + int(1.5 * gib))

    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: held.update(peak=held["now"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: held["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: held["peak"])
    read = [torch.empty(gib // 4, dtype=torch.uint8, device="meta"),  # 0.25 + 0.25 GiB, not allocated
            torch.empty(gib // 8, dtype=torch.float16, device="meta")]
    assert speed.call_peak_gib(call, read) == 2.0


def test_ab_revisions_refuses_unknown_revisions_and_missing_trees():
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ab_revisions.sh"
    for args, message in ((["prepare", "no-such-revision"], "no revision"), (["run", "no-such-tree", "1"], "missing"),
                          (["sideways", "x"], "usage")):
        result = subprocess.run(["bash", str(script), *args], capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr


def test_annotate_speed_runs_the_pickers_with_each_setting(shared_data, tmp_path, monkeypatch):
    """``--setting MODULE.NAME=V1,V2``: the xLSTM picker runs (warm-up and timed) with each value, one row each,
    labelled; the library's value comes back afterwards."""
    from seisbench_xlstm import bimlstm

    monkeypatch.setenv("SEISBENCH_XLSTM_SHARED_DATA", str(shared_data))
    seen = []
    real = annotate_speed.annotate_seconds

    def annotate_seconds(model, stream, repeats=2, **kwargs):
        if hasattr(model, "backbone"):
            seen.append(bimlstm.OUTPUT_STAGE)
        return real(model, stream, repeats=repeats, **kwargs)

    monkeypatch.setattr(annotate_speed, "annotate_seconds", annotate_seconds)
    library = bimlstm.OUTPUT_STAGE
    out = tmp_path / "annotate.md"
    assert annotate_speed.main(["--hours", "0.01", "--stations", "1", "--tiny", "--repeats", "1",
                                "--baseline-repeats", "1", "--setting", "bimlstm.OUTPUT_STAGE=torch,auto",
                                "--models", "XLSTMUNetPicker", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert [r["settings"].endswith(f"bimlstm.OUTPUT_STAGE {v}") for r, v in zip(rows[1:], ["torch", "auto"])] == [
        True, True]
    assert seen == ["torch", "torch", "auto", "auto"]  # warm-up and timed run of each
    assert bimlstm.OUTPUT_STAGE == library


def test_pipeline_timeline_records_each_step_and_restores_the_model(shared_data):
    """--profile's timeline: every pipeline step of one annotate call, the forward in a worker thread, and the model
    and the records functions as they were afterwards."""
    from pipeline_timeline import pipeline_timeline, timeline_table

    from seisbench_xlstm import XLSTMUNetPicker, pickers
    from seisbench_xlstm.records import demean_segments

    st = continuous_stations(0.2, 2, shared_data / "continuous-ok")
    model = XLSTMUNetPicker(backbone_config=annotate_speed.TINY_BACKBONES["unet"]).eval()
    with pipeline_timeline(model) as calls:
        model.annotate(st, batch_size=8)
    steps = {name: thread for name, _, _, thread in calls}
    assert {"headers_copy", "demean_segments", "stream_to_array", "_cut_fragments_array", "_predict_windows",
            "_stack_predictions_array_ext", "keep_spans"} <= set(steps)
    assert steps["_predict_windows"] != "MainThread"
    assert sum(name == "stream_to_array" for name, *_ in calls) == 2  # one per station
    assert "stream_to_array" not in vars(model) and pickers.demean_segments is demean_segments
    table = timeline_table(calls, 1.0)
    assert table[0] == "One annotate call, 1.00 s:" and any(row.startswith("| _predict_windows | ") for row in table)


def test_input_stage_speed_times_each_setting(tmp_path):
    """``output_stage_speed.py --stage input`` under Triton's interpreter (the wiring: one row per stage and forward
    launch setting; the figures are not timings)."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton stage runs on CPU tensors only under Triton's interpreter (TRITON_INTERPRET=1)")
    import output_stage_speed
    from seisbench_xlstm import bimlstm, triton_input_stage

    library = bimlstm.INPUT_STAGE, list(triton_input_stage.FORWARD_TUNING)
    output_stage_speed.main(["--stage", "input", "--shapes", "2x2x2x24x16", "--out", str(tmp_path / "in.md")])
    rows = [line for line in (tmp_path / "in.md").read_text().splitlines() if line.startswith("| 2x2x2x24x16")]
    assert [r.split(" | ")[1] for r in rows][:2] == ["torch (compiled)", "triton, autotuned (compiled graph)"]
    assert len(rows) == 2 + len(library[1])
    assert (bimlstm.INPUT_STAGE, triton_input_stage.FORWARD_TUNING) == library  # restored


def test_triton_registers_reports_the_input_stage_kernels(tmp_path):
    """``--input-stage``: the input stage's three kernels at each launch setting of their tuning lists, with
    registers and a machine instruction count (compiled for sm_90 without a GPU; skipped without Triton's compiler)."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("compiling for a GPU target needs Triton's compiler, not its interpreter")
    import triton_mlstm_registers
    from seisbench_xlstm import triton_input_stage as ti

    rows = triton_mlstm_registers.main(["--shapes", "16x4x64x64", "--input-stage", "--out",
                                        str(tmp_path / "registers.md")])
    stage = [r for r in rows if r["kernel"].startswith("input_")]
    assert len(stage) == len(ti.FORWARD_TUNING) + len(ti.BACKWARD_CONV_TUNING) + len(ti.BACKWARD_X_TUNING)
    assert all(0 < r["registers"] <= 255 and r["instructions"] > 100 for r in rows)


def test_regenerated_report_keeps_the_notes_below_the_marker(tmp_path):
    from common import REPORT_NOTES_MARKER, write_report

    out = tmp_path / "report.md"
    write_report(["# Old table", "| a |"], out)
    notes = "\n## What the rows show\nHand-written analysis, line 1.\n\nLine 2.\n"
    out.write_text(out.read_text() + "\n" + REPORT_NOTES_MARKER + notes)
    printed = write_report(["# New table", "| a |", "| b |"], out)
    assert out.read_text() == "# New table\n| a |\n| b |\n\n" + REPORT_NOTES_MARKER + notes
    assert "Hand-written" not in printed  # only the tables are printed
    write_report(["# Only tables"], tmp_path / "plain.md")
    assert (tmp_path / "plain.md").read_text() == "# Only tables\n"  # no marker, nothing to keep
