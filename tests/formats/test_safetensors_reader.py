"""corral's safetensors reader against files written by the `safetensors` library, and hostile
headers: every lie about sizes, offsets or dtypes is refused with the file and tensor named."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from corral.errors import ModelFormatError, UnsupportedError
from corral.formats.safetensors import MAX_HEADER_BYTES, SafetensorsFile

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def test_reads_every_dtype_written_by_the_safetensors_library(tmp_path):
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for i, dtype in enumerate(DTYPES):
        values = torch.randn(3, 5 + i, generator=generator) * 100
        tensors[f"t{i}"] = values > 0 if dtype == torch.bool else values.to(dtype)
    tensors["empty"] = torch.zeros(0, 4)
    tensors["scalar"] = torch.tensor(2.5)
    path = tmp_path / "all.safetensors"
    save_file(tensors, path, metadata={"format": "pt"})
    with SafetensorsFile(path) as opened:
        assert opened.metadata == {"format": "pt"}
        assert set(opened.tensors) == set(tensors)
        for name, expected in tensors.items():
            actual = opened.tensor(name)
            assert actual.dtype == expected.dtype and actual.shape == expected.shape
            assert torch.equal(actual, expected)


def test_tensors_stay_valid_after_close_and_writes_never_reach_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.arange(6, dtype=torch.float32)}, path)
    before = path.read_bytes()
    with SafetensorsFile(path) as opened:
        tensor = opened.tensor("w")
    tensor += 1
    assert torch.equal(tensor, torch.arange(6, dtype=torch.float32) + 1)
    assert path.read_bytes() == before


def write_raw(path, header, data: bytes, n_header: int | None = None) -> None:
    """A safetensors file with a hand-written header (possibly lying)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(raw) if n_header is None else n_header
    path.write_bytes(struct.pack("<Q", length) + raw + data)


def test_unaligned_tensor_data_is_copied_not_misread(tmp_path):
    path = tmp_path / "odd.safetensors"
    values = torch.tensor([1.5, -2.25], dtype=torch.float32)
    header = {
        "pad": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
        "x": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]},
    }
    write_raw(path, header, b"\x07" + values.numpy().tobytes())
    with SafetensorsFile(path) as opened:
        assert torch.equal(opened.tensor("x"), values)


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

HOSTILE = {
    "huge header length": (
        {"x": F32_2},
        bytes(8),
        MAX_HEADER_BYTES + 1,
        "exceeds the limit",
    ),
    "header past the end": ({"x": F32_2}, bytes(8), 1 << 20, "past the end of the file"),
    "not json": (b"{nope", bytes(8), None, "not valid JSON"),
    "not an object": (b"[1, 2]", b"", None, "must be a JSON object"),
    "duplicate name": (
        b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
        b' "x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
        bytes(8),
        None,
        "duplicate key",
    ),
    "size lies": (
        {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}},
        bytes(8),
        None,
        "tensor 'x': F32 [4] takes 16 bytes but data_offsets give 8",
    ),
    "negative dim": (
        {"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
        bytes(8),
        None,
        "tensor 'x': shape must be",
    ),
    "float dim": (
        {"x": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}},
        bytes(8),
        None,
        "tensor 'x': shape must be",
    ),
    "reversed offsets": (
        {"x": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}},
        bytes(8),
        None,
        "end before they begin",
    ),
    "overlap": (
        {"a": F32_2, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
        bytes(12),
        None,
        "tensor 'b' overlaps tensor 'a'",
    ),
    "gap": (
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
        bytes(8),
        None,
        "unused bytes before tensor 'a'",
    ),
    "past the end": (
        {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
        bytes(8),
        None,
        "tensor 'a' ends at data offset 16, past the end",
    ),
    "trailing bytes": ({"a": F32_2}, bytes(12), None, "cover 8 of the file's 12 data bytes"),
    "bad metadata": (
        {"__metadata__": {"k": 1}, "a": F32_2},
        bytes(8),
        None,
        "__metadata__ must map strings",
    ),
    "missing dtype": (
        {"a": {"shape": [2], "data_offsets": [0, 8]}},
        bytes(8),
        None,
        "tensor 'a': missing or invalid dtype",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_headers_are_refused_naming_file_and_tensor(tmp_path, case):
    header, data, n_header, message = HOSTILE[case]
    path = tmp_path / "bad.safetensors"
    write_raw(path, header, data, n_header)
    with pytest.raises(ModelFormatError) as error:
        SafetensorsFile(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_unknown_dtype_and_tiny_file_are_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    write_raw(path, {"a": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, bytes(1))
    with pytest.raises(UnsupportedError, match="tensor 'a': dtype 'F4' is not supported"):
        SafetensorsFile(path)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(ModelFormatError, match="too short"):
        SafetensorsFile(path)
