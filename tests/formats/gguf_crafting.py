"""Build GGUF files byte by byte with struct, to test how the reader refuses bad ones.

Callers pass type ids from gguf-py's constants, not corral's, so the crafted files follow
the format as llama.cpp's own tooling defines it.
"""

import struct
from collections.abc import Sequence

U64_MAX = 2**64 - 1


def u32(value: int) -> bytes:
    """A little-endian uint32."""
    return struct.pack("<I", value)


def u64(value: int) -> bytes:
    """A little-endian uint64."""
    return struct.pack("<Q", value)


def string(text: str | bytes, length: int | None = None) -> bytes:
    """A GGUF string; `length` overrides the declared length."""
    raw = text.encode() if isinstance(text, str) else text
    return u64(len(raw) if length is None else length) + raw


def header(n_tensors: int, n_kv: int, version: int = 3, magic: bytes = b"GGUF") -> bytes:
    """The 24-byte file header."""
    return magic + u32(version) + u64(n_tensors) + u64(n_kv)


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    """One metadata pair: key, value type id, encoded value."""
    return string(key) + u32(vtype) + payload


def array(elem_type: int, count: int, payload: bytes = b"") -> bytes:
    """An encoded array value (without the ARRAY type id in front)."""
    return u32(elem_type) + u64(count) + payload


def tensor_info(name: str | bytes, ne: Sequence[int], type_id: int, offset: int) -> bytes:
    """One tensor info record; `ne` in ggml order (ne0 first)."""
    dims = b"".join(u64(n) for n in ne)
    return string(name) + u32(len(ne)) + dims + u32(type_id) + u64(offset)


def gguf_file(
    kvs: Sequence[bytes] = (),
    infos: Sequence[bytes] = (),
    data: bytes = b"",
    alignment: int = 32,
) -> bytes:
    """A whole file: header, metadata, tensor infos, padding to `alignment`, data."""
    head = header(len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    padding = b"\0" * (-len(head) % alignment) if infos else b""
    return head + padding + data
