"""The shipped picker and the label-efficiency study in one GPU command, on every GPU of the machine at once.

    python benchmarks/gpu_campaign.py --teachers .carry/teachers --shared .carry/data --out "$OUT" \\
        --pretrain-steps 800 --epochs 30 --budget 00:00:04:00 --fractions 0.05 0.1 1.0 --deadline 560

Jobs, each one process (``python -m pretrain`` / ``python -m finetune`` / ``benchmarks/picking_eval.py``) on one
GPU, several per GPU at once (``--per-gpu``), started as soon as their inputs exist:

* ``warm``: the fine-tuning data prepared once (NZ-DFDP ingest, teacher pseudo-labels on the continuous record and
  on the labelled training traces) into the shared cache, so that the runs after it neither repeat nor race it;
* ``pretrain``: recipe 2 (``contrastive/xlstm_unet_local``) for ``--pretrain-steps`` steps -> ``backbone.pt``;
* main runs (``local/<arch>``: analyst picks + teacher labels, the same epochs, selection and budget):
  ``xlstm_unet`` from the pretrained backbone, ``xlstm_unet_scratch``, ``phasenet`` and ``eqtransformer`` from
  scratch; ``xlstm_seq`` (the sequential picker, from scratch) when ``--main`` names it;
* ``pretrain_seq``: recipe 1 (``xlstm_large/pure_mlstm_sequential_12m_local``) for ``--pretrain-steps`` steps, only
  when a sequential run starts from it (``--fraction-models xlstm_seq_pretrained``);
* label efficiency, for each ``--fractions`` value: analyst picks only (no teacher labels, so that the fraction
  is the only source of labels): ``xlstm_unet`` pretrained, ``xlstm_unet`` from scratch, ``phasenet``; on request
  the sequential picker pretrained and from scratch (``xlstm_seq_pretrained``, ``xlstm_seq_scratch``);
* ``eval_main`` (``picking_eval.py`` on both test splits and the continuous record, original teachers beside) and
  ``eval_fractions`` (both test splits).

A job that cannot end before ``--deadline`` seconds (its budget plus ``--overhead``) is not started; results
of what ran are written anyway. ``$OUT`` gets ``campaign.md`` (run table, both evaluations, the label-efficiency
table), ``campaign.csv`` (the evaluations' rows) and ``bundle.tar.part-*`` (the main runs' weights, logs, curves,
configs; at most 15 MiB a part, 4 parts; ``cat bundle.tar.part-* | tar x``).

Measured on ``nvidia-h200-x2`` (benchmarks/results/finetune_gpu.md): a local recipe-2 pretraining run takes 5.5 to 7.5
minutes with its start-up, so runs from the pretrained backbone fit one 10-minute command only with a shorter
pretraining or in a command of their own. Those runs compiled many more graph variants than needed (encoder and
decoder layers of one width separately, and validation's no-grad and short-batch variants): fixed since, not yet
re-measured on a GPU.

``--dry-run`` does the same on this machine's CPU with tiny settings (checks the wiring, not the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from finetune.models import ARCH_SPECS  # noqa: E402

CLASSES = {arch: spec.model_class for arch, spec in ARCH_SPECS.items()}
# run name: (architecture, pretrained backbone?, evaluation label)
MAIN_RUNS = {"xlstm_unet": ("xlstm_unet", True, "xLSTM U-Net (ours)"),
             "xlstm_unet_scratch": ("xlstm_unet", False, "xLSTM U-Net from scratch"),
             "xlstm_seq": ("xlstm_seq", False, "xLSTM sequential (ours)"),
             "phasenet": ("phasenet", False, "PhaseNet same data"),
             "eqtransformer": ("eqtransformer", False, "EQTransformer same data")}
FRACTION_RUNS = {"xlstm_unet_pretrained": ("xlstm_unet", True), "xlstm_unet_scratch": ("xlstm_unet", False),
                 "phasenet": ("phasenet", False), "xlstm_seq_pretrained": ("xlstm_seq", True),
                 "xlstm_seq_scratch": ("xlstm_seq", False)}
#: The default fraction runs (the sequential picker's are asked for by name).
DEFAULT_FRACTION_RUNS = ["xlstm_unet_pretrained", "xlstm_unet_scratch", "phasenet"]
#: Per architecture with a pretrained arm: the pretraining job's name, its experiment (local data) and a time
#: estimate per optimizer step on one H200 (seconds; recipe 2 at batch 64, recipe 1 at batch 128, compiled).
PRETRAIN_JOBS = {"xlstm_unet": ("pretrain", "contrastive/xlstm_unet_local", 0.25),
                 "xlstm_seq": ("pretrain_seq", "xlstm_large/pure_mlstm_sequential_12m_local", 0.45)}


@dataclass
class Job:
    """:ivar budget_s: wall time the job may take (for the deadline check); :ivar deps: jobs that must succeed first"""

    name: str
    argv: list[str]
    budget_s: float
    deps: list[str] = field(default_factory=list)
    gpu: int | None = None
    proc: subprocess.Popen | None = None
    state: str = "waiting"  # waiting, running, done, failed, skipped
    started: float = 0.0
    ended: float = 0.0


def _seconds(budget: str) -> float:
    parts = [int(x) for x in budget.split(":")]
    return sum(v * m for v, m in zip(reversed(parts), (1, 60, 3600, 86400)))


def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teachers", required=True, help="SeisBench cache with the converted teachers")
    ap.add_argument("--shared", default=None, help="copy of ../shared/data (default $SEISBENCH_XLSTM_SHARED_DATA)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu_campaign")))
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_campaign"))
    ap.add_argument("--pretrain-steps", type=int, default=800)
    ap.add_argument("--epochs", type=int, default=30, help="trainer.max_epochs of every fine-tuning run")
    ap.add_argument("--budget", default="00:00:04:00", help="trainer.max_time of the main runs")
    ap.add_argument("--fraction-budget", default="00:00:02:30", help="trainer.max_time of the fraction runs")
    ap.add_argument("--fractions", nargs="*", type=float, default=[0.05, 0.1, 1.0])
    ap.add_argument("--main", nargs="*", default=[n for n in MAIN_RUNS if n != "xlstm_seq"], choices=list(MAIN_RUNS),
                    help="main runs (xlstm_unet_scratch: the U-Net from random weights, with the same labels; "
                         "xlstm_seq: the sequential picker from random weights, not in the default list)")
    ap.add_argument("--fraction-models", nargs="*", default=DEFAULT_FRACTION_RUNS, choices=list(FRACTION_RUNS),
                    help="label-efficiency runs (default: %(default)s; xlstm_seq_pretrained and xlstm_seq_scratch: "
                         "the sequential picker, its pretrained arm from recipe 1)")
    ap.add_argument("--fraction-steps", type=int, default=-1, help="trainer.max_steps of the fraction runs")
    ap.add_argument("--pretrain-workers", type=int, default=None, help="loader workers of the pretraining run")
    ap.add_argument("--pretrained", default=None,
                    help="a U-Net backbone export to start from instead of pretraining (e.g. WORK/pretrain/backbone.pt "
                         "of an earlier command on the same machine, with --work under the repository so it stays)")
    ap.add_argument("--pretrained-seq", default=None,
                    help="the same for the sequential picker's runs (a recipe-1 export; default: pretrain it)")
    ap.add_argument("--eval-model", action="append", default=[],
                    help="LABEL=CLASS:SOURCE evaluated beside the main runs (e.g. weights of an earlier campaign)")
    ap.add_argument("--per-gpu", type=int, default=4, help="jobs at once on one GPU")
    ap.add_argument("--workers", type=int, default=None, help="data.num_workers of each run (default: cores / jobs)")
    ap.add_argument("--deadline", type=float, default=560.0, help="seconds from the start")
    ap.add_argument("--overhead", type=float, default=75.0, help="seconds a run needs beyond its budget")
    ap.add_argument("--eval-budget", type=float, default=100.0)
    ap.add_argument("--extra", default="", help="overrides given to every fine-tuning run")
    ap.add_argument("--dry-run", action="store_true")
    return ap.parse_args(argv)


def build_jobs(a) -> list[Job]:
    py, w = sys.executable, a.work
    cache = f"data.cache_dir={w}/cache"
    common = [cache, f"pseudo.teacher_cache={a.teachers}", f"trainer.max_epochs={a.epochs}",
              "trainer.progress_bar=false", f"data.num_workers={a.workers}", *a.extra.split()]
    given = {"xlstm_unet": a.pretrained, "xlstm_seq": a.pretrained_seq}
    pre = {arch: [f"model.pretrained={given[arch] or f'{w}/{job}/backbone.pt'}"]
           for arch, (job, _, _) in PRETRAIN_JOBS.items()}
    tiny_pre = []
    if a.dry_run:
        common += ["trainer.max_steps=4", "data.windows_per_epoch=16", "data.batch_size=4", "selection.dev_traces=4"]
        tiny_pre = ["trainer.max_steps=3", "data.windows_per_epoch=16", "data.batch_size=4", "data.val_windows=4",
                    "trainer.checkpoint_every_n_steps=3"]
    jobs = [Job("warm", [py, str(REPO / "benchmarks" / "gpu_campaign.py"), "--warm", *common], 240)]
    for arch, (job, experiment, step_s) in PRETRAIN_JOBS.items():
        argv = [py, "-m", "pretrain", f"experiment={experiment}", f"trainer.max_steps={a.pretrain_steps}",
                f"data.cache_dir={w}/cache_{job}", f"data.num_workers={a.pretrain_workers or a.workers}",
                f"out_dir={w}/{job}", "trainer.progress_bar=false", *tiny_pre]  # own caches: no ingest race
        jobs.append(Job(job, argv, 60 + step_s * a.pretrain_steps))

    def pretrain_deps(arch, pretrained):
        return ["warm"] + ([PRETRAIN_JOBS[arch][0]] if pretrained and not given[arch] else [])
    budget, fbudget = _seconds(a.budget), _seconds(a.fraction_budget)

    def finetune(name, arch, extra, deps, seconds, max_time):
        out = f"{w}/{name}"
        args = [f"experiment=local/{arch}", f"out_dir={out}", f"export.name={name}", f"export.dir={w}/weights",
                f"trainer.max_time={max_time}", *common, *extra]
        return Job(name, [py, "-m", "finetune", *args], seconds + a.overhead, deps)

    for name in a.main:
        arch, pretrained, _ = MAIN_RUNS[name]
        jobs.append(finetune(name, arch, pre[arch] if pretrained else [], pretrain_deps(arch, pretrained), budget,
                             a.budget))
    analyst_only = ["pseudo.labelled=false", "pseudo.weight=0", f"trainer.max_steps={a.fraction_steps}"]
    for f in a.fractions:
        tag = f"{round(f * 100):03d}"
        lf = [f"data.label_fraction={f}", *analyst_only]
        for model in a.fraction_models:
            arch, pretrained = FRACTION_RUNS[model]
            jobs.append(finetune(f"frac{tag}_{model}", arch, lf + (pre[arch] if pretrained else []),
                                 pretrain_deps(arch, pretrained), fbudget, a.fraction_budget))
    needed = {d for j in jobs for d in j.deps}  # a pretraining job runs only when a run waits for it
    jobs = [j for j in jobs if j.name not in {job for job, _, _ in PRETRAIN_JOBS.values()} or j.name in needed]
    evaluate = [py, str(REPO / "benchmarks" / "picking_eval.py"), "--cache-root", a.teachers, "--data-cache",
                f"{w}/cache", "--dev-tuned"]
    models = ["PhaseNet original=PhaseNet:original", "EQTransformer original=EQTransformer:original"]
    models += [f"{MAIN_RUNS[n][2]}={CLASSES[MAIN_RUNS[n][0]]}:{w}/weights/{n}" for n in a.main] + a.eval_model
    jobs.append(Job("eval_main", evaluate + [x for m in models for x in ("--model", m)] + [
        "--out", f"{w}/results/picking_eval"], a.eval_budget, list(a.main)))
    frac_jobs = [j.name for j in jobs if j.name.startswith("frac")]
    jobs.append(Job("eval_fractions", evaluate + ["--datasets", "nz-dfdp", "ncedc154"] + [
        x for n in frac_jobs for x in ("--model", f"{n}={CLASSES[FRACTION_RUNS[n[8:]][0]]}:{w}/weights/{n}")]
        + ["--out", f"{w}/results/fractions"], a.eval_budget, frac_jobs))
    return jobs


def schedule(jobs: list[Job], a, n_gpu: int, t0: float, log) -> None:
    """Starts every job whose dependencies succeeded, on the least-loaded GPU, until all ended or were skipped."""
    by_name = {j.name: j for j in jobs}
    while True:
        now = time.time() - t0
        for j in jobs:
            if j.state == "running" and j.proc.poll() is not None:
                j.state, j.ended = ("done" if j.proc.returncode == 0 else "failed"), now
                log(f"{now:6.0f}s {j.name} {j.state} (rc {j.proc.returncode}, {j.ended - j.started:.0f}s)")
        for j in jobs:
            if j.state != "waiting":
                continue
            deps = [by_name[d] for d in j.deps if d in by_name]
            if any(d.state in ("failed", "skipped") for d in deps) and not j.name.startswith("eval"):
                j.state = "skipped"
                log(f"{now:6.0f}s {j.name} skipped: a dependency failed")
            elif j.name.startswith("eval") and deps and all(d.state in ("failed", "skipped") for d in deps):
                j.state = "skipped"
            elif all(d.state in ("done", "failed", "skipped") for d in deps):
                if now + j.budget_s > a.deadline:
                    j.state = "skipped"
                    log(f"{now:6.0f}s {j.name} skipped: would end after the deadline")
                    continue
                load = [sum(1 for r in jobs if r.state == "running" and r.gpu == g) for g in range(n_gpu)]
                g = min(range(n_gpu), key=lambda i: load[i])
                if load[g] >= a.per_gpu:
                    continue
                argv = list(j.argv)
                if j.name.startswith("eval"):  # only models whose weights exist
                    argv = _existing_models(argv)
                    if argv is None:
                        j.state = "skipped"
                        continue
                env = dict(os.environ, PYTHONUNBUFFERED="1")
                if not a.dry_run:
                    env["CUDA_VISIBLE_DEVICES"] = str(g)
                logf = open(a.work / "logs" / f"{j.name}.log", "w")
                j.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=REPO)
                j.state, j.gpu, j.started = "running", g, now
                log(f"{now:6.0f}s {j.name} started on GPU {g}")
        if all(j.state in ("done", "failed", "skipped") for j in jobs):
            return
        if time.time() - t0 > a.deadline + 10:
            for j in jobs:
                if j.state == "running":
                    j.proc.kill()
                    j.state = "failed"
                    log(f"{time.time() - t0:6.0f}s {j.name} killed at the deadline")
            return
        time.sleep(2)


def _existing_models(argv: list[str]) -> list[str] | None:
    out, i, n = [], 0, 0
    while i < len(argv):
        if argv[i] == "--model":
            source = argv[i + 1].split(":", 1)[1]
            if "/" not in source or Path(source + ".json.v1").exists():
                out += argv[i:i + 2]
                n += "/" in source
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out if n else None


def warm(overrides: list[str]) -> None:
    """Prepares the fine-tuning data once (ingest + teacher pseudo-labels into the shared cache)."""
    sys.path.insert(0, str(REPO))
    from finetune.config import compose_config
    from finetune.data import FinetuneData

    cfg = compose_config(["experiment=local/phasenet", *overrides])
    print(FinetuneData(cfg).prepare().summary(), flush=True)


def fraction_table(csv: Path) -> str:
    """Label efficiency from the fraction runs' evaluation: F1 at 0.5 s (dev-tuned thresholds) and the residual
    RMSE, per data set and phase."""
    import pandas as pd

    df = pd.read_csv(csv)
    df = df[(df["tolerance_s"] == 0.5) & (df["thresholds"] == "dev-tuned") & (df["reference"] == "analyst")]
    df = df[df["model"].str.startswith("frac")].copy()
    df["fraction"] = df["model"].str.slice(4, 7).astype(int)
    df["model"] = df["model"].str.slice(8)
    fractions = sorted(df["fraction"].unique())
    rows = ["| data | phase | model | " + " | ".join(f"{f}% F1 / RMSE s" for f in fractions) + " |"]
    rows.append("|" + "---|" * (3 + df["fraction"].nunique()))
    for (data, phase, model), g in df.groupby(["data", "phase", "model"]):
        cells = [f"{r.f1:.2f} / {r.residual_rmse_s:.2f}" for r in g.sort_values("fraction").itertuples()]
        rows.append(f"| {data} | {phase} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def run_table(work: Path) -> str:
    rows = ["| run | init | label fraction | epochs | steps | minutes | best epoch | dev F1 P | dev F1 S | "
            "thresholds P/S | weights | s setup/fit (to 1st step)/selection/export |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in sorted(work.glob("*/result.json")):
        r = json.loads(f.read_text())
        t, d, e = r["train"], r["dev_scores"], r.get("export") or {}
        size = f"{e['bytes'] / 1e6:.1f} MB {e['precision']}" if e else "-"
        frac = r.get("data", {}).get("label_fraction", "")
        sec = {k: r.get("seconds", {}).get(k, float("nan")) for k in ("setup", "fit", "fit_start", "selection",
                                                                       "export")}
        phases = (f"{sec['setup']:.0f}/{sec['fit']:.0f} ({sec['fit_start']:.0f})/{sec['selection']:.0f}/"
                  f"{sec['export']:.0f}")
        rows.append(f"| {f.parent.name} | {r['init']['init']} | {frac} | {t['epochs']} | {t['steps']} | "
                    f"{t['minutes']:.1f} | {t['best_epoch']} | {d.get('f1_P') or float('nan'):.3f} | "
                    f"{d.get('f1_S') or float('nan'):.3f} | {r['thresholds'].get('P')}/{r['thresholds'].get('S')} |"
                    f" {size} | {phases} |")
    return "\n".join(rows)


def report(a, jobs: list[Job], t0: float) -> None:
    w, out = a.work, a.out
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# GPU campaign ({time.strftime('%Y-%m-%d', time.gmtime())}, {time.time() - t0:.0f} s)", "",
             "| job | state | GPU | start s | seconds |", "|---|---|---|---|---|"]
    parts += [f"| {j.name} | {j.state} | {j.gpu} | {j.started:.0f} | {max(j.ended - j.started, 0):.0f} |" for j in jobs]
    parts += ["", "## Runs", "", run_table(w)]
    csvs = []
    for name, title in (("picking_eval", "Main runs"), ("fractions", "Label efficiency (all rows)")):
        md = w / "results" / f"{name}.md"
        if md.exists():
            parts += ["", f"## {title}", "", md.read_text()]
            csvs.append(w / "results" / f"{name}.csv")
    if (w / "results" / "fractions.csv").exists():
        parts += ["", "## Label efficiency: F1 at 0.5 s / residual RMSE (dev-tuned thresholds)", "",
                  fraction_table(w / "results" / "fractions.csv")]
    (out / "campaign.md").write_text("\n".join(parts) + "\n")
    if csvs:
        import pandas as pd

        pd.concat([pd.read_csv(c).assign(source=c.stem) for c in csvs]).to_csv(out / "campaign.csv", index=False)
    bundle = w / "bundle.tar"
    with tarfile.open(bundle, "w") as tar:
        for pattern in ("weights/*", "logs/*", "results/*", "*/result.json", "*/config.yaml", "*/curves.png",
                        "*/loss_curve.png", "*/logs/*/metrics.csv"):
            for f in sorted(w.glob(pattern)):
                if not (f.parent.name == "weights" and f.name.startswith("frac")):  # the main runs' weights only
                    tar.add(f, arcname=str(f.relative_to(w)))
    for old in out.glob("bundle.tar.part-*"):
        old.unlink()
    with open(bundle, "rb") as src:
        for i in range(4):  # the device tool brings back at most 64 MiB
            chunk = src.read(15 * 2**20)
            if not chunk:
                break
            (out / f"bundle.tar.part-{i}").write_bytes(chunk)
    print((out / "campaign.md").read_text())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--warm":
        warm(argv[1:])
        return 0
    a = _args(argv)
    if a.shared:
        os.environ["SEISBENCH_XLSTM_SHARED_DATA"] = str(Path(a.shared).resolve())
    a.teachers = str(Path(a.teachers).resolve())
    for option in ("pretrained", "pretrained_seq"):
        path = getattr(a, option)
        if path and not Path(path).is_file():
            print(f"gpu_campaign: --{option.replace('_', '-')} {path}: no such file", file=sys.stderr)
            return 2
        setattr(a, option, str(Path(path).resolve()) if path else None)
    a.work = a.work.resolve()
    (a.work / "logs").mkdir(parents=True, exist_ok=True)
    import torch

    n_gpu = 1 if a.dry_run else torch.cuda.device_count()
    if n_gpu == 0:
        print("gpu_campaign: no GPU visible (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    if a.workers is None:
        a.workers = max(1, (os.cpu_count() or 2) // (n_gpu * a.per_gpu) - 1)
    jobs = build_jobs(a)
    t0 = time.time()
    logfile = open(a.work / "logs" / "campaign.log", "a")

    def log(msg):
        print(f"[campaign] {msg}", flush=True)
        logfile.write(msg + "\n")
        logfile.flush()

    log(f"{n_gpu} GPU(s), {a.per_gpu} jobs per GPU, {a.workers} loader workers per job, work {a.work}")
    try:
        schedule(jobs, a, n_gpu, t0, log)
    finally:
        report(a, jobs, t0)
    return 0 if all(j.state == "done" for j in jobs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
