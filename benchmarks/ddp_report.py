"""The report of ``benchmarks/pretrain_speed.py`` in DDP mode: its step measurements on several devices
(``pretrain_ddp.md``) and the summaries of real pretraining runs on several devices read from their own logs."""

from __future__ import annotations

from pathlib import Path

from common import machine

RUN_FIELDS = ["label", "device", "experiment", "devices", "batch", "workers_per_device", "steps", "windows_per_s",
              "windows_per_s_per_device", "peak_gib_per_device", "train_loss", "val_loss", "code_perplexity",
              "codes_in_use"]


def mean_window_rate(df) -> float:
    """Mean ``train/windows_per_s`` of a run's metrics over every logging interval but the first (which holds
    compilation); NaN when fewer than two were logged."""
    rate = df["train/windows_per_s"].dropna().iloc[1:] if "train/windows_per_s" in df else []
    return float(rate.mean()) if len(rate) else float("nan")


def summarise_run(run_dir: Path, label: str) -> dict:
    """A row of a real run from its ``config.yaml`` and CSV logs (``train/windows_per_s`` of every logging interval
    but the first, which holds compilation)."""
    from omegaconf import OmegaConf

    from pretrain.plots import read_metrics

    cfg = OmegaConf.load(run_dir / "config.yaml")
    df = read_metrics(run_dir / "logs")
    devices = int(cfg.trainer.devices) if str(cfg.trainer.devices).isdigit() else 1
    accumulate = int(cfg.trainer.accumulate_grad_batches)
    if cfg.data.num_workers is None:
        from seisbench_xlstm.data.loaders import default_num_workers

        workers = f"{default_num_workers()} (default)"  # the runner's default on this machine
    else:
        workers = cfg.data.num_workers

    def first_last(key, digits=3):
        values = df[key].dropna() if key in df else []
        if not len(values):
            return ""
        return f"{values.iloc[0]:.{digits}f} -> {values.iloc[-1]:.{digits}f} (mean {values.mean():.{digits}f})"

    prefix = "device/peak_gib_rank"  # pretrain.train.PeakDeviceMemory (GPU runs): rank 0 first
    ranks = sorted((int(key[len(prefix):]), key) for key in df.columns if key.startswith(prefix))
    peaks = " / ".join(f"{df[key].max():.1f}" for _, key in ranks if df[key].notna().any())
    windows = mean_window_rate(df)
    steps = int(df["step"].max()) + 1 if len(df) else 0
    return {"label": label, "device": machine(), "experiment": cfg.name, "devices": devices,
            "batch": cfg.data.batch_size if accumulate == 1 else f"{cfg.data.batch_size} x {accumulate} accumulated",
            "workers_per_device": workers, "steps": steps,
            "windows_per_s": round(windows, 1), "windows_per_s_per_device": round(windows / devices, 1),
            "peak_gib_per_device": peaks,
            "train_loss": first_last("train/loss"), "val_loss": first_last("val/loss"),
            "code_perplexity": first_last("train/code_perplexity", 1),
            "codes_in_use": first_last("train/codes_in_use", 3)}


def _number(value) -> str:
    return "n/a" if str(value) == "nan" else str(value)


def _split_rest(row: dict, no_sync: float, one: float) -> str:
    """The no-sync overhead split by the step with no collective at all (``local_step_ms``; rows since 2026-11-30)."""
    if not row.get("local_step_ms"):
        return ""
    local = float(row["local_step_ms"])
    return (f": {local - one:.1f} ms without any collective (the step around DDP on every device at once, "
            f"{local:.1f} ms: the shared host and the other processes), {no_sync - local:.1f} ms in DDP's forward and "
            f"the statistics all-reduce (waiting for the slowest device)")


