"""Fused dequantize-and-multiply on tensor cores (prefill, batched decode): y = x @ W.T.

A program owns a (BN weight rows, BM activation rows) tile of y.T. Per step along K it
loads a (BN, 4 GK words) tile of quants once, decodes every field j of every word to x's
dtype in registers (`_field`), and joins the fields (tl.join) into a (BN, 256) tile whose
column c * J + j is field j of word column c. That is not storage order, so the launcher
permutes x's columns the same way once per call (x.view(M, groups, J, 4).transpose):
a dot product does not care about the order of K as long as both sides agree. The tile
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
Activations of float32 are not taken (no float32 tensor-core path); the dispatcher sends
them to the reference."""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from corral.kernels.packing import PackedWeight
from corral.kernels.triton.decode import (
    KERNEL_TYPES,
    ONE_BITS,
    field_as_float,
    kernel_args,
    load_meta,
    sub_block_ab,
)


@triton.jit
def _field(
    W, H, sc, d, dm, ONE, j: tl.constexpr,
    BITS: tl.constexpr, HBITS: tl.constexpr, NSUB: tl.constexpr,
    KIND: tl.constexpr, OFFSET: tl.constexpr, DTYPE: tl.constexpr,
):  # fmt: skip
    """The weights of field j of the words W, (BN, C) in DTYPE: a * q + b."""
    Q: tl.constexpr = float(1 << (BITS + HBITS))
    a, b = sub_block_ab(sc, d, dm, j // (32 // BITS // NSUB), KIND, OFFSET)  # (BN, C) each
    aq = a * Q
    f = field_as_float(W, H, j, BITS, HBITS, ONE)  # 1 + q / Q
    return (f * aq + (b - aq)).to(DTYPE)


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
        # (BN, C, 2, ..., 2): field j = the bits of the trailing dims, joined in registers
        if J == 4:
            w = tl.join(
                tl.join(
                    _field(W, H, sc, d, dm, ONE, 0, BITS, HBITS, NSUB, KIND, OFFSET, DT),
                    _field(W, H, sc, d, dm, ONE, 2, BITS, HBITS, NSUB, KIND, OFFSET, DT),
                ),
                tl.join(
                    _field(W, H, sc, d, dm, ONE, 1, BITS, HBITS, NSUB, KIND, OFFSET, DT),
                    _field(W, H, sc, d, dm, ONE, 3, BITS, HBITS, NSUB, KIND, OFFSET, DT),
                ),
            )
        elif J == 8:
            w = tl.join(
                _join_pairs(W, H, sc, d, dm, ONE, 0, 4, 2, 6, BITS, HBITS, NSUB, KIND, OFFSET, DT),
                _join_pairs(W, H, sc, d, dm, ONE, 1, 5, 3, 7, BITS, HBITS, NSUB, KIND, OFFSET, DT),
            )
        else:
            w = tl.join(
                tl.join(
                    _join_pairs(
                        W, H, sc, d, dm, ONE, 0, 8, 4, 12, BITS, HBITS, NSUB, KIND, OFFSET, DT
                    ),
                    _join_pairs(
                        W, H, sc, d, dm, ONE, 2, 10, 6, 14, BITS, HBITS, NSUB, KIND, OFFSET, DT
                    ),
                ),
                tl.join(
                    _join_pairs(
                        W, H, sc, d, dm, ONE, 1, 9, 5, 13, BITS, HBITS, NSUB, KIND, OFFSET, DT
                    ),
                    _join_pairs(
                        W, H, sc, d, dm, ONE, 3, 11, 7, 15, BITS, HBITS, NSUB, KIND, OFFSET, DT
                    ),
                ),
            )
        w = tl.reshape(w, [BN, KS])  # (BN, KS): column c * J + j
        x_mask = m_ok[:, None] & (step * KS + ks < n_groups * 4 * J)[None, :]
        x = tl.load(x_rows + step * KS + ks[None, :], mask=x_mask, other=0.0)  # (BM, KS)
        acc = tl.dot(w, tl.trans(x), acc)
    out = OUT + ms.to(tl.int64)[None, :] * stride_om + ns[:, None]  # (BN, BM)
    tl.store(out, acc.to(OUT.dtype.element_ty), mask=m_ok[None, :] & n_ok[:, None])


@triton.jit
def _join_pairs(
    W, H, sc, d, dm, ONE,
    j0: tl.constexpr, j1: tl.constexpr, j2: tl.constexpr, j3: tl.constexpr,
    BITS: tl.constexpr, HBITS: tl.constexpr, NSUB: tl.constexpr,
    KIND: tl.constexpr, OFFSET: tl.constexpr, DT: tl.constexpr,
):  # fmt: skip
    """join(join(field j0, field j1), join(field j2, field j3)): (BN, C, 2, 2)."""
    return tl.join(
        tl.join(
            _field(W, H, sc, d, dm, ONE, j0, BITS, HBITS, NSUB, KIND, OFFSET, DT),
            _field(W, H, sc, d, dm, ONE, j1, BITS, HBITS, NSUB, KIND, OFFSET, DT),
        ),
        tl.join(
            _field(W, H, sc, d, dm, ONE, j2, BITS, HBITS, NSUB, KIND, OFFSET, DT),
            _field(W, H, sc, d, dm, ONE, j3, BITS, HBITS, NSUB, KIND, OFFSET, DT),
        ),
    )


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
    j = 32 // kt.bits
    # the kernel's K order inside a group: word w, then field j (storage: field, then word)
    x_perm = x.view(m, k // kt.group, j, 4).transpose(2, 3).reshape(m, k)  # (M, K) permuted
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
