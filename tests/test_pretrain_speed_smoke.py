"""Smoke test of benchmarks/pretrain_speed.py on CPU with tiny backbones (no timing is checked)."""

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "pretrain_speed.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("pretrain_speed", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_report_and_csv(bench, tmp_path):
    out = tmp_path / "speed.md"
    args = ["--tiny", "--batch", "2", "--steps", "1", "--warmup", "0", "--samples", "1024", "--out", str(out)]
    rows = bench.main(args + ["--label", "before"])
    assert [(r["recipe"], r["batch"]) for r in rows] == [("masked", 2), ("contrastive", 2)]
    for r in rows:
        assert r["step_ms"] > 0 and r["windows_per_s"] > 0 and r["tflop_per_step"] > 0
    bench.main(args + ["--label", "after", "--recipe", "masked", "--checkpointing", "yes"])
    table = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [(r["label"], r["recipe"], r["checkpointing"]) for r in table] == [
        ("before", "masked", "no"), ("before", "contrastive", "no"), ("after", "masked", "yes")]
    text = out.read_text()
    assert text.count("| before |") == 2 and text.count("| after |") == 1


def test_variants_are_labelled_and_the_library_settings_restored(bench, tmp_path):
    """--qkv-form and --head-pad run every combination, one label suffix each, and leave the library's q/k/v forms
    and head-dim padding place as they were (tests call main in their own process)."""
    from seisbench_xlstm import bimlstm

    before = (bimlstm.GPU_QKV_FORM, bimlstm.CPU_QKV_FORM, bimlstm.HEAD_PAD_IN_LAYOUT)
    rows = bench.main(["--tiny", "--batch", "2", "--steps", "1", "--warmup", "0", "--samples", "1024", "--recipe",
                       "masked", "--qkv-form", "dense", "per_head", "--head-pad", "kernel", "--label", "v",
                       "--out", str(tmp_path / "speed.md")])
    assert [r["label"] for r in rows] == ["v (qkv dense, head pad in kernel)", "v (qkv per_head, head pad in kernel)"]
    assert (bimlstm.GPU_QKV_FORM, bimlstm.CPU_QKV_FORM, bimlstm.HEAD_PAD_IN_LAYOUT) == before


def test_library_settings_are_measured_labelled_and_restored(bench, tmp_path):
    """--setting MODULE.NAME=V1,V2 runs each value (every combination of several), labels the rows with it and puts
    the constant back; a constant the module lacks or a malformed setting is an error that names it."""
    from seisbench_xlstm import bimlstm

    before = (bimlstm.OUTPUT_STAGE, bimlstm.CONV_STAGE)
    rows = bench.main(["--tiny", "--batch", "2", "--steps", "1", "--warmup", "0", "--samples", "1024", "--recipe",
                       "masked", "--setting", "bimlstm.OUTPUT_STAGE=torch,auto", "--setting",
                       "bimlstm.GPU_TOKENS_PER_GROUP=0", "--label", "s", "--out", str(tmp_path / "speed.md")])
    assert [r["label"] for r in rows] == ["s (bimlstm.OUTPUT_STAGE torch, bimlstm.GPU_TOKENS_PER_GROUP 0)",
                                          "s (bimlstm.OUTPUT_STAGE auto, bimlstm.GPU_TOKENS_PER_GROUP 0)"]
    assert (bimlstm.OUTPUT_STAGE, bimlstm.CONV_STAGE) == before
    with pytest.raises(SystemExit, match="seisbench_xlstm.bimlstm has no OUTPUT_STAGES"):
        bench.library_constants(["bimlstm.OUTPUT_STAGES=torch"])
    with pytest.raises(SystemExit, match="expected MODULE.NAME=VALUE"):
        bench.library_constants(["OUTPUT_STAGE"])
    assert bench.library_constants([]) == [()]


def test_cell_flops_formula_and_standin(bench):
    # one call: batch 2, 4 heads, 1024 steps, head width 96, TFLA chunk 128
    forward = 4 * 1024 * 96**2 + 4 * 1024 * 128 * 96
    assert bench.cell_flops([(2, 4, 1024, 96)], "chunkwise--triton_xl_chunk") == 3 * forward * 2 * 4
    # 100 steps are padded to 128 in one chunk of 128 (TFLA) or four of 32 (native, head width 8)
    assert bench.cell_flops([(1, 1, 100, 8)], "chunkwise--native_autograd") == 3 * (4 * 128 * 64 + 4 * 128 * 32 * 8)
    module = bench.build("masked", True, False, "auto")
    calls = []
    x = torch.randn(1, 3, 1024, requires_grad=True)
    with bench.mlstm_stand_in(calls):
        module.recipe(x)["loss"].backward()
    layers = module.backbone.config.num_layers
    # one call per layer, both directions (and, in the per-head layout, the heads) in the kernel's two leading axes
    heads = module.backbone.config.num_heads
    assert len(calls) == layers and all(c[0] * c[1] == 2 * heads for c in calls)
    assert x.grad is not None


