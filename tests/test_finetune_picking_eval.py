"""benchmarks/picking_eval.py on real NCEDC-154 test traces with a saved (untrained) PhaseNet: CSV and report."""

import sys
from pathlib import Path

import pandas as pd
import seisbench.models as sbm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import picking_eval  # noqa: E402


def test_picking_eval_writes_csv_and_report(shared_data, tmp_path):
    model = sbm.PhaseNet(phases="PSN")
    model.default_args = {"P_threshold": 0.4, "S_threshold": 0.2}
    model.save(tmp_path / "pn", version_str="3")
    out = tmp_path / "eval"
    assert picking_eval.main(["--model", f"random PhaseNet=PhaseNet:{tmp_path / 'pn'}", "--datasets", "ncedc154",
                              "--shared-data", str(shared_data), "--out", str(out)]) == 0
    df = pd.read_csv(out.with_suffix(".csv"))
    assert len(df) == 4 and set(df["phase"]) == {"P", "S"} and set(df["tolerance_s"]) == {0.1, 0.5}
    assert (df["tp"] + df["fn"] == 30).all()  # 30 test traces, one analyst P and S each
    assert (df["P_threshold"] == 0.4).all() and (df["S_threshold"] == 0.2).all()
    text = out.with_suffix(".md").read_text()
    assert "## ncedc154 (test), thresholds: default, reference: analyst" in text and "random PhaseNet" in text
