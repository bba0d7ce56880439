"""The decode step's two elementwise ops as Triton kernels that take part in programmatic
dependent launch (corral.kernels.triton.pdl), in place of torch's kernels, which break
the chain:

    silu_mul(gate, up) = silu(gate) * up     (SwiGLU's product; one kernel for torch's two)
    add(a, b)          = a + b               (the residual connection after the MLP)

Both round as torch does in float16/bfloat16: silu in float32 rounded to the dtype,
then the product (or sum) of two dtype values in float32, rounded once. The sum is
torch's to the bit; silu's exponential (Triton's) may differ from torch's in the last
bit of a float32, which moves a result by at most a rounding step of its dtype.
One program per (row, BLOCK columns); rows may be strided (gate and up are the two
halves of a fused gate/up output), columns contiguous.
"""

import torch
import triton
import triton.language as tl

from corral.kernels.triton.pdl import launch_options, release_dependents, wait_for_inputs

BLOCK = 1024


@triton.jit
def _binary_kernel(
    A, B, OUT, n, stride_a, stride_b,
    SILU_A: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """OUT[row] = silu(A[row]) * B[row] (SILU_A) or A[row] + B[row]; OUT contiguous."""
    release_dependents(PDL)
    wait_for_inputs(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    a = tl.load(A + row * stride_a + cols, mask=mask, other=0.0)
    b = tl.load(B + row * stride_b + cols, mask=mask, other=0.0).to(tl.float32)
    a32 = a.to(tl.float32)
    if SILU_A:
        silu = (a32 / (1.0 + tl.exp(-a32))).to(a.dtype).to(tl.float32)
        y = silu * b
    else:
        y = a32 + b
    tl.store(OUT + row * n + cols, y.to(OUT.dtype.element_ty), mask=mask)


def _launch(a: torch.Tensor, b: torch.Tensor, silu_a: bool) -> torch.Tensor:
    """The kernel over every row of a and b (same shape and dtype, contiguous last dim)."""
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"operands differ: {a.shape} {a.dtype} and {b.shape} {b.dtype}")
    if a.stride(-1) != 1 or b.stride(-1) != 1:
        raise ValueError("operands must be contiguous along their last dimension")
    n = a.shape[-1]
    rows_a = a.reshape(-1, n)  # (rows, n): a view when the leading dims allow one
    rows_b = b.reshape(-1, n)  # (rows, n)
    out = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    if rows_a.numel() == 0:
        return out
    grid = (rows_a.shape[0], triton.cdiv(n, BLOCK))
    _binary_kernel[grid](
        rows_a, rows_b, out, n, rows_a.stride(0), rows_b.stride(0),
        SILU_A=silu_a, BLOCK=BLOCK, num_warps=4, **launch_options(a.device, rows_a.shape[0]),
    )  # fmt: skip
    return out


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up as torch's `F.silu(gate) * up` to a rounding step; gate, up (..., n)."""
    return _launch(gate, up, True)


def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b, rounded as torch's `a + b`; a, b (..., n) of one dtype."""
    return _launch(a, b, False)
