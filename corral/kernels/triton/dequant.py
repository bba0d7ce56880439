"""Decode a whole packed weight into a dense matrix in one pass, for cuBLAS (prefill).

With many activation rows the product is cheapest on tensor cores at cuBLAS speed: one
pass writes the weight as a dense (N, K) fp16/bf16 matrix (it reads the packed bytes and
writes 2 bytes per weight: 67 us, 2.25 TB/s, for a 14336 x 4096 Q4_K weight on an
H100), then torch's matmul does the rest at 600+ TFLOP/s. The fused matmul kernel
decodes every weight tile once per tile of activation rows instead, and its decoding,
not the tensor cores, sets its pace (60-100 TFLOP/s). The dense copy is transient (one
weight at a time, allocated per call; the caching allocator hands the same block back
next time).

Columns come out in storage order, the weight's own: `decode.decode_tile` yields each
group's weights word by word (kernel order), and a reshape and permute of the tile puts
them back field by field before the store. In exchange the dense path no longer permutes
the activations' columns before every product (a copy that took 1.5 ms of a 7B model's
512-token prefill on an H100). What the reorder costs, read from the PTX of both versions
compiled for sm_90 by Triton 3.6 (`triton.compile` for GPUTarget("cuda", 90, 32), no GPU
needed): every type keeps its eight 16-byte global stores per thread and tile and gains
~64 register moves; the k-quants and Q4_1/Q5_x keep their shared-memory traffic (the
tile already went through shared memory to reach the store layout), while Q4_0 and Q8_0,
which needed little shuffling before, now stage the tile in shared memory too (136
32-bit shared loads and stores per thread and tile instead of 28 and 34). Not timed on a
GPU yet: `benchmarks/kernel_bandwidth.py` reports the dequantize pass alone.

Block sizes (`dequantize`'s arguments): a program decodes BN = 16 rows x K_STEP = 512
weights (16 groups of 4-bit types, 8 of 2-bit, 32 of 8-bit) with 4 warps: 16 KB of fp16
out, written as 16-byte vectors (each thread holds whole groups: 4 words, all their
fields). Measured (in kernel order) against 32 x 256 (84 us), 64 x 256, 128 x 128 and 8-warp tiles
(78-92 us) on the same weight (benchmarks/kernel_bandwidth.py --dequant-sweep).
"""

import torch
import triton
import triton.language as tl

from corral.kernels.packing import PackedWeight
from corral.kernels.triton.decode import (
    KERNEL_TYPES,
    ONE_BITS,
    decode_tile,
    kernel_args,
    load_meta,
)

K_STEP = 512
BLOCK_N = 16
NUM_WARPS = 4


@triton.jit
def _dequant_kernel(
    QS, QH, SC, D, DM, OUT, ONE, N, n_groups,
    BITS: tl.constexpr, HBITS: tl.constexpr, NSUB: tl.constexpr, D_DIV: tl.constexpr,
    KIND: tl.constexpr, OFFSET: tl.constexpr, BN: tl.constexpr, GK: tl.constexpr,
):  # fmt: skip
    J: tl.constexpr = 32 // BITS  # fields per word
    C: tl.constexpr = 4 * GK  # words per row in a tile
    KS: tl.constexpr = C * J  # weights per row in a tile
    DT: tl.constexpr = OUT.dtype.element_ty
    ns = tl.program_id(0) * BN + tl.arange(0, BN)
    ns64 = ns.to(tl.int64)[:, None]  # (BN, 1)
    g0 = tl.program_id(1) * GK
    cs = tl.arange(0, C)
    gi = (g0 + cs // 4)[None, :]  # (1, C) group of each word column
    mask = (ns < N)[:, None] & (gi < n_groups)  # (BN, C)
    w_off = ns64 * (n_groups * 4) + g0 * 4 + cs[None, :]  # (BN, C)
    W = tl.load(QS + w_off, mask=mask, other=0)
    if HBITS > 0:
        H = tl.load(QH + w_off, mask=mask, other=0).to(tl.int32)
    else:
        H = W
    sc, d, dm = load_meta(SC, D, DM, ns64, gi, n_groups, mask, KIND, D_DIV)
    w = decode_tile(W, H, sc, d, dm, ONE, BITS, HBITS, NSUB, KIND, OFFSET, DT)  # (BN, KS)
    by_word = tl.reshape(w, [BN, C // 4, 4, J])  # (BN, groups, word, field)
    w = tl.reshape(tl.permute(by_word, [0, 1, 3, 2]), [BN, KS])  # (BN, KS) in storage order
    ks = tl.arange(0, KS)
    out_mask = (ns < N)[:, None] & (g0 * 4 * J + ks < n_groups * 4 * J)[None, :]
    tl.store(OUT + ns64 * (n_groups * 4 * J) + g0 * 4 * J + ks[None, :], w, mask=out_mask)


def dequantize(
    pw: PackedWeight,
    dtype: torch.dtype,
    block_n: int = BLOCK_N,
    k_step: int = K_STEP,
    num_warps: int = NUM_WARPS,
) -> torch.Tensor:
    """The (N, K) weight of `pw` in `dtype`, columns in storage order (see above).

    `block_n` rows x `k_step` weights (a power of two, at least 128) per program.
    """
    kt = KERNEL_TYPES[pw.qtype]
    n, k = pw.shape
    n_groups = k // kt.group
    out = torch.empty(n, k, dtype=dtype, device=pw.device)
    gk = k_step // kt.group
    grid = (triton.cdiv(n, block_n), triton.cdiv(n_groups, gk))
    _dequant_kernel[grid](
        *kernel_args(pw.tensors, kt), out, ONE_BITS, n, n_groups,
        kt.bits, kt.hbits, kt.nsub, kt.d_div, kt.scale_kind, kt.offset,
        BN=block_n, GK=gk, num_warps=num_warps,
    )  # fmt: skip
    return out
