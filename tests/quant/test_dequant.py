"""corral.quant.dequant against gguf-py (the oracle): random blocks of every type, bit for bit.

gguf-py is only a test dependency; the runtime never imports it. The fp16 field offsets
below are written down from ggml-common.h independently of corral's modules, so a wrong
offset in corral shows up as a mismatch instead of being mirrored by the test.
"""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from corral.errors import ModelFormatError, UnsupportedError
from corral.quant.dequant import dequantize, supported_types
from corral.quant.ggml_types import LAYOUTS, GGMLType

# Byte offsets of the fp16 scale fields inside one block (ggml-common.h).
F16_FIELDS: dict[GGMLType, tuple[int, ...]] = {
    GGMLType.Q4_0: (0,),
    GGMLType.Q4_1: (0, 2),
    GGMLType.Q5_0: (0,),
    GGMLType.Q5_1: (0, 2),
    GGMLType.Q8_0: (0,),
    GGMLType.Q2_K: (80, 82),
    GGMLType.Q3_K: (108,),
    GGMLType.Q4_K: (0, 2),
    GGMLType.Q5_K: (0, 2),
    GGMLType.Q6_K: (208,),
}
DENSE_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
ALL_TYPES = DENSE_TYPES + tuple(F16_FIELDS)
# Types gguf-py can quantize (besides the trivial F32).
QUANTIZABLE = (
    GGMLType.F16,
    GGMLType.BF16,
    GGMLType.Q4_0,
    GGMLType.Q4_1,
    GGMLType.Q5_0,
    GGMLType.Q5_1,
    GGMLType.Q8_0,
)
# Each type is tested on the shapes whose rows are a whole number of its blocks.
SHAPES = ((1, 32), (3, 96), (7, 256), (5, 512), (2, 3, 256), (1, 256), (3, 768), (11, 7))


def shapes_for(ggml_type: GGMLType) -> list[tuple[int, ...]]:
    """The SHAPES a `ggml_type` tensor can take."""
    return [s for s in SHAPES if s[-1] % LAYOUTS[ggml_type].block_size == 0]


CASES = [
    pytest.param(t, s, id=f"{t.name}-{'x'.join(map(str, s))}")
    for t in ALL_TYPES
    for s in shapes_for(t)
]


def n_blocks(ggml_type: GGMLType, shape: tuple[int, ...]) -> int:
    """How many blocks a `ggml_type` tensor of `shape` packs into."""
    return int(np.prod(shape)) // LAYOUTS[ggml_type].block_size


