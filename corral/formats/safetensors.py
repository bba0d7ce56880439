"""Bounded reader of ``.safetensors`` files: the header is validated before any data is used.

Layout (all integers little-endian):

| bytes           | holds                                                              |
|-----------------|--------------------------------------------------------------------|
| 0 .. 8          | N, the header length (u64)                                         |
| 8 .. 8 + N      | UTF-8 JSON object: name -> {"dtype", "shape", "data_offsets"},    |
|                 | plus an optional "__metadata__" object of strings                  |
| 8 + N .. end    | the data; data_offsets [begin, end) count from its first byte      |

Checks (the same the reference implementation makes, so any file it writes is accepted):
N is at most MAX_HEADER_BYTES and inside the file; names are unique; every dtype is known;
every shape is a short list of non-negative integers whose byte size equals end - begin;
the tensors, sorted by offset, tile the data exactly (no gap, no overlap, nothing after).
Data is read through a private memory map, so opening a file allocates nothing sized by it.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from corral.errors import ModelFormatError, UnsupportedError

MAX_HEADER_BYTES = 100_000_000  # the reference implementation's limit
MAX_DIMS = 8

# dtype name -> (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U64": (torch.uint64, 8),
    "U32": (torch.uint32, 4),
    "U16": (torch.uint16, 2),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}


@dataclass(frozen=True)
class SafetensorInfo:
    """One tensor of a safetensors file: dtype name, shape, and absolute byte range."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset of the first byte in the file
    nbytes: int

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of the stored elements."""
        return DTYPES[self.dtype][0]


class SafetensorsFile:
    """An opened ``.safetensors`` file: validated header, tensors read on demand.

    Tensors returned by :meth:`tensor` live on the CPU and share memory with a private
    (copy-on-write) map of the file: writing to them never changes the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file = self.path.open("rb")
        except OSError as error:
            raise ModelFormatError(f"{self.path}: cannot open: {error.strerror}") from error
        self._map: mmap.mmap | None = None
        try:
            size = self.path.stat().st_size
            self.metadata, self.tensors = _read_header(self._file, size, str(self.path))
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file; tensors already returned stay valid (they keep the map alive)."""
        self._map = None
        self._file.close()

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor `name` (CPU, its stored dtype and shape)."""
        info = self.tensors.get(name)
        if info is None:
            raise ModelFormatError(f"{self.path}: no tensor '{name}'")
        dtype, itemsize = DTYPES[info.dtype]
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=dtype)
        if self._map is None:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        if info.start % itemsize == 0:
            flat = torch.frombuffer(
                self._map, dtype=dtype, count=info.nbytes // itemsize, offset=info.start
            )
        else:  # unaligned for its dtype: copy the bytes first
            raw = torch.frombuffer(
                self._map, dtype=torch.uint8, count=info.nbytes, offset=info.start
            )
            flat = raw.clone().view(dtype)
        return flat.reshape(info.shape)


def _read_header(
    file: Any, size: int, source: str
) -> tuple[dict[str, str], dict[str, SafetensorInfo]]:
    """Read and validate the header of an open file of `size` bytes."""
    if size < 8:
        raise ModelFormatError(f"{source}: {size} bytes is too short for a safetensors file")
    (n_header,) = struct.unpack("<Q", file.read(8))
    if n_header > MAX_HEADER_BYTES:
        raise ModelFormatError(
            f"{source}: header length {n_header} exceeds the limit of {MAX_HEADER_BYTES} bytes"
        )
    if 8 + n_header > size:
        raise ModelFormatError(
            f"{source}: header length {n_header} runs past the end of the file ({size} bytes)"
        )
    raw = file.read(n_header)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ModelFormatError(f"{source}: header is not valid JSON: {error}") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{source}: header must be a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(value, str) for value in metadata.values()
    ):
        raise ModelFormatError(f"{source}: __metadata__ must map strings to strings")
    data_start = 8 + n_header
    tensors = {
        name: _tensor_info(name, entry, data_start, source) for name, entry in header.items()
    }
    _check_tiling(tensors, size - data_start, data_start, source)
    return metadata, tensors


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook refusing duplicate names (json.loads would keep the last silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _tensor_info(name: str, entry: Any, data_start: int, source: str) -> SafetensorInfo:
    """Validate one header entry against its own byte range."""
    where = f"{source}: tensor '{name}'"
    if not isinstance(entry, dict):
        raise ModelFormatError(f"{where}: entry must be an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise ModelFormatError(f"{where}: missing or invalid dtype")
    if dtype not in DTYPES:
        raise UnsupportedError(f"{where}: dtype {dtype!r} is not supported")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_count(d) for d in shape):
        raise ModelFormatError(f"{where}: shape must be a list of at most {MAX_DIMS} integers >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise ModelFormatError(f"{where}: data_offsets must be two integers >= 0")
    begin, end = offsets
    if end < begin:
        raise ModelFormatError(f"{where}: data_offsets [{begin}, {end}) end before they begin")
    nbytes = math.prod(shape) * DTYPES[dtype][1]
    if nbytes != end - begin:
        raise ModelFormatError(
            f"{where}: {dtype} {shape} takes {nbytes} bytes but data_offsets give {end - begin}"
        )
    return SafetensorInfo(name, dtype, tuple(shape), data_start + begin, nbytes)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_tiling(
    tensors: dict[str, SafetensorInfo], data_size: int, data_start: int, source: str
) -> None:
    """The tensors must cover the data exactly: no overlap, no gap, nothing left over."""
    cursor = data_start
    previous = None
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.nbytes)):
        if info.start < cursor:
            raise ModelFormatError(
                f"{source}: tensor '{info.name}' overlaps tensor '{previous}' "
                f"(data offset {info.start - data_start})"
            )
        if info.start > cursor:
            raise ModelFormatError(
                f"{source}: {info.start - cursor} unused bytes before tensor '{info.name}'"
            )
        cursor = info.start + info.nbytes
        previous = info.name
    if cursor - data_start != data_size:
        end = cursor - data_start
        if end > data_size:
            raise ModelFormatError(
                f"{source}: tensor '{previous}' ends at data offset {end}, past the end of "
                f"the file ({data_size} data bytes)"
            )
        raise ModelFormatError(
            f"{source}: the tensors cover {end} of the file's {data_size} data bytes"
        )
