"""corral's own GGUF reader: bounded, validated, memory-mapped.

File layout (GGUF v2/v3, little-endian; see llama.cpp `ggml/src/gguf.cpp`):

    magic "GGUF" | uint32 version | uint64 n_tensors | uint64 n_kv
    n_kv      x  key (string) | uint32 value type | value        (see gguf_values.py)
    n_tensors x  name (string) | uint32 n_dims | n_dims x uint64 ne | uint32 ggml type
                 | uint64 offset (relative to the data section, a multiple of alignment)
    padding to `general.alignment` (uint32, default 32)
    data section: the tensors' bytes

The file is treated as hostile: every count and size is checked against the bytes on disk
before anything is allocated, and every error names the file and the field at fault.
Tensor data is never copied: `tensor_bytes` returns read-only views of the mapping (except
for a tensor straddling two parts of a file split as `x.gguf-split-a`, `-split-b`, ...).
"""

import os
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from corral.errors import ModelFormatError
from corral.formats.gguf_values import (
    STRING_MIN_NBYTES,
    VALUE_MIN_NBYTES,
    Cursor,
    GGUFValueType,
    read_value,
)
from corral.formats.split_parts import PartedBytes, part_paths
from corral.quant.ggml_types import LAYOUTS, GGMLType

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
MAX_DIMS = 4
HEADER_NBYTES = 24  # magic + version + n_tensors + n_kv
INT64_MAX = 2**63 - 1

# Smallest encodings, used to refuse absurd counts before looping over them.
KV_MIN_NBYTES = STRING_MIN_NBYTES + 4 + VALUE_MIN_NBYTES  # key, value type, 1-byte value
TENSOR_INFO_MIN_NBYTES = STRING_MIN_NBYTES + 4 + 8 + 4 + 8  # name, n_dims, one ne, type, offset


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file and how it is stored.

    `shape` is in torch order (outermost first), the reverse of ggml's `ne`; `offset` is
    the absolute byte offset of the data in the file.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLType
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _RawTensorInfo:
    """A tensor info record as read, before its offset is placed in the data section."""

    name: str
    ne: tuple[int, ...]  # ggml order: ne0 (the contiguous row) first
    ggml_type: GGMLType
    rel_offset: int
    nbytes: int


class GGUFFile:
    """A GGUF file opened for reading: metadata, tensor directory and mapped tensor bytes.

    Use as `GGUFFile(path)` or `with GGUFFile(path) as f:`. Attributes: `path`, `version`,
    `alignment`, `metadata` (key -> value, in file order) and `tensors` (name ->
    `TensorInfo`, in file order). Raises `ModelFormatError` if the file is malformed.
    """

    path: pathlib.Path
    version: int
    alignment: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(path)
        self._data: PartedBytes | None = PartedBytes(part_paths(self.path))
        size = self._data.size
        if size < HEADER_NBYTES:
            raise self._error(
                "header", f"file is {size} bytes, shorter than the {HEADER_NBYTES}-byte header"
            )
        # the header is parsed from the first part: split parts hold tensor data
        with memoryview(self._data.first) as buf:
            cur = Cursor(buf, self.path)
            self.version, n_tensors, n_kv = _read_header(cur)
            self.metadata, self.alignment = _read_metadata(cur, n_kv)
            raw_infos = [_read_tensor_info(cur, i, size) for i in range(n_tensors)]
            data_start = _pad(cur.pos, self.alignment)
            self.tensors = _place_tensors(cur, raw_infos, data_start, self.alignment, size)

    def _error(self, where: str, problem: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {where}: {problem}")

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The stored bytes of tensor `name`: a 1-D read-only uint8 view of the mapped file."""
        info = self.tensors.get(name)
        if info is None:
            raise self._error(f"tensor {name!r}", "no tensor of that name in the file")
        if self._data is None:
            raise ValueError(f"{self.path}: GGUF file is closed")
        return self._data.read(info.offset, info.nbytes)

    def close(self) -> None:
        """Drop this reader's mapping; views from `tensor_bytes` stay valid while alive."""
        self._data = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"GGUFFile({str(self.path)!r}, version={self.version}, "
            f"{len(self.metadata)} keys, {len(self.tensors)} tensors)"
        )


def _read_header(cur: Cursor) -> tuple[int, int, int]:
    """Read magic, version and counts; returns (version, n_tensors, n_kv).

    The counts are checked against the smallest possible encoding of that many records,
    so a header claiming 2^64 keys is refused before any loop starts.
    """
    start = cur.take(len(GGUF_MAGIC), "header", "magic")
    magic = bytes(cur.buf[start : start + len(GGUF_MAGIC)])
    if magic != GGUF_MAGIC:
        raise cur.error("header", f"bad magic {magic!r}, expected {GGUF_MAGIC!r}: not GGUF")
    version = _check_version(cur, cur.u32("header", "version"))
    n_tensors = cur.u64("header field n_tensors", "tensor count")
    n_kv = cur.u64("header field n_kv", "key-value count")
    cur.require(n_kv * KV_MIN_NBYTES, "header field n_kv", f"{n_kv} key-value pairs")
    cur.require(
        n_tensors * TENSOR_INFO_MIN_NBYTES, "header field n_tensors", f"{n_tensors} tensor infos"
    )
    cur.require(
        n_kv * KV_MIN_NBYTES + n_tensors * TENSOR_INFO_MIN_NBYTES,
        "header fields n_kv and n_tensors",
        f"{n_kv} key-value pairs and {n_tensors} tensor infos",
    )
    return version, n_tensors, n_kv


