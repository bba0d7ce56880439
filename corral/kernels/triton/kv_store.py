"""Write one new token's keys and values into the KV cache in one kernel (decode steps).

The torch path (corral.model.kv_cache.KVCache.write) indexes the cache with tensors of
rows and positions (index_put), and for a q8_0 cache first quantizes with a dozen
elementwise ops. Here one program per (sequence, KV head, keys or values) reads the new
vector, converts
it to the cache's float type or quantizes it to Q8_0 blocks exactly as
`corral.kernels.kv_q8.quantize_q8_0` does (d = max|x| / 127, code = round half away from
zero of x / d with an IEEE division, d stored as float16), and stores it at
[rows[b], head, positions[b]]. Rows and positions are read on the GPU: CUDA-graph safe.
"""

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from corral.kernels.kv_q8 import Q8_BLOCK, check_head_dim
from corral.kernels.triton.pdl import launch_options, release_dependents, wait_for_inputs


@triton.jit
def _store_vector(
    NEW, CACHE, SCALES, b, head, row, pos,
    stride_nb, stride_nh, stride_cr, stride_ch, stride_cn, stride_sr, stride_sh, stride_sn,
    D, Q8: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """NEW[b, head] (D values) into CACHE[row, head, pos] (and its Q8_0 SCALES)."""
    offs = tl.arange(0, BLOCK_D)
    inside = offs < D
    x = tl.load(NEW + b * stride_nb + head * stride_nh + offs, mask=inside, other=0.0)
    x = x.to(tl.float32)  # (BLOCK_D,), 0 past D
    target = CACHE + row * stride_cr + head * stride_ch + pos * stride_cn
    if Q8:
        blocks = tl.reshape(x, [BLOCK_D // 32, 32])  # (BLOCK_D/32, 32)
        scale = tl.max(tl.abs(blocks), 1) / 127.0  # (D/32,)
        ones = tl.full([BLOCK_D // 32], 1.0, tl.float32)
        safe = tl.where(scale == 0.0, ones, scale)  # no 1/0 for an all-zero block
        inverse = tl.where(scale == 0.0, 0.0, tl.math.div_rn(ones, safe))
        scaled = blocks * inverse[:, None]
        codes = tl.where(scaled < 0, -1.0, 1.0) * tl.floor(tl.abs(scaled) + 0.5)  # C's roundf
        codes = tl.reshape(codes, [BLOCK_D])  # (BLOCK_D/32, 32) -> (BLOCK_D,)
        tl.store(target + offs, codes.to(tl.int8), mask=inside)
        block = tl.arange(0, BLOCK_D // 32)
        scale_offs = row * stride_sr + head * stride_sh + pos * stride_sn + block
        tl.store(SCALES + scale_offs, scale.to(tl.float16), mask=block < D // 32)
    else:
        tl.store(target + offs, x.to(CACHE.dtype.element_ty), mask=inside)


@triton.jit
def _store_kernel(
    K_NEW, K_CACHE, K_SCALES, V_NEW, V_CACHE, V_SCALES, ROWS, POSITIONS,
    stride_kb, stride_kh, stride_kr, stride_kch, stride_kn, stride_ksr, stride_ksh, stride_ksn,
    stride_vb, stride_vh, stride_vr, stride_vch, stride_vn, stride_vsr, stride_vsh, stride_vsn,
    D, HAS_ROWS: tl.constexpr, K_Q8: tl.constexpr, V_Q8: tl.constexpr,
    BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Program (sequence, KV head, part): part 0 stores the key, part 1 the value."""
    release_dependents(PDL)
    wait_for_inputs(PDL)
    b = tl.program_id(0)
    head = tl.program_id(1)
    if HAS_ROWS:
        row = tl.load(ROWS + b).to(tl.int64)
    else:
        row = b.to(tl.int64)
    pos = tl.load(POSITIONS + b).to(tl.int64)
    if tl.program_id(2) == 0:
        _store_vector(
            K_NEW, K_CACHE, K_SCALES, b, head, row, pos,
            stride_kb, stride_kh, stride_kr, stride_kch, stride_kn, stride_ksr, stride_ksh,
            stride_ksn, D, K_Q8, BLOCK_D,
        )  # fmt: skip
    else:
        _store_vector(
            V_NEW, V_CACHE, V_SCALES, b, head, row, pos,
            stride_vb, stride_vh, stride_vr, stride_vch, stride_vn, stride_vsr, stride_vsh,
            stride_vsn, D, V_Q8, BLOCK_D,
        )  # fmt: skip


def _check_part(name: str, new: torch.Tensor, parts: Sequence[torch.Tensor]) -> bool:
    """Whether `parts` (cache,) or (codes, scales) can take `new` (B, Hkv, D); True for
    Q8_0 codes. Raises ValueError naming `name` (keys, values) otherwise."""
    batch, kv_heads, dim = new.shape
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
    """The kernel's strides of one part: new (b, head), cache and scales (row, head, pos)."""
    scale_strides = parts[1].stride()[:3] if quantized else (0, 0, 0)
    return [new.stride(0), new.stride(1), *parts[0].stride()[:3], *scale_strides]


def store_token(
    keys: torch.Tensor,
    values: torch.Tensor,
    key_parts: Sequence[torch.Tensor],
    value_parts: Sequence[torch.Tensor],
    rows: torch.Tensor | None,
    positions: torch.Tensor,
) -> None:
    """Write keys and values (B, Hkv, D) at [rows[b], :, positions[b]] of their caches
    (rows None: b), in one launch.

    key_parts / value_parts: (cache,) with a float cache (R, Hkv, S, D), or (codes,
    scales) with int8 Q8_0 codes and float16 scales (R, Hkv, S, D // 32); the two caches
    may differ in type. positions (B,) integers. Raises ValueError for mismatched shapes."""
    batch, kv_heads, dim = keys.shape
    if values.shape != keys.shape or tuple(positions.shape) != (batch,):
        raise ValueError(f"keys {tuple(keys.shape)}, values {tuple(values.shape)}, positions (B,)")
    k_q8 = _check_part("keys", keys, key_parts)
    v_q8 = _check_part("values", values, value_parts)
    if rows is None and batch > min(key_parts[0].shape[0], value_parts[0].shape[0]):
        raise ValueError(f"{batch} sequences but {key_parts[0].shape[0]} cache rows")
    _store_kernel[(batch, kv_heads, 2)](  # a float cache stands in for absent scales
        keys, key_parts[0], key_parts[-1], values, value_parts[0], value_parts[-1],
        positions if rows is None else rows, positions,
        *_strides(keys, key_parts, k_q8), *_strides(values, value_parts, v_q8),
        dim, HAS_ROWS=rows is not None, K_Q8=k_q8, V_Q8=v_q8,
        BLOCK_D=max(Q8_BLOCK, triton.next_power_of_2(dim)),
        **launch_options(keys.device, batch),
    )  # fmt: skip
