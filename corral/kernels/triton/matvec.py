"""Fused dequantize-and-multiply for a few activation rows (decode): y = x @ W.T.

One program owns BN weight rows and a range of K (all of it, or one slice of a split-K).
Per step it loads a (BN rows, G groups, 4 words) tile of quants, decodes it field by
field (`decode.field_as_float`) and multiplies with the BM activation rows, so each weight
byte is read once from memory and decoded once for all BM rows. Per sub-block it keeps
sum(f * x) and sum(x); the scales are applied once per sub-block, not per weight.

Block sizes (the launcher's `MatvecConfig`):
- BN = 32 rows: with 4 warps and G = 8, a thread holds 4 rows x 4 words (64 bytes in
  flight per load), the 4 words are one 16-byte load, and each activation it loads is
  reused for 4 rows from registers.
- G = 8 groups: 32 words per row and step, 1 KB per row-tile of 4-bit weights.
- Split-K: the weight of a 4096-row output has only 128 tiles of 32 rows, fewer than
  the H100's 132 SMs; it is cut along K until there are about `SPLIT_WAVES` programs per
  SM, each slice writes float32 partial sums and a small kernel adds them up.
"""

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
def _load_step(
    QS, QH, SC, D, DM, rows3, row_ok3, cs3, gs3, g0, g_end, n_groups,
    HBITS: tl.constexpr, KIND: tl.constexpr, D_DIV: tl.constexpr,
):  # fmt: skip
    """Quants (W), high bits (H) and scales (sc, d, dm) of groups g0.. of rows3."""
    w_mask = row_ok3 & (g0 + cs3 // 4 < g_end)  # (1, BN, C)
    w_off = rows3 * (n_groups * 4) + g0 * 4 + cs3  # (1, BN, C)
    W = tl.load(QS + w_off, mask=w_mask, other=0, eviction_policy="evict_first")
    if HBITS > 0:
        # the same offsets, written so that only runs of 4 look contiguous: the narrow
        # high bits then get the quants' layout (4 per thread) instead of 16 per thread
        h_off = rows3 * (n_groups * 4) + (g0 + cs3 // 4) * 4 + cs3 % 4  # (1, BN, C)
        H = tl.load(QH + h_off, mask=w_mask, other=0, eviction_policy="evict_first")
        H = H.to(tl.int32)
    else:
        H = W
    gi3 = g0 + gs3  # (1, 1, G)
    meta_mask = row_ok3 & (gi3 < g_end)  # (1, BN, G)
    sc, d, dm = load_meta(SC, D, DM, rows3, gi3, n_groups, meta_mask, KIND, D_DIV)
    return W, H, sc, d, dm


@triton.jit
def _matvec_kernel(
    X, QS, QH, SC, D, DM, OUT, ONE,
    M, N, n_groups, stride_xm, stride_os, groups_per_split,
    BITS: tl.constexpr, HBITS: tl.constexpr, NSUB: tl.constexpr, D_DIV: tl.constexpr,
    KIND: tl.constexpr, OFFSET: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, G: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    J: tl.constexpr = 32 // BITS  # fields per word
    GE: tl.constexpr = 4 * J  # weights per group
    JS: tl.constexpr = J // NSUB  # fields per sub-block
    Q: tl.constexpr = float(1 << (BITS + HBITS))
    C: tl.constexpr = 4 * G  # words per row and step
    # Quants are loaded as (1, BN, C): the C words of a row are contiguous, so a warp
    # reads whole 128-byte lines and a thread 4 words (one group) at once.
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BN + tl.arange(0, BN)
    rows3 = rows.to(tl.int64)[None, :, None]  # (1, BN, 1)
    row_ok3 = (rows < N)[None, :, None]
    ms = tl.arange(0, BM)
    ms3 = ms[:, None, None]  # (BM, 1, 1)
    cs3 = tl.arange(0, C)[None, None, :]  # (1, 1, C)
    gs3 = tl.arange(0, G)[None, None, :]  # (1, 1, G)
    g_begin = pid_s * groups_per_split
    g_end = tl.minimum(g_begin + groups_per_split, n_groups)
    acc = tl.zeros([BM, BN, G], dtype=tl.float32)
    # software pipelining by hand: the next step's quants and scales are requested before
    # this step's are decoded, so each program keeps a tile of loads in flight
    Wn, Hn, scn, dn, dmn = _load_step(
        QS, QH, SC, D, DM, rows3, row_ok3, cs3, gs3, g_begin, g_end, n_groups, HBITS, KIND, D_DIV
    )
    for step in range(0, groups_per_split // G):  # groups past g_end are masked
        g0 = g_begin + step * G
        W, H, sc, d, dm = Wn, Hn, scn, dn, dmn
        Wn, Hn, scn, dn, dmn = _load_step(
            QS, QH, SC, D, DM, rows3, row_ok3, cs3, gs3, g0 + G, g_end, n_groups, HBITS, KIND, D_DIV
        )
        c_ok3 = g0 + cs3 // 4 < g_end
        x_off = ms3 * stride_xm + (g0 + cs3 // 4) * GE + cs3 % 4  # (BM, 1, C)
        x_mask = (ms3 < M) & c_ok3
        for s in tl.static_range(NSUB):
            fx = tl.zeros([BM, BN, C], dtype=tl.float32)
            xs = tl.zeros([BM, 1, C], dtype=tl.float32)
            for jj in tl.static_range(JS):
                x = tl.load(X + x_off + 4 * (s * JS + jj), mask=x_mask, other=0.0)
                x = x.to(tl.float32)  # (BM, 1, C)
                f = field_as_float(W, H, s * JS + jj, BITS, HBITS, ONE)  # (1, BN, C)
                fx += f * x
                xs += x
            fx_g = tl.sum(tl.reshape(fx, [BM, BN, G, 4]), axis=3)  # (BM, BN, G)
            xs_g = tl.sum(tl.reshape(xs, [BM, 1, G, 4]), axis=3)  # (BM, 1, G)
            a, b = sub_block_ab(sc, d, dm, s, KIND, OFFSET)  # (1, BN, G) each
            aq = a * Q
            acc += aq * fx_g + (b - aq) * xs_g  # sum of (a * q + b) * x, q = Q * (f - 1)
    y = tl.sum(acc, axis=2)  # (BM, BN)
    out_off = ms[:, None] * N + rows[None, :]  # (BM, BN) in an (M, N) output
    out_mask = (ms < M)[:, None] & (rows < N)[None, :]
    if SPLIT:
        tl.store(OUT + pid_s * stride_os + out_off, y, mask=out_mask)
    else:
        tl.store(OUT + out_off, y.to(OUT.dtype.element_ty), mask=out_mask)


@triton.jit
def _sum_splits_kernel(P, OUT, total, S: tl.constexpr, BLOCK: tl.constexpr):
    """OUT[i] = sum over s of P[s, i], for the flat (S, total) float32 partial sums P."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(S):
        acc += tl.load(P + s * total + offs, mask=mask, other=0.0)
    tl.store(OUT + offs, acc.to(OUT.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class MatvecConfig:
    """Tile sizes of the matvec kernel; see the module docstring."""

    block_n: int = 128
    groups: int = 8
    num_warps: int = 4
    split_waves: float = 4.0  # programs per SM to reach before cutting K; 0: never split
    splits: int = 0  # cut K into this many slices (0: decide from split_waves)


MAX_SPLITS = 16
_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def default_config(qtype: str, m: int) -> MatvecConfig:
    """Tiles for `qtype` with `m` activation rows: fewer weight rows as m grows.

    Types with high bits or 16 fields per word need more registers per word: they take
    half the rows (at 128 rows they spill).
    """
    kt = KERNEL_TYPES[qtype]
    rows = 64 if kt.hbits or kt.bits == 2 else 128
    return MatvecConfig(block_n=max(8, rows // triton.next_power_of_2(m)))


def matvec(x: torch.Tensor, pw: PackedWeight, config: MatvecConfig | None = None) -> torch.Tensor:
    """x (M, K) contiguous, M small -> (M, N) in x's dtype, from the packed weight."""
    kt = KERNEL_TYPES[pw.qtype]
    n, k = pw.shape
    m = x.shape[0]
    cfg = config or default_config(pw.qtype, m)
    n_groups = k // kt.group
    tiles = triton.cdiv(n, cfg.block_n)
    splits = max(1, min(cfg.splits, n_groups))
    if cfg.splits == 0 and cfg.split_waves > 0:
        wanted = int(cfg.split_waves * _sm_count(x.device)) // tiles
        splits = max(1, min(wanted, MAX_SPLITS, n_groups // (2 * cfg.groups)))
    groups_per_split = triton.cdiv(triton.cdiv(n_groups, splits), cfg.groups) * cfg.groups
    splits = triton.cdiv(n_groups, groups_per_split)  # a multiple of G groups per slice
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    target = out if splits == 1 else torch.empty(splits, m, n, dtype=torch.float32, device=x.device)
    _matvec_kernel[(tiles, splits)](
        x, *kernel_args(pw.tensors, kt), target, ONE_BITS,
        m, n, n_groups, x.stride(0), m * n, groups_per_split,
        kt.bits, kt.hbits, kt.nsub, kt.d_div, kt.scale_kind, kt.offset,
        BM=triton.next_power_of_2(m), BN=cfg.block_n, G=cfg.groups, SPLIT=splits > 1,
        num_warps=cfg.num_warps,
    )  # fmt: skip
    if splits > 1:
        block = 1024
        _sum_splits_kernel[(triton.cdiv(m * n, block),)](target, out, m * n, splits, block)
    return out
