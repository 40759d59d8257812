"""Reads TensorFlow (V2 "tensor bundle") checkpoints with numpy alone, so that no TensorFlow is needed at run time.

A checkpoint ``PREFIX`` is two or more files:

- ``PREFIX.index``: an SSTable (LevelDB's table format). Keys are tensor names; each value is a serialised
  ``BundleEntryProto`` (dtype, shape, shard, byte offset, byte size, masked CRC32C of the bytes). The empty key
  holds a ``BundleHeaderProto`` (number of shards, endianness).
- ``PREFIX.data-SSSSS-of-NNNNN``: the raw tensor bytes of each shard, in C order.

Only what TensorFlow's writer produces for ordinary variables is supported: uncompressed table blocks, numeric
dtypes, unpartitioned tensors. Anything else raises :class:`CheckpointFormatError` saying what was found.
Checksums (of every table block and of every tensor read) are verified, so truncated or corrupt files are reported,
never silently read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CheckpointFormatError", "TensorEntry", "TFCheckpoint", "crc32c", "mask_crc", "read_checkpoint"]

TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB/TensorFlow table footer magic number
FOOTER_SIZE = 48  # two block handles padded to 40 bytes, plus the 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type (1 byte) + masked CRC32C (4 bytes)

#: TensorFlow DataType enum values (tensorflow/core/framework/types.proto) -> numpy dtype.
TF_DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    17: np.uint16,
    19: np.float16,
    22: np.uint32,
    23: np.uint64,
}
TF_DTYPE_NAMES = {7: "string", 8: "complex64", 14: "bfloat16", 18: "complex128", 20: "resource", 21: "variant"}


class CheckpointFormatError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or uses a feature this reader does not support."""


# --- CRC32C (Castagnoli), as used by LevelDB tables and TensorFlow bundles -------------------------------------------

