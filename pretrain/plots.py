"""Loss curve of a run from its CSV logs (all ``logs/version_*/metrics.csv``, i.e. the run and its resumptions)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["read_metrics", "plot_loss_curve"]


def read_metrics(log_root: str | Path) -> pd.DataFrame:
    """Metrics of all versions in ``log_root`` (``version_0``, ``version_1``, ... of CSVLogger), in step order.

    A resumed run starts a new version at its checkpoint's step: rows of earlier versions from that step on
    (logged after the checkpoint by the interrupted run) are dropped.
    """
    frames = []
    versions = sorted(Path(log_root).glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    for path in versions:
        df = pd.read_csv(path)
        if df.empty or "step" not in df:
            continue
        start = df["step"].min()
        frames = [f[f["step"] < start] for f in frames]
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["step"])
    return pd.concat(frames, ignore_index=True).sort_values("step", kind="stable").reset_index(drop=True)


def plot_loss_curve(log_root: str | Path, out: str | Path, title: str = "") -> Path | None:
    """Training loss (and its running mean), validation loss and, for the contrastive recipe, the code perplexity
    against the step, as a PNG. Returns the path, or None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = read_metrics(log_root)
    if "train/loss" not in df and "val/loss" not in df:
        return None
    extra = "train/code_perplexity" in df
    fig, axes = plt.subplots(1, 2 if extra else 1, figsize=(11 if extra else 6.5, 4), squeeze=False)
    ax = axes[0, 0]
    if "train/loss" in df:
        train = df[["step", "train/loss"]].dropna()
        window = max(1, len(train) // 50)
        ax.plot(train["step"], train["train/loss"], color="C0", alpha=0.3 if window > 1 else 1.0, lw=0.8,
                marker="." if len(train) < 50 else None, label="train (logged steps)")
        if window > 1:
            ax.plot(train["step"], train["train/loss"].rolling(window, min_periods=1).mean(), color="C0",
                    label=f"train (running mean of {window})")
    if "val/loss" in df:
        val = df[["step", "val/loss"]].dropna()
        ax.plot(val["step"], val["val/loss"], "o-", color="C1", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    if extra:
        ax2 = axes[0, 1]
        ppl = df[["step", "train/code_perplexity"]].dropna()
        lines = ax2.plot(ppl["step"], ppl["train/code_perplexity"], color="C2", label="code perplexity (train)")
        if "train/codes_in_use" in df:
            use = df[["step", "train/codes_in_use"]].dropna()
            ax3 = ax2.twinx()
            lines += ax3.plot(use["step"], use["train/codes_in_use"], color="C3", label="codes in use (train batch)")
            ax3.set_ylabel("fraction of codes in use")
            ax3.set_ylim(0, 1.05)
        ax2.set_xlabel("optimizer step")
        ax2.set_ylabel("perplexity (sum over codebooks)")
        ax2.grid(alpha=0.3)
        ax2.legend(lines, [line.get_label() for line in lines], loc="lower right")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
