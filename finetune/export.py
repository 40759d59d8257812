"""Export of a fine-tuned model as a SeisBench weight pair, with its docstring and a precision check.

``<dir>/<name>.json.v<version>`` + ``<dir>/<name>.pt.v<version>`` are written by the model's own ``save``
(SeisBench's format; the ``"version"`` field is set in the JSON), with the dev-tuned P/S thresholds in
``default_args``. Copy them into ``$SEISBENCH_CACHE_ROOT/models/v3/<class name, lower case>/`` (or the package's
``seisbench_xlstm/weights/<class>/``) and ``from_pretrained(name)`` loads them; ``load(<dir>/<name>,
version_str=<version>)`` loads them from anywhere.

``precision`` ``fp16``/``bf16`` stores the state dict in half precision (half the size: the sequential picker's
11.3M parameters take about 22.7 MB); loading casts it back into the fp32 model. The export reloads the files and
compares the output probabilities with those of the trained fp32 model on dev windows: above
``check_tolerance`` the weights are stored in fp32 instead (``fallback_fp32``, the default; the docstring says so),
or, with the fallback off or when even fp32 misses, the files are removed and :class:`ExportCheckError` is raised.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from .models import probabilities

__all__ = ["ExportCheckError", "DTYPES", "weights_docstring", "export_weights"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ExportCheckError(RuntimeError):
    """The stored weights give outputs further from the trained model's than allowed."""


