"""SwiGLU's product silu(gate) * up as one Triton kernel that takes part in programmatic
dependent launch (corral.kernels.triton.pdl), in place of torch's two kernels, which
break the chain.

It rounds as torch does in float16/bfloat16: silu in float32 rounded to the dtype, then
the product of two dtype values in float32, rounded once. Triton's exponential may
differ from torch's in the last bit of a float32, which moves a result by at most a
rounding step of its dtype. One program per (row, BLOCK output columns); rows may be
strided, columns are contiguous. Gate and up come as two tensors (`silu_mul`: the halves
of a fused gate/up output) or as the column pairs of one (`silu_mul_pairs`: the output of
an interleaved gate/up weight, corral.model.fusion.SwiGLULinear), which a program loads
as one contiguous run of 2 BLOCK values (16-byte vectors) and splits in registers.
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
    G, U, OUT, n, stride_g, stride_u, BLOCK: tl.constexpr, PAIRS: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """OUT[row] = silu(G[row]) * U[row], or with PAIRS silu(G[row, 0::2]) * G[row, 1::2];
    OUT contiguous."""
    release_dependents(PDL)
    wait_for_inputs(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    if PAIRS:  # a contiguous run of 2 BLOCK values, split in registers
        flat = tl.program_id(1) * 2 * BLOCK + tl.arange(0, 2 * BLOCK)  # (2 BLOCK,)
        pairs = tl.load(G + row * stride_g + flat, mask=flat < 2 * n, other=0.0)
        gate, up = tl.split(tl.reshape(pairs, [BLOCK, 2]))  # (BLOCK,) each
    else:
        gate = tl.load(G + row * stride_g + cols, mask=mask, other=0.0)
        up = tl.load(U + row * stride_u + cols, mask=mask, other=0.0)
    out = silu_times(gate.to(tl.float32), up.to(tl.float32), gate.dtype)
    tl.store(OUT + row * n + cols, out.to(OUT.dtype.element_ty), mask=mask)


def _launch(gate: torch.Tensor, up: torch.Tensor, n: int, pairs: bool) -> torch.Tensor:
    """The kernel over every row of gate (and up): a contiguous (..., n) output."""
    width = gate.shape[-1]
    rows_g = gate.reshape(-1, width)  # (rows, n or 2n): a view when the leading dims allow one
    rows_u = up.reshape(-1, width)  # (rows, n or 2n)
    out = torch.empty(*gate.shape[:-1], n, dtype=gate.dtype, device=gate.device)
    if rows_g.numel() == 0:
        return out
    grid = (rows_g.shape[0], triton.cdiv(n, BLOCK))
    _silu_mul_kernel[grid](
        rows_g, rows_u, out, n, rows_g.stride(0), rows_u.stride(0),
        BLOCK=BLOCK, PAIRS=pairs, num_warps=4, **launch_options(gate.device, rows_g.shape[0]),
    )  # fmt: skip
    return out


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up as torch's `F.silu(gate) * up` to a rounding step: gate, up (..., n)
    of one shape and dtype, contiguous along the last dimension. Raises ValueError else."""
    if gate.shape != up.shape or gate.dtype != up.dtype or gate.device != up.device:
        raise ValueError(f"gate {gate.shape} {gate.dtype} and up {up.shape} {up.dtype} differ")
    if gate.stride(-1) != 1 or up.stride(-1) != 1:
        raise ValueError("gate and up must be contiguous along their last dimension")
    return _launch(gate, up, gate.shape[-1], pairs=False)


def silu_mul_pairs(pairs: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for pairs (..., 2n) whose columns alternate gate 0, up 0, gate 1,
    ... (contiguous along the last dimension): (..., n), as :func:`silu_mul` rounds it.
    Raises ValueError for an odd or strided last dimension."""
    if pairs.shape[-1] % 2 or (pairs.stride(-1) != 1 and pairs.shape[-1] > 1):
        raise ValueError(f"pairs must be (..., 2n) and contiguous, got {tuple(pairs.shape)}")
    return _launch(pairs, pairs, pairs.shape[-1] // 2, pairs=True)
