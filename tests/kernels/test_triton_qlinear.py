"""The fused Triton kernels against gguf-py: y = x @ W.T with W = gguf-py's dequantization
of the same GGUF bytes, multiplied in float32 by torch.

Shapes are irregular on purpose: 37 output rows (not a multiple of any row tile), K of
2 or 3 super-blocks (the last K-step of a tile half empty for some types), batch 1 to 4
and 17, a 3-slice split-K, and K-ranges that are whole numbers of steps (the matvec's
unmasked path, one step or several). On CPU the kernels run in Triton's interpreter (see
conftest.py), so shapes stay small.
"""

import pytest
import torch
from kernel_cases import QTYPES, assert_close_to, decode_input, gguf_bytes, oracle_weight

from corral.kernels.packing import pack
from corral.kernels.triton import quantized_linear
from corral.kernels.triton.matmul import matmul
from corral.kernels.triton.matvec import MatvecConfig, matvec

N = 37


def weight(qtype: str, k: int, device: str, seed: int = 0):
    """(packed weight on `device`, gguf-py's float32 (N, k) weight on CPU)."""
    raw = gguf_bytes(qtype, N, k, seed=seed)
    return pack(torch.from_numpy(raw), qtype, k).to(device), oracle_weight(raw, qtype, k)


def activations(m: int, k: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype).to(device)


def reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.float().cpu() @ w.T


@pytest.mark.parametrize("qtype", QTYPES)
def test_matvec_batch_1(qtype: str, device: str) -> None:
    pw, w = weight(qtype, 768, device)
    x = activations(1, 768, torch.float16, device)
    assert_close_to(matvec(x, pw), reference(x, w), torch.float16)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q3_K", "Q6_K"])
def test_matvec_batch_3_split_k(qtype: str, device: str) -> None:
    pw, w = weight(qtype, 768, device, seed=1)
    x = activations(3, 768, torch.float32, device)
    y = matvec(x, pw, MatvecConfig(block_n=16, groups=4, splits=3))
    assert_close_to(y, reference(x, w), torch.float32)


@pytest.mark.parametrize(
    ("qtype", "k", "batch", "config"),
    [
        ("Q4_0", 1024, 1, None),  # one whole step
        ("Q4_K", 2048, 2, MatvecConfig(block_n=4, groups=16, num_warps=1)),  # 4 whole steps
        ("Q6_K", 1024, 4, None),
        ("Q2_K", 2048, 1, MatvecConfig(block_n=8, groups=8, num_warps=1)),
        ("Q8_0", 1024, 3, MatvecConfig(block_n=2, groups=16, num_warps=1, splits=2)),
    ],
)
def test_matvec_whole_steps(qtype: str, k: int, batch: int, config, device: str) -> None:
    pw, w = weight(qtype, k, device, seed=5)
    x = activations(batch, k, torch.float16, device)
    assert_close_to(matvec(x, pw, config), reference(x, w), torch.float16)


@pytest.mark.parametrize("qtype", QTYPES)
def test_matmul_batch_17(qtype: str, device: str) -> None:
    pw, w = weight(qtype, 512, device, seed=2)
    x = activations(17, 512, torch.float16, device)
    assert_close_to(matmul(x, pw), reference(x, w), torch.float16)


@pytest.mark.parametrize("qtype", ["Q5_0", "Q2_K", "Q5_K"])
def test_matmul_bfloat16(qtype: str, device: str) -> None:
    pw, w = weight(qtype, 512, device, seed=3)
    x = activations(20, 512, torch.bfloat16, device)
    assert_close_to(matmul(x, pw), reference(x, w), torch.bfloat16)


@pytest.mark.parametrize(("qtype", "batch"), [("Q4_0", (1,)), ("Q8_0", (3,)), ("Q4_K", (2, 3))])
def test_quantized_linear_keeps_leading_dims(qtype: str, batch: tuple, device: str) -> None:
    pw, w = weight(qtype, 256, device, seed=4)
    x = activations(int(torch.tensor(batch).prod()), 256, torch.bfloat16, device)
    y = quantized_linear(x.reshape(*batch, 256), pw)
    assert y.shape == (*batch, N)
    assert_close_to(y.reshape(-1, N), decode_input(x, pw) @ w.T, torch.bfloat16)


def test_quantized_linear_dense_and_errors(device: str) -> None:
    w = torch.randn(N, 64)
    pw = pack(w.half().view(torch.uint8), "F16", 64).to(device)
    x = activations(5, 64, torch.float16, device)
    assert_close_to(quantized_linear(x, pw), reference(x, w.half().float()), torch.float16)
    with pytest.raises(ValueError, match="F16 weight of shape"):
        quantized_linear(x[:, :32], pw)
