"""Flash-decoding: attention of one new token per sequence over its KV cache, in two kernels.

Decode attention reads the whole cached K and V of every sequence to produce one row per
query head, so it is bound by memory bandwidth, and a batch of one sequence has far too
little parallelism along batch and heads to fill a GPU (B * Hkv = 8 programs for a Llama
with 8 KV heads, on an H100's 132 SMs). As in FlashDecoding, vLLM's paged attention v2
and llama.cpp's fattn-vec, the sequence axis is split as well:

- phase 1, grid (B, Hkv, n_splits): a program owns one sequence b, one KV head and one
  chunk of `split` cache positions. It loads the H / Hkv query heads that share that KV
  head (padded to BLOCK_H >= 16 rows, the smallest tl.dot), so each K and V byte is read
  once per KV head, not once per query head. It walks its chunk in tiles of BLOCK_N
  positions (loads coalesced along D), masks positions past positions[b], and keeps the
  running max, sum of exponentials and weighted sum of V rows in float32 (online softmax,
  in base 2). It writes these partials (max, sumexp, out) to float32 scratch. A chunk
  that starts past positions[b] runs no tile and stores nothing.
- phase 2, grid (B, H): a program reads the partials of the chunks that hold positions
  of its sequence (pos // split + 1 of them, always at least chunk 0, so the maximum is
  finite and no -inf - -inf appears), rescales them to their common maximum and writes
  sum(w * out) / sum(w * sumexp) in q's dtype.

Q8_0 caches (`corral.kernels.kv_q8`) are dequantized in the tile loads: int8 codes times
the float16 scale of their 32-wide block. Masked loads read 0 for every position past
positions[b], so stale entries there (even NaN or inf) never reach a sum.

The split: phase 1 should have about PROGRAMS_PER_SM programs per SM, so the chunk is
end / (PROGRAMS_PER_SM * SMs / (B * Hkv)) positions, rounded up to a power of two and at
least MIN_SPLIT. B = 1, Hkv = 8, end = 4096 on an H100 gives chunks of 64 positions: 512
programs, each reading 32 KB of a float16 cache. Tiles: BLOCK_N = 32 positions of a
16-row query group, 4 warps, 2 pipeline stages (the tiles of SGLang's grouped Triton
decode kernel); the whole of D in one tile (BLOCK_D = next power of two >= D). Compiled
for sm_90 by Triton 3.6, phase 1 takes about 80 registers with a 16-bit cache (K and V
tiles stream through cp.async into shared memory) and about 125 with Q8_0 caches (codes
load 16 bytes per thread, a block's scale once), no spills: 4 programs fit an SM.

Graph safety: the grid and the scratch sizes depend only on shapes and the static `end`,
never on `positions` or `rows`, which are read inside the kernels; the wrapper has no
.item(), no host sync and no branch on tensor values, so a CUDA graph captured once
replays with new positions and rows.
"""

import functools

import torch
import triton
import triton.language as tl

from corral.kernels.act_quant import group_weights
from corral.kernels.attention_reference import check_decode_attention_args
from corral.kernels.triton.int8_act import attach_int8, empty_activations, store_values_as_blocks
from corral.kernels.triton.pdl import launch_options, release_dependents, wait_for_inputs

BLOCK_N = 32  # cache positions per tile
MIN_HEAD_ROWS = 16  # tl.dot needs at least 16 rows: a query group is padded to this
MIN_SPLIT = 64  # positions per phase-1 program at least: two tiles
PROGRAMS_PER_SM = 4  # phase-1 programs wanted per SM (bytes in flight to hide latency)
COMBINE_SPLITS = 16  # partials per step of the phase-2 loops
LOG2E = 1.4426950408889634
H100_SMS = 132  # what the split policy assumes off a GPU (Triton's interpreter)


