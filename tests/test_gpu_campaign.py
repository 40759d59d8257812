"""benchmarks/gpu_campaign.py: the job graph, the scheduler's dependency and deadline rules, the result tables."""

import sys
import types
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_campaign as gc  # noqa: E402


def _args(tmp_path, *extra):
    a = gc._args(["--teachers", str(tmp_path / "teachers"), "--work", str(tmp_path / "work"), *extra])
    a.workers = 1
    return a


def test_jobs_depend_on_their_inputs_and_pretraining_is_dropped_when_nothing_needs_it(tmp_path):
    jobs = {j.name: j for j in gc.build_jobs(_args(tmp_path))}
    assert jobs["xlstm_unet"].deps == ["warm", "pretrain"] and jobs["phasenet"].deps == ["warm"]
    assert jobs["frac005_xlstm_unet_pretrained"].deps == ["warm", "pretrain"]
    assert "data.label_fraction=0.05" in jobs["frac005_phasenet"].argv
    assert "pseudo.weight=0" in jobs["frac005_phasenet"].argv  # analyst labels only
    assert jobs["eval_main"].deps == ["xlstm_unet", "xlstm_unet_scratch", "phasenet", "eqtransformer"]
    only_scratch = gc.build_jobs(_args(tmp_path, "--main", "phasenet", "--fraction-models", "phasenet"))
    assert "pretrain" not in [j.name for j in only_scratch]
    given = {j.name: j for j in gc.build_jobs(_args(tmp_path, "--pretrained", "/x/backbone.pt"))}
    assert "pretrain" not in given and given["xlstm_unet"].deps == ["warm"]
    assert "model.pretrained=/x/backbone.pt" in given["frac010_xlstm_unet_pretrained"].argv
    seq = {j.name: j for j in gc.build_jobs(_args(tmp_path, "--main", "xlstm_seq", "--fraction-models"))}
    assert "experiment=local/xlstm_seq" in seq["xlstm_seq"].argv and seq["xlstm_seq"].deps == ["warm"]
    assert any(x.startswith("xLSTM sequential (ours)=XLSTMSeqPicker:") for x in seq["eval_main"].argv)


def test_sequential_label_efficiency_runs_wait_for_their_own_pretraining(tmp_path):
    """The sequential picker's pretrained arm starts from a recipe-1 backbone (job pretrain_seq), the U-Net's from
    recipe 2 (job pretrain); each pretraining runs only when a run waits for it, in a cache of its own."""
    seq = ["--main", "--fraction-models", "xlstm_seq_pretrained", "xlstm_seq_scratch"]
    jobs = {j.name: j for j in gc.build_jobs(_args(tmp_path, *seq))}
    assert "pretrain" not in jobs and "pretrain_seq" in jobs
    assert "experiment=xlstm_large/pure_mlstm_sequential_12m_local" in jobs["pretrain_seq"].argv
    assert jobs["frac010_xlstm_seq_pretrained"].deps == ["warm", "pretrain_seq"]
    assert f"model.pretrained={tmp_path / 'work'}/pretrain_seq/backbone.pt" in jobs["frac010_xlstm_seq_pretrained"].argv
    assert "experiment=local/xlstm_seq" in jobs["frac100_xlstm_seq_scratch"].argv
    assert jobs["frac100_xlstm_seq_scratch"].deps == ["warm"]
    assert any(x.startswith("frac005_xlstm_seq_scratch=XLSTMSeqPicker:") for x in jobs["eval_fractions"].argv)
    both = {j.name: j for j in gc.build_jobs(_args(tmp_path, "--fraction-models", "xlstm_unet_pretrained",
                                                   "xlstm_seq_pretrained"))}
    caches = [next(x for x in both[n].argv if x.startswith("data.cache_dir=")) for n in ("pretrain", "pretrain_seq")]
    assert caches[0] != caches[1]
    given = {j.name: j for j in gc.build_jobs(_args(tmp_path, *seq, "--pretrained-seq", "/x/seq.pt"))}
    assert "pretrain_seq" not in given and given["frac005_xlstm_seq_pretrained"].deps == ["warm"]
    assert "model.pretrained=/x/seq.pt" in given["frac005_xlstm_seq_pretrained"].argv


