"""The pretraining runner (python -m pretrain): configs, tiny CPU runs, resume, NaN guard, export."""

import lightning as L
import numpy as np
import obspy
import pandas as pd
import pytest
import torch

from pretrain.__main__ import main
from pretrain.config import UnknownConfigKeyError, compose_config, list_experiments, to_objects
from pretrain.export import build_picker, export_from_checkpoint, load_backbone
from pretrain.module import NonFiniteLossError, PretrainModule
from pretrain.plots import read_metrics
from pretrain.schedules import warmup_steps
from pretrain.train import run
from seisbench_xlstm import XLSTMSeqPicker, XLSTMUNetPicker
from tiny import TINY_SEQUENTIAL, TINY_UNET, hydra_value

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """20 minutes of a synthetic 3-component station (noise + a few wave packets) as miniSEED."""
    folder = tmp_path_factory.mktemp("records")
    rng = np.random.default_rng(0)
    n = 120_000
    t = np.arange(n) / 100.0
    st = obspy.Stream()
    for k, c in enumerate("ZNE"):
        data = rng.normal(size=n) * 0.3 + np.sin(2 * np.pi * (1.5 + k) * t) + 1000.0
        st += obspy.Trace(data, header=dict(network="XX", station="SYN", channel=f"HH{c}", sampling_rate=100.0,
                                            starttime=obspy.UTCDateTime(2024, 1, 1)))
    st.write(str(folder / "syn.mseed"), format="MSEED")
    return folder


def tiny(records, out_dir, recipe="masked", steps=6, extra=()):
    backbone = TINY_SEQUENTIAL if recipe == "masked" else TINY_UNET
    overrides = [f"backbone={'sequential' if recipe == 'masked' else 'unet'}", f"recipe={recipe}", "name=tiny",
                 f"out_dir={out_dir}", f"data.continuous=[{records}]", "data.window_len=1024", "data.batch_size=4",
                 "data.windows_per_epoch=12", "data.val_windows=4", "data.num_workers=0", f"trainer.max_steps={steps}",
                 "trainer.log_every_n_steps=1", "trainer.checkpoint_every_n_steps=4", "trainer.progress_bar=false",
                 "trainer.accelerator=cpu", "optim.lr=0.01"]
    overrides += [f"backbone.{k}={hydra_value(v)}" for k, v in backbone.items()]
    if recipe == "contrastive":
        overrides += ["recipe.num_codes=16", "recipe.final_dim=32", "recipe.codevector_dim=32",
                      "recipe.num_negatives=10"]
    return compose_config(overrides + list(extra))


def _train_losses(out_dir):
    df = read_metrics(out_dir / "logs")
    return df[["step", "train/loss"]].dropna().set_index("step")["train/loss"]


# ------------------------------------------------------------------------------------------ configs
SEED_RECIPE_1 = {
    "backbone": {"d_model": 176, "num_layers": 24, "in_channels": 3},
    "recipe": {"mask_ratio": 0.75},
    "data": {"datasets": ["stead", "mlaapde"], "window_len": 4096, "batch_size": 128, "windows_per_epoch": 2_104_320},
    "optim": {"lr": 0.002, "weight_decay": 0.01, "betas": [0.9, 0.95], "warmup_fraction": 0.1},
    "trainer": {"devices": 2, "precision": "bf16-mixed", "max_steps": 452_100, "max_epochs": 55,
                "val_check_interval": 1.0},
}
SEED_RECIPE_2 = {
    "backbone": {"dims": [128, 256, 512], "in_channels": 3},
    "recipe": {"mask_prob": 0.65, "mask_length": 10, "final_dim": 256, "num_groups": 2, "num_codes": 320,
               "codevector_dim": 256, "tau_start": 2.0, "tau_end": 0.5, "num_negatives": 100,
               "logit_temperature": 0.1, "diversity_weight": 0.1},
    "data": {"datasets": ["ethz", "geofon", "stead", "instance", "mlaapde", "iquique", "pnw", "obst2024"],
             "window_len": 4096, "batch_size": 64},
    "optim": {"lr": 0.001, "warmup_fraction": 0.2},
    "trainer": {"devices": 4, "precision": "bf16-mixed", "max_epochs": 50, "val_check_interval": 0.25},
}