def ddp_report(rows: list[dict], runs: list[dict], args) -> list[str]:
    lines = ["# Pretraining on several devices (DDP)", "",
             "`benchmarks/pretrain_speed.py --devices ...` (see its docstring): the full training step on N devices "
             "with DDP, the same batch per device, next to one device in the same invocation; mean step time over "
             "timed steps after warm-up steps (CSV column `timed_steps`), 4096-sample windows (1024 with --tiny) "
             "already on the devices (data loading not timed). Scaling efficiency = windows/s on N / "
             "(N x windows/s on 1). 'no-sync' = the "
             "same step without the gradient all-reduce (DDP `no_sync`); 'all-reduce alone' = the gradients' "
             "all-reduce by itself. Loader cores = windows/s per device / "
             f"{args.loader_rate:g} windows/s per loader core.", ""]
    lines += ["| label | device | recipe | batch/device | devices | compiled | step ms | no-sync step ms | all-reduce "
              "alone ms (MiB) | windows/s | per device | scaling eff. | peak GiB/device | loader cores needed/device "
              "| CPU cores/device |", "|" + "---|" * 15]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['device']} | {r['recipe']} | {r['batch']} | {r['devices']} | {r['compiled']} | "
            f"{r['step_ms']} | {r['no_sync_step_ms']} | {r['allreduce_ms']} ({r['grad_mib']}) | {r['windows_per_s']} "
            f"| {r['windows_per_s_per_device']} | {r['efficiency'] or 'n/a'} | {_number(r['peak_gib'])} | "
            f"{r['loader_cores_per_device']} | {r['cpu_cores_per_device']} |")
    lines += ["", "## Where the gap to N x goes", ""]
    singles = {(r["label"], r["device"], r["recipe"], str(r["batch"]), r["compiled"]): float(r["step_ms"])
               for r in rows if str(r["devices"]) == "1"}
    for r in rows:
        one = singles.get((r["label"], r["device"], r["recipe"], str(r["batch"]), r["compiled"]))
        if str(r["devices"]) == "1" or one is None:
            continue
        step, no_sync, alone = float(r["step_ms"]), float(r["no_sync_step_ms"]), float(r["allreduce_ms"])
        exposed = step - no_sync
        hidden = min(1.0, max(0.0, 1 - exposed / alone)) if alone > 0 else float("nan")
        lines.append(
            f"- {r['label']}, {r['recipe']}, {r['devices']} devices x {r['batch']}: step {step:.1f} ms vs "
            f"{one:.1f} ms on one device (+{step - one:.1f} ms): exposed gradient all-reduce {exposed:.1f} ms "
            f"(synced - no-sync step), the rest {no_sync - one:.1f} ms (no-sync step - one device: DDP hooks, "
            f"bucket copies, the statistics all-reduce, shared host){_split_rest(r, no_sync, one)}. "
            f"The {r['grad_mib']} MiB all-reduce alone "
            f"takes {alone:.1f} ms, about {100 * hidden:.0f}% of it hidden behind the backward pass. Data: "
            f"{r['windows_per_s_per_device']} windows/s per device need {r['loader_cores_per_device']} loader cores "
            f"per device at {args.loader_rate:g}/core; CPU cores per device here: {r['cpu_cores_per_device']}.")
    if runs:
        lines += ["", "## Runs on real data (`python -m pretrain ...`, figures from the run's own CSV logs)", "",
                  "| label | device | experiment | devices | batch/device | loader workers/device | steps | windows/s "
                  "| per device | peak GiB per device | train loss first -> last (mean) | val loss | code perplexity "
                  "| codes in use |", "|" + "---|" * 14]
        for r in runs:
            lines.append(
                f"| {r['label']} | {r['device']} | {r['experiment']} | {r['devices']} | {r['batch']} | "
                f"{r['workers_per_device']} | {r['steps']} | {r['windows_per_s']} | {r['windows_per_s_per_device']} "
                f"| {r.get('peak_gib_per_device') or 'n/a'} | {r['train_loss']} | {r['val_loss']} | "
                f"{r['code_perplexity']} | {r['codes_in_use']} |")
    return lines
