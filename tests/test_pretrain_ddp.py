"""Pretraining on several devices (DDP) on this CPU: two gloo processes, one OpenMP thread each, a tiny recipe-1 run.

The runs go through tests/ddp_run.py, which Lightning's DDP launcher starts once per rank (as ``python -m
pretrain trainer.devices=2`` does); each rank records the ``(epoch, position, index)`` keys it trained on, its loss,
a checksum of its weights after every step and its final weights. Dropout is 0 so that two processes at batch 4 and
one at batch 8 can agree (dropout noise comes from each rank's own random stream).

Tolerances: the two ranks agree exactly (DDP's all-reduce gives both the same averaged gradients); DDP at 2 x 4
and one process at 8 differ only by float32 summation order: losses within 1e-5 relative (measured ~1e-7), weights
after 6 AdamW steps at lr 0.01 within 1e-4 (measured 3e-6). A resumed DDP run equals the uninterrupted one exactly.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import obspy
import pytest
import torch

from pretrain.config import compose_config
from pretrain.data import EpochSampler
from pretrain.module import PretrainModule
from pretrain.plots import read_metrics
from pretrain.train import MULTICAST_OFF, build_trainer, multicast_off
from tiny import TINY_SEQUENTIAL, TINY_UNET

HELPER = Path(__file__).resolve().parent / "ddp_run.py"
STEPS, BATCH, WINDOWS_PER_EPOCH = 6, 4, 24  # 2 devices x 4 = 8 windows a step, 3 steps an epoch

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="needs torch.distributed"
)]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """20 minutes of a synthetic 3-component station as miniSEED."""
    folder = tmp_path_factory.mktemp("records")
    rng = np.random.default_rng(1)
    t = np.arange(120_000) / 100.0
    st = obspy.Stream()
    for k, c in enumerate("ZNE"):
        data = rng.normal(size=t.size) * 0.3 + np.sin(2 * np.pi * (1.0 + k) * t) - 200.0
        st += obspy.Trace(data, header=dict(network="XX", station="DDP", channel=f"HH{c}", sampling_rate=100.0,
                                            starttime=obspy.UTCDateTime(2024, 1, 1)))
    st.write(str(folder / "ddp.mseed"), format="MSEED")
    return folder


def overrides(records, out_dir, devices, batch, extra=()):
    values = dict(TINY_SEQUENTIAL, dropout=0.0)
    o = ["backbone=sequential", "recipe=masked", "name=tiny-ddp", f"out_dir={out_dir}", f"data.continuous=[{records}]",
         "data.window_len=1024", f"data.batch_size={batch}", f"data.windows_per_epoch={WINDOWS_PER_EPOCH}",
         "data.val_windows=4", "data.num_workers=0", f"trainer.max_steps={STEPS}", "trainer.log_every_n_steps=1",
         "trainer.checkpoint_every_n_steps=4", "trainer.progress_bar=false", "trainer.accelerator=cpu",
         f"trainer.devices={devices}", "optim.lr=0.01", "optim.warmup_fraction=0.2", "export=false"]
    if devices > 1:
        o.append("trainer.strategy=ddp")
    o += [f"backbone.{k}=" + ("[" + ",".join(map(str, v)) + "]" if isinstance(v, (list, tuple)) else str(v))
          for k, v in values.items()]
    return o + list(extra)


def launch(record_dir, args) -> dict:
    """Runs tests/ddp_run.py in a fresh process (Lightning starts the other ranks); returns the records by rank."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(HELPER), str(record_dir)] + args
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {int(p.stem[4:]): torch.load(p, weights_only=False) for p in sorted(Path(record_dir).glob("rank*.pt"))}


@pytest.fixture(scope="module")
def ddp(records, tmp_path_factory):
    """The DDP run: 2 processes x batch 4."""
    root = tmp_path_factory.mktemp("ddp")
    ranks = launch(root / "records", overrides(records, root / "run", 2, BATCH))
    assert sorted(ranks) == [0, 1] and all(r["world_size"] == 2 for r in ranks.values())
    return root, ranks


@pytest.fixture(scope="module")
def single(records, tmp_path_factory):
    """One process at the doubled batch (8)."""
    root = tmp_path_factory.mktemp("single")
    ranks = launch(root / "records", overrides(records, root / "run", 1, 2 * BATCH))
    return root, ranks[0]


