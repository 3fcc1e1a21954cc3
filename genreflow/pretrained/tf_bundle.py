"""Read a TensorFlow checkpoint (a "tensor bundle") without TensorFlow.

A bundle is ``<prefix>.index`` and ``<prefix>.data-NNNNN-of-MMMMM``. The index is a
LevelDB-format sorted table: data blocks of prefix-compressed ``key -> value`` entries,
an index block pointing at them and a 48-byte footer. Each key is a variable's name;
each value a ``BundleEntryProto`` (dtype, shape, shard, offset, size, CRC32C) saying
where the raw little-endian tensor lies in a data file. The empty key holds the
``BundleHeaderProto``. This module reads exactly that subset: uncompressed blocks,
unpartitioned tensors, the numeric dtypes. The files are untrusted input: every offset
and length is bounds-checked and a malformed file raises :class:`BundleError`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genreflow.errors import GenreflowError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
BLOCK_TRAILER_BYTES = 5  # compression type (1 byte) + masked CRC32C (4 bytes)
HEADER_KEY = b""

# tensorflow/core/framework/types.proto: DataType -> numpy dtype (little-endian)
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    19: np.dtype("<f2"),  # DT_HALF
}


class BundleError(GenreflowError):
    """A checkpoint file is not a tensor bundle this reader understands."""


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lies: ``BundleEntryProto``'s fields this reader uses."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    has_slices: bool


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise BundleError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` of a protobuf message; varints and
    length-delimited values are decoded, fixed32/fixed64 read as integers."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise BundleError("protobuf field runs past its message")
            yield field, wire, buf[pos : pos + length]
            pos += length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise BundleError("truncated fixed32 field")
            yield field, wire, struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        elif wire == 1:
            if pos + 8 > len(buf):
                raise BundleError("truncated fixed64 field")
            yield field, wire, struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        else:
            raise BundleError(f"unsupported protobuf wire type {wire}")


def _entry(value: bytes) -> BundleEntry:
    dtype = shard_id = offset = size = 0
    shape: list[int] = []
    has_slices = False
    for field, _, data in _proto_fields(value):
        if field == 1 and isinstance(data, int):
            dtype = data
        elif field == 2 and isinstance(data, bytes):  # TensorShapeProto
            for sub, _, dim in _proto_fields(data):
                if sub == 2 and isinstance(dim, bytes):  # Dim {size = 1}
                    sizes = [v for f, _, v in _proto_fields(dim) if f == 1]
                    shape.append(int(sizes[0]) if sizes else 0)
                elif sub == 3 and dim:
                    raise BundleError("tensor of unknown rank")
        elif field == 3 and isinstance(data, int):
            shard_id = data
        elif field == 4 and isinstance(data, int):
            offset = data
        elif field == 5 and isinstance(data, int):
            size = data
        elif field == 7:
            has_slices = True
    return BundleEntry(dtype, tuple(shape), shard_id, offset, size, has_slices)


def _block(data: bytes, offset: int, size: int) -> Iterator[tuple[bytes, bytes]]:
    """The ``(key, value)`` entries of one table block."""
    if offset < 0 or offset + size + BLOCK_TRAILER_BYTES > len(data):
        raise BundleError("table block lies outside the index file")
    if data[offset + size] != 0:
        raise BundleError("compressed table blocks are not supported")
    block = data[offset : offset + size]
    if size < 4:
        raise BundleError("table block too short")
    n_restarts = struct.unpack_from("<I", block, size - 4)[0]
    end = size - 4 - 4 * n_restarts
    if end < 0:
        raise BundleError("table block restart array larger than the block")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + value_len > end:
            raise BundleError("table entry runs past its block")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_len]
        pos += value_len


def _handle(buf: bytes, pos: int) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


def read_index(index_path: str | os.PathLike[str]) -> dict[str, BundleEntry]:
    """Every tensor's entry in a bundle's ``.index`` file, by variable name.

    Raises:
        BundleError: not a table, compressed, or malformed.
    """
    data = Path(index_path).read_bytes()
    if len(data) < FOOTER_BYTES:
        raise BundleError(f"{index_path}: too short for a checkpoint index")
    footer = data[-FOOTER_BYTES:]
    if struct.unpack_from("<Q", footer, 40)[0] != TABLE_MAGIC:
        raise BundleError(f"{index_path}: not a TensorFlow checkpoint index (bad magic)")
    _, _, pos = _handle(footer, 0)  # metaindex block: unused
    index_offset, index_size, _ = _handle(footer, pos)
    entries: dict[str, BundleEntry] = {}
    for _, handle in _block(data, index_offset, index_size):
        block_offset, block_size, _ = _handle(handle, 0)
        for key, value in _block(data, block_offset, block_size):
            if key == HEADER_KEY:
                continue
            entries[key.decode("utf-8", errors="replace")] = _entry(value)
    return entries


def read_bundle(prefix: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of the bundle at ``prefix`` (the path without ``.index``).

    Raises:
        BundleError: a missing or malformed file, a sliced tensor, an unknown dtype, or
            a tensor whose bytes do not match its shape or lie outside its data file.
    """
    prefix = str(prefix)
    entries = read_index(prefix + ".index")
    shards: dict[int, bytes] = {}
    tensors: dict[str, np.ndarray] = {}
    for name, entry in sorted(entries.items()):
        if entry.has_slices:
            raise BundleError(f"{name}: partitioned (sliced) tensors are not supported")
        dtype = DTYPES.get(entry.dtype)
        if dtype is None:
            raise BundleError(f"{name}: unsupported TensorFlow dtype {entry.dtype}")
        expected = int(np.prod(entry.shape, dtype=np.int64)) * dtype.itemsize
        if entry.size != expected:
            raise BundleError(
                f"{name}: {entry.size} bytes stored for shape {entry.shape} ({expected} expected)"
            )
        if entry.shard_id not in shards:
            n_shards = _shard_count(prefix)
            path = f"{prefix}.data-{entry.shard_id:05d}-of-{n_shards:05d}"
            if not os.path.isfile(path):
                raise BundleError(f"{name}: data file {path} is missing")
            shards[entry.shard_id] = Path(path).read_bytes()
        shard = shards[entry.shard_id]
        if entry.offset + entry.size > len(shard):
            raise BundleError(f"{name}: bytes lie outside its data file")
        raw = shard[entry.offset : entry.offset + entry.size]
        tensors[name] = np.frombuffer(raw, dtype=dtype).reshape(entry.shape).copy()
    return tensors


def _shard_count(prefix: str) -> int:
    directory, base = os.path.split(prefix)
    names = os.listdir(directory or ".")
    for name in names:
        if name.startswith(base + ".data-") and "-of-" in name:
            try:
                return int(name.rsplit("-of-", 1)[1])
            except ValueError:
                continue
    raise BundleError(f"no data file next to {prefix}.index")