def finite_dense(ggml_type: GGMLType, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` finite random values of a dense type, as their packed bytes."""
    values = (rng.standard_normal(n) * 2.0 ** rng.integers(-20, 10, n)).astype(np.float32)
    if ggml_type == GGMLType.F32:
        return values.view(np.uint8)
    if ggml_type == GGMLType.F16:
        return values.astype(np.float16).view(np.uint8)
    return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)  # BF16


def finite_blocks(ggml_type: GGMLType, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random packed bytes of a tensor: random quants, finite random fp16 scales."""
    rng = np.random.default_rng(seed)
    count = n_blocks(ggml_type, shape)
    if ggml_type in DENSE_TYPES:
        return finite_dense(ggml_type, count, rng)
    blocks = rng.integers(0, 256, (count, LAYOUTS[ggml_type].type_size), dtype=np.uint8)
    for offset in F16_FIELDS[ggml_type]:
        # magnitudes from fp16 subnormals (2^-24) up to a few hundred
        scales = rng.standard_normal(count) * 2.0 ** rng.integers(-24, 8, count)
        blocks[:, offset : offset + 2] = scales.astype(np.float16).view(np.uint8).reshape(count, 2)
    return blocks.reshape(-1)


def raw_blocks(ggml_type: GGMLType, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random bytes everywhere: scales include infinities and NaNs."""
    count = n_blocks(ggml_type, shape) * LAYOUTS[ggml_type].type_size
    return np.random.default_rng(seed).integers(0, 256, count, dtype=np.uint8)


def reference(packed: np.ndarray, ggml_type: GGMLType, shape: tuple[int, ...]) -> torch.Tensor:
    """gguf-py's dequantization of `packed` as a float32 tensor of `shape`."""
    rows = packed.reshape(*shape[:-1], -1)  # (*shape[:-1], row bytes)
    with np.errstate(invalid="ignore", over="ignore"):
        values = gguf_quants.dequantize(rows, GGMLQuantizationType(int(ggml_type)))
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(shape))


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same shape and dtype, NaN at the same places, every other value the same bits."""
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    actual = actual.cpu()
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(actual), nan)
    assert torch.equal(actual[~nan].view(torch.int32), expected[~nan].view(torch.int32))


def run(packed: np.ndarray, ggml_type: GGMLType, shape: tuple[int, ...], **kw) -> torch.Tensor:
    """corral's dequantization of `packed`."""
    return dequantize(torch.from_numpy(packed), ggml_type, shape, **kw)


def test_supported_types() -> None:
    assert supported_types() == frozenset(ALL_TYPES)


@pytest.mark.parametrize(("ggml_type", "shape"), CASES)
def test_finite_blocks_match_gguf(ggml_type: GGMLType, shape: tuple[int, ...]) -> None:
    packed = finite_blocks(ggml_type, shape, seed=len(shape) * 1000 + shape[-1])
    expected = reference(packed, ggml_type, shape)
    assert torch.isfinite(expected).all()
    actual = run(packed, ggml_type, shape)
    assert torch.equal(actual.view(torch.int32), expected.view(torch.int32))


@pytest.mark.parametrize("ggml_type", ALL_TYPES, ids=lambda t: t.name)
def test_raw_random_bytes_match_gguf(ggml_type: GGMLType) -> None:
    shape = (17, 512)
    packed = raw_blocks(ggml_type, shape, seed=int(ggml_type))
    assert_bitwise_equal(run(packed, ggml_type, shape), reference(packed, ggml_type, shape))


@pytest.mark.parametrize("ggml_type", QUANTIZABLE, ids=lambda t: t.name)
def test_round_trip_through_gguf_quantize(ggml_type: GGMLType) -> None:
    shape = (6, 512)
    floats = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    packed = gguf_quants.quantize(floats, GGMLQuantizationType(int(ggml_type)))
    packed = np.ascontiguousarray(packed).view(np.uint8).reshape(-1)
    expected = reference(packed, ggml_type, shape)
    assert torch.equal(run(packed, ggml_type, shape), expected)
    # a sanity check on the oracle: within a 4-bit step of the input
    assert (expected - torch.from_numpy(floats)).abs().max() <= np.abs(floats).max() / 7


@pytest.mark.parametrize("ggml_type", ALL_TYPES, ids=lambda t: t.name)
def test_unaligned_and_strided_input(ggml_type: GGMLType) -> None:
    shape = (1, 256)
    packed = finite_blocks(ggml_type, shape, seed=3)
    expected = reference(packed, ggml_type, shape)
    buffer = torch.zeros(packed.size + 1, dtype=torch.uint8)
    buffer[1:] = torch.from_numpy(packed)
    assert torch.equal(dequantize(buffer[1:], ggml_type, shape), expected)
    wide = torch.zeros(packed.size, 2, dtype=torch.uint8)
    wide[:, 0] = torch.from_numpy(packed)
    assert torch.equal(dequantize(wide[:, 0], ggml_type, shape), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("ggml_type", ALL_TYPES, ids=lambda t: t.name)
def test_output_dtype_is_float32_result_cast(ggml_type: GGMLType, dtype: torch.dtype) -> None:
    shape = (3, 512)
    packed = finite_blocks(ggml_type, shape, seed=11)
    actual = run(packed, ggml_type, shape, dtype=dtype)
    assert actual.dtype == dtype
    assert torch.equal(actual, reference(packed, ggml_type, shape).to(dtype))


@pytest.mark.parametrize("ggml_type", ALL_TYPES, ids=lambda t: t.name)
def test_empty_tensor(ggml_type: GGMLType) -> None:
    out = dequantize(torch.empty(0, dtype=torch.uint8), ggml_type, (0, 256))
    assert out.shape == (0, 256) and out.dtype == torch.float32


@pytest.mark.parametrize("delta", [-1, 1])
@pytest.mark.parametrize("ggml_type", [GGMLType.Q4_K, GGMLType.Q8_0, GGMLType.F16])
def test_wrong_byte_count(ggml_type: GGMLType, delta: int) -> None:
    shape = (2, 256)
    packed = torch.zeros(n_blocks(ggml_type, shape) * LAYOUTS[ggml_type].type_size + delta)
    with pytest.raises(ModelFormatError, match=ggml_type.name):
        dequantize(packed.to(torch.uint8), ggml_type, shape)


@pytest.mark.parametrize("shape", [(2, 33), (), (-1, 32)], ids=str)
def test_impossible_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ModelFormatError, match="Q4_0"):
        dequantize(torch.zeros(36, dtype=torch.uint8), GGMLType.Q4_0, shape)


@pytest.mark.parametrize("ggml_type", [GGMLType.IQ2_XXS, GGMLType.Q8_K, GGMLType.I32])
def test_unsupported_type(ggml_type: GGMLType) -> None:
    with pytest.raises(UnsupportedError, match=ggml_type.name):
        dequantize(torch.zeros(66, dtype=torch.uint8), ggml_type, (1, 256))


def test_unknown_type_id() -> None:
    with pytest.raises(UnsupportedError, match="99"):
        dequantize(torch.zeros(4, dtype=torch.uint8), 99, (1, 1))


def test_data_must_be_bytes() -> None:
    with pytest.raises(TypeError, match="uint8"):
        dequantize(torch.zeros(9, dtype=torch.int16), GGMLType.Q4_0, (1, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("ggml_type", ALL_TYPES, ids=lambda t: t.name)
def test_cuda_matches_gguf(ggml_type: GGMLType) -> None:
    shape = (5, 512)
    packed = raw_blocks(ggml_type, shape, seed=5)
    actual = dequantize(torch.from_numpy(packed).cuda(), ggml_type, shape)
    assert actual.device.type == "cuda"
    assert_bitwise_equal(actual, reference(packed, ggml_type, shape))
