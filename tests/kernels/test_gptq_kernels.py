"""GPTQ weights in the fused kernels (corral.kernels.gptq + the Triton matvec and
dequantize-then-cuBLAS paths) against independent dequantizations of the same tensors.

- AutoGPTQ: layers packed by AutoGPTQ's own QuantLinear.pack (tests.fixtures.tiny_gptq),
  with AutoGPTQ's torch forward on the identity as the float32 weight, for 2/3/4/8 bits,
  groups of 32, 64, 128 and -1, act-order on and off, at batch 1 (matvec) and 17 (dense).
  2/3-bit groups of 32 (and 4-bit groups of 16) are half a group of 4 words: two
  (scale, zero) pairs per word group (decode.GPTQ_ZERO2).
- Irregular shapes (37 outputs, batch 2/3/17, float32 and bfloat16, the 8-bit zero point
  256 that AutoGPTQ's "gptq" format produces for a zero of 0, a K of 3 word groups, a
  split K, the fused matmul kernel, rows concatenated): codes packed with corral's
  AutoGPTQ-layout packer, against corral.quant.gptq.dequantize_gptq (itself bit-exact
  with AutoGPTQ, tests/quant).
- The layouts still refused (then dequantized at load), with the reason.
Decode batches (up to 4 rows) of 4-bit weights take the int8 matvec: their expectations
use x after the same int8 rounding (`kernel_cases.decode_input`).
On CPU the kernels run in Triton's interpreter (see conftest.py), so shapes stay small.
"""

import pytest
import torch
from kernel_cases import assert_close_to, decode_input

from corral.errors import UnsupportedError
from corral.kernels.gptq import gptq_layout_error, pack_gptq
from corral.kernels.packing import concat_rows
from corral.kernels.reference import dequantize_packed
from corral.kernels.triton import quantized_linear
from corral.kernels.triton.decode import GPTQ_ZERO2, KERNEL_TYPES
from corral.kernels.triton.matmul import matmul
from corral.kernels.triton.matvec import MatvecConfig, matvec
from corral.quant.gptq import dequantize_gptq, zero_points
from corral.quant.gptq_pack import pack_values
from corral.quant.linear import PackedLinear
from corral.weights.qtensor import QTensor
from tests.fixtures.tiny_gptq import group_index, pack_layer, rtn_codes

K = 256


def autogptq_layer(bits: int, group_size: int, act_order: bool, n: int = 64):
    """(QTensor, AutoGPTQ's float32 (n, K) weight) of an AutoGPTQ-packed random layer."""
    seed = bits * 1000 + group_size % 997 + act_order
    weight = torch.randn(n, K, generator=torch.Generator().manual_seed(seed))
    g_idx = group_index(K, group_size, act_order, seed)
    codes, scales, zeros = rtn_codes(weight, bits, g_idx, sym=False)
    layer = pack_layer(codes, scales, zeros, g_idx, bits, group_size)
    t = layer.tensors
    qt = QTensor(
        scheme="gptq",
        shape=(n, K),
        bits=bits,
        group_size=K if group_size == -1 else group_size,
        qweight=t["qweight"],
        scales=t["scales"],
        zeros=zero_points(t["qzeros"], bits, "gptq"),
        g_idx=t["g_idx"],
    )
    return qt, layer.reference


def packed(qt: QTensor, device: str):
    return pack_gptq(qt.qweight, qt.scales, qt.zeros, qt.g_idx, qt.bits, qt.group_size).to(device)