def _check_version(cur: Cursor, version: int) -> int:
    """Accept GGUF v2 and v3; explain the versions refused."""
    if version == 1:
        raise cur.error("header", "GGUF v1 is not supported (re-convert the model)")
    if version and not version & 0xFFFF:
        raise cur.error(
            "header",
            f"version reads as {version:#x}: big-endian GGUF is not supported",
        )
    if version not in SUPPORTED_VERSIONS:
        raise cur.error("header", f"unsupported GGUF version {version}")
    return version


def _read_metadata(cur: Cursor, n_kv: int) -> tuple[dict[str, Any], int]:
    """Read the key-value section; returns the metadata and the validated alignment."""
    metadata: dict[str, Any] = {}
    alignment = DEFAULT_ALIGNMENT
    for index in range(n_kv):
        key = cur.string(f"metadata key #{index}", "key")
        where = f"metadata key {key!r}"
        if not key:
            raise cur.error(f"metadata key #{index}", "key is empty")
        if key in metadata:
            raise cur.error(where, "duplicate key")
        vtype = cur.value_type(where, "value type")
        metadata[key] = read_value(cur, vtype, where)
        if key == ALIGNMENT_KEY:
            alignment = _check_alignment(cur, vtype, metadata[key])
    return metadata, alignment


def _check_alignment(cur: Cursor, vtype: GGUFValueType, value: Any) -> int:
    """`general.alignment` must be a uint32 power of two."""
    where = f"metadata key {ALIGNMENT_KEY!r}"
    if vtype != GGUFValueType.UINT32:
        raise cur.error(where, f"must be of type UINT32, not {vtype.name}")
    if value == 0 or value & (value - 1):
        raise cur.error(where, f"alignment {value} is not a non-zero power of two")
    return value


def _read_tensor_info(cur: Cursor, index: int, file_size: int) -> _RawTensorInfo:
    """Read and check one tensor info record: name, shape, type and relative offset."""
    name = cur.string(f"tensor #{index}", "name")
    where = f"tensor {name!r}"
    n_dims = cur.u32(where, "n_dims")
    if not 1 <= n_dims <= MAX_DIMS:
        raise cur.error(where, f"n_dims is {n_dims}, must be 1 to {MAX_DIMS}")
    ne = tuple(cur.u64(where, f"dimension {d}") for d in range(n_dims))
    type_id = cur.u32(where, "ggml type")
    rel_offset = cur.u64(where, "data offset")
    try:
        ggml_type = GGMLType(type_id)
    except ValueError:
        raise cur.error(where, f"unknown ggml type id {type_id}") from None
    nbytes = _tensor_nbytes(cur, where, ne, ggml_type, file_size)
    return _RawTensorInfo(name, ne, ggml_type, rel_offset, nbytes)


def _tensor_nbytes(
    cur: Cursor, where: str, ne: tuple[int, ...], ggml_type: GGMLType, file_size: int
) -> int:
    """Size in bytes of a tensor of shape `ne` (ggml order), after checking the shape."""
    n_elements = 1
    for dim, size in enumerate(ne):
        if not 1 <= size <= INT64_MAX:
            raise cur.error(where, f"dimension {dim} is {size}, must be 1 to 2^63-1")
        n_elements *= size
    if n_elements > INT64_MAX:
        raise cur.error(where, f"shape {list(ne)} has more than 2^63-1 elements")
    layout = LAYOUTS[ggml_type]
    if ne[0] % layout.block_size:
        raise cur.error(
            where,
            f"ne0 = {ne[0]} is not a multiple of the {ggml_type.name} block size "
            f"{layout.block_size}",
        )
    nbytes = n_elements // layout.block_size * layout.type_size
    if nbytes > file_size:
        raise cur.error(
            where,
            f"{ggml_type.name} shape {list(ne)} needs {nbytes} bytes, "
            f"more than the whole file ({file_size} bytes)",
        )
    return nbytes


def _pad(offset: int, alignment: int) -> int:
    """Round `offset` up to a multiple of `alignment`."""
    return -(-offset // alignment) * alignment


def _place_tensors(
    cur: Cursor,
    raw_infos: list[_RawTensorInfo],
    data_start: int,
    alignment: int,
    file_size: int,
) -> dict[str, TensorInfo]:
    """Turn relative offsets into absolute ones, checking alignment, bounds and overlaps."""
    tensors: dict[str, TensorInfo] = {}
    for raw in raw_infos:
        where = f"tensor {raw.name!r}"
        if raw.name in tensors:
            raise cur.error(where, "duplicate tensor name")
        if raw.rel_offset % alignment:
            raise cur.error(
                where, f"data offset {raw.rel_offset} is not a multiple of alignment {alignment}"
            )
        offset = data_start + raw.rel_offset
        if offset + raw.nbytes > file_size:
            raise cur.error(
                where,
                f"data [{offset}, {offset + raw.nbytes}) runs past the end of the file "
                f"({file_size} bytes)",
            )
        shape = tuple(reversed(raw.ne))
        tensors[raw.name] = TensorInfo(raw.name, shape, raw.ggml_type, offset, raw.nbytes)
    _check_overlaps(cur, tensors.values())
    return tensors


def _check_overlaps(cur: Cursor, infos: Iterable[TensorInfo]) -> None:
    """No two tensors may share a byte of the data section."""
    by_offset = sorted(infos, key=lambda t: t.offset)
    for before, after in zip(by_offset, by_offset[1:], strict=False):
        if after.offset < before.offset + before.nbytes:
            raise cur.error(
                f"tensor {after.name!r}",
                f"data at offset {after.offset} overlaps tensor {before.name!r} "
                f"[{before.offset}, {before.offset + before.nbytes})",
            )