def sharding_errors(steps_by_rank: dict[int, list], reference_steps: list) -> list[str]:
    """What is wrong with the windows the ranks trained on, against one process at the whole batch.

    :param steps_by_rank: rank -> that rank's steps, each ``{"step", "keys": [(epoch, position, index), ...]}``
    :param reference_steps: the same steps of one process that trains on the whole batch
    """
    errors = []
    world = len(steps_by_rank)
    seen: dict[tuple[int, int], int] = {}
    for rank, steps in steps_by_rank.items():
        for step in steps:
            for epoch, position, index in step["keys"]:
                if (epoch, position) in seen:
                    errors.append(f"epoch {epoch} position {position} on rank {rank} and rank {seen[epoch, position]}")
                seen[epoch, position] = rank
                if position % world != rank:
                    errors.append(f"rank {rank} got position {position}")
    for ref in reference_steps:
        union = sorted(tuple(k) for steps in steps_by_rank.values() for s in steps if s["step"] == ref["step"]
                       for k in s["keys"])
        if union != sorted(tuple(k) for k in ref["keys"]):
            errors.append(f"step {ref['step']}: the ranks trained on {union}, one process on {ref['keys']}")
    return errors


# ----------------------------------------------------------------------------------------------- DDP runs
def test_every_rank_holds_the_same_weights(ddp):
    _, ranks = ddp
    assert [s["step"] for s in ranks[0]["steps"]] == list(range(1, STEPS + 1))
    assert [s["checksum"] for s in ranks[0]["steps"]] == [s["checksum"] for s in ranks[1]["steps"]]
    # the ranks trained on different windows (otherwise equal weights would prove nothing)
    assert ranks[0]["steps"][0]["loss"] != ranks[1]["steps"][0]["loss"]
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ranks_share_the_windows_without_duplicates_or_losses(ddp, single):
    _, ranks = ddp
    assert sharding_errors({r: rec["steps"] for r, rec in ranks.items()}, single[1]["steps"]) == []
    per_epoch = {}
    for rec in ranks.values():
        for step in rec["steps"]:
            for epoch, position, _ in step["keys"]:
                per_epoch.setdefault(epoch, []).append(position)
    # every position of both epochs exactly once
    assert {e: sorted(p) for e, p in per_epoch.items()} == {0: list(range(24)), 1: list(range(24))}


