"""Ingest once, reuse afterwards: a folder of the cache per ingested source, stamped with its inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .run import ingest

__all__ = ["default_ingest_cache", "ingest_cached"]

#: File in an ingested folder that records the inputs it was made from.
STAMP = "ingest_inputs.json"


def default_ingest_cache() -> Path:
    """``$SEISBENCH_CACHE_ROOT/seisbench_xlstm/ingest`` (SeisBench's cache root)."""
    import seisbench

    return Path(seisbench.cache_root) / "seisbench_xlstm" / "ingest"


def ingest_cached(
    waveforms: str | os.PathLike,
    picks: str | os.PathLike,
    fmt: str,
    name: str,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> Path:
    """The dataset of :func:`~.run.ingest` with its default options in ``cache_dir/name``: converted on the first
    call, reused by later calls with the same inputs.

    :param cache_dir: default :func:`default_ingest_cache`
    :return: the dataset folder (``metadata.csv`` + ``waveforms.hdf5``)
    :raises ValueError: the folder holds an ingest of other inputs, or the ingest wrote no trace
    """
    out = Path(cache_dir or default_ingest_cache()) / name
    inputs = {"waveforms": str(Path(waveforms).resolve()), "picks": str(Path(picks).resolve()), "format": fmt}
    stamp = out / STAMP
    if (out / "metadata.csv").is_file() and (out / "waveforms.hdf5").is_file() and stamp.is_file():
        cached = json.loads(stamp.read_text())
        if cached != inputs:
            raise ValueError(f"{out} holds an ingest of {cached}, not of {inputs}: delete it or use another cache folder.")
        return out
    summary = ingest(waveforms, picks, fmt, out, overwrite=True, progress=progress)
    if summary.traces == 0:
        raise ValueError(f"Ingesting {inputs} wrote no trace:\n{summary.report()}")
    stamp.write_text(json.dumps(inputs))
    return out