@pytest.mark.parametrize(
    "name,table,backbone",
    [("xlstm_large/pure_mlstm_sequential_12m_foundation", SEED_RECIPE_1, "sequential"),
     ("contrastive/xlstm_unet_seisbench", SEED_RECIPE_2, "unet")],
)
def test_experiments_equal_the_seed_tables(name, table, backbone):
    cfg = compose_config([f"experiment={name}"])
    for section, values in table.items():
        for key, value in values.items():
            assert cfg[section][key] == value, f"{section}.{key}"
    assert to_objects(cfg)[0] == backbone
    assert cfg.data.batch_size * cfg.trainer.devices == 256  # effective batch of the seed
    if backbone == "sequential":
        assert warmup_steps(cfg.trainer.max_steps, cfg.optim.warmup_fraction) == 45_210
        # 55 epochs of the configured length are the 452,100 steps
        assert cfg.trainer.max_epochs * cfg.data.windows_per_epoch // 256 == cfg.trainer.max_steps


def test_local_variants_read_the_shared_data():
    assert set(list_experiments()) >= {"xlstm_large/pure_mlstm_sequential_12m_local", "contrastive/xlstm_unet_local"}
    pairs = (("xlstm_large/pure_mlstm_sequential_12m_local", "xlstm_large/pure_mlstm_sequential_12m_foundation"),
             ("contrastive/xlstm_unet_local", "contrastive/xlstm_unet_seisbench"))
    for name, base in pairs:
        cfg, seed = compose_config([f"experiment={name}"]), compose_config([f"experiment={base}"])
        if "diversity_weight" in seed.recipe:  # recipe 2 on a few hundred items: a codebook that does not collapse
            assert (seed.recipe.diversity_weight, cfg.recipe.diversity_weight) == (0.1, 1.0)
            seed.recipe.diversity_weight = cfg.recipe.diversity_weight
        assert cfg.backbone == seed.backbone and cfg.recipe == seed.recipe and cfg.optim == seed.optim
        assert [p.split("/")[-1] for p in cfg.data.datasets] == ["ncedc154"]
        assert [s.name for s in cfg.data.ingest] == ["nz-dfdp"] and cfg.data.ingest[0].format == "nordic"
        assert cfg.data.continuous[0].endswith("continuous-ok")


def test_unknown_key_names_the_valid_ones(capsys):
    with pytest.raises(UnknownConfigKeyError, match="Valid keys there: accelerator, devices"):
        compose_config(["trainer.max_step=5"])
    with pytest.raises(UnknownConfigKeyError, match="d_model, num_layers.*backbone=unet"):
        compose_config(["experiment=xlstm_large/pure_mlstm_sequential_12m_foundation", "backbone.dims=[1,2,3]"])
    assert main(["optim.learning_rate=1"]) == 2
    assert "Valid keys there: lr, weight_decay, betas" in capsys.readouterr().err


