"""The fine-tuning runner (python -m finetune): configs, a tiny CPU run, freezing, export round trip, targets."""

import json
import shutil

import numpy as np
import pytest
import torch

from finetune.__main__ import main
from finetune.config import UnknownConfigKeyError, compose_config, list_experiments
from finetune.models import ARCH_SPECS, EventDetectionTarget, build_model, parameter_groups
from finetune.train import read_metrics, run
from seisbench_xlstm import XLSTMSeqPicker
from test_data_synth import write_dataset
from tiny import TINY_SEQUENTIAL, hydra_value

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_overrides(data, out_dir, arch="xlstm_seq", extra=()):
    ov = ["name=tiny", f"out_dir={out_dir}", f"data.datasets=[{data}]", "data.batch_size=8",
          "data.windows_per_epoch=32", "data.num_workers=0", "trainer.max_epochs=4", "trainer.accelerator=cpu",
          "trainer.progress_bar=false", "trainer.log_every_n_steps=1", "optim.lr=0.003",
          "optim.freeze_backbone_epochs=1", "selection.thresholds=[0.1,0.3,0.5,0.7]", "selection.dev_traces=4",
          f"model.arch={arch}", f"data.cache_dir={out_dir}/cache"]
    if arch.startswith("xlstm"):
        ov += [f"model.backbone.{k}={hydra_value(v)}" for k, v in TINY_SEQUENTIAL.items()]
    return ov + list(extra)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth") / "ds"
    write_dataset(folder, n_events=12, traces_per_event=2, n_noise=3, npts=6000, seed=0)
    return folder


class BackboneWatch:
    """Records, at the end of every training epoch, whether the backbone / head weights moved since fit start."""

    def __init__(self):
        import lightning as L

        class _CB(L.Callback):
            def on_train_start(cb, trainer, module):
                self.start = {n: p.detach().clone() for n, p in module.model.named_parameters()}
                self.lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]

            def on_train_epoch_end(cb, trainer, module):
                moved = {n: not torch.equal(p.detach(), self.start[n]) for n, p in module.model.named_parameters()}
                backbone = {id(p) for p in module.backbone_params}
                names = dict(module.model.named_parameters())
                self.epochs.append({
                    "backbone": any(moved[n] for n in names if id(names[n]) in backbone),
                    "head": any(moved[n] for n in names if id(names[n]) not in backbone),
                })

        self.epochs, self.callback = [], _CB()


