"""SwiGLU's product silu(gate) * up as one Triton kernel that takes part in programmatic
dependent launch (corral.kernels.triton.pdl), in place of torch's two kernels, which
break the chain.

It rounds as torch does in float16/bfloat16: silu in float32 rounded to the dtype, then
the product of two dtype values in float32, rounded once. Triton's exponential may
differ from torch's in the last bit of a float32, which moves a result by at most a
rounding step of its dtype. One program per (row, BLOCK columns); rows and columns may
be strided: gate and up are the two halves of a fused gate/up output, or the even and odd
columns of an interleaved one (corral.model.fusion.SwiGLULinear).
"""

import torch
import triton
import triton.language as tl

from corral.kernels.triton.pdl import launch_options, release_dependents, wait_for_inputs

BLOCK = 1024


@triton.jit
def silu_times(gate, up, DT: tl.constexpr):
    """silu(gate) * up for float32 tensors holding values of dtype DT, rounded as torch
    rounds `F.silu(gate) * up` in DT (silu rounded to DT, then the product)."""
    silu = (gate / (1.0 + tl.exp(-gate))).to(DT).to(tl.float32)
    return (silu * up).to(DT)


@triton.jit
def _silu_mul_kernel(
    G, U, OUT, n, stride_g, stride_u, col_stride_g, col_stride_u,
    BLOCK: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """OUT[row] = silu(G[row]) * U[row]; OUT contiguous."""
    release_dependents(PDL)
    wait_for_inputs(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    gate = tl.load(G + row * stride_g + cols * col_stride_g, mask=mask, other=0.0)
    up = tl.load(U + row * stride_u + cols * col_stride_u, mask=mask, other=0.0)
    out = silu_times(gate.to(tl.float32), up.to(tl.float32), gate.dtype)
    tl.store(OUT + row * n + cols, out.to(OUT.dtype.element_ty), mask=mask)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up as torch's `F.silu(gate) * up` to a rounding step: gate, up (..., n)
    of one shape and dtype, any strides (a contiguous output). Raises ValueError else."""
    if gate.shape != up.shape or gate.dtype != up.dtype or gate.device != up.device:
        raise ValueError(f"gate {gate.shape} {gate.dtype} and up {up.shape} {up.dtype} differ")
    n = gate.shape[-1]
    rows_g = gate.reshape(-1, n)  # (rows, n): a view when the leading dims allow one
    rows_u = up.reshape(-1, n)  # (rows, n)
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    if rows_g.numel() == 0:
        return out
    grid = (rows_g.shape[0], triton.cdiv(n, BLOCK))
    _silu_mul_kernel[grid](
        rows_g, rows_u, out, n, rows_g.stride(0), rows_u.stride(0),
        rows_g.stride(1), rows_u.stride(1),
        BLOCK=BLOCK, num_warps=4, **launch_options(gate.device, rows_g.shape[0]),
    )  # fmt: skip
    return out