def test_profile_kernels_are_summed_by_kind(bench, tmp_path):
    """The kinds of a GPU profile's kernels (names as the H200's profiles list them); ranges around kernels (inductor's
    compiled-graph calls, the optimizer step) are not summed, and PyTorch's lambdas (``{lambda()#3}``) are kernels."""
    from profile_report import kernel_kind, kernels_of_profile, time_by_kind

    listed = [
        ("## Call CompiledFxGraph fu5z6v3h3zgxrhgxasvtrlh7fgfemt3ks7oandgv3dfo3doyhxlk ##", 60.0),
        ("_mlstm_bwd_chunk_kernel", 30.0),
        ("_output_gate_bwd_kernel", 12.0),
        ("triton_poi_fused__to_copy_add_flip_native_layer_norm_stack_1", 8.0),
        ("nvjet_sm90_tst_96x256_64x4_1x2_h_bz_coopA_TNN", 6.0),
        ("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>(params)", 1.0),
        ("Optimizer.step#AdamW.step", 4.0),
        ("void at::native::elementwise_kernel<128, 4, direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}>",
         2.0),
    ]
    text = "2 training steps\n(table)\n\nDevice kernels by self time\n" + "\n".join(
        f"{ms:9.2f} ms a step    24 calls a step  {name}" for name, ms in listed) + "\n\nMatrix products\n"
    assert kernels_of_profile(text) == listed
    assert [kernel_kind(n) for n, _ in listed[1:3]] == ["mLSTM kernels", "this project's other Triton kernels"]
    table = "\n".join(time_by_kind(listed))
    assert "| mLSTM kernels | 30.0 | 51% |" in table
    assert "| matrix products and convolutions (cuBLAS, cuDNN) | 7.0 | 12% |" in table
    assert "| other (PyTorch's own kernels, copies, memsets) | 2.0 | 3% |" in table
    assert table.endswith("| all kernels | 59.0 | 100% |")
    with pytest.raises(ValueError, match="Device kernels by self time"):
        kernels_of_profile("no such section")


def test_mlstm_stand_in_copies_v_passes_its_gradient_and_is_undone(bench, tmp_path):
    """The timing stand-in (benchmarks/mlstm_stand_in.py): h is a copy of v, v gets the incoming gradient and q/k
    and the gates zeros, in the layers eager and compiled; the library's kernels are back afterwards; and
    --mlstm-stand-in both measures the step with and without it."""
    from seisbench_xlstm import kernels
    from seisbench_xlstm.kernels import mlstm_sequence, mlstm_sequence_qk

    q, k, v = (torch.randn(2, 3, 16, 4, requires_grad=True) for _ in range(3))
    i, f = (torch.randn(2, 3, 16, requires_grad=True) for _ in range(2))
    qk = torch.cat([q, k], dim=-1).detach().requires_grad_()
    originals = (kernels._sequence, kernels._opaque_sequence_qk)
    calls = []
    with bench.mlstm_stand_in(calls):
        h = mlstm_sequence(q, k, v, i, f, kernel="chunkwise--native_autograd")
        h2 = torch.compile(mlstm_sequence_qk)(qk, v, i, f, kernel="chunkwise--native_autograd")
        (h * 2 + h2).sum().backward()
    assert calls == [(2, 3, 16, 4), (2, 3, 16, 4)]
    assert torch.equal(h, v) and torch.equal(h2, v) and h.data_ptr() != v.data_ptr()
    assert torch.equal(v.grad, torch.full_like(v, 3.0))
    assert all(torch.count_nonzero(t.grad) == 0 for t in (q, k, qk, i, f))
    assert (kernels._sequence, kernels._opaque_sequence_qk) == originals
    real = mlstm_sequence(q, k, v, i, f, kernel="chunkwise--native_autograd")
    assert not torch.allclose(real, v)  # the real cell again

    rows = bench.main(["--tiny", "--batch", "2", "--steps", "1", "--warmup", "0", "--samples", "1024", "--recipe",
                       "masked", "--mlstm-stand-in", "both", "--label", "c", "--out", str(tmp_path / "speed.md")])
    assert [r["label"] for r in rows] == ["c", "c (mLSTM stand-in)"]
    assert all(r["step_ms"] > 0 for r in rows)
