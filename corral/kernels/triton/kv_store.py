"""Write one new token's keys or values into the KV cache in one kernel (decode steps).

The torch path (corral.model.kv_cache.KVCache.write) indexes the cache with tensors of
rows and positions (index_put), and for a q8_0 cache first quantizes with a dozen
elementwise ops. Here one program per (sequence, KV head) reads the new vector, converts
it to the cache's float type or quantizes it to Q8_0 blocks exactly as
`corral.kernels.kv_q8.quantize_q8_0` does (d = max|x| / 127, code = round half away from
zero of x / d with an IEEE division, d stored as float16), and stores it at
[rows[b], head, positions[b]]. Rows and positions are read on the GPU: CUDA-graph safe.
"""

import torch
import triton
import triton.language as tl

from corral.kernels.kv_q8 import Q8_BLOCK, check_head_dim
from corral.kernels.triton.pdl import launch_options, release_dependents, wait_for_inputs


@triton.jit
def _store_kernel(
    NEW, CACHE, SCALES, ROWS, POSITIONS,
    stride_nb, stride_nh, stride_cr, stride_ch, stride_cn, stride_sr, stride_sh, stride_sn,
    D, HAS_ROWS: tl.constexpr, Q8: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    release_dependents(PDL)
    wait_for_inputs(PDL)
    b = tl.program_id(0)
    head = tl.program_id(1)
    if HAS_ROWS:
        row = tl.load(ROWS + b).to(tl.int64)
    else:
        row = b.to(tl.int64)
    pos = tl.load(POSITIONS + b).to(tl.int64)
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


def store_token(
    new: torch.Tensor,
    cache: torch.Tensor,
    scales: torch.Tensor | None,
    rows: torch.Tensor | None,
    positions: torch.Tensor,
) -> None:
    """Write new (B, Hkv, D) at cache[rows[b], :, positions[b]] (rows None: b).

    cache (R, Hkv, S, D) float, or int8 Q8_0 codes with `scales` (R, Hkv, S, D // 32)
    float16; positions (B,) integers."""
    batch, kv_heads, dim = new.shape
    if cache.dim() != 4 or cache.shape[1] != kv_heads or cache.shape[3] != dim:
        raise ValueError(f"cache {tuple(cache.shape)} does not hold vectors of {tuple(new.shape)}")
    if rows is None and batch > cache.shape[0]:
        raise ValueError(f"{batch} sequences but {cache.shape[0]} cache rows")
    if new.stride(-1) != 1 or cache.stride(-1) != 1 or tuple(positions.shape) != (batch,):
        raise ValueError("new and cache must be contiguous along D, positions (B,)")
    quantized = cache.dtype == torch.int8
    if quantized:
        check_head_dim(dim)
        if scales is None or scales.shape != (*cache.shape[:3], dim // Q8_BLOCK):
            raise ValueError("a q8_0 cache needs scales of shape (R, Hkv, S, D // 32)")
    scale_strides = scales.stride()[:3] if quantized else (0, 0, 0)
    _store_kernel[(batch, kv_heads)](
        new, cache, scales if quantized else cache, positions if rows is None else rows,
        positions, new.stride(0), new.stride(1), *cache.stride()[:3], *scale_strides,
        dim, HAS_ROWS=rows is not None, Q8=quantized,
        BLOCK_D=max(Q8_BLOCK, triton.next_power_of_2(dim)), **launch_options(new.device, batch),
    )  # fmt: skip
