"""benchmarks/codebook_report.py: recipe-2 runs side by side from their own logs (no training here)."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def report():
    sys.path.insert(0, str(BENCH))
    import codebook_report

    return codebook_report


def _run(root: Path, name: str, perplexities: dict, rates=(100.0, 200.0, 220.0), val_use=None) -> Path:
    """A run folder as the runner writes it: config.yaml and a CSV log with one row per logged step."""
    from omegaconf import OmegaConf

    run = root / name
    (run / "logs" / "version_0").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"name": "contrastive/xlstm_unet_local", "data": {"batch_size": 256},
                                     "trainer": {"accumulate_grad_batches": 1, "log_every_n_steps": 10}}),
                   run / "config.yaml")
    lines = ["step,train/code_perplexity,train/codes_in_use,train/contrastive_loss,train/windows_per_s,"
             "val/codes_in_use"]
    for n, (step, ppl) in enumerate(perplexities.items()):
        rate = rates[n] if n < len(rates) else ""
        lines.append(f"{step},{ppl},{min(1.0, ppl / 640):.4f},{4.6 - step / 1000:.4f},{rate},")
    if val_use is not None:
        lines.append(f"{max(perplexities)},,,,,{val_use}")
    (run / "logs" / "version_0" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run


def test_runs_side_by_side_at_the_same_steps(report, tmp_path):
    a = _run(tmp_path, "a", {9: 600.0, 99: 500.0, 199: 150.0, 209: 140.0}, val_use=0.3)
    b = _run(tmp_path, "b", {9: 610.0, 99: 630.0, 149: 629.0})
    out = tmp_path / "codebook.md"
    report.main(["--run-dir", str(a), str(b), "--label", "weight 0.1", "weight 1.0", "--every", "100",
                 "--out", str(out)])
    text = out.read_text()
    # windows/s: the mean of the logged rates but the first (compilation)
    assert "| weight 0.1 | contrastive/xlstm_unet_local | 256 x 1 | 210 | 210.0 | 0.300 |" in text
    assert "| weight 1.0 | contrastive/xlstm_unet_local | 256 x 1 | 150 | 210.0 | n/a |" in text
    # steps 100 and 200: the nearest logged value within one logging interval (10 steps), else an empty cell
    assert "| weight 0.1 | 500 | 150 |" in text
    assert "| weight 1.0 | 630 |  |" in text
    assert "![code perplexity, codes in use, contrastive loss](codebook.png)" in text
    assert out.with_suffix(".png").stat().st_size > 0


def test_one_label_per_run(report, tmp_path):
    a = _run(tmp_path, "a", {9: 600.0})
    with pytest.raises(SystemExit):
        report.main(["--run-dir", str(a), "--label", "x", "y", "--out", str(tmp_path / "r.md")])