def _job(name, code, deps=(), budget=5.0):
    return gc.Job(name, [sys.executable, "-c", code], budget, list(deps))


def test_scheduler_skips_dependents_of_a_failure_and_jobs_past_the_deadline(tmp_path):
    a = types.SimpleNamespace(per_gpu=2, deadline=20.0, dry_run=True, work=tmp_path)
    (tmp_path / "logs").mkdir()
    jobs = [_job("ok", "pass"), _job("bad", "raise SystemExit(3)"), _job("after_bad", "pass", ["bad"]),
            _job("after_ok", "pass", ["ok"]), _job("too_long", "pass", ["ok"], budget=1000.0)]
    log = []
    gc.schedule(jobs, a, 1, __import__("time").time(), log.append)
    state = {j.name: j.state for j in jobs}
    assert state == {"ok": "done", "bad": "failed", "after_bad": "skipped", "after_ok": "done", "too_long": "skipped"}
    assert any("would end after the deadline" in m for m in log)


def test_evaluation_keeps_only_models_whose_weights_exist(tmp_path):
    (tmp_path / "a.json.v1").write_text("{}")
    argv = ["eval", "--model", "A=X:original", "--model", f"B=X:{tmp_path}/a", "--model", f"C=X:{tmp_path}/none"]
    assert gc._existing_models(argv) == ["eval", "--model", "A=X:original", "--model", f"B=X:{tmp_path}/a"]
    assert gc._existing_models(["eval", "--model", f"C=X:{tmp_path}/none"]) is None  # no trained model: no run


def test_fraction_table_reads_the_evaluation_rows(tmp_path):
    rows = []
    for frac, f1 in (("005", 0.4), ("100", 0.8)):
        for thresholds in ("default", "dev-tuned"):
            rows.append(dict(data="nz", model=f"frac{frac}_phasenet", thresholds=thresholds, reference="analyst",
                             phase="P", tolerance_s=0.5, f1=f1 + (thresholds == "default"), residual_rmse_s=0.1))
    pd.DataFrame(rows).to_csv(tmp_path / "f.csv", index=False)
    table = gc.fraction_table(tmp_path / "f.csv").splitlines()
    assert table[0] == "| data | phase | model | 5% F1 / RMSE s | 100% F1 / RMSE s |"
    assert table[2] == "| nz | P | phasenet | 0.40 / 0.10 | 0.80 / 0.10 |"


@pytest.mark.parametrize("budget,seconds", [("00:00:03:30", 210), ("00:01:00:00", 3600)])
def test_budget_strings(budget, seconds):
    assert gc._seconds(budget) == seconds


def test_run_table_shows_each_runs_phases(tmp_path):
    """Where a run's wall time went (setup, fit, selection, export), and nan for runs recorded before it was."""
    import json

    for name, seconds in (("frac005_x", {"setup": 31.2, "fit": 90.4, "fit_start": 20.2, "selection": 12.0,
                                         "export": 40.6}),
                          ("old_run", None)):
        (tmp_path / name).mkdir()
        r = {"init": {"init": "random"}, "data": {"label_fraction": 0.05}, "dev_scores": {"f1_P": 0.5, "f1_S": 0.4},
             "train": {"epochs": 3, "steps": 300, "minutes": 1.5, "best_epoch": 2}, "thresholds": {"P": 0.5, "S": 0.4},
             "export": {"bytes": 2.29e7, "precision": "fp32"}}
        if seconds:
            r["seconds"] = seconds
        (tmp_path / name / "result.json").write_text(json.dumps(r))
    rows = gc.run_table(tmp_path).splitlines()
    assert rows[0].endswith("| s setup/fit (to 1st step)/selection/export |")
    assert rows[1].count("|") == rows[0].count("|")
    assert rows[2].startswith("| frac005_x |") and rows[2].endswith("| 22.9 MB fp32 | 31/90 (20)/12/41 |")
    assert rows[3].startswith("| old_run |") and rows[3].endswith("| nan/nan (nan)/nan/nan |")