@pytest.fixture(scope="module")
def tiny_run(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    watch = BackboneWatch()
    torch.set_num_threads(1)
    result = run(compose_config(tiny_overrides(synth, out, extra=["export.precision=fp16"])), [watch.callback])
    return result, watch


# ------------------------------------------------------------------------------------------ configs
def test_experiments_compose_with_the_same_data_and_budget():
    names = set(list_experiments())
    assert {"local/xlstm_seq", "local/xlstm_unet", "local/phasenet", "local/eqtransformer"} <= names
    cfgs = {n: compose_config([f"experiment={n}"]) for n in names if n.startswith("local/")}
    base = cfgs["local/xlstm_seq"]
    for name, cfg in cfgs.items():
        assert cfg.data == base.data and cfg.pseudo == base.pseudo and cfg.selection == base.selection, name
        assert cfg.trainer.max_time == base.trainer.max_time and cfg.trainer.max_epochs == base.trainer.max_epochs
    assert {c.model.arch for c in cfgs.values()} == {"xlstm_seq", "xlstm_unet", "phasenet", "eqtransformer"}
    assert base.pseudo.continuous[0].endswith("continuous-ok") and base.data.ingest[0].name == "nz-dfdp"


def test_unknown_keys_and_bad_values_are_errors(capsys):
    with pytest.raises(UnknownConfigKeyError, match="Valid keys there: accelerator, devices"):
        compose_config(["trainer.max_step=5"])
    with pytest.raises(UnknownConfigKeyError, match="label_fraction"):
        compose_config(["data.label_fractio=0.1"])
    with pytest.raises(ValueError, match="model.arch='resnet'.*xlstm_seq"):
        compose_config(["model.arch=resnet"])
    with pytest.raises(ValueError, match="label_fraction"):
        compose_config(["data.label_fraction=0"])
    with pytest.raises(ValueError, match="only for model.arch=xlstm"):
        compose_config(["model.arch=phasenet", "model.pretrained=x.pt"])
    assert main(["optim.learning_rate=1"]) == 2
    assert "Valid keys there: lr, backbone_lr_factor" in capsys.readouterr().err
    assert main(["experiment=local/phasenet", "--print-config"]) == 0
    assert "arch: phasenet" in capsys.readouterr().out
    assert main(["--help"]) == 0 and "local/xlstm_seq" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ the tiny run
def test_tiny_run_loss_falls(tiny_run):
    result, _ = tiny_run
    losses = read_metrics(result.out_dir)["train/loss"].dropna().to_numpy()
    assert len(losses) == 16
    assert losses[-4:].mean() < 0.6 * losses[:4].mean()
    assert (result.out_dir / "curves.png").is_file() and (result.out_dir / "checkpoints" / "best.ckpt").is_file()
    seconds = json.loads((result.out_dir / "result.json").read_text())["seconds"]
    assert list(seconds) == ["setup", "fit", "fit_start", "selection", "export"] and min(seconds.values()) >= 0
    assert 0 < seconds["fit_start"] < seconds["fit"]


def test_backbone_frozen_first_then_trained_at_a_lower_rate(tiny_run):
    _, watch = tiny_run
    assert watch.epochs[0] == {"backbone": False, "head": True}  # epoch 0 frozen
    assert watch.epochs[1]["backbone"] and watch.epochs[1]["head"]
    assert min(watch.lrs) == pytest.approx(0.1 * max(watch.lrs))  # backbone_lr_factor 0.1 (warm-up scales both)


def test_export_round_trip_through_from_pretrained(tiny_run, cache_root):
    result, _ = tiny_run
    export = result.export
    meta = json.loads(open(export["json"]).read())
    assert meta["version"] == "1" and export["json"].endswith(".json.v1") and export["pt"].endswith(".pt.v1")
    assert meta["default_args"] == {f"{p}_threshold": result.thresholds[p] for p in "PS"}
    doc = meta["docstring"]
    for words in ("4096-sample windows at 100 Hz", "standard deviation", "Thresholds", "float16", "Teachers: none"):
        assert words in doc
    state = torch.load(export["pt"], weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    folder = cache_root / "models" / "v3" / "xlstmseqpicker"
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("json", "pt"):
        shutil.copy(export[key], folder / ("tiny_roundtrip." + key + ".v1"))
    model = XLSTMSeqPicker.from_pretrained("tiny_roundtrip")
    assert model.default_args["P_threshold"] == result.thresholds["P"]
    assert "float16" in model.weights_docstring
    ckpt = torch.load(result.best_checkpoint, weights_only=False)
    trained = XLSTMSeqPicker(**{k: v for k, v in meta["model_args"].items()
                                if k in ("backbone_config", "phases", "norm", "in_samples")})
    trained.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items()})
    x = torch.randn(2, 3, 4096)
    with torch.no_grad():
        diff = (model.eval()(x) - trained.eval()(x)).abs().max().item()
    assert diff <= export["max_abs_diff"] + 0.02 and diff < 0.02
    loaded = XLSTMSeqPicker.load(export["json"][: -len(".json.v1")], version_str="1")
    assert loaded.default_args == model.default_args


def test_weights_docstring_says_when_half_precision_fell_back_to_fp32(tiny_run, synth, tmp_path):
    from finetune.export import weights_docstring

    result, _ = tiny_run
    r = json.loads((result.out_dir / "result.json").read_text())
    cfg = compose_config(tiny_overrides(synth, tmp_path))
    check = {"max_abs_diff": 0.0, "windows": 16, "precision": "fp32", "requested_precision": "fp16",
             "half_precision_diff": 0.027}
    doc = weights_docstring(cfg, r["data"], r["init"], r["thresholds"], r["dev_scores"], r["train"], "fp16", check)
    assert doc.endswith("Weights stored in float32 (float16 was asked for, but changed the output probabilities by "
                        "up to 0.027 on 16 dev windows, above 0.02).")
    kept = {**check, "precision": "fp16", "max_abs_diff": 0.004}
    del kept["requested_precision"], kept["half_precision_diff"]
    doc = weights_docstring(cfg, r["data"], r["init"], r["thresholds"], r["dev_scores"], r["train"], "fp16", kept)
    assert doc.endswith("Weights stored in float16 (output probabilities within 0.004 of the float32 model on 16 "
                        "dev windows).")


# ------------------------------------------------------------------------------------------ models and targets
def test_models_of_every_arch_and_their_groups(tmp_path):
    from seisbench_xlstm import build_backbone

    for arch, spec in ARCH_SPECS.items():
        backbone = TINY_SEQUENTIAL if arch == "xlstm_seq" else None
        if arch == "xlstm_unet":
            from tiny import TINY_UNET

            backbone = TINY_UNET
        model, info = build_model(arch, backbone=backbone)
        assert model.in_samples == spec.window_len and info == {"init": "random"}
        backbone_p, head_p = parameter_groups(model, arch)
        assert len(backbone_p) + len(head_p) == len(list(model.parameters()))
        assert bool(backbone_p) == arch.startswith("xlstm")
    # a pretrained export: the backbone weights arrive, the kind must match
    bb = build_backbone("sequential", TINY_SEQUENTIAL)
    path = tmp_path / "backbone.pt"
    torch.save({"format": "seisbench_xlstm.pretrained_backbone", "version": 1, "backbone": "sequential",
                "config": bb.config.to_dict(), "state_dict": bb.state_dict(), "recipe": "MaskedReconstruction",
                "global_step": 7}, path)
    model, info = build_model("xlstm_seq", str(path))
    assert info["init"] == "pretrained" and info["global_step"] == 7
    assert all(torch.equal(a, b) for a, b in zip(model.backbone.state_dict().values(), bb.state_dict().values()))
    with pytest.raises(ValueError, match="model.arch=xlstm_seq"):
        build_model("xlstm_unet", str(path))
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a pretrained-backbone export"):
        build_model("xlstm_seq", str(tmp_path / "other.pt"))


