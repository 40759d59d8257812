"""Saving, loading and offline lookup of picker weights.

SeisBench keeps weight lookup in its model base class (``SeisBenchModel``); the xLSTM pickers get theirs from
:class:`OfflineWeightsMixin`, which comes before ``WaveformModel`` in their bases. It never contacts a server.

Named weights (:meth:`~OfflineWeightsMixin.from_pretrained`) are ``NAME.json[.vVERSION]`` + ``NAME.pt[.vVERSION]``
in two folders, one subfolder per model class (lower-case class name):

1. ``$SEISBENCH_CACHE_ROOT/models/v3/<class>/`` (SeisBench's cache), and
2. ``seisbench_xlstm/weights/<class>/`` (shipped with the package).

``"latest"`` is the newest version across both folders; where both hold the same version, the cache wins, so a
user can override shipped weights without touching the installed package. A file without a version suffix
counts as the version in its JSON (``"version"``, default ``"1"``), as in SeisBench.

Metadata files are checked before anything is built: unknown top-level keys, unknown ``model_args`` and unknown
``default_args`` raise :class:`CorruptWeightsError` naming the valid ones, so a typo never loads silently with
defaults.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from packaging import version as pversion

#: Folder of weights shipped inside the package, one subfolder per model class (lower-case class name).
PACKAGE_WEIGHTS_ROOT = Path(__file__).parent / "weights"

#: Top-level keys of a SeisBench weights metadata file (``SeisBenchModel.save`` and ``from_pretrained``).
METADATA_KEYS = ("default_args", "docstring", "model_args", "seisbench_requirement", "version")


class WeightsNotFoundError(FileNotFoundError):
    """Raised when named weights are neither shipped with the package nor in the SeisBench cache."""


class CorruptWeightsError(ValueError):
    """Raised when a weights or metadata file cannot be used: truncated, not JSON, unknown keys, or another model."""


def _read_metadata(path_json: Path) -> dict:
    try:
        metadata = json.loads(Path(path_json).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptWeightsError(f"Metadata file {path_json} is not valid JSON ({e}).") from e
    if not isinstance(metadata, dict):
        raise CorruptWeightsError(f"Metadata file {path_json} holds a {type(metadata).__name__}, not a JSON object.")
    return metadata


class OfflineWeightsMixin:
    """Offline ``from_pretrained``/``list_pretrained``/``list_versions`` and checked ``load``/``save``.

    The model class may list ``_passthrough_model_args`` (keys its constructor passes on through ``**kwargs``)
    and provides ``_check_default_args(dict)`` (``ValueError`` for annotate arguments it does not accept).
    """

    # ------------------------------------------------------------------ folders and versions
    @classmethod
    def _weight_dirs(cls) -> list[Path]:
        """Folders searched for named weights, in order of precedence for equal versions."""
        return [cls._model_path(), PACKAGE_WEIGHTS_ROOT / cls._name_internal().lower()]

    @classmethod
    def _candidates(cls, name: str) -> list[tuple[str, Path, str | None]]:
        """``(version, folder, file suffix or None)`` for every complete (json + pt) copy of ``name``."""
        found = []
        for folder in cls._weight_dirs():
            if not folder.is_dir():
                continue
            files = {f.name for f in folder.iterdir()}
            for f in sorted(files):
                stem, ftype, suffix = cls._parse_weight_filename(f)
                if stem != name or ftype != "json":
                    continue
                if f.replace(".json", ".pt", 1) not in files:
                    continue
                if suffix is None:
                    version = str(_read_metadata(folder / f).get("version", "1"))
                else:
                    version = suffix
                found.append((version, folder, suffix))
        return found

    @classmethod
    def list_versions(cls, name: str, remote: bool = True) -> list[str]:
        """Versions of ``name`` available offline (package folder and ``SEISBENCH_CACHE_ROOT``), oldest first.

        ``remote`` is accepted for SeisBench compatibility and ignored: nothing is ever looked up online.
        """
        versions = {v for v, _, _ in cls._candidates(name)}
        return sorted(versions, key=pversion.parse)

    @classmethod
    def list_pretrained(cls, details: bool = False, remote: bool = True):
        """Names of the weights available offline; with ``details``, a dict of name to the newest docstring.

        ``remote`` is accepted for SeisBench compatibility and ignored: nothing is ever looked up online.
        """
        names = set()
        for folder in cls._weight_dirs():
            if folder.is_dir():
                for f in folder.iterdir():
                    stem, ftype, _ = cls._parse_weight_filename(f)
                    if stem is not None and ftype == "json":
                        names.add(stem)
        names = sorted(n for n in names if cls._candidates(n))
        if not details:
            return names
        return {n: cls._get_latest_docstring(n, remote=False) for n in names}

    @classmethod
    def _get_latest_docstring(cls, name: str, remote: bool = False):
        """Docstring of the newest offline version of ``name`` (``remote`` ignored, as everywhere here)."""
        return _read_metadata(cls._find_weights(name, "latest")[0]).get("docstring")

    @classmethod
    def _find_weights(cls, name: str, version_str: str) -> tuple[Path, Path, str | None]:
        """Newest (or the requested) version of ``name``: ``(json path, path stem, file suffix or None)``."""
        candidates = cls._candidates(name)
        if version_str != "latest":
            candidates = [c for c in candidates if c[0] == str(version_str)]
        if not candidates:
            available = cls.list_versions(name)
            what = f"version {version_str} of {name!r}" if available else f"weights named {name!r}"
            raise WeightsNotFoundError(
                f"No {what} for {cls.__name__}. Looked in: {', '.join(str(d) for d in cls._weight_dirs())}. "
                f"Versions of {name!r} available offline: {available or 'none'}; all names: "
                f"{cls.list_pretrained() or 'none'}. seisbench-xlstm never downloads weights: copy "
                f"'{name}.json.v<version>' and '{name}.pt.v<version>' into {cls._model_path()} "
                f"(SEISBENCH_CACHE_ROOT), or load a saved model with {cls.__name__}.load(path)."
            )
        # max() keeps the first of equal versions: the cache comes first in _weight_dirs.
        best_version, folder, suffix = max(candidates, key=lambda c: pversion.parse(c[0]))
        path_json, _ = cls._get_weights_file_paths(folder / name, suffix)
        return path_json, folder / name, suffix

    @classmethod
    def from_pretrained(cls, name, version_str="latest", update=False, force=False, wait_for_file=False):
        """Loads named weights offline: the newest version across ``SEISBENCH_CACHE_ROOT`` and the package's
        ``weights/`` folder (the cache wins for equal versions), or ``version_str``.

        Never contacts the network; unknown names raise :class:`WeightsNotFoundError` at once, saying where
        weights were looked for and how to provide them. ``force`` and ``wait_for_file`` are accepted for
        SeisBench compatibility; ``update=True`` raises, since nothing can be downloaded.
        """
        if update:
            raise ValueError("seisbench-xlstm weights are not downloaded; update=True is not supported.")
        path_json, stem, suffix = cls._find_weights(name, version_str)
        model = cls.load(stem, version_str=suffix)
        cls._version_warnings(name, model.weights_version)
        return model

    # ------------------------------------------------------------------ checked metadata
    @classmethod
    def _model_arg_names(cls) -> set[str]:
        """Keys the constructor accepts (its own parameters plus ``_passthrough_model_args``)."""
        params = inspect.signature(cls.__init__).parameters
        own = {k for k, p in params.items() if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        return own | set(getattr(cls, "_passthrough_model_args", ()))

    @classmethod
    def check_metadata(cls, metadata: dict, source: str = "metadata") -> None:
        """Raises :class:`CorruptWeightsError` for unknown keys, naming the valid ones."""
        unknown = sorted(set(metadata) - set(METADATA_KEYS))
        if unknown:
            raise CorruptWeightsError(
                f"{source}: unknown top-level key(s) {unknown}. Valid keys: {list(METADATA_KEYS)}."
            )
        model_args = metadata.get("model_args", {})
        if not isinstance(model_args, dict):
            raise CorruptWeightsError(f"{source}: 'model_args' must be a JSON object, got {model_args!r}.")
        valid = sorted(cls._model_arg_names())
        unknown = sorted(set(model_args) - set(valid))
        if unknown:
            raise CorruptWeightsError(
                f"{source}: unknown model_args key(s) {unknown} for {cls.__name__}. Valid keys: {valid}."
            )
        default_args = metadata.get("default_args") or {}
        if not isinstance(default_args, dict):
            raise CorruptWeightsError(f"{source}: 'default_args' must be a JSON object, got {default_args!r}.")

    # ------------------------------------------------------------------ load and save
    @classmethod
    def load(cls, path, version_str=None, **kwargs):
        """Loads weights written by :meth:`save` (``PATH.json`` + ``PATH.pt``, with ``.vVERSION`` if given).

        Missing files raise :class:`WeightsNotFoundError`; unreadable files, unknown metadata keys and
        weights of another architecture raise :class:`CorruptWeightsError`.
        """
        path_json, path_pt = cls._get_weights_file_paths(path, version_str)
        for p in (path_json, path_pt):
            if not Path(p).is_file():
                raise WeightsNotFoundError(f"Weights file {p} does not exist.")
        metadata = _read_metadata(path_json)
        cls.check_metadata(metadata, str(path_json))
        cls._check_version_requirement(metadata)
        model_args = metadata.get("model_args", {})
        try:
            model = cls(**model_args)
        except (ValueError, TypeError) as e:
            raise CorruptWeightsError(
                f"{path_json} does not describe a {cls.__name__}{cls._architecture_hint(model_args)}: {e}"
            ) from e
        try:
            model._check_default_args(metadata.get("default_args") or {})
        except ValueError as e:
            raise CorruptWeightsError(f"{path_json}: default_args: {e}") from e
        kwargs.setdefault("map_location", "cpu")
        kwargs.setdefault("weights_only", True)
        try:
            state = torch.load(str(path_pt), **kwargs)
            model.load_state_dict(state)
        except (RuntimeError, EOFError, OSError) as e:
            # torch raises RuntimeError for truncated archives and for state dicts of another architecture.
            raise CorruptWeightsError(
                f"Could not load {cls.__name__} weights from {path_pt} with metadata {path_json}: {e}"
            ) from e
        except Exception as e:  # unpickling errors of non-tensor content
            if type(e).__name__ == "UnpicklingError":
                raise CorruptWeightsError(f"Weights file {path_pt} is not a PyTorch state dict: {e}") from e
            raise
        model._weights_metadata = metadata
        model._parse_metadata()
        if version_str is not None:
            stored = metadata.get("version")
            if stored is not None and str(stored) != str(version_str):
                warnings.warn(
                    f"{path_json}: file name says version {version_str}, metadata says {stored}; using "
                    f"{version_str} (the file name, which from_pretrained and list_versions go by).",
                    stacklevel=2,
                )
            model._weights_version = str(version_str)
        return model

    @classmethod
    def _architecture_hint(cls, model_args: dict) -> str:
        return ""

    def save(self, path, weights_docstring: str = "", version_str: str | None = None) -> None:
        """SeisBench's ``save``, plus the ``"version"`` field (``version_str``) in the metadata when given, so
        ``weights_version`` reports it after loading."""
        super().save(path, weights_docstring=weights_docstring, version_str=version_str)
        if version_str is not None:
            path_json, _ = self._get_weights_file_paths(path, version_str)
            metadata: dict[str, Any] = json.loads(Path(path_json).read_text())
            metadata["version"] = str(version_str)
            Path(path_json).write_text(json.dumps(metadata, indent=4))
