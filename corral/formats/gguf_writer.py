"""A small streaming GGUF v3 writer: header, typed metadata, tensor infos, aligned data.

What it writes (all little-endian, as gguf.h and gguf-py's GGUFWriter do):

| part          | encoding                                                                  |
|---------------|---------------------------------------------------------------------------|
| header        | "GGUF" | u32 version = 3 | u64 n_tensors | u64 n_kv                       |
| n_kv keys     | string key | u32 value type | value (see corral.formats.gguf_values)      |
| n_tensors     | string name | u32 n_dims | n_dims x u64 ne (ne[0] = row length) |         |
|   infos       | u32 ggml type | u64 offset from the start of the data section             |
| padding       | zeros up to a multiple of the alignment (32: no general.alignment key)    |
| data          | each tensor's bytes at its offset, a multiple of the alignment            |

Tensor bytes come from the caller one chunk at a time, so a 40 GB file is written with
the memory of one chunk. The file is written under a temporary name and renamed at the
end: an interrupted write never leaves a truncated file under the final name.
"""

import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from corral.formats.gguf_values import GGUFValueType
from corral.quant.ggml_types import GGMLType, row_nbytes

ALIGNMENT = 32
_NUMPY_TYPES = {
    np.dtype(np.uint8): GGUFValueType.UINT8,
    np.dtype(np.int8): GGUFValueType.INT8,
    np.dtype(np.uint16): GGUFValueType.UINT16,
    np.dtype(np.int16): GGUFValueType.INT16,
    np.dtype(np.uint32): GGUFValueType.UINT32,
    np.dtype(np.int32): GGUFValueType.INT32,
    np.dtype(np.float32): GGUFValueType.FLOAT32,
    np.dtype(np.uint64): GGUFValueType.UINT64,
    np.dtype(np.int64): GGUFValueType.INT64,
    np.dtype(np.float64): GGUFValueType.FLOAT64,
}


@dataclass(frozen=True)
class TensorPlan:
    """A tensor to write: its name, shape in torch order (the last dim is the row, ggml's
    ne[0]) and element type."""

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLType

    @property
    def nbytes(self) -> int:
        """Bytes of the packed tensor (every row a whole number of blocks)."""
        rows = int(np.prod(self.shape[:-1], dtype=np.int64))
        return rows * row_nbytes(self.ggml_type, self.shape[-1])


Chunks = Callable[[TensorPlan], Iterable[bytes | np.ndarray]]
Progress = Callable[[int, int], None]


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value(key: str, value: Any) -> bytes:
    """Type tag and encoding of one metadata value: bool -> BOOL, int -> UINT32 (INT32 when
    negative, 64-bit when it does not fit), float -> FLOAT32, str -> STRING, list of str ->
    ARRAY of STRING, 1-D numpy array -> ARRAY of its dtype."""
    if isinstance(value, bool):
        return struct.pack("<IB", GGUFValueType.BOOL, value)
    if isinstance(value, int):
        if 0 <= value < 1 << 32:
            return struct.pack("<II", GGUFValueType.UINT32, value)
        if -(1 << 31) <= value < 0:
            return struct.pack("<Ii", GGUFValueType.INT32, value)
        if 0 <= value < 1 << 64:
            return struct.pack("<IQ", GGUFValueType.UINT64, value)
        return struct.pack("<Iq", GGUFValueType.INT64, value)
    if isinstance(value, float):
        return struct.pack("<If", GGUFValueType.FLOAT32, value)
    if isinstance(value, str):
        return struct.pack("<I", GGUFValueType.STRING) + _string(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        head = struct.pack("<IIQ", GGUFValueType.ARRAY, GGUFValueType.STRING, len(value))
        return head + b"".join(_string(item) for item in value)
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype in _NUMPY_TYPES:
        head = struct.pack("<IIQ", GGUFValueType.ARRAY, _NUMPY_TYPES[value.dtype], len(value))
        return head + value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
    raise TypeError(f"metadata key {key!r}: cannot encode a {type(value).__name__} value")


def _tensor_info(plan: TensorPlan, offset: int) -> bytes:
    ne = tuple(reversed(plan.shape))  # ggml order: ne[0] is the row length
    dims = struct.pack(f"<I{len(ne)}Q", len(ne), *ne)
    return _string(plan.name) + dims + struct.pack("<IQ", plan.ggml_type, offset)


def _padding(position: int) -> bytes:
    return b"\0" * (-position % ALIGNMENT)


def header_bytes(metadata: Mapping[str, Any], tensors: Sequence[TensorPlan]) -> bytes:
    """Everything before the data section, padding included."""
    parts = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    parts += [_string(key) + _value(key, value) for key, value in metadata.items()]
    offset = 0
    for plan in tensors:
        parts.append(_tensor_info(plan, offset))
        offset += plan.nbytes + len(_padding(plan.nbytes))
    head = b"".join(parts)
    return head + _padding(len(head))


def write_gguf(
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any],
    tensors: Sequence[TensorPlan],
    chunks: Chunks,
    progress: Progress | None = None,
) -> int:
    """Write a GGUF v3 file; `chunks(plan)` yields the packed bytes of each tensor in order
    (bytes or numpy arrays, any split). Returns the file size. `progress(done, total)` is
    called after each chunk with the data bytes written so far.

    Raises ValueError when a tensor's chunks do not add up to its size."""
    path = Path(path)
    names = [plan.name for plan in tensors]
    if len(set(names)) != len(names):
        raise ValueError("tensor names must be unique")
    total = sum(plan.nbytes + len(_padding(plan.nbytes)) for plan in tensors)
    partial = path.with_name(path.name + ".part")
    try:
        with open(partial, "wb") as out:
            out.write(header_bytes(metadata, tensors))
            done = 0
            for plan in tensors:
                done += _write_tensor(out, plan, chunks(plan), done, total, progress)
            size = out.tell()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
    return size


def _write_tensor(
    out: BinaryIO,
    plan: TensorPlan,
    chunks: Iterable[bytes | np.ndarray],
    done: int,
    total: int,
    progress: Progress | None,
) -> int:
    """Write one tensor's chunks and padding; returns the bytes written."""
    written = 0
    for chunk in chunks:
        data = memoryview(chunk).cast("B")
        out.write(data)
        written += len(data)
        if progress is not None:
            progress(done + written, total)
    if written != plan.nbytes:
        raise ValueError(
            f"tensor {plan.name!r}: got {written} bytes, its shape and type take {plan.nbytes}"
        )
    padding = _padding(written)
    out.write(padding)
    return written + len(padding)