def test_eqtransformer_detection_target_by_hand():
    cols = {"trace_P_arrival_sample": "P", "trace_S_arrival_sample": "S", "trace_pseudoP0_arrival_sample": "P",
            "trace_pseudoS0_arrival_sample": "S"}
    meta = {"trace_P_arrival_sample": 100.0, "trace_S_arrival_sample": 200.0,  # event 1: 100 .. 200 + 140
            "trace_pseudoP0_arrival_sample": 600.0, "trace_pseudoS0_arrival_sample": 900.0}  # event 2: 600 .. 1000
    state = {"X": (np.zeros((3, 1000)), meta)}
    EventDetectionTarget(cols)(state)
    d = state["detections"][0][0]
    assert d.shape == (1000,)
    assert d[:100].sum() == 0 and d[100:340].all() and d[340:600].sum() == 0 and d[600:].all()
    # P without S after it (before the next P): no event; a P before the window counts
    state = {"X": (np.zeros((3, 1000)), {"trace_P_arrival_sample": -50.0, "trace_S_arrival_sample": 50.0})}
    EventDetectionTarget(cols)(state)
    assert state["detections"][0][0, :190].all() and state["detections"][0][0, 190:].sum() == 0
    state = {"X": (np.zeros((3, 1000)), {"trace_P_arrival_sample": 500.0})}
    EventDetectionTarget(cols)(state)
    assert state["detections"][0].sum() == 0


@pytest.mark.parametrize("recipe,arch", [("masked", "xlstm_seq"), ("contrastive", "xlstm_unet")])
def test_pretraining_exports_start_a_finetune(tmp_path, recipe, arch):
    """The pretraining runner's export (pretrain/export.py) is what model.pretrained reads."""
    from pretrain.config import compose_config as pretrain_config
    from pretrain.export import export_backbone
    from pretrain.module import PretrainModule
    from tiny import TINY_UNET

    backbone = TINY_SEQUENTIAL if recipe == "masked" else TINY_UNET
    overrides = [f"backbone={'sequential' if recipe == 'masked' else 'unet'}", f"recipe={recipe}"]
    overrides += [f"backbone.{k}={hydra_value(v)}" for k, v in backbone.items()]
    if recipe == "contrastive":
        overrides += ["recipe.num_codes=16", "recipe.final_dim=32", "recipe.codevector_dim=32"]
    module = PretrainModule(pretrain_config(overrides))
    path = export_backbone(module, tmp_path / "backbone.pt", global_step=5)
    model, info = build_model(arch, str(path))
    assert info["init"] == "pretrained" and info["global_step"] == 5 and info["recipe"] == type(module.recipe).__name__
    for key, value in module.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    other = "xlstm_unet" if arch == "xlstm_seq" else "xlstm_seq"
    with pytest.raises(ValueError, match=f"model.arch={arch}"):
        build_model(other, str(path))


@pytest.mark.parametrize("setting,compiled", [("true", True), ("null", False)])
def test_compile_for_training_only(synth, tmp_path, compile_counter, setting, compiled):
    """``model.compile``: the mLSTM layers run through torch.compile in training steps (``null``: on CUDA only, so
    not here) and eagerly in validation and the dev evaluation."""
    import lightning as L

    seen = {"train": set(), "val": set()}

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen["train"].add(module.model.backbone.compiled)

        def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
            seen["val"].add(module.model.backbone.compiled)

    overrides = tiny_overrides(synth, tmp_path, extra=["trainer.max_epochs=2", f"model.compile={setting}"])
    run(compose_config(overrides), [Watch()])
    assert seen == {"train": {compiled}, "val": {False}}
    assert (compile_counter.frame_count > 0) == compiled


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_gpu_finetune_run_trains_selects_and_exports(synth, tmp_path):
    """A short fine-tuning run through Lightning on one GPU with a GPU's defaults (bf16-mixed, compiled layers for
    training, gradient clipping): it trains, selects thresholds on dev and exports weights that load."""
    result = run(compose_config(tiny_overrides(synth, tmp_path, extra=["trainer.accelerator=auto"])))
    losses = read_metrics(result.out_dir)["train/loss"].dropna().to_numpy()
    assert len(losses) == 16 and np.isfinite(losses).all()
    assert result.best_checkpoint.is_file()
    picker = XLSTMSeqPicker.load(result.export["json"][: -len(".json.v1")], version_str="1")
    assert picker.default_args["P_threshold"] == result.thresholds["P"]
