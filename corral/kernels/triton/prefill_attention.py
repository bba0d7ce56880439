"""Prefill attention: T new tokens per sequence, causal over the KV cache, read in place.

The multi-token sibling of the flash-decoding kernel (`corral.kernels.triton.attention`),
for prompt prefill, chunked prefill and prompt continuation: token t of sequence b sits at
position starts[b] + t of its cache row, its key and value already written there, and
attends to the row's entries 0..starts[b] + t (the cached prefix and the new tokens up to
itself). One kernel in the style of FlashAttention-2:

- grid (B, Hkv, cdiv(T * group, BLOCK_M)), group = H / Hkv: a program owns one sequence,
  one KV head and a tile of BLOCK_M query rows. The rows of a KV head are its group's
  query heads times the T tokens, token-major (row m is token m // group, head
  kv_head * group + m % group), so a K or V tile is read once for all the heads that share
  it, as the decode kernel does and vLLM's unified Triton attention does. That divides the
  cache traffic by the group (4 for Llama 3 8B) and fills the tile's rows even when T is
  small (a chunk of 16 tokens of a 4-head group fills 64 rows), which is where prefill
  over a long cached prefix is bound by memory rather than compute. Token-major keeps
  positions increasing along the tile, so its rows span BLOCK_M / group positions and the
  causal skip below stays tight. Row tiles run last to first: the longest walks start
  first and the short ones fill the tail of the launch.
- the program walks the key tiles of BLOCK_N positions from 0 up to its last query's
  position only (causal skipping: nothing past it is loaded), with the running max, sum
  of exponentials and weighted sum of V rows in float32 (online softmax, in base 2). The
  walk has two loops: tiles wholly at or before the tile's first query position, which
  every row sees whole and which take no mask, then the diagonal tiles, whose key loads
  stop at the last query position and whose scores are masked per row (key position <=
  query position). The first tile walked has a visible key for every row, so the running
  max is finite from then on and no -inf - -inf appears.
- QK^T and PV are tl.dot of (BLOCK_M, BLOCK_D) x (BLOCK_D, BLOCK_N) and (BLOCK_M, BLOCK_N)
  x (BLOCK_N, BLOCK_D) tiles in q's dtype (exact "ieee" products for float32), the whole
  head dim in one tile (BLOCK_D = next power of two >= D). The output row is acc / sum,
  stored contiguous (B, T, H, D) in q's dtype.

Q8_0 caches (`corral.kernels.kv_q8`) are dequantized in the tile loads, by the decode
kernel's `_load_tile`. Loads read 0 past the last query position of the tile, so stale
entries past starts[b] + T - 1 (even NaN or inf) never reach a sum; entries between a
token's position and starts[b] + T - 1 are the later new tokens' keys and values, which
the contract says are written, and which the causal mask keeps from earlier tokens.

Tiles (`tile_config`, chosen for an H100 without one to time on; register and shared
memory counts from Triton 3.6 compiling for sm_90 with its ptxas, D = 128):
- 16-bit queries: BLOCK_N = 64 positions. BLOCK_M = 128 rows at 8 warps (two warpgroups
  of wgmma) when that still gives every SM a program, else 64 rows at 4 warps; a short
  step (T * group <= 64 rows) takes the next power of two >= max(16, T * group) rows, 16
  being tl.dot's minimum. 3 pipeline stages: K and V tiles stream through cp.async into
  shared memory. No spills: 181 registers and 128 KB of shared memory at 128 rows (235
  and 80 KB with Q8_0 keys and values), 255 and 112 KB at 64 rows (186 and 64 KB), 105
  to 251 at 16 and 32 rows.
- float32 queries: exact ("ieee") products run on FMA units, not tensor cores, and larger
  tiles spill kilobytes; the decode kernel's 16 x 32 tiles at 4 warps and 2 stages take 96
  registers over a float32 cache, 255 and a few hundred bytes of spill when the load
  converts the cache (16-bit or Q8_0). A correctness path: CUDA computes in float16.

Graph safety: the grid depends only on shapes (B, Hkv, T, group), never on `starts` or
`rows`, which are read inside the kernel; the wrapper has no .item(), no host sync and no
branch on tensor values, so a CUDA graph captured once replays with new starts and rows.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from corral.kernels.attention_reference import check_prefill_attention_args
from corral.kernels.triton.attention import LOG2E, _attend, _scale_strides, _sm_count

BLOCK_N = 64  # cache positions per key tile (16-bit queries)
MIN_ROWS = 16  # tl.dot needs at least 16 rows (and columns)
SHORT_ROWS = 64  # up to this many query rows per KV head: one tile of just enough rows
WIDE_ROWS = 128  # the wide tile of 16-bit queries, when it still fills the GPU


@dataclass(frozen=True)
class Tiles:
    """Launch shape: query rows and key positions per tile, warps, pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


