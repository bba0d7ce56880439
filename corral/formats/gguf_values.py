"""Bounded little-endian reads of GGUF metadata values.

Every read checks the bytes it needs against the bytes left in the file *before* it
allocates anything, so a file that declares a 2^63-element array or string is refused in
constant time. Encodings (all little-endian):

    string : uint64 length | length bytes of UTF-8
    scalar : the value in 1, 2, 4 or 8 bytes (bool is one byte, non-zero = true)
    array  : uint32 element type | uint64 count | count elements, untagged

Values become Python objects: integers -> int, floats -> float, bool -> bool,
string -> str, arrays of numbers or bools -> a numpy array (a copy, dtype of the element
type), arrays of strings -> list[str], arrays of arrays -> list.
"""

import pathlib
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from corral.errors import ModelFormatError

# Arrays of arrays deeper than this are refused: real files nest at most once, and a
# deeper chain is only a way to exhaust the Python stack.
MAX_ARRAY_DEPTH = 8


class GGUFValueType(IntEnum):
    """Metadata value types, by their on-disk id (gguf.h `enum gguf_type`)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


@dataclass(frozen=True)
class _Scalar:
    """How one fixed-size value is stored: struct format and numpy dtype (both little-endian)."""

    unpacker: struct.Struct
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        """Encoded size of one value."""
        return self.unpacker.size


_SCALARS: dict[GGUFValueType, _Scalar] = {
    GGUFValueType.UINT8: _Scalar(struct.Struct("<B"), np.dtype("<u1")),
    GGUFValueType.INT8: _Scalar(struct.Struct("<b"), np.dtype("<i1")),
    GGUFValueType.UINT16: _Scalar(struct.Struct("<H"), np.dtype("<u2")),
    GGUFValueType.INT16: _Scalar(struct.Struct("<h"), np.dtype("<i2")),
    GGUFValueType.UINT32: _Scalar(struct.Struct("<I"), np.dtype("<u4")),
    GGUFValueType.INT32: _Scalar(struct.Struct("<i"), np.dtype("<i4")),
    GGUFValueType.FLOAT32: _Scalar(struct.Struct("<f"), np.dtype("<f4")),
    GGUFValueType.BOOL: _Scalar(struct.Struct("<B"), np.dtype("<u1")),
    GGUFValueType.UINT64: _Scalar(struct.Struct("<Q"), np.dtype("<u8")),
    GGUFValueType.INT64: _Scalar(struct.Struct("<q"), np.dtype("<i8")),
    GGUFValueType.FLOAT64: _Scalar(struct.Struct("<d"), np.dtype("<f8")),
}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
STRING_MIN_NBYTES = 8  # the length prefix of an empty string
ARRAY_MIN_NBYTES = 12  # element type + count of an empty array
# The smallest encoded value of any type: a one-byte scalar.
VALUE_MIN_NBYTES = 1


class Cursor:
    """A read position in a buffer; every read is bounded by the bytes left.

    Errors are `ModelFormatError`s worded `"<path>: <where>: <problem>"`, where `where`
    names the header field, metadata key or tensor being read.
    """

    def __init__(self, buf: memoryview, path: pathlib.Path, pos: int = 0) -> None:
        self.buf = buf
        self.path = path
        self.pos = pos

    @property
    def left(self) -> int:
        """Bytes between the read position and the end of the file."""
        return len(self.buf) - self.pos

    def error(self, where: str, problem: str) -> ModelFormatError:
        """An error naming the file and the field being read."""
        return ModelFormatError(f"{self.path}: {where}: {problem}")

    def require(self, nbytes: int, where: str, what: str) -> None:
        """Refuse `what` if it needs more than the bytes left."""
        if nbytes > self.left:
            raise self.error(
                where,
                f"{what} needs {nbytes} bytes but only {self.left} are left in the file "
                f"(at offset {self.pos}); the file is truncated or corrupt",
            )

    def take(self, nbytes: int, where: str, what: str) -> int:
        """Skip `nbytes` (checked), returning the offset where they start."""
        self.require(nbytes, where, what)
        start = self.pos
        self.pos = start + nbytes
        return start

    def scalar(self, vtype: GGUFValueType, where: str, what: str) -> int | float:
        """Read one fixed-size value as a Python number."""
        spec = _SCALARS[vtype]
        return spec.unpacker.unpack_from(self.buf, self.take(spec.nbytes, where, what))[0]

    def u32(self, where: str, what: str) -> int:
        """Read a uint32."""
        return _U32.unpack_from(self.buf, self.take(4, where, what))[0]

    def u64(self, where: str, what: str) -> int:
        """Read a uint64."""
        return _U64.unpack_from(self.buf, self.take(8, where, what))[0]

    def string(self, where: str, what: str = "string") -> str:
        """Read a length-prefixed strict UTF-8 string."""
        length = self.u64(where, what)
        start = self.take(length, where, what)
        try:
            return str(self.buf[start : start + length], "utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(where, f"{what} is not valid UTF-8 ({exc.reason})") from None

    def strings(self, count: int, where: str, what: str = "array string") -> list[str]:
        """Read `count` strings as `string` does, in one loop without its per-call checks
        (a vocabulary is ~10^5 of them); the same errors at the same offsets."""
        buf, pos, end = self.buf, self.pos, len(self.buf)
        unpack = _U64.unpack_from
        out: list[str] = []
        append = out.append
        for _ in range(count):
            if end - pos < 8:
                self.pos = pos
                self.require(8, where, what)
            (length,) = unpack(buf, pos)
            pos += 8
            if end - pos < length:
                self.pos = pos
                self.require(length, where, what)
            try:
                append(str(buf[pos : pos + length], "utf-8"))
            except UnicodeDecodeError as exc:
                self.pos = pos + length
                raise self.error(where, f"{what} is not valid UTF-8 ({exc.reason})") from None
            pos += length
        self.pos = pos
        return out

    def value_type(self, where: str, what: str) -> GGUFValueType:
        """Read a uint32 metadata value type, refusing ids GGUF does not define."""
        type_id = self.u32(where, what)
        try:
            return GGUFValueType(type_id)
        except ValueError:
            raise self.error(where, f"unknown {what} {type_id}") from None


def read_value(cur: Cursor, vtype: GGUFValueType, where: str, depth: int = 0) -> Any:
    """Read one metadata value of type `vtype` at the cursor (see the module doc)."""
    if vtype == GGUFValueType.STRING:
        return cur.string(where)
    if vtype == GGUFValueType.ARRAY:
        return _read_array(cur, where, depth)
    value = cur.scalar(vtype, where, f"{vtype.name.lower()} value")
    if vtype == GGUFValueType.BOOL:
        return value != 0
    return value


def _min_nbytes(vtype: GGUFValueType) -> int:
    """The fewest bytes one encoded value of `vtype` can take."""
    if vtype == GGUFValueType.STRING:
        return STRING_MIN_NBYTES
    if vtype == GGUFValueType.ARRAY:
        return ARRAY_MIN_NBYTES
    return _SCALARS[vtype].nbytes


def _read_array(cur: Cursor, where: str, depth: int) -> Any:
    """Read an array header, check its count against the bytes left, then its elements."""
    if depth >= MAX_ARRAY_DEPTH:
        raise cur.error(where, f"arrays nested more than {MAX_ARRAY_DEPTH} deep")
    elem_type = cur.value_type(where, "array element type")
    count = cur.u64(where, "array length")
    cur.require(count * _min_nbytes(elem_type), where, f"array of {count} {elem_type.name}")
    if elem_type == GGUFValueType.STRING:
        return cur.strings(count, where)
    if elem_type == GGUFValueType.ARRAY:
        return [_read_array(cur, f"{where}[{i}]", depth + 1) for i in range(count)]
    return _read_numbers(cur, elem_type, count, where)


def _read_numbers(cur: Cursor, elem_type: GGUFValueType, count: int, where: str) -> np.ndarray:
    """Copy `count` fixed-size elements out of the file into a native-order numpy array."""
    spec = _SCALARS[elem_type]
    start = cur.take(count * spec.nbytes, where, f"array of {count} {elem_type.name}")
    raw = np.frombuffer(cur.buf, dtype=spec.dtype, count=count, offset=start)
    if elem_type == GGUFValueType.BOOL:
        return raw != 0
    return raw.astype(spec.dtype.newbyteorder("="))
