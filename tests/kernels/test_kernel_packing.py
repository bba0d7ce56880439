"""corral.kernels.packing + reference against gguf-py: the repacked weight dequantizes to
gguf-py's values bit for bit, keeps the bits per weight, and bad input is refused."""

import pytest
import torch
from kernel_cases import QTYPES, gguf_bytes, oracle_weight

from corral.kernels.packing import PackedWeight, pack
from corral.kernels.reference import dequantize_packed, linear_reference

# Extra bytes per 256 weights: the 12-byte packed 6-bit scales become one byte each.
UNPACKED_SCALES = {"Q3_K": 4, "Q4_K": 4, "Q5_K": 4}


@pytest.mark.parametrize("qtype", QTYPES)
def test_dequantize_packed_is_bit_exact(qtype: str) -> None:
    n, k = 13, 768
    raw = gguf_bytes(qtype, n, k, seed=len(qtype) + n)
    pw = pack(torch.from_numpy(raw), qtype, k, rows_per_chunk=5)  # 3 uneven chunks
    expected = oracle_weight(raw, qtype, k)
    actual = dequantize_packed(pw)
    assert pw.shape == (n, k)
    assert torch.equal(actual.view(torch.int32), expected.view(torch.int32))
    assert pw.nbytes() == raw.nbytes + n * k // 256 * UNPACKED_SCALES.get(qtype, 0)


@pytest.mark.parametrize("qtype", ["F16", "BF16", "F32"])
def test_dense_weights_are_kept(qtype: str) -> None:
    dtype = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}[qtype]
    w = torch.randn(5, 64).to(dtype)
    pw = pack(w.view(torch.uint8).reshape(5, -1), qtype, 64)
    assert torch.equal(dequantize_packed(pw), w.float())
    x = torch.randn(2, 64).to(dtype)
    assert torch.equal(linear_reference(x, pw), torch.nn.functional.linear(x, w))


def test_to_moves_every_tensor() -> None:
    raw = gguf_bytes("Q4_K", 2, 256, seed=0)
    pw = pack(torch.from_numpy(raw), "Q4_K", 256).to("meta")
    assert isinstance(pw, PackedWeight) and pw.device.type == "meta"
    assert all(t.device.type == "meta" for t in pw.tensors.values())


def test_bad_input_is_named() -> None:
    raw = torch.from_numpy(gguf_bytes("Q6_K", 2, 256, seed=1))
    with pytest.raises(ValueError, match="Q6_K"):
        pack(raw.reshape(-1)[:-1], "Q6_K", 256)  # one byte short
    with pytest.raises(ValueError, match="Q6_K.*multiple of 256"):
        pack(raw, "Q6_K", 100)
    with pytest.raises(ValueError, match="IQ2_XXS"):
        pack(raw, "IQ2_XXS", 256)
    with pytest.raises(TypeError, match="uint8"):
        pack(raw.float(), "Q6_K", 256)
    with pytest.raises(ValueError, match="empty"):
        pack(raw[:0], "Q6_K", 256)