FLOAT32_TILES = Tiles(block_m=MIN_ROWS, block_n=32, num_warps=4, num_stages=2)


@triton.jit
def _prefill_kernel(
    Q, K, V, K_SCALES, V_SCALES, ROWS, STARTS, OUT,
    n_new, capacity, group, head_dim, qk_scale,
    stride_qb, stride_qt, stride_qh, stride_ob, stride_ot, stride_oh,
    stride_kr, stride_kh, stride_kn, stride_vr, stride_vh, stride_vn,
    stride_ksr, stride_ksh, stride_ksn, stride_vsr, stride_vsh, stride_vsn,
    HAS_ROWS: tl.constexpr, K_Q8: tl.constexpr, V_Q8: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Output rows of one (sequence, KV head, tile of group heads x tokens)."""
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    m_tile = tl.num_programs(2) - 1 - tl.program_id(2)  # the longest walks start first
    start = tl.load(STARTS + b).to(tl.int32)
    start = tl.minimum(tl.maximum(start, 0), capacity - n_new)  # outside: caller error
    if HAS_ROWS:
        row = tl.load(ROWS + b).to(tl.int64)
    else:
        row = b.to(tl.int64)
    n_rows = n_new * group
    m0 = m_tile * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    mask_m = offs_m < n_rows
    tokens = tl.minimum(offs_m // group, n_new - 1)  # (BLOCK_M,); padding repeats the last
    heads = kv_head * group + offs_m % group  # (BLOCK_M,)
    q_pos = start + tokens  # (BLOCK_M,) cache position of each row's token
    first = start + m0 // group  # the tile's first and last query positions
    last = start + tl.minimum(m0 + BLOCK_M - 1, n_rows - 1) // group
    offs_d = tl.arange(0, BLOCK_D)
    mask = mask_m[:, None] & (offs_d < head_dim)[None, :]  # (BLOCK_M, BLOCK_D)
    q_offs = tokens[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(Q + b.to(tl.int64) * stride_qb + q_offs, mask=mask, other=0.0)
    k_base = row * stride_kr + kv_head * stride_kh
    v_base = row * stride_vr + kv_head * stride_vh
    ks_base = row * stride_ksr + kv_head * stride_ksh
    vs_base = row * stride_vsr + kv_head * stride_vsh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max, log2 units
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of 2^(score - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # running sum of 2^(score - m_i) * v
    seen_whole = (first + 1) // BLOCK_N * BLOCK_N  # tiles below: keys <= first, seen by all
    m_i, l_i, acc = _attend(
        q, m_i, l_i, acc, 0, seen_whole, q_pos, last,
        K, V, K_SCALES, V_SCALES, k_base, v_base, ks_base, vs_base, head_dim, qk_scale,
        stride_kn, stride_vn, stride_ksn, stride_vsn,
        False, K_Q8, V_Q8, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    m_i, l_i, acc = _attend(
        q, m_i, l_i, acc, seen_whole, last + 1, q_pos, last,
        K, V, K_SCALES, V_SCALES, k_base, v_base, ks_base, vs_base, head_dim, qk_scale,
        stride_kn, stride_vn, stride_ksn, stride_vsn,
        True, K_Q8, V_Q8, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    out = acc / l_i[:, None]  # (BLOCK_M, BLOCK_D); l_i >= 1: the max term is 2^0
    out_offs = tokens[:, None] * stride_ot + heads[:, None] * stride_oh + offs_d[None, :]
    tl.store(OUT + b.to(tl.int64) * stride_ob + out_offs, out.to(OUT.dtype.element_ty), mask=mask)


def tile_config(
    batch: int, kv_heads: int, query_rows: int, element_bytes: int, sm_count: int
) -> Tiles:
    """Tiles for `query_rows` = T * group rows per KV head and queries of `element_bytes`:
    see the module docstring. From shapes only."""
    if element_bytes == 4:
        return FLOAT32_TILES
    if query_rows <= SHORT_ROWS:
        block_m = max(MIN_ROWS, triton.next_power_of_2(query_rows))
    elif batch * kv_heads * triton.cdiv(query_rows, WIDE_ROWS) >= sm_count:
        block_m = WIDE_ROWS
    else:
        block_m = SHORT_ROWS
    return Tiles(block_m, BLOCK_N, num_warps=8 if block_m == WIDE_ROWS else 4, num_stages=3)


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor | None,
    starts: torch.Tensor,
    *,
    scale: float,
    k_scales: torch.Tensor | None = None,
    v_scales: torch.Tensor | None = None,
    tiles: Tiles | None = None,
) -> torch.Tensor:
    """Causal attention of T new tokens per sequence over their cache rows, read in place.

    q (B, T, H, D) float16/bfloat16/float32, any strides but unit stride along D (a view
    of a fused QKV projection will do); k, v (R, Hkv, S, D) float caches or int8 Q8_0
    codes with `k_scales` / `v_scales` (R, Hkv, S, D // 32) float16; rows (B,) cache row of
    each sequence (None: 0..B-1); starts (B,): token t of sequence b is at position
    starts[b] + t, its key and value already in the cache, and attends to entries
    0..starts[b] + t; every starts[b] in 0..S-T, read on the GPU. `tiles`: the launch
    shape, block sizes powers of two >= 16 (None: chosen by `tile_config`). Returns
    (B, T, H, D) contiguous in q's dtype; `prefill_attention_reference` in
    `corral.kernels.attention_reference` is the torch twin. Safe to capture in a CUDA
    graph: no host sync.
    """
    check_prefill_attention_args(q, k, v, rows, starts, k_scales, v_scales)
    named = {"q": q, "k": k, "v": v, "k_scales": k_scales, "v_scales": v_scales}
    for name, tensor in named.items():
        if tensor is not None and tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous along its last dimension")
    batch, n_new, heads, head_dim = q.shape
    kv_heads, capacity = k.shape[1], k.shape[2]
    group = heads // kv_heads
    if tiles is None:
        tiles = tile_config(batch, kv_heads, n_new * group, q.element_size(), _sm_count(q.device))
    for block in (tiles.block_m, tiles.block_n):
        if block < MIN_ROWS or block & (block - 1):
            raise ValueError(f"tile sizes must be powers of two >= {MIN_ROWS}, got {tiles}")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # (B, T, H, D)
    grid = (batch, kv_heads, triton.cdiv(n_new * group, tiles.block_m))
    _prefill_kernel[grid](  # never-read stand-ins for absent pointers
        q, k, v,
        k if k_scales is None else k_scales, v if v_scales is None else v_scales,
        starts if rows is None else rows, starts, out,
        n_new, capacity, group, head_dim, scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        *_scale_strides(k_scales), *_scale_strides(v_scales),
        HAS_ROWS=rows is not None, K_Q8=k.dtype == torch.int8, V_Q8=v.dtype == torch.int8,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_D=triton.next_power_of_2(head_dim),
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )  # fmt: skip
    return out
