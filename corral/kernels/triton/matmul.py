"""Fused dequantize-and-multiply on tensor cores (prefill, batched decode): y = x @ W.T.

A program owns a (BN weight rows, BM activation rows) tile of y.T. Per step along K it
loads a (BN, 4 GK words) tile of quants once, decodes every field j of every word to x's
dtype in registers (`decode.decode_tile`) into a (BN, 256) tile whose column c * J + j is
field j of word column c. That is not storage order, so the launcher permutes x's
columns the same way once per call (`decode.permute_columns`): a dot product does not
care about the order of K as long as both sides agree. The tile
is operand A of one tl.dot (wgmma on H100) with the (BM, 256) activations as operand B;
it lives only in registers and shared memory, no dequantized copy of the weight is made.

Block sizes (the launcher's `MatmulConfig`, K_STEP):
- K_STEP = 256 weights per row and step (GK = 8 groups of 4-bit, 4 of 2-bit, 16 of
  8-bit): one 256-deep wgmma chain per step.
- BN = 64 rows of W (the wgmma M side, a multiple of 64), BM = 64 rows of x: the decoded
  tile takes 64 registers per thread at 4 warps; larger tiles spill.
- GROUP_M = 8: programs sweep 8 row-tiles of x per weight tile, so a weight tile is read
  from DRAM once and from L2 by the other 7.
Where the time goes: decoding (~10 instructions per weight, a quarter of them the 16-bit
stores Triton uses to stage the tile for the tensor cores) dominates the wgmma time.
Activations of float32 are not taken (no float32 tensor-core path). `quantized_linear`
does not use this kernel: on an H100, decoding the whole weight once for cuBLAS
(`dequant.py`) was 7% slower for a 14336 x 4096 weight at 5 to 64 rows but 1.8x faster
for 4096 x 14336, and 4-5x faster at 512 rows. It stays as the fused, no-extra-memory
baseline that benchmarks/kernel_bandwidth.py compares with."""

from dataclasses import dataclass

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
    permute_columns,
)


@triton.jit
def _matmul_kernel(
    X, QS, QH, SC, D, DM, OUT, ONE,
    M, N, n_groups, stride_xm, stride_om,
    BITS: tl.constexpr, HBITS: tl.constexpr, NSUB: tl.constexpr, D_DIV: tl.constexpr,
    KIND: tl.constexpr, OFFSET: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, GK: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    J: tl.constexpr = 32 // BITS  # fields per word
    C: tl.constexpr = 4 * GK  # words per row and step
    KS: tl.constexpr = C * J  # weights per row and step
    DT: tl.constexpr = X.dtype.element_ty
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BM)
    tiles_n = tl.cdiv(N, BN)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    ms = pid_m * BM + tl.arange(0, BM)
    ns = pid_n * BN + tl.arange(0, BN)
    m_ok = ms < M
    n_ok = ns < N
    ns64 = ns.to(tl.int64)
    cs = tl.arange(0, C)
    ks = tl.arange(0, KS)
    x_rows = X + ms.to(tl.int64)[:, None] * stride_xm  # (BM, 1)
    acc = tl.zeros([BN, BM], dtype=tl.float32)  # y.T: the decoded weights are operand A
    for step in range(0, tl.cdiv(n_groups, GK)):
        gi = step * GK + cs // 4  # (C,) group of each word column
        w_mask = n_ok[:, None] & (gi < n_groups)[None, :]  # (BN, C)
        w_off = ns64[:, None] * (n_groups * 4) + step * C + cs[None, :]  # (BN, C)
        W = tl.load(QS + w_off, mask=w_mask, other=0)
        if HBITS > 0:
            H = tl.load(QH + w_off, mask=w_mask, other=0).to(tl.int32)
        else:
            H = W
        sc, d, dm = load_meta(SC, D, DM, ns64[:, None], gi[None, :], n_groups, w_mask, KIND, D_DIV)
        w = decode_tile(W, H, sc, d, dm, ONE, BITS, HBITS, NSUB, KIND, OFFSET, DT)  # (BN, KS)
        x_mask = m_ok[:, None] & (step * KS + ks < n_groups * 4 * J)[None, :]
        x = tl.load(x_rows + step * KS + ks[None, :], mask=x_mask, other=0.0)  # (BM, KS)
        acc = tl.dot(w, tl.trans(x), acc)
    out = OUT + ms.to(tl.int64)[None, :] * stride_om + ns[:, None]  # (BN, BM)
    tl.store(out, acc.to(OUT.dtype.element_ty), mask=m_ok[None, :] & n_ok[:, None])


K_STEP = 256  # weights per row decoded per step: 8 (4-bit), 4 (2-bit) or 16 (8-bit) groups


@dataclass(frozen=True)
class MatmulConfig:
    """Tile sizes of the matmul kernel; see the module docstring."""

    block_m: int = 64
    block_n: int = 64
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3


def matmul(x: torch.Tensor, pw: PackedWeight, config: MatmulConfig | None = None) -> torch.Tensor:
    """x (M, K) contiguous float16/bfloat16 -> (M, N) in x's dtype, from the packed weight."""
    kt = KERNEL_TYPES[pw.qtype]
    n, k = pw.shape
    m = x.shape[0]
    cfg = config or MatmulConfig()
    x_perm = permute_columns(x, pw.qtype)  # (M, K) in the decoded tile's order
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    _matmul_kernel[grid](
        x_perm, *kernel_args(pw.tensors, kt), out, ONE_BITS,
        m, n, k // kt.group, x_perm.stride(0), out.stride(0),
        kt.bits, kt.hbits, kt.nsub, kt.d_div, kt.scale_kind, kt.offset,
        BM=cfg.block_m, BN=cfg.block_n, GK=K_STEP // kt.group, GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out
