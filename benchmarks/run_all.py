"""The benchmark suite end to end on the data and weights present; what needs absent data or weights is skipped
with a message.

    python benchmarks/run_all.py                                     # published baselines, local data, CPU speed
    python benchmarks/run_all.py --model "xLSTM seq=XLSTMSeqPicker:runs/weights/xlstm_seq" \\
        --model "PhaseNet same data=PhaseNet:runs/weights/phasenet"   # plus trained pickers (any number)
    python benchmarks/run_all.py --only speed                        # one part (quality, picking, speed)

Steps (each in ``benchmarks/results/`` unless ``--out-dir``):

1. The published baselines (PhaseNet original, EQTransformer original and conservative, PhaseNetLight ethz) in
   ``--cache-root`` (default ``~/.seisbench-baselines``): installed there first with
   ``python -m seisbench_xlstm.baselines install`` when missing (``--no-install``: skipped instead).
2. ``quality``: the pick-benchmark protocol (``pick_benchmark.py``) on ``--datasets`` (default: ``ncedc154``,
   ``nz-dfdp`` and the eight SeisBench datasets by name where present offline) for the baselines and every
   ``--model``: ``pick_benchmark_<data>.csv/.md/_residuals.png/_pr.png``.
3. ``picking``: ``classify`` on whole test traces of NZ-DFDP and NCEDC-154 and on the held-out part of the 2 h
   continuous record (``picking_eval.py``; default and dev-tuned thresholds; on the record, agreement with the
   teachers PhaseNet and EQTransformer original, and picks per hour): ``picking_eval.csv/.md``.
4. ``speed``: ``annotate_speed.py`` (on a CPU ``--cpu-hours`` (0.25) h of ``--stations`` (2) stations into
   ``annotate_cpu.md``; on CUDA 24 h of 4 stations into ``annotate_gpu.md``) and, on CUDA only,
   ``window_cost.py`` into ``window_cost_gpu.md``.

Exit code 0 when every step that ran succeeded (skipped steps do not count), else 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
PARTS = ("quality", "picking", "speed")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-root", type=Path, default=Path.home() / ".seisbench-baselines")
    ap.add_argument("--no-install", action="store_true", help="do not install missing published baselines")
    ap.add_argument("--model", action="append", default=[], help="LABEL=CLASS:SOURCE of a trained picker")
    ap.add_argument("--datasets", nargs="+", default=None)
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--data-cache", default=None, help="folder for the NZ-DFDP ingest (default: SeisBench cache)")
    ap.add_argument("--cpu-hours", type=float, default=0.25, help="hours per station of the CPU speed run")
    ap.add_argument("--stations", type=int, default=None, help="stations of the speed run (CPU 2, GPU 4)")
    ap.add_argument("--out-dir", type=Path, default=BENCH / "results")
    ap.add_argument("--note", default="", help="a paragraph for the quality and picking reports (the models)")
    return ap.parse_args(argv)


def say(text: str) -> None:
    print(f"[run_all] {text}", flush=True)


def ensure_baselines(args) -> list[str]:
    """``--model`` specs of the published baselines in the cache (installed first where missing and allowed)."""
    sys.path.insert(0, str(BENCH))
    from pick_benchmark import PUBLISHED

    def present():
        out = []
        for spec in PUBLISHED:
            cls, name = spec.split("=", 1)[1].split(":")
            folder = args.cache_root / "models" / "v3" / cls.lower()
            if any(folder.glob(f"{name}.pt.v*")) and any(folder.glob(f"{name}.json.v*")):
                out.append(spec)
        return out

    found = present()
    if len(found) < len(PUBLISHED) and not args.no_install:
        say(f"installing the published baselines into {args.cache_root}")
        done = subprocess.run([sys.executable, "-m", "seisbench_xlstm.baselines", "install", "--cache-root",
                               str(args.cache_root)], cwd=REPO)
        if done.returncode:
            say("baseline install failed (see above): continuing with those present")
        found = present()
    missing = [s.split("=")[0] for s in PUBLISHED if s not in found]
    if missing:
        say(f"skipped published baselines not in {args.cache_root}: {', '.join(missing)}")
    return found


def default_datasets(args) -> list[str]:
    from seisbench_xlstm.data import DATASET_NAMES, DatasetNotAvailableError, check_available, shared_data_dir

    shared = shared_data_dir()
    names = []
    for name, present in (("ncedc154", (shared / "ncedc154" / "metadata.csv").is_file()),
                          ("nz-dfdp", (shared / "nz-dfdp" / "WAV").is_dir())):
        if present:
            names.append(name)
        else:
            say(f"{name} skipped: not in {shared}")
    for name in DATASET_NAMES:
        try:
            check_available(name)
            names.append(name)
        except DatasetNotAvailableError:
            pass
    absent = [n for n in DATASET_NAMES if n not in names]
    if absent:
        say(f"SeisBench datasets not present offline (skipped): {', '.join(absent)}")
    return names


def run_step(name: str, fn, failures: list[str]) -> None:
    say(f"--- {name}")
    t = time.perf_counter()
    try:
        rc = fn()
    except SystemExit as e:
        rc = e.code
    except Exception:  # one failing step must not stop the others
        traceback.print_exc()
        rc = 1
    if rc:
        failures.append(name)
    say(f"{name}: {'failed' if rc else 'done'} in {time.perf_counter() - t:.0f} s")


def main(argv=None) -> int:
    args = parse_args(argv)
    args.cache_root = args.cache_root.expanduser().resolve()
    os.environ.setdefault("SEISBENCH_CACHE_ROOT", str(args.cache_root))  # before seisbench is imported
    sys.path.insert(0, str(BENCH))
    sys.path.insert(0, str(REPO))
    import torch

    from seisbench_xlstm.data import shared_data_dir

    failures: list[str] = []
    baselines = ensure_baselines(args)
    models = baselines + list(args.model)
    model_args = [a for spec in models for a in ("--model", spec)]
    common = ["--cache-root", str(args.cache_root)] + (["--data-cache", args.data_cache] if args.data_cache else [])
    common += ["--note", args.note] if args.note else []

    if "quality" in args.only:
        datasets = args.datasets or default_datasets(args)
        if not models:
            say("quality: skipped, no model (no baselines installed and no --model)")
        elif not datasets:
            say("quality: skipped, no labelled dataset present")
        else:
            import pick_benchmark

            run_step("quality: pick-benchmark protocol", lambda: pick_benchmark.main(
                ["--datasets", *datasets, *model_args, *common, "--out-dir", str(args.out_dir)]), failures)

    if "picking" in args.only:
        shared = shared_data_dir()
        data = [n for n, p in (("nz-dfdp", shared / "nz-dfdp" / "WAV"), ("ncedc154", shared / "ncedc154"),
                               ("continuous", shared / "continuous-ok")) if p.is_dir()]
        teachers = [s.split("=", 1)[1] for s in baselines if s.split("=", 1)[1] in
                    ("PhaseNet:original", "EQTransformer:original")]
        if "continuous" in data and not teachers:
            say("picking: continuous record skipped, the teachers PhaseNet/EQTransformer original are not installed")
            data.remove("continuous")
        if not models or not data:
            say("picking: skipped, " + ("no model" if not models else f"no data in {shared}"))
        else:
            import picking_eval

            teacher_args = ["--teachers", *teachers] if teachers else []
            run_step("picking: whole traces and continuous record", lambda: picking_eval.main(
                [*model_args, *common, "--datasets", *data, "--dev-tuned", *teacher_args,
                 "--out", str(args.out_dir / "picking_eval")]), failures)

    if "speed" in args.only:
        if not (shared_data_dir() / "continuous-ok").is_dir():
            say("speed: skipped, no continuous record (../shared/data/continuous-ok)")
        else:
            import annotate_speed

            cuda = torch.cuda.is_available()
            stations = str(args.stations or (4 if cuda else 2))
            hours = "24" if cuda else str(args.cpu_hours)
            out = args.out_dir / ("annotate_gpu.md" if cuda else "annotate_cpu.md")
            run_step("speed: annotate throughput", lambda: annotate_speed.main(
                ["--hours", hours, "--stations", stations, "--out", str(out)]), failures)
            if cuda:
                import window_cost

                run_step("speed: cost against window length", lambda: window_cost.main(
                    ["--out", str(args.out_dir / "window_cost_gpu.md")]), failures)
            else:
                say("speed: window_cost.py skipped (a GPU script; on a CPU try --tiny --lengths 256 1024 4096)")

    say("failed: " + ", ".join(failures) if failures else "all steps that ran succeeded")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
