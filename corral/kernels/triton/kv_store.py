"""New tokens' queries and keys rotated (RoPE, `rope.rotate_tile`) and their keys and
values written into the KV cache, in one kernel (decode and prefill): `rope_and_store`,
the step between the Q/K/V projection and attention.

The torch path (corral.model.layers.apply_rope, then corral.model.kv_cache.KVCache.write)
takes ~10 ops per rotation and indexes the cache with tensors of rows and positions
(index_put, one launch per stored tensor), and for a q8_0 cache first quantizes with a
dozen elementwise ops. Here one program per (token, block of heads of q, keys or values)
reads the new vectors, rotates q (stored contiguous) and the keys (rounded to their
dtype, as q), converts keys and values to the cache's float type or quantizes them to
Q8_0 blocks exactly as `corral.kernels.kv_q8.quantize_q8_0` does (d = max|x| / 127,
code = round half away from zero of x / d with an IEEE division, d stored as float16),
and stores them at [rows[b], head, positions[b, t]]. Rows and positions are read on the
GPU and the grid depends on shapes only: CUDA-graph safe.

Launch: the RoPE tiles (`rope.launch_config`): BLOCK_H heads of BLOCK_D values, about
1024 values (8 heads of 128) on 4 warps, so each thread moves one 16-byte vector of a
16-bit cache. The grid is tokens x (query head blocks (with RoPE), key head blocks,
value head blocks): a decode step of a 7B model (32 heads of each) is 12 programs, a
512-token prefill 6144. A q8_0 cache has whole 32-value blocks per head (D a multiple of
32), so BLOCK_D is too.
"""

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from corral.kernels.kv_q8 import Q8_BLOCK, check_head_dim
from corral.kernels.triton.pdl import launch_options, release_dependents, wait_for_inputs
from corral.kernels.triton.rope import check_heads, check_table, launch_config, rotate_tile


