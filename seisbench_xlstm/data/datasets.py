"""Open SeisBench datasets by name or by path, offline, with clear errors when something is missing.

Every dataset, whether one of the published SeisBench datasets in the local cache or a local folder in
SeisBench format (``metadata[$CHUNK].csv`` + ``waveforms[$CHUNK].hdf5``), is opened through the same
function (:func:`open_folder`), which builds a plain :class:`seisbench.data.WaveformDataset` on the folder.
Names are resolved to folders with SeisBench's own dataset classes (``seisbench.data.ETHZ`` ...), but
those classes are *not* instantiated by default, because their constructors contact the SeisBench
remote when a file is missing. :func:`check_available` looks at the files first and raises
:class:`DatasetNotAvailableError` at once (no network, no traceback from ``requests``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import seisbench
import seisbench.data as sbd
import seisbench.util

from .resample import use_annotate_resampler
__all__ = [
    "DATASET_NAMES",
    "EXTRA_DATASET_NAMES",
    "DatasetNotAvailableError",
    "DatasetLocation",
    "check_available",
    "open_dataset",
    "open_folder",
    "locate_dataset",
    "shared_data_dir",
    "DEFAULT_SAMPLING_RATE",
    "DEFAULT_COMPONENT_ORDER",
]

DEFAULT_SAMPLING_RATE = 100.0
DEFAULT_COMPONENT_ORDER = "ZNE"

#: The eight published datasets this package trains and benchmarks on (name -> SeisBench classes).
_REGISTRY: dict[str, tuple[type, ...]] = {
    "ethz": (sbd.ETHZ,),
    "geofon": (sbd.GEOFON,),
    "stead": (sbd.STEAD,),
    # INSTANCE = events in counts + the noise set, like seisbench.data.InstanceCountsCombined
    "instance": (sbd.InstanceCounts, sbd.InstanceNoise),
    "mlaapde": (sbd.MLAAPDE,),
    "iquique": (sbd.Iquique,),
    "pnw": (sbd.PNW,),
    "obst2024": (sbd.OBST2024,),
}
#: Names of the eight datasets, in the order of the issue.
DATASET_NAMES: tuple[str, ...] = tuple(_REGISTRY)

#: Further names accepted by :func:`open_dataset` (parts and relatives of the eight).
_EXTRA: dict[str, tuple[type, ...]] = {
    "instancecounts": (sbd.InstanceCounts,),
    "instancenoise": (sbd.InstanceNoise,),
    "instancegm": (sbd.InstanceGM,),
    "pnwnoise": (sbd.PNWNoise,),
    "pnwexotic": (sbd.PNWExotic,),
    "pnwaccelerometers": (sbd.PNWAccelerometers,),
}
EXTRA_DATASET_NAMES: tuple[str, ...] = tuple(_EXTRA)


class DatasetNotAvailableError(FileNotFoundError):
    """A dataset is not on this machine. The message names the path looked at and how to provide it."""


@dataclass
class DatasetLocation:
    """Where a dataset lives and which of its chunks are there.

    :ivar name: dataset name (SeisBench class name for cached datasets, folder name for local folders).
    :ivar path: folder with ``metadata[$CHUNK].csv`` and ``waveforms[$CHUNK].hdf5``.
    :ivar chunks: chunks present (``[""]`` for an unchunked dataset).
    :ivar sb_class: the SeisBench class for cached datasets, ``None`` for local folders.
    """

    name: str
    path: Path
    chunks: list[str] = field(default_factory=list)
    sb_class: type | None = None


def shared_data_dir() -> Path:
    """The project's shared read-only data folder (``../shared/data`` from the repository root).

    Overridable with the environment variable ``SEISBENCH_XLSTM_SHARED_DATA``.
    """
    env = os.environ.get("SEISBENCH_XLSTM_SHARED_DATA")
    if env:
        return Path(env)
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


def _how_to_provide(display: str, path: Path, cls: type | None) -> str:
    if cls is not None:
        cache = Path(seisbench.cache_root)
        rel = path.relative_to(cache) if path.is_relative_to(cache) else path
        return (
            f"This package never downloads datasets on its own (offline machines would hang). To provide "
            f"{display}:\n"
            f"  (a) on a machine with internet: SEISBENCH_CACHE_ROOT=/some/dir python -c "
            f"\"import seisbench.data as sbd; sbd.{cls.__name__}()\"\n"
            f"      then copy /some/dir/{rel} to {path} (or point SEISBENCH_CACHE_ROOT at a copy of that "
            f"cache; this process uses SEISBENCH_CACHE_ROOT={cache});\n"
            f"  (b) or open a local copy by path: open_dataset('/path/to/{path.name}');\n"
            f"  (c) or, on a networked machine, let SeisBench download it: open_dataset(..., allow_download=True)."
        )
    return (
        f"Give the path of a folder with metadata.csv and waveforms.hdf5 (SeisBench format), or one of "
        f"the dataset names {', '.join(DATASET_NAMES + EXTRA_DATASET_NAMES)}."
    )


def _scan_folder(path: Path) -> tuple[list[str], list[str]]:
    """Return (complete chunks, problems) for a folder in SeisBench layout, without any network access."""
    problems: list[str] = []
    if not path.is_dir():
        return [], [f"folder {path} does not exist"]

    if (path / "metadata.csv").is_file() and (path / "waveforms.hdf5").is_file():
        return [""], problems

    declared: list[str] | None = None
    if (path / "chunks").is_file():
        declared = [x.strip() for x in (path / "chunks").read_text().split("\n") if x.strip()]

    meta = {p.name[len("metadata") : -len(".csv")] for p in path.glob("metadata*.csv")}
    wave = {p.name[len("waveforms") : -len(".hdf5")] for p in path.glob("waveforms*.hdf5")}
    complete = sorted(meta & wave)
    for chunk in sorted(meta - wave):
        problems.append(f"waveforms{chunk}.hdf5 missing next to metadata{chunk}.csv")
    for chunk in sorted(wave - meta):
        problems.append(f"metadata{chunk}.csv missing next to waveforms{chunk}.hdf5")
    partial = sorted(p.name for p in path.glob("*.partial"))
    if partial:
        problems.append(
            f"unfinished download(s) {', '.join(partial)} (delete them and download again)"
        )
    if declared:
        missing = [c for c in declared if c not in complete]
        if missing:
            problems.append(
                f"'chunks' file lists {len(declared)} chunks, {len(missing)} of them missing "
                f"(e.g. {', '.join(repr(c) for c in missing[:5])})"
            )
    return complete, problems


def _static_chunks(cls: type) -> list[str] | None:
    """Chunks a SeisBench class declares without network access (MLAAPDE lists them statically)."""
    if cls.__dict__.get("available_chunks") is not None and isinstance(
        cls.__dict__["available_chunks"], staticmethod
    ):
        return list(cls.available_chunks())
    return None


def _locate_one(
    cls: type | None,
    path: Path,
    display: str,
    chunks: Sequence[str] | Literal["available"] | None,
) -> DatasetLocation:
    present, problems = _scan_folder(path)
    name = cls.__name__ if cls is not None else path.name

    if cls is not None:
        expected = _static_chunks(cls)
        if expected is None and (path / "chunks").is_file():
            expected = [x.strip() for x in (path / "chunks").read_text().split("\n") if x.strip()]
        if expected is None:
            expected = present if present else [""]
    else:
        expected = present

    if chunks is None:
        wanted = expected
    elif chunks == "available":
        wanted = present
    else:
        wanted = list(chunks)

    missing = [c for c in wanted if c not in present]
    if not present or missing or not wanted:
        looked = (
            f"{path}/metadata.csv + waveforms.hdf5"
            if wanted in ([""], [])
            else f"{path}/metadata$CHUNK.csv + waveforms$CHUNK.hdf5 for chunks "
            f"{', '.join(repr(c) for c in missing[:8])}{f' (+{len(missing) - 8} more)' if len(missing) > 8 else ''}"
        )
        detail = (" Found: " + "; ".join(problems) + ".") if problems else ""
        hint = ""
        if present and missing:
            hint = (
                f"\n{len(present)} chunk(s) are present; pass chunks='available' (or a list) to use only those."
            )
        raise DatasetNotAvailableError(
            f"Dataset {display} is not available offline: looked for {looked}.{detail}{hint}\n"
            + _how_to_provide(display, path, cls)
        )
    return DatasetLocation(name=name, path=path, chunks=list(wanted), sb_class=cls)


def locate_dataset(
    name_or_path: str | os.PathLike,
    chunks: Sequence[str] | Literal["available"] | None = None,
) -> list[DatasetLocation]:
    """Resolve a dataset name or path to folder(s) and check the files are there (never touches the network).

    :param name_or_path: one of :data:`DATASET_NAMES` / :data:`EXTRA_DATASET_NAMES` (case-insensitive), or a
        folder in SeisBench format.
    :param chunks: chunks to use; ``None`` = all chunks the dataset has; ``"available"`` = the chunks present.
    :return: one :class:`DatasetLocation` per component folder (two for ``"instance"``).
    :raises DatasetNotAvailableError: files missing; the message says where it looked and how to provide it.
    :raises ValueError: unknown name that is not an existing path either.
    """
    key = str(name_or_path).strip().lower()
    is_pathlike = isinstance(name_or_path, os.PathLike) or os.sep in str(name_or_path)
    if not is_pathlike and (key in _REGISTRY or key in _EXTRA):
        classes = _REGISTRY.get(key) or _EXTRA[key]
        return [
            _locate_one(cls, Path(cls._path_internal()), f"'{key}' ({cls.__name__})", chunks)
            for cls in classes
        ]
    path = Path(name_or_path).expanduser()
    if not is_pathlike and not path.exists():
        raise ValueError(
            f"Unknown dataset {str(name_or_path)!r}: not one of "
            f"{', '.join(DATASET_NAMES + EXTRA_DATASET_NAMES)} and no folder of that name exists "
            f"(looked at {path.resolve()})."
        )
    return [_locate_one(None, path.resolve(), f"folder {str(name_or_path)!r}", chunks)]


def check_available(
    name_or_path: str | os.PathLike,
    chunks: Sequence[str] | Literal["available"] | None = None,
) -> list[DatasetLocation]:
    """Alias of :func:`locate_dataset`: raise :class:`DatasetNotAvailableError` if files are missing."""
    return locate_dataset(name_or_path, chunks=chunks)


@contextlib.contextmanager
def _no_network(display: str):
    """Make any SeisBench download attempt fail fast with DatasetNotAvailableError (belt and braces)."""
    original = seisbench.util.download_http

    def refuse(url, *args, **kwargs):
        raise DatasetNotAvailableError(
            f"{display}: SeisBench tried to download {url}; refused (offline mode). "
            f"Use allow_download=True on a networked machine."
        )

    seisbench.util.download_http = refuse
    try:
        yield
    finally:
        seisbench.util.download_http = original


def open_folder(
    location: DatasetLocation,
    *,
    sampling_rate: float | None = DEFAULT_SAMPLING_RATE,
    component_order: str = DEFAULT_COMPONENT_ORDER,
    dimension_order: str = "NCW",
    cache: Literal["full", "trace", None] = None,
    missing_components: Literal["pad", "copy", "ignore"] = "pad",
    **kwargs,
) -> sbd.WaveformDataset:
    """Open one folder as a :class:`seisbench.data.WaveformDataset` (the single code path for all datasets).

    Waveforms come out resampled to ``sampling_rate`` (100 Hz) with the resampler of SeisBench's annotate
    (:mod:`.resample`), in ``component_order`` (ZNE), channels-first: ``get_waveforms(i)`` has shape
    ``(3, n_samples)``.
    ``cache=None`` reads lazily from HDF5 (streaming, data larger than memory); ``"full"`` only on request.
    """
    with _no_network(f"dataset {location.name}"):
        ds = sbd.WaveformDataset(
            location.path,
            name=location.name,
            chunks=location.chunks,
            sampling_rate=sampling_rate,
            component_order=component_order,
            dimension_order=dimension_order,
            cache=cache,
            missing_components=missing_components,
            **kwargs,
        )
    return use_annotate_resampler(ds)


def open_dataset(
    name_or_path: str | os.PathLike,
    *,
    sampling_rate: float | None = DEFAULT_SAMPLING_RATE,
    component_order: str = DEFAULT_COMPONENT_ORDER,
    dimension_order: str = "NCW",
    cache: Literal["full", "trace", None] = None,
    chunks: Sequence[str] | Literal["available"] | None = None,
    missing_components: Literal["pad", "copy", "ignore"] = "pad",
    allow_download: bool = False,
    **kwargs,
) -> sbd.WaveformDataset | sbd.MultiWaveformDataset:
    """Open a published SeisBench dataset by name, or any local SeisBench-format folder by path.

    :param name_or_path: ``"ethz"``, ``"geofon"``, ``"stead"``, ``"instance"`` (counts + noise),
        ``"mlaapde"``, ``"iquique"``, ``"pnw"``, ``"obst2024"`` (case-insensitive; see also
        :data:`EXTRA_DATASET_NAMES`), or a path to a folder with ``metadata.csv`` + ``waveforms.hdf5``.
        Named datasets are looked up in ``$SEISBENCH_CACHE_ROOT/datasets/<name>``.
    :param sampling_rate: output rate in Hz (traces are resampled on read, as annotate resamples). Default 100.
    :param component_order: output component order. Default ``"ZNE"``; missing components are zero-padded.
    :param dimension_order: ``"NCW"`` = channels-first: ``get_waveforms(i)`` is ``(C, W)``.
    :param cache: ``None`` (default): lazy HDF5 reads, for data larger than memory.
        ``"trace"``/``"full"``: keep what was read in memory (``"full"`` loads whole HDF5 blocks).
    :param chunks: SeisBench chunks to open (e.g. MLAAPDE months); ``"available"`` = those present locally.
    :param allow_download: if True, instantiate the SeisBench class, which downloads missing files (needs
        internet). Default False: a missing dataset raises :class:`DatasetNotAvailableError` at once.
    :param kwargs: passed to :class:`seisbench.data.WaveformDataset` (e.g. ``metadata_cache=True``).
    :return: a ``WaveformDataset`` (a ``MultiWaveformDataset`` for ``"instance"``).
    """
    common = dict(
        sampling_rate=sampling_rate,
        component_order=component_order,
        dimension_order=dimension_order,
        cache=cache,
        missing_components=missing_components,
        **kwargs,
    )
    key = str(name_or_path).strip().lower()
    if allow_download and (key in _REGISTRY or key in _EXTRA):
        classes = _REGISTRY.get(key) or _EXTRA[key]
        sb_chunks = None if chunks in (None, "available") else list(chunks)
        parts = [use_annotate_resampler(cls(chunks=sb_chunks, **common)) for cls in classes]
    else:
        parts = [open_folder(loc, **common) for loc in locate_dataset(name_or_path, chunks)]
    if len(parts) == 1:
        return parts[0]
    return sbd.MultiWaveformDataset(parts)