def _crc32c_table() -> list[int]:
    poly = 0x82F63B78  # reflected Castagnoli polynomial
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32C of ``data`` (continuing from ``crc``); ``crc32c(b"123456789") == 0xE3069283``."""
    table = _CRC_TABLE
    c = crc ^ 0xFFFFFFFF
    for byte in data:
        c = table[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """LevelDB's CRC masking (rotate right by 15 and add a constant), used for stored checksums."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# --- protobuf wire format (the few message types needed) -------------------------------------------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise CheckpointFormatError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointFormatError("varint longer than 10 bytes")


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """Decodes a protobuf message into (field number, wire type, value) triples."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = bytes(buf[pos : pos + size]), pos + size
            if pos > len(buf):
                raise CheckpointFormatError("truncated length-delimited field")
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise CheckpointFormatError(f"unsupported protobuf wire type {wire}")
        out.append((field, wire, value))
    return out


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's ``BundleEntryProto``: where its bytes are and how to read them."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None
    sliced: bool

    @classmethod
    def parse(cls, name: str, buf: bytes) -> "TensorEntry":
        dtype, shape, shard, offset, size, crc, sliced = 0, (), 0, 0, 0, None, False
        for field, _, value in _fields(buf):
            if field == 1:
                dtype = value
            elif field == 2:
                dims = []
                for f2, _, v2 in _fields(value):
                    if f2 == 2:  # Dim
                        dims.append(next((v3 for f3, _, v3 in _fields(v2) if f3 == 1), 0))
                    elif f2 == 3 and v2:
                        raise CheckpointFormatError(f"tensor {name!r} has unknown rank")
                shape = tuple(int(d) for d in dims)
            elif field == 3:
                shard = value
            elif field == 4:
                offset = value
            elif field == 5:
                size = value
            elif field == 6:
                crc = value
            elif field == 7:
                sliced = True
        return cls(name, dtype, shape, shard, offset, size, crc, sliced)


# --- SSTable ----------------------------------------------------------------------------------------------------------

def _block_handle(buf: bytes, pos: int) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return (offset, size), pos


def _read_block(data: bytes, handle: tuple[int, int], path: Path) -> bytes:
    offset, size = handle
    end = offset + size + BLOCK_TRAILER_SIZE
    if end > len(data):
        raise CheckpointFormatError(f"{path}: table block at {offset} runs past the end of the file (truncated?)")
    contents = data[offset : offset + size]
    kind = data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if mask_crc(crc32c(data[offset : offset + size + 1])) != stored:
        raise CheckpointFormatError(f"{path}: checksum mismatch in the table block at byte {offset} (corrupt file)")
    if kind != 0:
        raise CheckpointFormatError(f"{path}: compressed table block (type {kind}); only uncompressed is supported")
    return contents


def _block_entries(block: bytes, path: Path) -> list[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise CheckpointFormatError(f"{path}: table block too short")
    (n_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * n_restarts
    if limit < 0:
        raise CheckpointFormatError(f"{path}: bad restart array in a table block")
    entries, pos, key = [], 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise CheckpointFormatError(f"{path}: bad entry in a table block")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
    return entries


def read_table(path: str | Path) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of an SSTable file, in key order."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < FOOTER_SIZE:
        raise CheckpointFormatError(f"{path}: {len(data)} bytes, too short for a table file")
    (magic,) = struct.unpack_from("<Q", data, len(data) - 8)
    if magic != TABLE_MAGIC:
        raise CheckpointFormatError(f"{path}: not a TensorFlow checkpoint index (bad table magic number)")
    footer = data[len(data) - FOOTER_SIZE :]
    _metaindex, pos = _block_handle(footer, 0)
    index_handle, _ = _block_handle(footer, pos)
    entries = []
    for _, handle_bytes in _block_entries(_read_block(data, index_handle, path), path):
        handle, _ = _block_handle(handle_bytes, 0)
        entries.extend(_block_entries(_read_block(data, handle, path), path))
    return entries


# --- the checkpoint ---------------------------------------------------------------------------------------------------

class TFCheckpoint:
    """A TensorFlow V2 checkpoint opened from its prefix (``model_95.ckpt`` for ``model_95.ckpt.index`` etc.).

    ``names()`` lists the tensors, ``shape(name)`` gives a shape, ``read(name)`` returns a numpy array (C order,
    TensorFlow's layout, e.g. a conv2d kernel as ``(height, width, in, out)``), ``read_all()`` all numeric tensors.
    """

    def __init__(self, prefix: str | Path, verify: bool = True):
        self.prefix = Path(prefix)
        self.verify = verify
        index = Path(str(self.prefix) + ".index")
        if not index.is_file():
            raise CheckpointFormatError(f"checkpoint index {index} does not exist")
        self.num_shards = 1
        self.big_endian = False
        self.entries: dict[str, TensorEntry] = {}
        for key, value in read_table(index):
            if key == b"":
                for field, _, v in _fields(value):
                    if field == 1:
                        self.num_shards = v
                    elif field == 2:
                        self.big_endian = v == 1
                continue
            name = key.decode("utf-8")
            self.entries[name] = TensorEntry.parse(name, value)
        self._shards: dict[int, bytes] = {}

    def names(self) -> list[str]:
        return sorted(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def _entry(self, name: str) -> TensorEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} is not in checkpoint {self.prefix}") from None

    def _shard(self, shard_id: int) -> bytes:
        if shard_id not in self._shards:
            path = Path(f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}")
            if not path.is_file():
                raise CheckpointFormatError(f"checkpoint data file {path} does not exist")
            self._shards[shard_id] = path.read_bytes()
        return self._shards[shard_id]

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a numpy array of its stored dtype and shape."""
        e = self._entry(name)
        if e.sliced:
            raise CheckpointFormatError(f"tensor {name!r} is stored in slices (partitioned); not supported")
        if e.dtype not in TF_DTYPES:
            kind = TF_DTYPE_NAMES.get(e.dtype, f"enum {e.dtype}")
            raise CheckpointFormatError(f"tensor {name!r} has dtype {kind}; only numeric dtypes are supported")
        dtype = np.dtype(TF_DTYPES[e.dtype]).newbyteorder(">" if self.big_endian else "<")
        count = int(np.prod(e.shape, dtype=np.int64))
        if count * dtype.itemsize != e.size:
            raise CheckpointFormatError(
                f"tensor {name!r}: {e.size} bytes stored for shape {e.shape} of {dtype} ({count * dtype.itemsize})"
            )
        data = self._shard(e.shard_id)
        if e.offset + e.size > len(data):
            raise CheckpointFormatError(
                f"tensor {name!r} runs past the end of data shard {e.shard_id} (truncated checkpoint?)"
            )
        raw = data[e.offset : e.offset + e.size]
        if self.verify and e.crc32c is not None and mask_crc(crc32c(raw)) != e.crc32c:
            raise CheckpointFormatError(f"tensor {name!r}: checksum mismatch (corrupt checkpoint data)")
        return np.frombuffer(raw, dtype=dtype).reshape(e.shape).astype(dtype.newbyteorder("="))

    def read_all(self) -> dict[str, np.ndarray]:
        """Every numeric, unpartitioned tensor by name (others are left out)."""
        out = {}
        for name, e in sorted(self.entries.items()):
            if e.dtype in TF_DTYPES and not e.sliced:
                out[name] = self.read(name)
        return out


def read_checkpoint(prefix: str | Path, verify: bool = True) -> dict[str, np.ndarray]:
    """Shortcut for ``TFCheckpoint(prefix, verify).read_all()``."""
    return TFCheckpoint(prefix, verify=verify).read_all()