@triton.jit
def _load_heads(
    NEW, b, t, h0, n_heads, stride_nb, stride_nt, stride_nh, D,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """NEW[b, t, h0:h0+BLOCK_H] as a float32 (BLOCK_H, BLOCK_D) tile, 0 past the ends."""
    hs = h0 + tl.arange(0, BLOCK_H)  # (BLOCK_H,)
    offs = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    mask = (hs < n_heads)[:, None] & (offs < D)[None, :]  # (BLOCK_H, BLOCK_D)
    new_offs = b * stride_nb + t * stride_nt + hs[:, None] * stride_nh + offs[None, :]
    return tl.load(NEW + new_offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_heads(
    x, CACHE, SCALES, h0, row, pos, n_heads, stride_cr, stride_ch, stride_cn,
    stride_sr, stride_sh, stride_sn,
    D, Q8: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Heads h0 .. h0 + BLOCK_H of one token, x (BLOCK_H, BLOCK_D) float32, into
    CACHE[row, heads, pos] (and its Q8_0 SCALES)."""
    hs = h0 + tl.arange(0, BLOCK_H)  # (BLOCK_H,)
    offs = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    heads_in = hs < n_heads
    mask = heads_in[:, None] & (offs < D)[None, :]  # (BLOCK_H, BLOCK_D)
    target = CACHE + row * stride_cr + hs[:, None] * stride_ch + pos * stride_cn + offs[None, :]
    if Q8:
        blocks = tl.reshape(x, [BLOCK_H, BLOCK_D // 32, 32])  # (BLOCK_H, BLOCK_D/32, 32)
        scale = tl.max(tl.abs(blocks), 2) / 127.0  # (BLOCK_H, BLOCK_D/32)
        ones = tl.full([BLOCK_H, BLOCK_D // 32], 1.0, tl.float32)
        safe = tl.where(scale == 0.0, ones, scale)  # no 1/0 for an all-zero block
        inverse = tl.where(scale == 0.0, 0.0, tl.math.div_rn(ones, safe))
        scaled = blocks * inverse[:, :, None]
        codes = tl.where(scaled < 0, -1.0, 1.0) * tl.floor(tl.abs(scaled) + 0.5)  # C's roundf
        codes = tl.reshape(codes, [BLOCK_H, BLOCK_D])  # back to whole head rows
        tl.store(target, codes.to(tl.int8), mask=mask)
        block = tl.arange(0, BLOCK_D // 32)
        scale_offs = row * stride_sr + hs[:, None] * stride_sh + pos * stride_sn + block[None, :]
        scale_mask = heads_in[:, None] & (block < D // 32)[None, :]  # (BLOCK_H, BLOCK_D/32)
        tl.store(SCALES + scale_offs, scale.to(tl.float16), mask=scale_mask)
    else:
        tl.store(target, x.to(CACHE.dtype.element_ty), mask=mask)


@triton.jit
def _store_kernel(
    Q, QO, TAB, K_NEW, K_CACHE, K_SCALES, V_NEW, V_CACHE, V_SCALES, ROWS, POSITIONS,
    T, n_q, n_heads, q_blocks, kv_blocks, stride_pb, stride_pt,
    stride_qb, stride_qt, stride_qh, stride_tb, stride_tt, stride_ti, stride_tc, HALF,
    stride_kb, stride_kt, stride_kh, stride_kr, stride_kch, stride_kn,
    stride_ksr, stride_ksh, stride_ksn,
    stride_vb, stride_vt, stride_vh, stride_vr, stride_vch, stride_vn,
    stride_vsr, stride_vsh, stride_vsn,
    D, HAS_ROWS: tl.constexpr, K_Q8: tl.constexpr, V_Q8: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Program (token, head block): the first q_blocks rotate query heads into QO, the
    next kv_blocks rotate and store keys, the last kv_blocks store values."""
    release_dependents(PDL)
    wait_for_inputs(PDL)
    token = tl.program_id(0).to(tl.int64)
    b = token // T
    t = token % T
    hb = tl.program_id(1)
    tab_off = b * stride_tb + t * stride_tt
    if hb < q_blocks:
        h0 = hb * BLOCK_H
        x = _load_heads(Q, b, t, h0, n_q, stride_qb, stride_qt, stride_qh, D, BLOCK_H, BLOCK_D)
        y = rotate_tile(x, TAB, tab_off, stride_ti, stride_tc, HALF, BLOCK_D)
        hs = h0 + tl.arange(0, BLOCK_H)  # (BLOCK_H,)
        ds = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        out_off = (token * n_q + hs[:, None]) * D + ds[None, :]  # (BLOCK_H, BLOCK_D)
        mask = (hs < n_q)[:, None] & (ds < D)[None, :]
        tl.store(QO + out_off, y.to(QO.dtype.element_ty), mask=mask)
    else:
        if HAS_ROWS:
            row = tl.load(ROWS + b).to(tl.int64)
        else:
            row = b
        pos = tl.load(POSITIONS + b * stride_pb + t * stride_pt).to(tl.int64)
        if hb < q_blocks + kv_blocks:
            h0 = (hb - q_blocks) * BLOCK_H
            x = _load_heads(
                K_NEW, b, t, h0, n_heads, stride_kb, stride_kt, stride_kh, D, BLOCK_H, BLOCK_D
            )  # fmt: skip
            x = rotate_tile(x, TAB, tab_off, stride_ti, stride_tc, HALF, BLOCK_D)
            x = x.to(K_NEW.dtype.element_ty).to(tl.float32)  # rounded as q is, then stored
            _store_heads(
                x, K_CACHE, K_SCALES, h0, row, pos, n_heads, stride_kr, stride_kch, stride_kn,
                stride_ksr, stride_ksh, stride_ksn, D, K_Q8, BLOCK_H, BLOCK_D,
            )  # fmt: skip
        else:
            h0 = (hb - q_blocks - kv_blocks) * BLOCK_H
            x = _load_heads(
                V_NEW, b, t, h0, n_heads, stride_vb, stride_vt, stride_vh, D, BLOCK_H, BLOCK_D
            )  # fmt: skip
            _store_heads(
                x, V_CACHE, V_SCALES, h0, row, pos, n_heads, stride_vr, stride_vch, stride_vn,
                stride_vsr, stride_vsh, stride_vsn, D, V_Q8, BLOCK_H, BLOCK_D,
            )  # fmt: skip


def _check_part(name: str, new: torch.Tensor, parts: Sequence[torch.Tensor]) -> bool:
    """Whether `parts` (cache,) or (codes, scales) can take `new` (B, T, Hkv, D); True for
    Q8_0 codes. Raises ValueError naming `name` (keys, values) otherwise."""
    kv_heads, dim = new.shape[2:]
    cache = parts[0]
    if cache.dim() != 4 or cache.shape[1] != kv_heads or cache.shape[3] != dim:
        raise ValueError(
            f"{name} cache {tuple(cache.shape)} does not hold vectors of {tuple(new.shape)}"
        )
    if new.stride(-1) != 1 or cache.stride(-1) != 1:
        raise ValueError(f"new {name} and their cache must be contiguous along D")
    quantized = cache.dtype == torch.int8
    if quantized:
        check_head_dim(dim)
        scales = parts[1] if len(parts) > 1 else None
        if scales is None or scales.shape != (*cache.shape[:3], dim // Q8_BLOCK):
            raise ValueError(f"a q8_0 {name} cache needs scales of shape (R, Hkv, S, D // 32)")
    return quantized


def _strides(new: torch.Tensor, parts: Sequence[torch.Tensor], quantized: bool) -> list[int]:
    """The kernel's strides of one part: new (b, t, head), cache and scales (row, head, pos)."""
    scale_strides = parts[1].stride()[:3] if quantized else (0, 0, 0)
    return [*new.stride()[:3], *parts[0].stride()[:3], *scale_strides]


def rope_and_store(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    table: torch.Tensor,
    key_parts: Sequence[torch.Tensor],
    value_parts: Sequence[torch.Tensor],
    rows: torch.Tensor | None,
    positions: torch.Tensor,
) -> torch.Tensor:
    """RoPE of q and keys (B, T, heads, D) by `table`, and the rotated keys and the values
    written at [rows[b], :, positions[b or 0, t]] of their caches (rows None: b), in one
    launch. Returns the rotated q (B, T, H, D), contiguous.

    q, keys, values: any strides but a contiguous D (views of a projection's output are
    read in place), one dtype; keys and values (B, T, Hkv, D). table: (B or 1, T,
    rope_dim/2, 2) float32 cos/sin. key_parts / value_parts: (cache,) with a float cache
    (R, Hkv, S, D), or (codes, scales) with int8 Q8_0 codes and float16 scales (R, Hkv,
    S, D // 32); the two caches may differ in type. positions (B or 1, T) integers, read
    on the GPU. Keys are rotated and rounded to their dtype exactly as q is, then stored.
    Raises ValueError for mismatched shapes, dtypes or devices."""
    check_heads("q", q)
    check_heads("keys", keys)
    if q.shape[:2] != keys.shape[:2] or q.shape[3] != keys.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and keys {tuple(keys.shape)}: (B, T, heads, D)")
    if q.dtype != keys.dtype or q.device != keys.device:
        raise ValueError(f"q is {q.dtype} on {q.device}, keys {keys.dtype} on {keys.device}")
    check_table(table, q)
    if values.shape != keys.shape:
        raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} differ")
    batch, n_tokens, kv_heads, dim = keys.shape
    if (
        positions.dim() != 2
        or positions.shape[0] not in (1, batch)
        or positions.shape[1] != n_tokens
    ):
        raise ValueError(f"positions {tuple(positions.shape)}: expected ({batch} or 1, {n_tokens})")
    k_q8 = _check_part("keys", keys, key_parts)
    v_q8 = _check_part("values", values, value_parts)
    if rows is None and batch > min(key_parts[0].shape[0], value_parts[0].shape[0]):
        raise ValueError(f"{batch} sequences but {key_parts[0].shape[0]} cache rows")
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if batch * n_tokens == 0:
        return q_out
    n_q = q.shape[2]
    block_h, block_d, num_warps = launch_config(dim, max(n_q, kv_heads))
    q_blocks, kv_blocks = triton.cdiv(n_q, block_h), triton.cdiv(kv_heads, block_h)
    position_batch_stride = positions.stride(0) if positions.shape[0] == batch else 0
    table_batch_stride = table.stride(0) if table.shape[0] == batch else 0
    # a float cache stands in for absent scales, positions for absent rows
    _store_kernel[(batch * n_tokens, q_blocks + 2 * kv_blocks)](
        q, q_out, table, keys, key_parts[0], key_parts[-1], values, value_parts[0],
        value_parts[-1], positions if rows is None else rows, positions,
        n_tokens, n_q, kv_heads, q_blocks, kv_blocks, position_batch_stride, positions.stride(1),
        *q.stride()[:3], table_batch_stride, *table.stride()[1:], table.shape[2],
        *_strides(keys, key_parts, k_q8), *_strides(values, value_parts, v_q8),
        dim, HAS_ROWS=rows is not None, K_Q8=k_q8, V_Q8=v_q8,
        BLOCK_H=block_h, BLOCK_D=block_d, num_warps=num_warps,
        **launch_options(keys.device, batch * n_tokens),
    )  # fmt: skip
    return q_out