def test_named_experiment_without_datasets_says_which_are_missing(capsys, tmp_path):
    assert main(["experiment=contrastive/xlstm_unet_seisbench", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "8 of 8 pretraining dataset(s) are not available" in err
    for name in ("ethz", "geofon", "stead", "instance", "mlaapde", "iquique", "pnw", "obst2024"):
        assert f"  - {name}: " in err and "looked for" in err
    assert not any(tmp_path.iterdir())  # stopped before building anything


# ------------------------------------------------------------------------------------------ runs
def test_tiny_masked_run_loss_falls_and_exports(records, tmp_path):
    result = run(tiny(records, tmp_path / "run", steps=24, extra=["optim.warmup_fraction=0.05"]))
    losses = _train_losses(tmp_path / "run")
    assert len(losses) == 24
    assert losses.iloc[-4:].mean() < 0.8 * losses.iloc[:4].mean()
    assert result.loss_curve.is_file() and result.loss_curve.stat().st_size > 1000
    metrics = pd.read_csv(result.metrics)
    assert "val/loss" in metrics and metrics["val/loss"].notna().any()
    # export: the picker built from the export, and from the final checkpoint, holds the pretrained backbone
    module = PretrainModule(torch.load(result.checkpoint, weights_only=False)["hyper_parameters"]["config"])
    module.load_state_dict(torch.load(result.checkpoint, weights_only=False)["state_dict"])
    for path in (result.backbone, export_from_checkpoint(result.checkpoint, tmp_path / "from_ckpt.pt")):
        picker = build_picker(path)
        assert isinstance(picker, XLSTMSeqPicker)
        expected = module.backbone.state_dict()
        got = picker.backbone.state_dict()
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected)
        assert all(torch.equal(load_backbone(path).state_dict()[k], expected[k]) for k in expected)


class StopAt(L.Callback):
    """Interrupts a run after ``step`` optimizer steps (as a crash or a time limit would)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.mark.parametrize("stop", [4, 3])
def test_resume_repeats_the_uninterrupted_run(records, tmp_path, stop):
    # 12 windows per epoch / batch 4 = 3 steps per epoch: step 4 is inside epoch 1, step 3 ends epoch 0
    full = tmp_path / "full"
    run(tiny(records, full, steps=8))
    part = tmp_path / "part"
    first = run(tiny(records, part, steps=8, extra=[f"trainer.checkpoint_every_n_steps={stop}"]),
                extra_callbacks=[StopAt(stop)])
    assert first.global_step == stop
    resumed = run(tiny(records, part, steps=8, extra=[f"resume={part / 'checkpoints' / f'step{stop:08d}.ckpt'}"]))
    assert resumed.global_step == 8
    a, b = _train_losses(full), _train_losses(part)
    assert list(b.index) == list(range(8))
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    final_a = torch.load(full / "checkpoints" / "final.ckpt", weights_only=False)["state_dict"]
    final_b = torch.load(part / "checkpoints" / "final.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_tiny_contrastive_run_logs_code_statistics(records, tmp_path):
    # with activation checkpointing of the mLSTM layers
    result = run(tiny(records, tmp_path / "run", recipe="contrastive", steps=3,
                      extra=["model.gradient_checkpointing=true"]))
    assert result.global_step == 3
    df = read_metrics(tmp_path / "run" / "logs")
    for key in ("train/code_perplexity", "train/codes_in_use", "train/prob_perplexity", "train/mask_fraction",
                "train/temperature", "val/loss"):
        assert df[key].notna().any(), key
    ppl = df["train/code_perplexity"].dropna()
    assert ((ppl >= 1) & (ppl <= 2 * 16)).all()
    temps = df["train/temperature"].dropna().to_numpy()
    assert temps[0] == pytest.approx(2.0) and (np.diff(temps) < 0).all()
    exported = build_picker(tmp_path / "run" / "backbone.pt")
    assert isinstance(exported, XLSTMUNetPicker)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_non_finite_loss_stops_the_run(records, tmp_path, accumulate):
    """A NaN in one micro-batch (the first of two when accumulating) stops the run at that step with the message,
    before the optimizer applies it: every weight is still finite."""

    class Poison(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.module = pl_module
            if trainer.global_step == 2 and batch_idx % accumulate == 0:
                batch["X"][0, 0, 0] = float("nan")

    poison = Poison()
    cfg = tiny(records, tmp_path / "run", steps=6, extra=[f"trainer.accumulate_grad_batches={accumulate}"])
    with pytest.raises(NonFiniteLossError, match=r"Training loss is nan \(on this rank\) at step 2"):
        run(cfg, extra_callbacks=[poison])
    assert all(torch.isfinite(p).all() for p in poison.module.parameters())


def test_local_data_uses_every_shared_waveform_and_ingests_once(shared_data, tmp_path):
    from pretrain.config import IngestSourceConfig
    from pretrain.data import PretrainDataModule, ingest_cached

    cfg = compose_config(["experiment=xlstm_large/pure_mlstm_sequential_12m_local", f"data.cache_dir={tmp_path}",
                          "data.num_workers=0"])
    data = PretrainDataModule(cfg)
    data.setup("fit")
    sizes = {type(s).__name__: len(s) for s in data.train_set.sources}
    # NCEDC-154 train split (93) + NZ-DFDP ingested train split; continuous: 85% of 720,000 samples in 4096-windows
    assert sizes["_TraceSource"] > 93 and sizes["_ContinuousSource"] == int(0.85 * 720_000) // 4096
    assert len(data.val_set) > 0
    item = data.train_set[(0, 0, len(data.train_set) - 1)]
    assert item["X"].shape == (3, 4096) and torch.isfinite(item["X"]).all()
    hdf5 = tmp_path / "nz-dfdp" / "waveforms.hdf5"
    stamp = hdf5.stat().st_mtime_ns
    source = cfg.data.ingest[0]
    assert ingest_cached(source, tmp_path) == tmp_path / "nz-dfdp" and hdf5.stat().st_mtime_ns == stamp  # reused
    other_picks = str(shared_data / "nz-dfdp" / "REA" / "2013")
    other = IngestSourceConfig(name="nz-dfdp", waveforms=source.waveforms, picks=other_picks)
    with pytest.raises(ValueError, match="holds an ingest of"):
        ingest_cached(other, tmp_path)


def test_compiled_run_validates_eagerly(records, tmp_path, compile_counter):
    """With model.compile, training steps run compiled and validation eagerly (its no-grad mode and short last
    batch would each compile variants of their own), and training is compiled again after each validation."""
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(("train", pl_module.backbone.compiled))

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen.append(("val", pl_module.backbone.compiled))

    run(tiny(records, tmp_path / "run", steps=6, extra=["model.compile=true", "trainer.val_check_interval=0.5"]),
        extra_callbacks=[Record()])
    assert {c for phase, c in seen if phase == "train"} == {True}
    assert {c for phase, c in seen if phase == "val"} == {False}
    first_val = [p for p, _ in seen].index("val")
    after = [c for p, c in seen[first_val:] if p == "train"]
    assert after and all(after)
    assert compile_counter.frame_count > 0


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]
)
def test_adamw_is_fused_on_gpu_only(records, tmp_path, device):
    """On GPUs AdamW runs its fused kernel; CPUs keep torch's default implementation."""
    module = PretrainModule(tiny(records, tmp_path)).to(device)
    optimizer = module.configure_optimizers()["optimizer"]
    assert bool(optimizer.defaults["fused"]) == (device == "cuda")
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(module.parameters()))