def activations(m: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.randn(m, K, generator=torch.Generator().manual_seed(m)).to(dtype).to(device)


@pytest.mark.parametrize("act_order", [False, True], ids=["in-order", "act-order"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_kernels_match_autogptq(bits: int, group_size: int, act_order: bool, device: str):
    qt, reference = autogptq_layer(bits, group_size, act_order)
    assert PackedLinear.qtensor_layout_error(qt) is None  # kept packed by the loader
    pw = packed(qt, device)
    assert pw.nbytes() == packed_bytes(bits, group_size, act_order, n=64)
    assert ("perm" in pw.tensors) == (act_order and group_size != -1)  # one group: no order
    assert torch.equal(dequantize_packed(pw.to("cpu")), reference)  # the torch twin: exact
    for m in (1, 17):  # matvec, then dequantize + matmul
        x = activations(m, torch.float16, device)
        expected = decode_input(x, pw) @ reference.T  # batch 1: the int8 matvec's rounding
        assert_close_to(quantized_linear(x, pw), expected, torch.float16)


def packed_bytes(bits: int, group_size: int, act_order: bool, n: int) -> int:
    """Bytes of a packed (n, K) layer: the file's bits per weight, an fp16 scale and a zero
    point (u8, i16 for 8 bits) per group, and the column order of an act-order layer."""
    n_groups = 1 if group_size == -1 else K // group_size
    zero_bytes = 2 if bits == 8 else 1
    perm_bytes = 4 * K if act_order and n_groups > 1 else 0
    return n * K * bits // 8 + n * n_groups * (2 + zero_bytes) + perm_bytes


def own_layer(
    bits: int,
    group_size: int,
    n: int,
    seed: int,
    zero_max: int | None = None,
    k: int = K,
    dtype: torch.dtype = torch.float16,
):
    """A random act-order QTensor (n, k), codes packed in AutoGPTQ's layout, scales in
    `dtype`."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (n, k), generator=g)
    n_groups = k // group_size
    g_idx = (torch.arange(k, dtype=torch.int32) // group_size)[torch.randperm(k, generator=g)]
    scales = (torch.rand(n_groups, n, generator=g) * 0.02 + 0.001).to(dtype)
    top = (1 << bits) if zero_max is None else zero_max
    zeros = torch.randint(0, top + 1, (n_groups, n), generator=g).to(torch.int16)
    qweight = pack_values(codes.t(), bits)  # (k * bits / 32, n)
    return QTensor("gptq", (n, k), bits, group_size, qweight, scales, zeros, g_idx)


@pytest.mark.parametrize(
    ("bits", "group_size", "m", "dtype"),
    [
        (3, 64, 3, torch.float16),
        (4, 128, 2, torch.float32),
        (8, 32, 1, torch.float16),
        (2, 256, 4, torch.float16),
        (3, 128, 17, torch.bfloat16),
        (4, 32, 17, torch.float32),
        (2, 32, 2, torch.bfloat16),
        (3, 32, 17, torch.float16),
        (4, 16, 3, torch.float32),
        (4, 16, 17, torch.float16),
    ],
)
def test_irregular_rows_and_batches(bits: int, group_size: int, m: int, dtype, device: str):
    qt = own_layer(bits, group_size, n=37, seed=bits + m)
    pw = packed(qt, device)
    expected = decode_input(activations(m, dtype, "cpu"), pw) @ dequantize_gptq(qt).T
    y = quantized_linear(activations(m, dtype, device), pw)
    assert_close_to(y, expected, dtype)


def test_eight_bit_zero_point_256(device: str):
    qt = own_layer(8, 64, n=37, seed=3, zero_max=256)
    qt.zeros[0, :5] = 256  # AutoGPTQ's "gptq" format reads a stored zero of 0 as 2^bits
    pw = packed(qt, device)
    assert pw.tensors["zeros"].dtype == torch.int16
    x = activations(1, torch.float16, device)
    expected = decode_input(x, pw) @ dequantize_gptq(qt).T
    assert_close_to(quantized_linear(x, pw), expected, torch.float16)


def test_uneven_g_idx_is_refused():
    qt = own_layer(4, 64, n=32, seed=9)
    g_idx = qt.g_idx.clone()
    g_idx[g_idx == 0] = 1  # group 1 now has 128 columns, group 0 none
    assert "does not sort into groups of 64" in gptq_layout_error(4, 64, g_idx)
    with pytest.raises(ValueError, match="does not sort"):
        pack_gptq(qt.qweight, qt.scales, qt.zeros, g_idx, 4, 64)


@pytest.mark.parametrize("bits", [2, 3])
def test_groups_of_32_are_sub_blocks_of_the_word_group(bits: int, device: str):
    """Two (scale, zero) per 4 words; K of 3 word groups (a masked step), a split K,
    float32 and bfloat16 scales (a pair of scales is read as one int64 or int32) and the
    fused tensor-core matmul (not dispatched to, but it decodes through the same code)."""
    kt = KERNEL_TYPES[f"GPTQ{bits}g32"]
    assert (kt.nsub, kt.d_div, kt.scale_kind) == (2, 1, GPTQ_ZERO2.value)
    for dtype in (torch.float16, torch.float32, torch.bfloat16):
        qt = own_layer(bits, 32, n=37, seed=bits, k=192, dtype=dtype)
        pw = packed(qt, device)
        assert pw.tensors["d"].shape == (37, 6) and pw.tensors["d"].dtype == dtype
        w = dequantize_gptq(qt)  # (37, 192)
        x = torch.randn(2, 192, generator=torch.Generator().manual_seed(5))
        x_sorted = x.half().to(device)[:, pw.tensors["perm"].long()]  # (2, 192) group order
        expected = x.half().float() @ w.T
        assert_close_to(matvec(x_sorted, pw), expected, torch.float16)  # 1 step, 1 masked
        split = MatvecConfig(block_n=4, groups=1, num_warps=1, splits=3)
        assert_close_to(matvec(x_sorted, pw, split), expected, torch.float16)
        assert_close_to(matmul(x_sorted, pw), expected, torch.float16)


def test_groups_of_32_concatenate_along_rows(device: str):
    first, other = own_layer(3, 32, n=16, seed=11), own_layer(3, 32, n=21, seed=12)
    same_order = QTensor(
        "gptq", other.shape, 3, 32, other.qweight, other.scales, other.zeros, first.g_idx
    )
    pw = concat_rows([packed(first, device), packed(same_order, device)])
    x = activations(1, torch.float16, device)
    w = torch.cat([dequantize_gptq(first), dequantize_gptq(same_order)])  # (37, K)
    assert_close_to(quantized_linear(x, pw), decode_input(x, pw) @ w.T, torch.float16)


@pytest.mark.parametrize(
    ("bits", "group_size", "k"),
    [
        (2, 16, 256),  # a quarter of a word group: 4 scales per 4 words
        (3, 16, 256),
        (8, 8, 256),  # half a word group, but 16-bit zero points
        (2, 96, 192),  # straddles word groups of 64
        (4, 48, 192),  # straddles word groups of 32
        (4, 128, 192),  # a short last group
        (2, 32, 96),  # K not a whole number of word groups
    ],
)
def test_refused_layouts(bits: int, group_size: int, k: int, device: str):
    g_idx = torch.arange(k, dtype=torch.int32) // group_size
    assert "the kernels need" in gptq_layout_error(bits, group_size, g_idx)
    if k % group_size == 0:
        qt = own_layer(bits, group_size, n=32, seed=7, k=k)
        with pytest.raises(UnsupportedError, match=f"group size {group_size}"):
            PackedLinear.from_qtensor(qt, torch.device(device))