@triton.jit
def _load_tile(
    CACHE, SCALES, cache_base, scale_base, offs_n, valid, head_dim, stride_n, scale_stride_n,
    Q8: tl.constexpr, DTYPE: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """(BLOCK_N, BLOCK_D) tile of positions offs_n of a cache head, in DTYPE.

    0 where not `valid` (positions) and past `head_dim`. Q8: int8 codes times the
    float16 scale of each 32-wide block of D, loaded once per block and broadcast.
    """
    BLOCK_N: tl.constexpr = offs_n.shape[0]
    offs_d = tl.arange(0, BLOCK_D)
    mask = valid[:, None] & (offs_d < head_dim)[None, :]  # (BLOCK_N, BLOCK_D)
    offs = cache_base + offs_n[:, None] * stride_n + offs_d[None, :]  # (BLOCK_N, BLOCK_D)
    if Q8:
        codes = tl.load(CACHE + offs, mask=mask, other=0)
        blocks = tl.arange(0, BLOCK_D // 32)
        scale_offs = scale_base + offs_n[:, None] * scale_stride_n + blocks[None, :]  # (N, D/32)
        scale_mask = valid[:, None] & (blocks < head_dim // 32)[None, :]
        scales = tl.load(SCALES + scale_offs, mask=scale_mask, other=0.0)  # (BLOCK_N, D/32)
        codes = tl.reshape(codes.to(tl.float32), [BLOCK_N, BLOCK_D // 32, 32])  # (N, D/32, 32)
        values = codes * scales.to(tl.float32)[:, :, None]  # (BLOCK_N, D/32, 32)
        tile = tl.reshape(values, [BLOCK_N, BLOCK_D]).to(DTYPE)  # (BLOCK_N, BLOCK_D)
    else:
        tile = tl.load(CACHE + offs, mask=mask, other=0.0).to(DTYPE)
    return tile


@triton.jit
def _attend(
    q, m_i, l_i, acc, lo, hi, q_pos, last,
    K, V, K_SCALES, V_SCALES, k_base, v_base, ks_base, vs_base, head_dim, qk_scale,
    stride_kn, stride_vn, stride_ksn, stride_vsn,
    CAUSAL: tl.constexpr, K_Q8: tl.constexpr, V_Q8: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Online softmax of the query tile `q` over key tiles lo, lo + BLOCK_N, .. < hi.

    CAUSAL: keys load up to position `last` and row i sees keys <= q_pos[i]; else every
    key of every tile is seen by every row. Returns the updated (m_i, l_i, acc).
    """
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        if CAUSAL:
            valid = offs_n <= last  # (BLOCK_N,)
        else:
            valid = tl.full([BLOCK_N], True, tl.int1)
        k = _load_tile(
            K, K_SCALES, k_base, ks_base, offs_n, valid, head_dim, stride_kn, stride_ksn,
            K_Q8, q.dtype, BLOCK_D,
        )  # fmt: skip
        # "ieee" keeps a float32 product exact (no tf32); 16-bit operands ignore it
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale  # (BLOCK_M, BLOCK_N)
        if CAUSAL:
            scores = tl.where(offs_n[None, :] <= q_pos[:, None], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))  # finite: see the module docstring
        alpha = tl.exp2(m_i - m_new)  # 0 on the first tile (m_i = -inf)
        p = tl.exp2(scores - m_new[:, None])  # (BLOCK_M, BLOCK_N), 0 where masked
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(
            V, V_SCALES, v_base, vs_base, offs_n, valid, head_dim, stride_vn, stride_vsn,
            V_Q8, q.dtype, BLOCK_D,
        )  # fmt: skip
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision="ieee")
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _split_kernel(
    Q, K, V, K_SCALES, V_SCALES, ROWS, POSITIONS, MAXES, SUMS, PARTIAL,
    end, split, n_splits, group, head_dim, qk_scale,
    stride_qb, stride_qh,
    stride_kr, stride_kh, stride_kn, stride_vr, stride_vh, stride_vn,
    stride_ksr, stride_ksh, stride_ksn, stride_vsr, stride_vsh, stride_vsn,
    HAS_ROWS: tl.constexpr, K_Q8: tl.constexpr, V_Q8: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Phase 1: partial softmax statistics of one (sequence, KV head, chunk)."""
    release_dependents(PDL)
    wait_for_inputs(PDL)
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    chunk = tl.program_id(2)
    pos = tl.minimum(tl.load(POSITIONS + b).to(tl.int32), end - 1)  # past end: caller error
    if HAS_ROWS:
        row = tl.load(ROWS + b).to(tl.int64)
    else:
        row = b.to(tl.int64)
    rows_h = tl.arange(0, BLOCK_H)
    mask_h = rows_h < group
    heads = kv_head * group + rows_h  # (BLOCK_H,) query heads of this KV head
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    q_offs = b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :]  # (BLOCK_H, BLOCK_D)
    q = tl.load(Q + q_offs, mask=mask_h[:, None] & mask_d[None, :], other=0.0)
    k_base = row * stride_kr + kv_head * stride_kh
    v_base = row * stride_vr + kv_head * stride_vh
    ks_base = row * stride_ksr + kv_head * stride_ksh
    vs_base = row * stride_vsr + kv_head * stride_vsh

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)  # running max, log2 units
    l_i = tl.zeros([BLOCK_H], tl.float32)  # running sum of 2^(score - m_i)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)  # running sum of 2^(score - m_i) * v
    start = chunk * split
    every_row_at_pos = tl.full([BLOCK_H], 0, tl.int32) + pos  # (BLOCK_H,): one new token
    m_i, l_i, acc = _attend(
        q, m_i, l_i, acc, start, tl.minimum(start + split, pos + 1), every_row_at_pos, pos,
        K, V, K_SCALES, V_SCALES, k_base, v_base, ks_base, vs_base, head_dim, qk_scale,
        stride_kn, stride_vn, stride_ksn, stride_vsn,
        True, K_Q8, V_Q8, BLOCK_N, BLOCK_D,
    )  # fmt: skip

    stats = (b * (group * tl.num_programs(1)) + heads) * n_splits + chunk  # (BLOCK_H,)
    live = mask_h & (start <= pos)  # an empty chunk stores nothing: phase 2 skips it
    tl.store(MAXES + stats, m_i, mask=live)
    tl.store(SUMS + stats, l_i, mask=live)
    out_offs = stats[:, None] * head_dim + offs_d[None, :]  # (BLOCK_H, BLOCK_D)
    tl.store(PARTIAL + out_offs, acc, mask=live[:, None] & mask_d[None, :])


@triton.jit
def _combine_kernel(
    MAXES, SUMS, PARTIAL, POSITIONS, OUT, CODES, QD, QS,
    end, split, n_splits, head_dim, stride_ob, stride_oh, stride_c, stride_q,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, Q_P: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Phase 2: out[b, h] from the partials of the chunks that hold positions of b.
    Q_P > 0 (BLOCK_D == head_dim): also the int8 blocks of out[b, h] as stored, for
    weights of 8 / Q_P bits, as blocks h * BLOCK_D / (16 Q_P).. of row b of CODES, QD, QS
    (`int8_act`; a head is whole blocks)."""
    release_dependents(PDL)
    wait_for_inputs(PDL)
    b = tl.program_id(0)
    h = tl.program_id(1)
    pos = tl.minimum(tl.load(POSITIONS + b).to(tl.int32), end - 1)
    n_valid = pos // split + 1  # chunks 0..n_valid-1 hold positions 0..pos
    base = (b * tl.num_programs(1) + h) * n_splits
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim

    maxes = tl.full([BLOCK_S], float("-inf"), tl.float32)
    for s0 in range(0, n_valid, BLOCK_S):
        mask_s = s0 + offs_s < n_valid
        m_s = tl.load(MAXES + base + s0 + offs_s, mask=mask_s, other=float("-inf"))
        maxes = tl.maximum(maxes, m_s)
    m = tl.max(maxes, 0)  # finite: chunk 0 is always valid

    sums = tl.zeros([BLOCK_S], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for s0 in range(0, n_valid, BLOCK_S):
        mask_s = s0 + offs_s < n_valid
        m_s = tl.load(MAXES + base + s0 + offs_s, mask=mask_s, other=float("-inf"))
        w = tl.exp2(m_s - m)  # (BLOCK_S,), 0 where masked
        sums += w * tl.load(SUMS + base + s0 + offs_s, mask=mask_s, other=0.0)
        part_offs = (base + s0 + offs_s)[:, None] * head_dim + offs_d[None, :]  # (S, D)
        part_mask = mask_s[:, None] & mask_d[None, :]
        acc += tl.sum(w[:, None] * tl.load(PARTIAL + part_offs, mask=part_mask, other=0.0), 0)
    out = (acc / tl.sum(sums, 0)).to(OUT.dtype.element_ty)
    out_offs = b * stride_ob + h * stride_oh + offs_d
    tl.store(OUT + out_offs, out, mask=mask_d)
    if Q_P > 0:
        NB: tl.constexpr = BLOCK_D // (16 * Q_P)  # int8 blocks per head
        store_values_as_blocks(
            CODES + b * stride_c, QD + b * stride_q, QS + b * stride_q,
            out, h * NB, (h + 1) * NB, Q_P,
        )  # fmt: skip


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return H100_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_size(batch: int, kv_heads: int, end: int, sm_count: int) -> int:
    """Cache positions per phase-1 program: see the module docstring.

    A power of two >= MIN_SPLIT (so a multiple of BLOCK_N), from shapes only.
    """
    splits = triton.cdiv(PROGRAMS_PER_SM * sm_count, batch * kv_heads)
    return max(MIN_SPLIT, triton.next_power_of_2(triton.cdiv(end, splits)))


def _scale_strides(scales: torch.Tensor | None) -> tuple[int, int, int]:
    """(row, head, position) strides of a Q8_0 scale tensor; zeros for a float cache."""
    return (0, 0, 0) if scales is None else scales.stride()[:3]


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor | None,
    positions: torch.Tensor,
    end: int,
    *,
    scale: float,
    k_scales: torch.Tensor | None = None,
    v_scales: torch.Tensor | None = None,
    split: int | None = None,
    int8_bits: int = 0,
) -> torch.Tensor:
    """Attention of each sequence's new token over its cache entries 0..positions[b].

    q (B, H, D) float16/bfloat16/float32; k, v (R, Hkv, S, D) float caches or int8 Q8_0
    codes with `k_scales` / `v_scales` (R, Hkv, S, D // 32) float16; rows (B,) cache row
    of each sequence (None: 0..B-1); positions (B,), each < `end` <= S, read on the GPU.
    `split`: cache positions per phase-1 program, a multiple of BLOCK_N (None: chosen by
    `split_size`). Returns (B, H, D) in q's dtype; `corral.kernels.attention_reference`
    is the torch twin. Safe to capture in a CUDA graph: no host sync. int8_bits (2, 4,
    8; 0: none): phase 2 also writes the int8 blocks of the output rows (B, H * D) for
    products with weights of that many bits and attaches them to the output
    (`int8_act.int8_activations`), when D is a power of two of whole blocks.
    """
    check_decode_attention_args(q, k, v, rows, positions, end, k_scales, v_scales)
    named = {"q": q, "k": k, "v": v, "k_scales": k_scales, "v_scales": v_scales}
    for name, tensor in named.items():
        if tensor is not None and tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous along its last dimension")
    batch, heads, head_dim = q.shape
    kv_heads = k.shape[1]
    if split is None:
        split = split_size(batch, kv_heads, end, _sm_count(q.device))
    elif split <= 0 or split % BLOCK_N:
        raise ValueError(f"split must be a positive multiple of {BLOCK_N}, got {split}")
    n_splits = triton.cdiv(end, split)
    group = heads // kv_heads
    block_d = triton.next_power_of_2(head_dim)
    stats_shape = (batch, heads, n_splits)
    maxes = torch.empty(stats_shape, dtype=torch.float32, device=q.device)  # (B, H, n_splits)
    sums = torch.empty(stats_shape, dtype=torch.float32, device=q.device)  # (B, H, n_splits)
    partial = torch.empty(  # (B, H, n_splits, D)
        (*stats_shape, head_dim), dtype=torch.float32, device=q.device
    )
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # (B, H, D)
    pdl = launch_options(q.device, batch)
    _split_kernel[(batch, kv_heads, n_splits)](  # never-read stand-ins for absent pointers
        q, k, v,
        k if k_scales is None else k_scales, v if v_scales is None else v_scales,
        positions if rows is None else rows, positions,
        maxes, sums, partial,
        end, split, n_splits, group, head_dim, scale * LOG2E,
        q.stride(0), q.stride(1),
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        *_scale_strides(k_scales), *_scale_strides(v_scales),
        HAS_ROWS=rows is not None, K_Q8=k.dtype == torch.int8, V_Q8=v.dtype == torch.int8,
        BLOCK_H=max(MIN_HEAD_ROWS, triton.next_power_of_2(group)), BLOCK_N=BLOCK_N,
        BLOCK_D=block_d, num_warps=4, num_stages=2, **pdl,
    )  # fmt: skip
    blocks = None
    if int8_bits and block_d == head_dim and head_dim % group_weights(int8_bits) == 0:
        blocks = empty_activations(batch, heads * head_dim, int8_bits, q.device)
    codes, scales, code_sums = (out,) * 3 if blocks is None else (blocks.codes, blocks.d, blocks.s)
    _combine_kernel[(batch, heads)](
        maxes, sums, partial, positions, out, codes, scales, code_sums,
        end, split, n_splits, head_dim, out.stride(0), out.stride(1),
        codes.stride(0), scales.stride(0),
        BLOCK_S=min(COMBINE_SPLITS, triton.next_power_of_2(n_splits)), BLOCK_D=block_d,
        Q_P=0 if blocks is None else 8 // int8_bits, num_warps=4, **pdl,
    )  # fmt: skip
    if blocks is not None:
        attach_int8(out, blocks)
    return out
