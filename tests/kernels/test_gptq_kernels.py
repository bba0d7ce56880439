"""GPTQ weights in the fused kernels (corral.kernels.gptq + the Triton matvec and
dequantize-then-cuBLAS paths) against independent dequantizations of the same tensors.

- AutoGPTQ: layers packed by AutoGPTQ's own QuantLinear.pack (tests.fixtures.tiny_gptq),
  with AutoGPTQ's torch forward on the identity as the float32 weight, for 2/3/4/8 bits,
  groups of 32, 128 and -1, act-order on and off, at batch 1 (matvec) and 17 (dense).
- Irregular shapes (37 outputs, batch 2/3/17, float32 and bfloat16, the 8-bit zero point
  256 that AutoGPTQ's "gptq" format produces for a zero of 0): codes packed with corral's
  AutoGPTQ-layout packer, against corral.quant.gptq.dequantize_gptq (itself bit-exact
  with AutoGPTQ, tests/quant).
On CPU the kernels run in Triton's interpreter (see conftest.py), so shapes stay small.
"""

import pytest
import torch
from kernel_cases import assert_close_to

from corral.errors import UnsupportedError
from corral.kernels.gptq import gptq_layout_error, pack_gptq
from corral.kernels.reference import dequantize_packed
from corral.kernels.triton import quantized_linear
from corral.quant.gptq import dequantize_gptq, zero_points
from corral.quant.gptq_pack import pack_values
from corral.quant.linear import PackedLinear
from corral.weights.qtensor import QTensor
from tests.fixtures.tiny_gptq import group_index, pack_layer, rtn_codes

K = 256
REFUSED = {(2, 32), (3, 32)}  # 64 weights per 4 words of 2-bit fields: groups of 32 split them


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
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_kernels_match_autogptq(bits: int, group_size: int, act_order: bool, device: str):
    qt, reference = autogptq_layer(bits, group_size, act_order)
    if (bits, group_size) in REFUSED:
        assert "multiples of 64" in gptq_layout_error(bits, qt.group_size, qt.g_idx)
        with pytest.raises(UnsupportedError, match="group size 32"):
            PackedLinear.from_qtensor(qt, torch.device(device))
        return
    pw = packed(qt, device)
    assert ("perm" in pw.tensors) == (act_order and group_size != -1)  # one group: no order
    assert torch.equal(dequantize_packed(pw.to("cpu")), reference)  # the torch twin: exact
    for m in (1, 17):  # matvec, then dequantize + matmul
        x = activations(m, torch.float16, device)
        assert_close_to(quantized_linear(x, pw), x.float().cpu() @ reference.T, torch.float16)


def own_layer(bits: int, group_size: int, n: int, seed: int, zero_max: int | None = None):
    """A random act-order QTensor (n, K), codes packed in AutoGPTQ's layout."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (n, K), generator=g)
    n_groups = K // group_size
    g_idx = (torch.arange(K, dtype=torch.int32) // group_size)[torch.randperm(K, generator=g)]
    scales = (torch.rand(n_groups, n, generator=g) * 0.02 + 0.001).half()
    top = (1 << bits) if zero_max is None else zero_max
    zeros = torch.randint(0, top + 1, (n_groups, n), generator=g).to(torch.int16)
    qweight = pack_values(codes.t(), bits)  # (K * bits / 32, n)
    return QTensor("gptq", (n, K), bits, group_size, qweight, scales, zeros, g_idx)


@pytest.mark.parametrize(
    ("bits", "group_size", "m", "dtype"),
    [
        (3, 64, 3, torch.float16),
        (4, 128, 2, torch.float32),
        (8, 32, 1, torch.float16),
        (2, 256, 4, torch.float16),
        (3, 128, 17, torch.bfloat16),
        (4, 32, 17, torch.float32),
    ],
)
def test_irregular_rows_and_batches(bits: int, group_size: int, m: int, dtype, device: str):
    qt = own_layer(bits, group_size, n=37, seed=bits + m)
    expected = activations(m, dtype, "cpu").float() @ dequantize_gptq(qt).T
    y = quantized_linear(activations(m, dtype, device), packed(qt, device))
    assert_close_to(y, expected, dtype)


def test_eight_bit_zero_point_256(device: str):
    qt = own_layer(8, 64, n=37, seed=3, zero_max=256)
    qt.zeros[0, :5] = 256  # AutoGPTQ's "gptq" format reads a stored zero of 0 as 2^bits
    pw = packed(qt, device)
    assert pw.tensors["zeros"].dtype == torch.int16
    x = activations(1, torch.float16, device)
    assert_close_to(quantized_linear(x, pw), x.float().cpu() @ dequantize_gptq(qt).T, torch.float16)


def test_uneven_g_idx_is_refused():
    qt = own_layer(4, 64, n=32, seed=9)
    g_idx = qt.g_idx.clone()
    g_idx[g_idx == 0] = 1  # group 1 now has 128 columns, group 0 none
    assert "does not sort into groups of 64" in gptq_layout_error(4, 64, g_idx)
    with pytest.raises(ValueError, match="does not sort"):
        pack_gptq(qt.qweight, qt.scales, qt.zeros, g_idx, 4, 64)
