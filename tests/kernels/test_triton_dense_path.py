"""The dense path of the Triton kernels (prefill): a packed weight decoded in one pass,
then torch's matmul, against gguf-py's dequantization of the same GGUF bytes multiplied
in float32 by torch; and `quantized_linear` on every side of its batch-size thresholds.
"""

import pytest
import torch
from kernel_cases import QTYPES, assert_close_to, decode_input, gguf_bytes, oracle_weight

from corral.kernels.packing import pack
from corral.kernels.triton import quantized_linear
from corral.kernels.triton.dequant import dequantize
from corral.kernels.triton.linear import MATVEC_MAX_M, dense_linear

N = 37


def weight(qtype: str, k: int, device: str, seed: int = 0):
    """(packed weight on `device`, gguf-py's float32 (N, k) weight on CPU)."""
    raw = gguf_bytes(qtype, N, k, seed=seed)
    return pack(torch.from_numpy(raw), qtype, k).to(device), oracle_weight(raw, qtype, k)


def activations(m: int, k: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype).to(device)


@pytest.mark.parametrize("qtype", QTYPES)
def test_dequantize_matches_gguf_py(qtype: str, device: str) -> None:
    pw, w = weight(qtype, 768, device, seed=6)
    dense = dequantize(pw, torch.float32).cpu()  # (N, K)
    assert torch.allclose(dense, w, rtol=1e-6, atol=1e-6 * w.abs().max().item())


@pytest.mark.parametrize("qtype", QTYPES)
def test_dense_linear(qtype: str, device: str) -> None:
    pw, w = weight(qtype, 512, device, seed=7)
    x = activations(20, 512, torch.float16, device)
    assert_close_to(dense_linear(x, pw), x.float().cpu() @ w.T, torch.float16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_dense_linear_dtypes(dtype: torch.dtype, device: str) -> None:
    pw, w = weight("Q4_K", 512, device, seed=8)
    x = activations(9, 512, dtype, device)
    assert_close_to(dense_linear(x, pw), x.float().cpu() @ w.T, dtype)


@pytest.mark.parametrize(("block_n", "k_step", "num_warps"), [(32, 256, 4), (64, 128, 8)])
def test_dequantize_tiles(block_n: int, k_step: int, num_warps: int, device: str) -> None:
    pw, w = weight("Q2_K", 768, device, seed=10)
    x = activations(6, 768, torch.float32, device)
    dense = dequantize(pw, torch.float32, block_n, k_step, num_warps)  # (N, K)
    assert_close_to(x @ dense.T, x.float().cpu() @ w.T, torch.float32)


@pytest.mark.parametrize(
    ("m", "dtype"),
    [
        (MATVEC_MAX_M, torch.float16),
        (MATVEC_MAX_M, torch.float32),
        (MATVEC_MAX_M + 1, torch.bfloat16),
        (MATVEC_MAX_M + 1, torch.float32),
    ],
)
def test_quantized_linear_thresholds(m: int, dtype: torch.dtype, device: str) -> None:
    pw, w = weight("Q5_K", 256, device, seed=9)
    x = activations(m, 256, dtype, device)
    assert_close_to(quantized_linear(x, pw), decode_input(x, pw) @ w.T, dtype)
