"""Fused dequantize-and-multiply for a few activation rows (decode): y = x @ W.T.

One program owns BN weight rows and a range of K (all of it, or one slice of a split-K).
Per step it loads a (BN rows, 4 G words) tile of quants, decodes it field by field
(`decode.field_as_float`) and multiplies with the BM activation rows, so each weight byte
is read once from memory and decoded once for all BM rows. Per sub-block it keeps
sum(f * x) and sum(x); the scales are applied once per sub-block, not per weight.

Where the time goes: decoding costs three instructions per weight (shift, and/or, FMA;
4.4 to 4.8 in all for 4-bit types, about 8 for types with high bits), so at 2.5 TB/s a
4-bit weight keeps the SM's issue slots more than half busy and the rest is latency
hiding. The kernel therefore
- keeps one register layout for the whole loop (a shared-memory shuffle would cost a
  barrier per step): a thread owns 4 consecutive words (16 bytes, one load) of a group
  in BN rows, the activations of those columns, and the scales of exactly those
  (row, group) pairs. The compiler lays a load out by its own rules, so the launcher
  makes them agree: the scale offsets get a run-time zero (`meta_zero`, not specialized)
  so no scale load is vectorized, and a step spans at least 4 words per thread
  (G >= 32 num_warps), so the activations' load is laid out like the quants';
- requests the next step's tile before decoding this one (software pipelining by hand);
- sizes the grid by rows: BN = 4 rows gives 1024 programs for a 4096-row weight, enough
  to fill an H100 without a split-K; a split-K (`MatvecConfig.splits`, or few rows)
  writes float32 partial sums that a second small kernel adds up;
- with SwiGLU's gate and up rows interleaved (`swiglu=True`), a program's BN rows are
  BN / 2 (gate, up) pairs and it stores silu(gate) * up: the decode step loses the
  elementwise kernel and the (M, 2 n_ff) intermediate between the two.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from corral.kernels.packing import PackedWeight
from corral.kernels.triton.decode import (
    BYTE_SC_MIN,
    GPTQ_ZERO,
    GPTQ_ZERO2,
    KERNEL_TYPES,
    LEGACY_MIN,
    NIBBLE_SC_MIN,
    ONE_BITS,
    field_as_float,
    gptq_pairs,
    kernel_args,
    split_scales,
    sub_block_ab,
)
from corral.kernels.triton.elementwise import silu_mul_pairs, silu_times
from corral.kernels.triton.pdl import launch_options, release_dependents, wait_for_inputs


@triton.jit
def load_weight_step(
    QS, QH, SC, D, DM, rows3, cs3, gs3, g0, g_end, n_groups, meta_zero,
    HBITS: tl.constexpr, KIND: tl.constexpr, D_DIV: tl.constexpr, EVEN: tl.constexpr,
):  # fmt: skip
    """Quants (W), high bits (H) and scales (sc, d, dm) of groups g0.. of rows3.

    EVEN: the range is a whole number of steps, so a step is all in or all out.
    """
    w_off = rows3 * (n_groups * 4) + g0 * 4 + cs3  # (1, BN, C)
    gi3 = g0 + gs3  # (1, 1, G)
    # the same offsets for the high bits, written so that only runs of 4 look contiguous:
    # the narrow high bits then get the quants' layout (4 per thread), not 16 per thread
    h_off = rows3 * (n_groups * 4) + (g0 + cs3 // 4) * 4 + cs3 % 4  # (1, BN, C)
    if EVEN:
        W = tl.load(QS + w_off, eviction_policy="evict_first")
        H = W
        if HBITS > 0:
            H = tl.load(QH + h_off, eviction_policy="evict_first").to(tl.int32)
    else:
        w_mask = g0 + cs3 // 4 < g_end  # (1, 1, C)
        W = tl.load(QS + w_off, mask=w_mask, other=0, eviction_policy="evict_first")
        H = W
        if HBITS > 0:
            H = tl.load(QH + h_off, mask=w_mask, other=0, eviction_policy="evict_first")
            H = H.to(tl.int32)
    meta_mask = gi3 < g_end  # (1, 1, G); not applied when EVEN
    sc, d, dm = _load_scales(
        SC, D, DM, rows3, gi3 + meta_zero, n_groups, meta_mask, KIND, D_DIV, EVEN
    )  # fmt: skip
    return W, H, sc, d, dm


@triton.jit
def tile_indices(pid_n, M, N, BM: tl.constexpr, BN: tl.constexpr, G: tl.constexpr):
    """Index vectors of program pid_n's tile: its rows (BN,), rows3 (1, BN, 1) int64,
    activation rows ms (BM,), ms3 (BM, 1, 1), word columns cs3 (1, 1, 4 G), groups gs3
    (1, 1, G). Rows past N re-read row N - 1 and rows past M row M - 1 (never stored),
    so loads need no row mask."""
    rows = pid_n * BN + tl.arange(0, BN)
    rows3 = tl.minimum(rows, N - 1).to(tl.int64)[None, :, None]
    ms = tl.arange(0, BM)
    ms3 = tl.minimum(ms, M - 1)[:, None, None]
    cs3 = tl.arange(0, 4 * G)[None, None, :]
    gs3 = tl.arange(0, G)[None, None, :]
    return rows, rows3, ms, ms3, cs3, gs3


@triton.jit
def _load_masked(ptrs, mask, EVEN: tl.constexpr):
    """tl.load with `mask` (0 elsewhere), or of everything when EVEN."""
    if EVEN:
        out = tl.load(ptrs)
    else:
        out = tl.load(ptrs, mask=mask, other=0)
    return out


@triton.jit
def _load_scales(
    SC, D, DM, rows3, gi3, n_groups, mask,
    KIND: tl.constexpr, D_DIV: tl.constexpr, EVEN: tl.constexpr,
):  # fmt: skip
    """`decode.load_meta` for a (1, BN, G) tile, laid out like the quants' groups.

    Unless EVEN, entries off `mask` are 0: a group past the end then adds 0 * 0, where
    a stray inf or NaN scale would poison the sum.

    `gi3` is offset by a run-time zero, so the compiler knows no alignment of these
    loads and never vectorizes them; the hint that `d` runs along groups (it repeats
    D_DIV times) then only orders the threads like the quants' (groups fastest).
    """
    d_off = rows3 * (n_groups // D_DIV) + gi3 // D_DIV  # (1, BN, G)
    if D_DIV > 1:
        d_off = tl.max_contiguous(d_off, [1, 1, gi3.shape[2]])
    if KIND == GPTQ_ZERO2:
        D2, DM2 = gptq_pairs(D, DM)
        d, sc = split_scales(_load_masked(D2 + d_off, mask, EVEN), D.dtype.element_ty)
        dm = _load_masked(DM2 + d_off, mask, EVEN).to(tl.int32)
    else:
        d = _load_masked(D + d_off, mask, EVEN).to(tl.float32)
        if KIND == LEGACY_MIN or KIND == NIBBLE_SC_MIN or KIND == BYTE_SC_MIN or KIND == GPTQ_ZERO:
            dm = _load_masked(DM + d_off, mask, EVEN).to(tl.float32)
        else:
            dm = tl.zeros_like(d)
        if KIND >= NIBBLE_SC_MIN and KIND <= BYTE_SC_MIN:
            sc = _load_masked(SC + rows3 * n_groups + gi3, mask, EVEN).to(tl.int32)
        else:
            sc = tl.zeros_like(d).to(tl.int32)
    return sc, d, dm


@triton.jit
def _add_pairs(a0, b0, a1, b1):
    """Combine step of a two-tensor sum."""
    return a0 + a1, b0 + b1


@triton.jit
def _accumulate(
    acc, X, W, H, sc, d, dm, ONE, x_cols, cs3, g0, g_end,
    BITS: tl.constexpr, HBITS: tl.constexpr, NSUB: tl.constexpr,
    KIND: tl.constexpr, OFFSET: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, G: tl.constexpr, EVEN: tl.constexpr,
):  # fmt: skip
    """acc (BM, BN, G) plus the products of the step at group g0 (tiles W, H, scales)."""
    J: tl.constexpr = 32 // BITS  # fields per word
    GE: tl.constexpr = 4 * J  # weights per group
    JS: tl.constexpr = J // NSUB  # fields per sub-block
    Q: tl.constexpr = float(1 << (BITS + HBITS))
    C: tl.constexpr = 4 * G  # words per row and step
    x_ptrs = X + g0 * GE + x_cols  # (BM, 1, C)
    for s in tl.static_range(NSUB):
        fx = tl.zeros([BM, BN, C], dtype=tl.float32)
        xs = tl.zeros([BM, BN, C], dtype=tl.float32)
        for jj in tl.static_range(JS):
            if EVEN:
                x = tl.load(x_ptrs + 4 * (s * JS + jj))
            else:
                x = tl.load(x_ptrs + 4 * (s * JS + jj), mask=g0 + cs3 // 4 < g_end, other=0.0)
            x = tl.broadcast_to(x.to(tl.float32), [BM, BN, C])  # one value per column
            f = field_as_float(W, H, s * JS + jj, BITS, HBITS, ONE)  # (1, BN, C)
            fx += f * x
            xs += x
        # one reduction of both sums: it gives xs the layout of fx (no shuffle)
        fx_g, xs_g = tl.reduce(
            (tl.reshape(fx, [BM, BN, G, 4]), tl.reshape(xs, [BM, BN, G, 4])), 3, _add_pairs
        )  # (BM, BN, G) each
        a, b = sub_block_ab(sc, d, dm, s, KIND, OFFSET)  # (1, BN, G) each
        aq = a * Q
        acc += aq * fx_g + (b - aq) * xs_g  # sum of (a * q + b) * x, q = Q * (f - 1)
    return acc


@triton.jit(do_not_specialize=["meta_zero"])
def _matvec_kernel(
    X, QS, QH, SC, D, DM, OUT, ONE,
    M, N, n_groups, stride_xm, stride_os, groups_per_split, meta_zero,
    BITS: tl.constexpr, HBITS: tl.constexpr, NSUB: tl.constexpr, D_DIV: tl.constexpr,
    KIND: tl.constexpr, OFFSET: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, G: tl.constexpr, SPLIT: tl.constexpr,
    SWIGLU: tl.constexpr, EVEN: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    release_dependents(PDL)
    J: tl.constexpr = 32 // BITS  # fields per word
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows, rows3, ms, ms3, cs3, gs3 = tile_indices(pid_n, M, N, BM, BN, G)
    x_cols = ms3 * stride_xm + (cs3 // 4) * (4 * J) + cs3 % 4  # (BM, 1, C): field 0, group 0
    g_begin = pid_s * groups_per_split
    g_end = tl.minimum(g_begin + groups_per_split, n_groups)
    acc = tl.zeros([BM, BN, G], dtype=tl.float32)
    Wn, Hn, scn, dn, dmn = load_weight_step(
        QS, QH, SC, D, DM, rows3, cs3, gs3, g_begin, g_end, n_groups, meta_zero,
        HBITS, KIND, D_DIV, EVEN,
    )  # fmt: skip
    wait_for_inputs(PDL)  # the weights never change: only x waits for the kernel before
    last = g_begin + (groups_per_split // G - 1) * G
    for step in range(0, groups_per_split // G):  # steps past g_end (uneven split) are masked
        g0 = g_begin + step * G
        W, H, sc, d, dm = Wn, Hn, scn, dn, dmn
        # software pipelining by hand: the next step's tile is requested before this one
        # is decoded; the last step requests itself again (from L2) rather than paying
        # for masks (peeling it off instead makes ptxas spill)
        Wn, Hn, scn, dn, dmn = load_weight_step(
            QS, QH, SC, D, DM, rows3, cs3, gs3, tl.minimum(g0 + G, last), g_end, n_groups,
            meta_zero, HBITS, KIND, D_DIV, EVEN,
        )  # fmt: skip
        acc = _accumulate(
            acc, X, W, H, sc, d, dm, ONE, x_cols, cs3, g0, g_end,
            BITS, HBITS, NSUB, KIND, OFFSET, BM, BN, G, EVEN,
        )  # fmt: skip
    y = tl.sum(acc, axis=2)  # (BM, BN)
    if SPLIT:
        out_off = ms[:, None] * N + rows[None, :]  # (BM, BN) in an (M, N) output
        out_mask = (ms < M)[:, None] & (rows < N)[None, :]
        tl.store(OUT + pid_s * stride_os + out_off, y, mask=out_mask)
    else:
        store_rows(OUT, y, ms, pid_n, M, N, BN, SWIGLU)


@triton.jit
def store_rows(OUT, y, ms, pid_n, M, N, BN: tl.constexpr, SWIGLU: tl.constexpr):
    """Store a program's float32 sums y (BM, BN) of rows pid_n * BN.. in OUT's dtype: at
    [ms, rows] of an (M, N) output, or with SWIGLU (rows 2i, 2i + 1 are gate and up of
    output column i) silu(gate) * up at [ms, i] of an (M, N / 2) output."""
    DT: tl.constexpr = OUT.dtype.element_ty
    if SWIGLU:
        pairs = tl.reshape(y.to(DT).to(tl.float32), [y.shape[0], BN // 2, 2])  # rounded as stored
        gate, up = tl.split(pairs)  # (BM, BN / 2) each
        cols = pid_n * (BN // 2) + tl.arange(0, BN // 2)
        out_mask = (ms < M)[:, None] & (cols < N // 2)[None, :]
        tl.store(OUT + ms[:, None] * (N // 2) + cols[None, :], silu_times(gate, up, DT), out_mask)
    else:
        rows = pid_n * BN + tl.arange(0, BN)
        out_mask = (ms < M)[:, None] & (rows < N)[None, :]
        tl.store(OUT + ms[:, None] * N + rows[None, :], y.to(DT), mask=out_mask)


@triton.jit
def _sum_splits_kernel(P, OUT, total, S: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """OUT[i] = sum over s of P[s, i], for the flat (S, total) float32 partial sums P."""
    release_dependents(PDL)
    wait_for_inputs(PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(S):
        acc += tl.load(P + s * total + offs, mask=mask, other=0.0)
    tl.store(OUT + offs, acc.to(OUT.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class MatvecConfig:
    """Tile sizes of the matvec kernel; see the module docstring."""

    block_n: int = 4
    groups: int = 64
    num_warps: int = 2
    split_waves: float = 1.0  # split K while there are fewer programs than this x SMs
    splits: int = 0  # cut K into this many slices (0: decide from split_waves)


MAX_SPLITS = 16
_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def default_config(qtype: str, m: int, k: int = 4096) -> MatvecConfig:
    """Tiles for `m` activation rows times a weight of `qtype` with rows of `k` weights.

    A thread holds 4 words of BN rows. One activation row: BN = 4 (about 100 registers,
    so 10 programs of 2 warps fit an SM); Q2_K, with 16 fields per word, needs more
    decoded weights per activation it loads and takes BN = 8. Several activation rows:
    BN = 8 / M (rounded up to a power of two). A step spans 32 num_warps groups (see the
    module docstring): 64 groups on 2 warps, or one warp when a row has fewer groups.
    Measured on an H100 (benchmarks/kernel_bandwidth.py --sweep).
    """
    kt = KERNEL_TYPES[qtype]
    n_groups = k // kt.group
    rows = 4 if m == 1 and (kt.bits > 2 or kt.hbits) else 8
    block_n = max(1, rows // triton.next_power_of_2(m))
    num_warps = 2 if n_groups > 32 else 1
    groups = min(32 * num_warps, triton.next_power_of_2(n_groups))
    return MatvecConfig(block_n=block_n, groups=groups, num_warps=num_warps)


def matvec(
    x: torch.Tensor, pw: PackedWeight, config: MatvecConfig | None = None, *, swiglu: bool = False
) -> torch.Tensor:
    """x (M, K) contiguous, M small -> (M, N) in x's dtype, from the packed weight.

    swiglu: rows 2i and 2i + 1 of the weight are SwiGLU's gate and up rows of hidden unit
    i (`packing.interleave_rows`); the result is then silu(gate) * up, (M, N / 2), computed
    in the kernel's epilogue (when a program's rows hold whole pairs and K is not split;
    otherwise by `silu_mul_pairs` after it).
    """
    kt = KERNEL_TYPES[pw.qtype]
    n, k = pw.shape
    m = x.shape[0]
    sms = _sm_count(x.device)
    cfg = config or default_config(pw.qtype, m, k)
    n_groups = k // kt.group
    tiles = triton.cdiv(n, cfg.block_n)
    splits = max(1, min(cfg.splits, n_groups))
    if cfg.splits == 0 and cfg.split_waves > 0:
        wanted = int(cfg.split_waves * sms) // tiles
        splits = max(1, min(wanted, MAX_SPLITS, n_groups // (2 * cfg.groups)))
    groups_per_split = triton.cdiv(triton.cdiv(n_groups, splits), cfg.groups) * cfg.groups
    splits = triton.cdiv(n_groups, groups_per_split)  # a multiple of G groups per slice
    in_epilogue = swiglu and splits == 1 and cfg.block_n % 2 == 0
    out = torch.empty(m, n // 2 if in_epilogue else n, dtype=x.dtype, device=x.device)
    pdl = launch_options(x.device, m)
    target = out if splits == 1 else torch.empty(splits, m, n, dtype=torch.float32, device=x.device)
    _matvec_kernel[(tiles, splits)](
        x, *kernel_args(pw.tensors, kt), target, ONE_BITS,
        m, n, n_groups, x.stride(0), m * n, groups_per_split, 0,
        kt.bits, kt.hbits, kt.nsub, kt.d_div, kt.scale_kind, kt.offset,
        BM=triton.next_power_of_2(m), BN=cfg.block_n, G=cfg.groups, SPLIT=splits > 1,
        SWIGLU=in_epilogue, EVEN=n_groups % groups_per_split == 0, num_warps=cfg.num_warps,
        **pdl,
    )  # fmt: skip
    if splits > 1:
        block = 1024
        _sum_splits_kernel[(triton.cdiv(m * n, block),)](target, out, m * n, splits, block, **pdl)
    if swiglu and not in_epilogue:
        return silu_mul_pairs(out)  # (M, N / 2)
    return out
