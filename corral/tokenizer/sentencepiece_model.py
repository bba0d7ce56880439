"""Read a SentencePiece ``tokenizer.model`` (a protobuf ModelProto) without protobuf.

Only the fields corral's tokenizer needs are decoded; every other field is skipped by its
wire type. Field numbers (sentencepiece_model.proto):

| message        | field                        | number | wire type            |
|----------------|------------------------------|--------|----------------------|
| ModelProto     | pieces (SentencePiece)       | 1      | 2 (length-delimited) |
|                | trainer_spec (TrainerSpec)   | 2      | 2                    |
|                | normalizer_spec              | 3      | 2                    |
| SentencePiece  | piece (string)               | 1      | 2                    |
|                | score (float)                | 2      | 5 (32-bit)           |
|                | type (enum, default NORMAL)  | 3      | 0 (varint)           |
| TrainerSpec    | model_type (UNIGRAM=1 BPE=2) | 3      | 0                    |
|                | byte_fallback                | 35     | 0                    |
|                | treat_whitespace_as_suffix   | 24     | 0                    |
| NormalizerSpec | name                         | 1      | 2                    |
|                | precompiled_charsmap         | 2      | 2                    |
|                | add_dummy_prefix (true)      | 3      | 0                    |
|                | remove_extra_whitespaces (t) | 4      | 0                    |
|                | escape_whitespaces (true)    | 5      | 0                    |

Piece types are the values GGUF's ``tokenizer.ggml.token_type`` uses (NORMAL 1, UNKNOWN 2,
CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6). Every length is checked against the bytes
left, so a hostile file cannot make the reader allocate or loop beyond its own size.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from corral.errors import TokenizerError

MAX_MODEL_BYTES = 64 << 20
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
_BPE = 2
_PIECE_TYPES = frozenset({1, 2, 3, 4, 5, 6})


@dataclass(frozen=True)
class SentencePieceModel:
    """The vocabulary and options of a SentencePiece BPE model."""

    pieces: list[str]
    scores: list[float]
    types: list[int]
    add_dummy_prefix: bool


def _varint(data: memoryview, pos: int, source: str) -> tuple[int, int]:
    """Decode a varint at `pos`; return (value, next position)."""
    value = 0
    for i in range(10):
        if pos >= len(data):
            raise TokenizerError(f"{source}: truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos
    raise TokenizerError(f"{source}: varint longer than 10 bytes")


def fields(data: memoryview, source: str) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field of one message; a length-delimited
    value is a view of its bytes, fixed-size values are little-endian unsigned ints."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos, source)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos, source)
            yield number, wire, value
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if pos + size > len(data):
                raise TokenizerError(f"{source}: truncated field {number}")
            yield number, wire, int.from_bytes(data[pos : pos + size], "little")
            pos += size
        elif wire == _BYTES:
            length, pos = _varint(data, pos, source)
            if length > len(data) - pos:
                raise TokenizerError(
                    f"{source}: field {number} claims {length} bytes, {len(data) - pos} left"
                )
            yield number, wire, data[pos : pos + length]
            pos += length
        else:
            raise TokenizerError(f"{source}: unsupported protobuf wire type {wire}")


def _bool(wire: int, value: int | memoryview, name: str, source: str) -> bool:
    if wire != _VARINT:
        raise TokenizerError(f"{source}: {name} has wire type {wire}, expected a varint")
    return bool(value)


def _piece(data: memoryview, index: int, source: str) -> tuple[str, float, int]:
    """(text, score, type) of one SentencePiece message."""
    text, score, kind = None, 0.0, 1
    for number, wire, value in fields(data, f"{source}: piece {index}"):
        if number == 1 and wire == _BYTES:
            assert isinstance(value, memoryview)
            try:
                text = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise TokenizerError(f"{source}: piece {index} is not UTF-8") from None
        elif number == 2 and wire == _FIXED32:
            assert isinstance(value, int)
            (score,) = struct.unpack("<f", value.to_bytes(4, "little"))
        elif number == 3 and wire == _VARINT:
            assert isinstance(value, int)
            kind = value
    if text is None:
        raise TokenizerError(f"{source}: piece {index} has no text")
    if kind not in _PIECE_TYPES:
        raise TokenizerError(f"{source}: piece {index} ({text!r}) has unknown type {kind}")
    return text, score, kind


def parse_sentencepiece_model(data: bytes, source: str) -> SentencePieceModel:
    """Decode the ModelProto in `data`; refuse what corral's SentencePiece tokenizer cannot
    reproduce (non-BPE models, normalization rules, whitespace handling other than Llama's)."""
    pieces: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    model_type = 1  # proto default: UNIGRAM
    normalizer: dict[int, int | memoryview] = {}
    suffix_spaces = False
    for number, wire, value in fields(memoryview(data), source):
        if wire != _BYTES:
            continue
        assert isinstance(value, memoryview)
        if number == 1:
            text, score, kind = _piece(value, len(pieces), source)
            pieces.append(text)
            scores.append(score)
            types.append(kind)
        elif number == 2:
            for field, field_wire, field_value in fields(value, f"{source}: trainer_spec"):
                if field == 3 and field_wire == _VARINT:
                    assert isinstance(field_value, int)
                    model_type = field_value
                elif field == 24:
                    suffix_spaces = _bool(
                        field_wire, field_value, "treat_whitespace_as_suffix", source
                    )
        elif number == 3:
            normalizer = {n: v for n, _, v in fields(value, f"{source}: normalizer_spec")}
    if not pieces:
        raise TokenizerError(f"{source}: the model has no pieces")
    if model_type != _BPE:
        raise TokenizerError(
            f"{source}: SentencePiece model type {model_type} is not supported (BPE only); "
            "provide a tokenizer.json instead"
        )
    charsmap = normalizer.get(2)
    if (
        (isinstance(charsmap, memoryview) and len(charsmap))
        or normalizer.get(4, 1)
        or suffix_spaces
    ):
        raise TokenizerError(
            f"{source}: the model normalizes text (a character map, removal of extra "
            "whitespace, or whitespace as suffix), which corral's SentencePiece tokenizer does "
            "not reproduce; provide a tokenizer.json instead"
        )
    if not normalizer.get(5, 1):
        raise TokenizerError(f"{source}: escape_whitespaces = false is not supported")
    return SentencePieceModel(pieces, scores, types, add_dummy_prefix=bool(normalizer.get(3, 1)))


def read_sentencepiece_model(path: Path) -> SentencePieceModel:
    """Read and decode a ``tokenizer.model`` file of at most MAX_MODEL_BYTES."""
    with path.open("rb") as f:
        data = f.read(MAX_MODEL_BYTES + 1)
    if len(data) > MAX_MODEL_BYTES:
        raise TokenizerError(f"{path}: larger than the limit of {MAX_MODEL_BYTES} bytes")
    return parse_sentencepiece_model(data, str(path))
