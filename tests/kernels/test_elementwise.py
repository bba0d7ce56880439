"""silu_mul and silu_mul_pairs (corral.kernels.triton.elementwise) against torch's
`F.silu(gate) * up`, which they replace in the fused decode step and in prefill, on strided
rows and ragged widths: within a few rounding steps of the dtype (the exponentials
differ)."""

import pytest
import torch
import torch.nn.functional as F

from corral.kernels.triton.elementwise import silu_mul, silu_mul_pairs

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def halves(rows: int, n: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, ...]:
    """gate, up as the two column halves of one (rows, 2n) tensor, as a fused matmul gives."""
    fused = torch.randn(rows, 2 * n, generator=torch.Generator().manual_seed(n)) * 4
    fused = fused.to(dtype).to(device)  # (rows, 2n)
    return fused[:, :n], fused[:, n:]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1000), (3, 2048), (2, 1, 1100)])
def test_silu_mul_equals_torch(dtype: torch.dtype, shape: tuple[int, ...], device: str):
    rows, n = int(torch.tensor(shape[:-1]).prod()), shape[-1]
    gate, up = halves(rows, n, dtype, device)
    gate, up = gate.reshape(*shape[:-1], n), up.reshape(*shape[:-1], n)
    eps = torch.finfo(dtype).eps
    expected = F.silu(gate) * up
    torch.testing.assert_close(silu_mul(gate, up), expected, rtol=4 * eps, atol=eps / 8)


def test_operands_of_different_shapes_are_refused(device: str):
    with pytest.raises(ValueError, match="differ"):
        silu_mul(torch.zeros(2, 8, device=device), torch.zeros(2, 9, device=device))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1000), (3, 2048), (2, 1, 1100)])
def test_silu_mul_pairs_equals_torch(dtype: torch.dtype, shape: tuple[int, ...], device: str):
    """Gate and up as the even and odd columns of one tensor (an interleaved gate/up weight's
    output), rows strided."""
    rows, n = int(torch.tensor(shape[:-1]).prod()), shape[-1]
    gate, up = halves(rows, n, dtype, device)
    wide = torch.zeros(rows, 2 * n + 6, dtype=dtype, device=device)  # rows of stride 2n + 6
    pairs = wide[:, : 2 * n].view(rows, n, 2)  # (rows, n, 2)
    pairs[..., 0], pairs[..., 1] = gate, up
    pairs = pairs.view(rows, 2 * n).reshape(*shape[:-1], 2 * n)  # (..., 2n)
    eps = torch.finfo(dtype).eps
    expected = (F.silu(gate) * up).reshape(*shape)
    torch.testing.assert_close(silu_mul_pairs(pairs), expected, rtol=4 * eps, atol=eps / 8)


def test_pairs_of_an_odd_width_are_refused(device: str):
    with pytest.raises(ValueError, match="2n"):
        silu_mul_pairs(torch.zeros(2, 7, device=device))
