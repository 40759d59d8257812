"""Codebook health of recipe-2 pretraining runs side by side: code perplexity, the fraction of codes in use and the
contrastive loss at the same steps of each run, from the runs' own CSV logs, as a Markdown table and a PNG.

    python benchmarks/codebook_report.py --run-dir runs/a runs/b --label "diversity 0.1" "diversity 1.0" \\
        --out benchmarks/results/pretrain_codebook.md

The figures are the runner's training-batch metrics (``train/code_perplexity``: perplexity of the hard code choices
summed over the groups, at most ``groups * codes``; ``train/codes_in_use``: the fraction of all codes chosen at
least once in the batch; ``train/contrastive_loss``), logged every ``trainer.log_every_n_steps`` steps; and, where a
run validated, the last ``val/codes_in_use``. A column holds the logged value nearest to its step (at most one
logging interval away), else is empty.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine  # noqa: E402
from ddp_report import mean_window_rate  # noqa: E402

KEYS = {"code perplexity": ("train/code_perplexity", 0), "codes in use": ("train/codes_in_use", 3),
        "contrastive loss": ("train/contrastive_loss", 3)}


def run_series(run_dir: Path):
    """The run's config and its metrics (all versions of its CSV logs) by step."""
    from omegaconf import OmegaConf

    from pretrain.plots import read_metrics

    return OmegaConf.load(run_dir / "config.yaml"), read_metrics(run_dir / "logs")


def value_near(df, key: str, step: int, tolerance: int):
    """The logged value of ``key`` nearest to ``step``, or None when none lies within ``tolerance`` steps."""
    if key not in df:
        return None
    rows = df[["step", key]].dropna()
    if rows.empty:
        return None
    nearest = (rows["step"] - step).abs().idxmin()
    return rows.loc[nearest, key] if abs(rows.loc[nearest, "step"] - step) <= tolerance else None


def report(runs: list[tuple[str, object, object]], every: int) -> list[str]:
    """Markdown lines: one table per metric, a row per run, a column per ``every`` steps."""
    last = max(int(df["step"].max()) for _, _, df in runs if len(df))
    steps = list(range(0, last + 1, every))[1:] or [last]
    lines = [f"# Codebook health of recipe-2 runs ({machine()})", "",
             "`benchmarks/codebook_report.py` (see its docstring): training-batch metrics of each run at the same "
             "steps.", ""]
    rows = ["| run | experiment | batch | steps | windows/s | last val codes in use |", "|---|---|---|---|---|---|"]
    for label, cfg, df in runs:
        rate = mean_window_rate(df)
        val = df["val/codes_in_use"].dropna() if "val/codes_in_use" in df else []
        n_steps = int(df["step"].max()) + 1 if len(df) else 0
        rate_text = "n/a" if rate != rate else f"{rate:.1f}"
        val_text = f"{val.iloc[-1]:.3f}" if len(val) else "n/a"
        rows.append(f"| {label} | {cfg.name} | {cfg.data.batch_size} x {cfg.trainer.accumulate_grad_batches} | "
                    f"{n_steps} | {rate_text} | {val_text} |")
    lines += rows
    for title, (key, digits) in KEYS.items():
        lines += ["", f"**{title}** (`{key}`) at step:", "",
                  "| run | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---|" * len(steps)]
        for label, cfg, df in runs:
            tolerance = int(cfg.trainer.log_every_n_steps)
            cells = [value_near(df, key, s, tolerance) for s in steps]
            lines.append(f"| {label} | " + " | ".join("" if c is None else f"{c:.{digits}f}" for c in cells) + " |")
    return lines


def plot(runs: list[tuple[str, object, object]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for label, _cfg, df in runs:
        for ax, (title, (key, _digits)) in zip(axes, KEYS.items()):
            if key in df:
                series = df[["step", key]].dropna()
                ax.plot(series["step"], series[key], label=label)
            ax.set_title(title)
            ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, nargs="+", required=True)
    parser.add_argument("--label", nargs="+", help="one per run (default: the run folders' names)")
    parser.add_argument("--every", type=int, default=100, help="steps between table columns")
    parser.add_argument("--out", type=Path, required=True, help="Markdown report; the PNG goes next to it")
    args = parser.parse_args(argv)
    labels = args.label or [d.name for d in args.run_dir]
    if len(labels) != len(args.run_dir):
        parser.error(f"{len(labels)} labels for {len(args.run_dir)} runs")
    runs = [(label, *run_series(d)) for label, d in zip(labels, args.run_dir)]
    png = plot(runs, args.out.with_suffix(".png"))
    lines = report(runs, args.every) + ["", f"![code perplexity, codes in use, contrastive loss]({png.name})"]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
