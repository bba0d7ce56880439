"""The quantizing kernel of int8 activations: x (M, K) -> `Int8Activations`.

The layout (blocks of one weight group, llama.cpp's q8_1 fields d and s = d * sum(q),
codes packed in the weight words' decode order) is documented in
`corral.kernels.act_quant`, which also holds this kernel's torch twin. A program loads
BLOCKS_PER_PROGRAM blocks of a row directly in code order (byte b of code word (t, w) is
weight 4 (P b + t) + w of its block), so packing is a shift and a sum in registers.
"""

import torch
import triton
import triton.language as tl

from corral.kernels.act_quant import Int8Activations, group_weights
from corral.kernels.triton.pdl import launch_options, release_dependents, wait_for_inputs

BLOCKS_PER_PROGRAM = 32  # groups quantized by one program


@triton.jit
def _quantize_kernel(
    X, CODES, D, S, n_blocks, stride_x, stride_c, stride_d,
    P: tl.constexpr, BLOCKS: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Program (m, i): blocks i * BLOCKS.. of row m."""
    release_dependents(PDL)
    wait_for_inputs(PDL)
    GROUP: tl.constexpr = 16 * P  # weights per block
    m = tl.program_id(0)
    blocks = tl.program_id(1) * BLOCKS + tl.arange(0, BLOCKS)
    ts = tl.arange(0, P)[None, :, None, None]
    ws = tl.arange(0, 4)[None, None, :, None]
    bs = tl.arange(0, 4)[None, None, None, :]
    inside = blocks < n_blocks  # (BLOCKS,)
    # byte b of code word (t, w): weight 4 (P b + t) + w of its block
    cols = blocks[:, None, None, None] * GROUP + 4 * (P * bs + ts) + ws  # (BLOCKS, P, 4, 4)
    x = tl.load(X + m * stride_x + cols, mask=inside[:, None, None, None], other=0.0)
    x = x.to(tl.float32)
    amax = tl.max(tl.max(tl.max(tl.abs(x), axis=3), axis=2), axis=1)  # (BLOCKS,)
    d = tl.math.div_rn(amax, 127.0)
    safe = tl.where(d > 0, d, 1.0)
    inv = tl.where(d > 0, tl.math.div_rn(tl.full(d.shape, 1.0, tl.float32), safe), 0.0)
    v = x * inv[:, None, None, None]
    q = (tl.abs(v) + 0.5).to(tl.int32)  # round half away from zero: a floor of a positive
    q = tl.where(v < 0, -q, q)  # (BLOCKS, P, 4, 4)
    total = tl.sum(tl.sum(tl.sum(q, axis=3), axis=2), axis=1)  # (BLOCKS,)
    words = tl.sum((q & 0xFF) << (8 * bs), axis=3)  # (BLOCKS, P, 4); bytes never overlap
    word_offs = (
        blocks[:, None, None] * (4 * P)
        + 4 * tl.arange(0, P)[None, :, None]
        + tl.arange(0, 4)[None, None, :]
    )  # (BLOCKS, P, 4): code word (t, w) of each block
    tl.store(CODES + m * stride_c + word_offs, words, mask=inside[:, None, None])
    tl.store(D + m * stride_d + blocks, d, mask=inside)
    tl.store(S + m * stride_d + blocks, d * total.to(tl.float32), mask=inside)


def quantize_activations(x: torch.Tensor, bits: int) -> Int8Activations:
    """x (M, K) float, K a multiple of the group -> its int8 blocks for `bits`-bit weights."""
    group = group_weights(bits)
    m, k = x.shape
    if k % group:
        raise ValueError(f"activations of {k} columns are not whole blocks of {group}")
    if x.stride(1) != 1:
        raise ValueError("activations must be contiguous along K")
    n_blocks = k // group
    codes = torch.empty(m, k // 4, dtype=torch.int32, device=x.device)
    d = torch.empty(m, n_blocks, dtype=torch.float32, device=x.device)
    s = torch.empty_like(d)
    grid = (m, triton.cdiv(n_blocks, BLOCKS_PER_PROGRAM))
    _quantize_kernel[grid](
        x, codes, d, s, n_blocks, x.stride(0), codes.stride(0), d.stride(0),
        P=8 // bits, BLOCKS=BLOCKS_PER_PROGRAM, num_warps=4, **launch_options(x.device, m),
    )  # fmt: skip
    return Int8Activations(bits, codes, d, s)
