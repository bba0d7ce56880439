"""silu_mul (corral.kernels.triton.elementwise) against torch's `F.silu(gate) * up`, which
it replaces in the fused decode step, on strided rows and ragged widths: within a few
rounding steps of the dtype (the exponentials differ)."""

import pytest
import torch
import torch.nn.functional as F

from corral.kernels.triton.elementwise import silu_mul

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