def test_fused_adamw_clips_gradients_in_bf16_runs(records, tmp_path, monkeypatch):
    """A run with the fused AdamW (GPUs), bf16-mixed precision and gradient clipping (recipe 2's defaults on a GPU)
    trains and clips; Lightning's mixed-precision plugin refuses to clip for any fused optimizer, which stopped every
    such run at its first step. Here on the CPU, whose AdamW takes ``fused`` too. With a loss scaler (16-mixed) the
    fused step is not used: it would unscale gradients that clipping had seen scaled."""
    from types import SimpleNamespace

    from pretrain.train import run

    monkeypatch.setattr(PretrainModule, "_fused_adamw", lambda self, params: True)
    norms = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: norms.append(clip(*a, **k)) or norms[-1])
    cfg = tiny(records, tmp_path, "contrastive", steps=2,
               extra=["trainer.precision=bf16-mixed", "trainer.gradient_clip_val=0.5", "export=false"])
    assert run(cfg).global_step == 2
    assert len(norms) == 2 and all(torch.isfinite(n) for n in norms)
    monkeypatch.undo()

    module = PretrainModule(tiny(records, tmp_path, "contrastive"))
    params = list(module.parameters())
    module._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=None))
    assert module._fused_adamw(params) is None  # CPU parameters
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))  # stands in for CUDA parameters
    assert module._fused_adamw(params) is True
    module._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=object()))  # 16-mixed
    assert module._fused_adamw(params) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("recipe", ["masked", "contrastive"])
def test_tiny_gpu_run_trains_with_the_runners_defaults(records, tmp_path, recipe):
    """A short run through Lightning on one GPU with what a GPU run gets by default: bf16-mixed, the fused AdamW,
    gradient clipping, compiled layers. (The step benchmarks do not go through Lightning; a refusal of Lightning's
    to clip for the fused optimizer once stopped every GPU run at its first step.)"""
    from pretrain.train import run

    cfg = tiny(records, tmp_path, recipe, steps=3, extra=["trainer.accelerator=auto", "export=false"])
    result = run(cfg)
    assert result.global_step == 3
    assert _train_losses(tmp_path).notna().all()


def test_codebook_watch_warns_once_when_few_codes_are_in_use():
    """Recipe 2's collapse warning: once, when the validation windows use fewer than half the codes; not during
    Lightning's sanity check, not for recipe 1 (no code statistics), not while enough codes are in use."""
    import warnings
    from types import SimpleNamespace

    from pretrain.train import CodebookWatch

    watch = CodebookWatch()
    trainer = SimpleNamespace(callback_metrics={}, sanity_checking=False, global_step=250)

    def validate(**metrics):
        trainer.callback_metrics = {k.replace("__", "/"): torch.tensor(v) for k, v in metrics.items()}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            watch.on_validation_end(trainer, None)
        return [str(w.message) for w in caught]

    assert validate(val__loss=1.0) == []  # recipe 1
    assert validate(val__codes_in_use=0.8) == []
    trainer.sanity_checking = True
    assert validate(val__codes_in_use=0.1) == []
    trainer.sanity_checking = False
    (message,) = validate(val__codes_in_use=0.37)
    assert "37% of the codebook" in message and "step 250" in message and "diversity_weight" in message
    assert validate(val__codes_in_use=0.2) == []  # once