def _fmt(v, digits=3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def weights_docstring(cfg, data_info: dict, init_info: dict, thresholds: dict, dev_scores: dict, train_info: dict,
                      precision: str, check: dict | None) -> str:
    """The weights' docstring: data, normalisation, window, thresholds, teachers (distillation), training."""
    from .models import ARCH_SPECS

    arch = str(cfg.model.arch)
    spec = ARCH_SPECS[arch]
    names = {"xlstm_seq": "XLSTMSeqPicker (sequential bidirectional mLSTM backbone)",
             "xlstm_unet": "XLSTMUNetPicker (xLSTM U-Net backbone)",
             "phasenet": "SeisBench PhaseNet architecture (Zhu & Beroza 2019), trained from scratch here",
             "eqtransformer": "SeisBench EQTransformer architecture (Mousavi et al. 2020), trained from scratch here"}
    lines = [f"{names[arch]}, fine-tuned with seisbench-xlstm's finetune runner (run '{cfg.name}', seed {cfg.seed})."]
    if init_info.get("init") == "pretrained":
        lines.append(f"Initialisation: backbone pretrained self-supervised ({init_info.get('recipe')}, "
                     f"{init_info.get('global_step')} steps; export {Path(str(init_info.get('export'))).name}); "
                     "head from scratch.")
    else:
        lines.append("Initialisation: random (no pretraining).")
    labelled = "; ".join(
        f"{Path(i['path']).name}: {i['labelled_train']} of {i['train']} train traces with analyst picks"
        + (f" (+{i['unlabelled_train']} with teacher picks only)" if i.get("unlabelled_train") else "")
        + f", {i['dev']} dev traces" for i in data_info["labelled"])
    lines.append(f"Data: {labelled}; label fraction {data_info['label_fraction']:g} (chosen by event); model "
                 "selection and thresholds on the dev splits; test splits never used in training.")
    teachers = data_info.get("teachers") or []
    if teachers:
        p = cfg.pseudo
        parts = []
        for i in data_info["labelled"]:
            if "teacher_picks" in i:
                parts.append(f"{Path(i['path']).name}: {i['teacher_picks']['P']} P + {i['teacher_picks']['S']} S "
                             "teacher picks added to the train traces")
        if "continuous" in data_info:
            c = data_info["continuous"]
            parts.append(f"continuous records {', '.join(Path(r).name for r in c['records'])} (train part before "
                         f"{c['cut']}, {c['chunks']['train']} chunks, {c['picks']['train_P']} P + "
                         f"{c['picks']['train_S']} S teacher picks; {p.weight:g} of the training windows)")
        lines.append(
            f"DISTILLATION: trained in part on pseudo-labels of the teachers {', '.join(teachers)} (converted "
            f"original weights; PhaseNet: Zhu & Beroza 2019, EQTransformer: Mousavi et al. 2020, MIT licence): picks "
            f"of the mean of their P/S probability curves (thresholds P {p.P_threshold:g}, S {p.S_threshold:g}); "
            f"analyst picks win: a teacher pick within {p.analyst_tolerance:g} s of an analyst pick of either phase "
            f"is dropped. {'; '.join(parts)}.")
    else:
        lines.append("Teachers: none (analyst picks only).")
    norm = ("each window and channel demeaned, divided by its standard deviation" if spec.norm == "std"
            else "each window and channel demeaned, divided by its absolute peak")
    lines.append(f"Input: {spec.window_len}-sample windows at 100 Hz, components ZNE; normalisation: {norm}. "
                 f"Targets: Gaussian P/S labels (sigma {cfg.data.sigma:g} samples, SeisBench ProbabilisticLabeller); "
                 "augmentations: second events, Gaussian noise, annotate-like gaps, channel dropout, amplitude "
                 "scaling; real pre-arrival noise windows, never padded.")
    tol = cfg.selection.tolerance
    th = ", ".join(f"{ph} {thresholds[ph]:g} (dev F1 {_fmt(dev_scores.get(f'f1_{ph}', float('nan')))})"
                   for ph in sorted(thresholds))
    lines.append(f"Thresholds (default_args) tuned on the whole dev traces with classify, F1 of picks within "
                 f"{tol:g} s: {th}.")
    lines.append(f"Training: {train_info.get('epochs')} epochs, {train_info.get('steps')} steps, "
                 f"{_fmt(train_info.get('minutes', float('nan')), 1)} min on {train_info.get('device')}; best epoch "
                 f"{train_info.get('best_epoch')} by {cfg.selection.monitor}.")
    names = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
    stored = names[check["precision"] if check else precision]
    if check and check.get("requested_precision"):
        stored += (f" ({names[check['requested_precision']]} was asked for, but changed the output probabilities by "
                   f"up to {check['half_precision_diff']:.2g} on {check['windows']} dev windows, above "
                   f"{cfg.export.check_tolerance:g})")
    elif check and check["windows"]:
        stored += (f" (output probabilities within {check['max_abs_diff']:.2g} of the float32 model on "
                   f"{check['windows']} dev windows)")
    lines.append(f"Weights stored in {stored}.")
    if cfg.export.note:
        lines.append(str(cfg.export.note))
    return "\n".join(lines)


def _set_version(path_json: Path, version: str) -> None:
    metadata = json.loads(path_json.read_text())
    if str(metadata.get("version")) != str(version):
        metadata["version"] = str(version)
        path_json.write_text(json.dumps(metadata, indent=4))


def export_weights(model, arch: str, stem: Path, version: str, precision: str, docstring_fn, check_windows,
                   check_tolerance: float, default_args: dict, fallback_fp32: bool = True) -> dict:
    """Writes ``stem.json.v<version>`` + ``stem.pt.v<version>`` and checks them (see the module docstring).

    :param docstring_fn: ``check -> docstring`` (the check result goes into the docstring; ``None`` on a first
        pass, before it is measured)
    :param check_windows: normalised windows ``(n, 3, W)`` to compare outputs on (``n`` may be 0: no check)
    :param fallback_fp32: when half-precision weights fail the check, store float32 instead (else fail)
    :return: ``{"json", "pt", "bytes", "max_abs_diff", "windows", "precision"}``, plus ``"requested_precision"``
        and ``"half_precision_diff"`` after a fallback
    """
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().float().eval()
    model.default_args = {**dict(getattr(model, "default_args", {}) or {}), **default_args}
    cls = type(model)
    path_json, path_pt = cls._get_weights_file_paths(stem, version)
    x = torch.as_tensor(check_windows, dtype=torch.float32)
    reference = None
    if len(x):
        with torch.no_grad():
            reference = probabilities(model, arch, x)

    def write(docstring: str, dtype: str) -> None:
        stored = copy.deepcopy(model).to(DTYPES[dtype])
        stored.save(stem, weights_docstring=docstring, version_str=str(version))
        _set_version(path_json, version)

    def measure(dtype: str) -> dict:
        write(docstring_fn(None), dtype)  # first pass: measure the stored precision
        if reference is None:
            return {"max_abs_diff": 0.0, "windows": 0, "precision": dtype}
        loaded = cls.load(stem, version_str=str(version)).float().eval()
        with torch.no_grad():
            diff = float((probabilities(loaded, arch, x) - reference).abs().max())
        return {"max_abs_diff": diff, "windows": int(len(x)), "precision": dtype}

    def remove() -> None:
        for p in (path_json, path_pt):
            Path(p).unlink(missing_ok=True)

    check = measure(precision)
    if not check["max_abs_diff"] <= check_tolerance and precision != "fp32" and fallback_fp32:
        print(f"[export] {precision} weights change the output probabilities by up to {check['max_abs_diff']:.3g} "
              f"on {check['windows']} dev windows (allowed {check_tolerance}): storing fp32 instead", flush=True)
        check = {**measure("fp32"), "requested_precision": precision, "half_precision_diff": check["max_abs_diff"]}
    if not check["max_abs_diff"] <= check_tolerance:
        remove()
        raise ExportCheckError(
            f"Stored {check['precision']} weights change the output probabilities by up to "
            f"{check['max_abs_diff']:.3g} on {check['windows']} dev windows (allowed {check_tolerance}); files "
            "removed. Export in a higher precision (export.precision=fp32), raise export.check_tolerance, or leave "
            "export.fallback_fp32 on."
        )
    write(docstring_fn(check), check["precision"])
    loaded = cls.load(stem, version_str=str(version))
    for key, value in default_args.items():
        if loaded.default_args.get(key) != value:
            raise ExportCheckError(f"{path_json}: default_args[{key!r}] reads back as {loaded.default_args.get(key)}")
    return {"json": str(path_json), "pt": str(path_pt), "bytes": Path(path_pt).stat().st_size, **check}
