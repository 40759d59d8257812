"""benchmarks/pick_benchmark.py end to end on the real NCEDC-154 dev/test traces with a saved (untrained) PhaseNet."""

import sys
from pathlib import Path

import pandas as pd
import seisbench.models as sbm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pick_benchmark  # noqa: E402


def test_pick_benchmark_writes_scores_tables_and_plots(shared_data, tmp_path):
    sbm.PhaseNet(phases="PSN").save(tmp_path / "pn")
    out = tmp_path / "results"
    argv = ["--model", f"random PhaseNet=PhaseNet:{tmp_path / 'pn'}", "--datasets", "ncedc154", "absent-set",
            "--shared-data", str(shared_data), "--out-dir", str(out), "--work", str(tmp_path / "work")]
    assert pick_benchmark.main(argv) == 0
    df = pd.read_csv(out / "pick_benchmark_ncedc154.csv")
    assert df["model"].tolist() == ["random PhaseNet"]
    # NCEDC-154: P at 30 s, so no noise window (task 1 one class only); tasks 2/3 on the isolated picks
    assert df["det_n_test"].iloc[0] == 30 and isinstance(df["det_note"].iloc[0], str)
    assert df["P_n"].iloc[0] + df["S_n"].iloc[0] == df["phase_n_test"].iloc[0] > 0
    assert -1 <= df["phase_mcc"].iloc[0] <= 1
    targets = pd.read_csv(out / "targets_ncedc154" / "task23.csv")
    assert set(targets["trace_split"]) == {"dev", "test"}
    text = (out / "pick_benchmark_ncedc154.md").read_text()
    assert "| random PhaseNet |" in text and "Task 1: one class only" in text
    for suffix in ("residuals", "pr"):
        assert (out / f"pick_benchmark_ncedc154_{suffix}.png").stat().st_size > 10_000
    assert (tmp_path / "work" / "ncedc154" / "random_PhaseNet" / "test_task23.csv").is_file()
    assert not (out / "pick_benchmark_absent-set.csv").exists()