def test_sharding_check_catches_duplicated_and_lost_windows():
    def steps(sampler, batch):
        keys = list(sampler)
        return [{"step": i + 1, "keys": keys[i * batch:(i + 1) * batch]} for i in range(len(keys) // batch)]

    reference = steps(EpochSampler(50, 24, seed=3), 8)
    good = {r: steps(EpochSampler(50, 24, seed=3, rank=r, world_size=2), 4) for r in (0, 1)}
    assert sharding_errors(good, reference) == []
    # every rank reads the whole epoch (no sharding): duplicates, and steps that differ from the reference
    unsharded = {r: steps(EpochSampler(50, 24, seed=3), 4) for r in (0, 1)}
    assert any("and rank" in e for e in sharding_errors(unsharded, reference))
    # contiguous halves: no duplicates, but not the windows one process trains on at each step
    halves = {r: [{"step": s["step"], "keys": [(e, p + 12 * r, i) for e, p, i in s["keys"]]}
                  for s in steps(EpochSampler(50, 12, seed=3), 4)] for r in (0, 1)}
    assert sharding_errors(halves, reference)


def test_ddp_equals_one_process_at_the_doubled_batch(ddp, single):
    (ddp_root, ranks), (single_root, one) = ddp, single
    mean = [(a["loss"] + b["loss"]) / 2 for a, b in zip(ranks[0]["steps"], ranks[1]["steps"])]
    np.testing.assert_allclose(mean, [s["loss"] for s in one["steps"]], rtol=1e-5)
    # the logged training loss is the mean over the devices: the loss of the whole global batch
    logged = [read_metrics(r / "run" / "logs")[["step", "train/loss"]].dropna() for r in (ddp_root, single_root)]
    assert list(logged[0]["step"]) == list(range(STEPS))
    np.testing.assert_allclose(logged[0]["train/loss"], logged[1]["train/loss"], rtol=1e-5)
    np.testing.assert_allclose(logged[0]["train/loss"], mean, rtol=1e-6)
    for key, value in one["state"].items():
        torch.testing.assert_close(ranks[0]["state"][key], value, atol=1e-4, rtol=0, msg=key)


def test_ddp_resume_repeats_the_uninterrupted_run(ddp, records, tmp_path):
    root, full = ddp
    # a new DDP run from the checkpoint the run wrote after step 4 (inside epoch 1) repeats steps 5 and 6
    ckpt = root / "run" / "checkpoints" / "step00000004.ckpt"
    resumed = launch(tmp_path / "records", overrides(records, tmp_path / "run", 2, BATCH, [f"resume={ckpt}"]))
    for rank in (0, 1):
        assert [s["step"] for s in resumed[rank]["steps"]] == [5, 6]
        assert [s["keys"] for s in resumed[rank]["steps"]] == [s["keys"] for s in full[rank]["steps"][4:]]
        assert [s["loss"] for s in resumed[rank]["steps"]] == [s["loss"] for s in full[rank]["steps"][4:]]
        a, b = resumed[rank]["state"], full[rank]["state"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    logged = read_metrics(tmp_path / "run" / "logs")[["step", "train/loss"]].dropna()
    expected = read_metrics(root / "run" / "logs")[["step", "train/loss"]].dropna()
    assert list(logged["step"]) == [4, 5] and list(logged["train/loss"]) == list(expected["train/loss"][4:])


# ----------------------------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("recipe", ["masked", "contrastive"])
def test_every_trainable_parameter_gets_a_gradient(recipe):
    """DDP (without its search for unused parameters) needs a gradient for every trainable parameter each step."""
    backbone = TINY_SEQUENTIAL if recipe == "masked" else TINY_UNET
    o = [f"backbone={'sequential' if recipe == 'masked' else 'unet'}", f"recipe={recipe}"]
    o += [f"backbone.{k}=" + ("[" + ",".join(map(str, v)) + "]" if isinstance(v, (list, tuple)) else str(v))
          for k, v in backbone.items()]
    if recipe == "contrastive":
        o += ["recipe.num_codes=16", "recipe.final_dim=32", "recipe.codevector_dim=32", "recipe.num_negatives=10"]
    module = PretrainModule(compose_config(o)).train()
    torch.manual_seed(0)
    module.recipe(torch.randn(2, 3, 1024))["loss"].backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    trained = [n for n, p in module.named_parameters() if p.requires_grad]
    assert any(n.startswith("recipe.backbone.layers") or n.startswith("recipe.backbone.encoder") for n in trained)


def test_validation_windows_stay_the_same_every_epoch():
    """The trainer calls set_epoch on validation samplers too; validation keys must not follow it."""
    val = EpochSampler(30, 10, seed=0, shuffle=False, rank=1, world_size=2)
    first = list(val)
    val.set_epoch(3)
    assert list(val) == first and first[0] == (0, 1, 1)
    train = EpochSampler(30, 10, seed=0, rank=1, world_size=2)
    train.set_epoch(3)
    assert {k[0] for k in train} == {3}


def test_seeded_masks_do_not_depend_on_the_batch():
    from pretrain.masking import random_token_mask, seeded_token_mask

    batch = seeded_token_mask([11, 12, 13, 14], 256, 0.75)
    assert (batch.sum(dim=1) == 192).all() and not torch.equal(batch[0], batch[1])
    assert torch.equal(seeded_token_mask([13], 256, 0.75)[0], batch[2])
    assert torch.equal(seeded_token_mask([14, 11], 256, 0.75), batch[[3, 0]])
    assert torch.equal(random_token_mask(1, 256, 0.75, generator=torch.Generator().manual_seed(12))[0], batch[1])


def test_multicast_stays_off_for_gpu_runs(monkeypatch, tmp_path):
    env = {"NCCL_NVLS_ENABLE": "1"}  # a value a user set is kept
    assert multicast_off(env) == {"NCCL_NVLS_ENABLE": "1", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                                  "NVSHMEM_DISABLE_NVLS": "1"}
    for key in MULTICAST_OFF:
        monkeypatch.delenv(key, raising=False)
    cfg = compose_config(["trainer.accelerator=cpu", "trainer.progress_bar=false"])
    build_trainer(cfg, tmp_path)  # a CPU run leaves the environment alone
    assert not any(key in os.environ for key in MULTICAST_OFF)
    monkeypatch.setattr("pretrain.train._uses_gpu", lambda cfg: True)
    assert isinstance(build_trainer(cfg, tmp_path), L.Trainer)  # set before Lightning starts any process
    assert {key: os.environ[key] for key in MULTICAST_OFF} == MULTICAST_OFF


# ----------------------------------------------------------------------------------------------- benchmark
def _speed_benchmark():
    """benchmarks/pretrain_speed.py as the module ``pretrain_speed`` (the spawned processes import the worker by
    this name)."""
    import importlib.util

    bench_path = Path(__file__).resolve().parents[1] / "benchmarks" / "pretrain_speed.py"
    sys.path.insert(0, str(bench_path.parent))
    spec = importlib.util.spec_from_file_location("pretrain_speed", bench_path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["pretrain_speed"] = bench
    spec.loader.exec_module(bench)
    return bench


def test_ddp_speed_benchmark_smoke(ddp, tmp_path):
    """benchmarks/pretrain_speed.py in DDP mode on this CPU (gloo, tiny backbones): both recipes on 1 and 2
    processes (recipe 2 under DDP without its search for unused parameters), plus the DDP run's summary."""
    bench = _speed_benchmark()
    out = tmp_path / "pretrain_ddp.md"
    rows = bench.main(["--tiny", "--devices", "1", "2", "--batch", "2", "--steps", "1", "--warmup", "1",
                       "--samples", "1024", "--label", "smoke", "--out", str(out), "--run-dir", str(ddp[0] / "run")])
    speed, runs = rows[:4], rows[4:]
    assert [(r["recipe"], r["devices"]) for r in speed] == [("masked", 1), ("masked", 2), ("contrastive", 1),
                                                           ("contrastive", 2)]
    for r in speed:
        assert r["step_ms"] > 0 and r["no_sync_step_ms"] > 0 and r["windows_per_s"] > 0
        assert r["windows_per_s"] == pytest.approx(r["devices"] * r["windows_per_s_per_device"], rel=0.01)
        assert (r["allreduce_ms"] > 0) == (r["devices"] == 2) and r["efficiency"].endswith("%")
        assert r["local_step_ms"] > 0 and (r["devices"] == 2 or r["local_step_ms"] == r["step_ms"])
    assert [r["efficiency"] for r in speed if r["devices"] == 1] == ["100.0%", "100.0%"]
    (run,) = runs
    assert run["experiment"] == "tiny-ddp" and run["devices"] == 2 and run["steps"] == STEPS
    assert run["windows_per_s"] > 0 and "->" in run["train_loss"]
    text = out.read_text()
    assert text.count("| smoke |") == 5 and "## Where the gap to N x goes" in text
    assert text.count("without any collective (the step around DDP") == 2  # one line per recipe on 2 devices
    assert len(list(csv.DictReader(out.with_suffix(".csv").open()))) == 4
    assert len(list(csv.DictReader(out.with_name("pretrain_ddp_runs.csv").open()))) == 1


def test_accumulated_micro_batches_draw_their_own_masks(records, tmp_path, monkeypatch):
    """With gradient accumulation (an effective batch kept on fewer devices), the micro-batches of one optimizer
    step must not repeat each other's random draws (recipe 2's span masks, negatives, Gumbel noise, dropout)."""
    import pretrain.recipes
    from pretrain.train import run

    masks = []
    original = pretrain.recipes.span_mask

    def recording(*args, **kwargs):
        mask = original(*args, **kwargs)
        if kwargs.get("generator", args[6] if len(args) > 6 else None) is None:  # training, not validation
            masks.append(mask.clone())
        return mask

    monkeypatch.setattr(pretrain.recipes, "span_mask", recording)
    o = ["backbone=unet", "recipe=contrastive", "name=tiny-acc", f"out_dir={tmp_path}", f"data.continuous=[{records}]",
         "data.window_len=1024", "data.batch_size=2", "data.windows_per_epoch=8", "data.val_windows=2",
         "data.num_workers=0", "trainer.max_steps=2", "trainer.accumulate_grad_batches=2", "trainer.progress_bar=false",
         "trainer.accelerator=cpu", "trainer.log_every_n_steps=1", "recipe.num_codes=16", "recipe.final_dim=32",
         "recipe.codevector_dim=32", "recipe.num_negatives=10", "export=false"]
    o += [f"backbone.{k}=" + ("[" + ",".join(map(str, v)) + "]" if isinstance(v, (list, tuple)) else str(v))
          for k, v in TINY_UNET.items()]
    run(compose_config(o))
    assert len(masks) == 4  # 2 optimizer steps x 2 micro-batches
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[2], masks[3])


def test_max_time_stops_a_timed_run(tmp_path):
    from lightning.pytorch.callbacks import Timer

    cfg = compose_config(["trainer.accelerator=cpu", "trainer.progress_bar=false", "trainer.max_time=00:00:04:30"])
    (timer,) = [c for c in build_trainer(cfg, tmp_path).callbacks if isinstance(c, Timer)]
    assert timer.time_remaining() == 270


def test_ddp_settings_select_lightnings_ddp_strategy():
    """``trainer.ddp`` at its defaults leaves the strategy to Lightning; other values run ``DDPStrategy`` with them;
    with another strategy they are an error, and an unknown key names the valid ones."""
    from lightning.pytorch.strategies import DDPStrategy

    from experiments import UnknownConfigKeyError
    from pretrain.config import compose_config
    from pretrain.train import _strategy

    base = ["experiment=contrastive/xlstm_unet_local"]
    assert _strategy(compose_config(base).trainer) == "auto"
    strategy = _strategy(compose_config(base + ["trainer.ddp.static_graph=true", "trainer.ddp.bucket_cap_mb=64"]).trainer)
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs == {"static_graph": True, "bucket_cap_mb": 64.0}
    with pytest.raises(ValueError, match="trainer.strategy=auto or ddp"):
        _strategy(compose_config(base + ["trainer.ddp.gradient_as_bucket_view=true", "trainer.strategy=fsdp"]).trainer)
    with pytest.raises(UnknownConfigKeyError, match="static_graph"):
        compose_config(base + ["trainer.ddp.static=true"])


def test_ddp_speed_benchmark_takes_ddp_settings(tmp_path):
    """``pretrain_speed.py --devices 1 2 --ddp ...`` wraps the recipe with those DDP settings (static graph, one-MiB
    buckets, gradients as bucket views: two processes on this CPU) and says so in the rows' label."""
    bench = _speed_benchmark()
    with pytest.raises(Exception, match="static"):
        bench.ddp_options(["static=true"])
    rows = bench.main(["--tiny", "--devices", "1", "2", "--recipe", "masked", "--batch", "2", "--steps", "1",
                       "--warmup", "2", "--samples", "1024", "--label", "knobs", "--out", str(tmp_path / "ddp.md"),
                       "--ddp", "static_graph=true", "bucket_cap_mb=1", "gradient_as_bucket_view=true"])
    assert [r["devices"] for r in rows] == [1, 2]
    for r in rows:
        assert r["step_ms"] > 0 and r["label"].startswith("knobs (DDP {'static_graph': True, 'bucket_cap_mb': 1.0")


def test_peak_device_memory_logs_every_gpu_once_a_logging_interval(monkeypatch, tmp_path):
    """``PeakDeviceMemory`` gathers each process's peak GPU memory at every logging interval (once, however many
    micro-batches an accumulated step has) and logs one value per rank; the DDP report gives each GPU's largest.
    Stands in for two GPUs: a fake CUDA device, torch's memory counter and the strategy's gather."""
    from types import SimpleNamespace

    from pretrain.train import PeakDeviceMemory

    _speed_benchmark()  # benchmarks/ on sys.path
    from ddp_report import summarise_run

    gathered = []

    def all_gather(t):  # rank 1 holds 1 GiB more than this process
        gathered.append(t)
        return torch.stack([t, t + 1])

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**29)  # 1.5 GiB
    monkeypatch.setattr(torch, "tensor", lambda value, device: torch.as_tensor(value))  # no CUDA here
    logged = []
    module = SimpleNamespace(device=torch.device("cuda", 0), log=lambda key, value: logged.append((key, value)))
    trainer = SimpleNamespace(global_step=0, log_every_n_steps=10, strategy=SimpleNamespace(all_gather=all_gather))
    callback = PeakDeviceMemory()
    for step in (0, 0, 5, 10, 10, 10, 13, 20):  # micro-batches repeat a step
        trainer.global_step = step
        callback.on_train_batch_end(trainer, module, None, None, 0)
    monkeypatch.undo()
    assert len(gathered) == 3  # steps 0, 10 and 20
    assert logged == [("device/peak_gib_rank0", 1.5), ("device/peak_gib_rank1", 2.5)] * 3
    callback.on_train_batch_end(trainer, SimpleNamespace(device=torch.device("cpu")), None, None, 0)  # CPU: nothing
    trainer.global_step = 30
    callback.on_train_batch_end(trainer, SimpleNamespace(device=torch.device("cpu")), None, None, 0)
    assert len(gathered) == 3

    run_dir = tmp_path / "run"
    (run_dir / "logs" / "version_0").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        "name: r\ntrainer: {devices: 2, accumulate_grad_batches: 1}\ndata: {batch_size: 64, num_workers: 4}\n")
    rows = ["step,train/loss,train/windows_per_s,device/peak_gib_rank0,device/peak_gib_rank1,device/peak_gib_rank10"]
    rows += ["9,4.0,100.0,1.25,2.5,", "19,3.0,200.0,1.5,2.0,"]
    (run_dir / "logs" / "version_0" / "metrics.csv").write_text("\n".join(rows) + "\n")
    summary = summarise_run(run_dir, "x")
    assert summary["peak_gib_per_device"] == "1.5 / 2.5"  # rank order; an empty column is left out
    assert summary["windows_per_s"] == 200.0 and summary["steps"] == 20
