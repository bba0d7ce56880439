"""Attention over the KV cache in plain torch: the twins of the Triton attention kernels.

Decode (`corral.kernels.triton.attention`): one new token per sequence attends to its
cached keys and values 0..positions[b]. Prefill (`corral.kernels.triton.prefill_attention`):
T new tokens per sequence, at positions starts[b]..starts[b]+T-1, each attend causally to
the entries up to its own position, the earlier cached prefix included. The cache holds R
rows (one per slot of a static KV cache), each (Hkv, S, D); a batch picks its rows with
`rows`. Query head h reads KV head h // (H // Hkv) (grouped-query attention). A Q8_0
cache (int8 codes + float16 scales, `kv_q8`) is dequantized first.

`check_decode_attention_args` and `check_prefill_attention_args` are the contracts both
implementations enforce: they look only at shapes and dtypes, never at values, so the
Triton wrappers stay free of host syncs.
"""

import torch
import torch.nn.functional as F

from corral.kernels.kv_q8 import Q8_BLOCK, check_head_dim, dequantize_q8_0

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIM_MULTIPLE = 16  # tl.dot needs every dimension of a tile >= 16


def _check_cache(
    name: str, cache: torch.Tensor, scales: torch.Tensor | None, shape: tuple[int, ...]
) -> None:
    """Raise ValueError unless `cache` is a float cache or Q8_0 codes with their `scales`."""
    if tuple(cache.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(cache.shape)}, expected {shape}")
    if cache.dtype == torch.int8:
        check_head_dim(shape[-1])
        scale_shape = (*shape[:-1], shape[-1] // Q8_BLOCK)
        if scales is None or tuple(scales.shape) != scale_shape:
            got = None if scales is None else tuple(scales.shape)
            raise ValueError(f"int8 {name} needs {name}_scales of shape {scale_shape}, got {got}")
        if scales.dtype != torch.float16:
            raise ValueError(f"{name}_scales must be float16, got {scales.dtype}")
    elif cache.dtype in FLOAT_DTYPES:
        if scales is not None:
            raise ValueError(f"{name}_scales given for a {cache.dtype} {name} cache")
    else:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or int8, got {cache.dtype}")


def _check_kv(
    batch: int,
    heads: int,
    head_dim: int,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor | None,
    k_scales: torch.Tensor | None,
    v_scales: torch.Tensor | None,
) -> int:
    """Raise ValueError unless the caches and `rows` fit `heads` query heads of `head_dim`
    values for `batch` sequences; return the cache length S."""
    if k.dim() != 4:
        raise ValueError(f"k must be (R, Hkv, S, D), got shape {tuple(k.shape)}")
    n_rows, kv_heads, capacity, _ = k.shape
    if head_dim % HEAD_DIM_MULTIPLE:
        raise ValueError(f"head dim must be a multiple of {HEAD_DIM_MULTIPLE}, got {head_dim}")
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} KV heads")
    shape = (n_rows, kv_heads, capacity, head_dim)
    _check_cache("k", k, k_scales, shape)
    _check_cache("v", v, v_scales, shape)
    if rows is None:
        if batch > n_rows:
            raise ValueError(f"rows=None needs B <= R, got B={batch}, R={n_rows}")
    elif tuple(rows.shape) != (batch,) or rows.is_floating_point():
        raise ValueError(f"rows must be ({batch},) integers, got {rows.dtype} {tuple(rows.shape)}")
    return capacity


def _check_per_sequence(name: str, tensor: torch.Tensor, batch: int) -> None:
    """Raise ValueError unless `tensor` holds one integer per sequence: (batch,)."""
    if tuple(tensor.shape) != (batch,) or tensor.is_floating_point():
        raise ValueError(
            f"{name} must be ({batch},) integers, got {tensor.dtype} {tuple(tensor.shape)}"
        )


def check_decode_attention_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor | None,
    positions: torch.Tensor,
    end: int,
    k_scales: torch.Tensor | None,
    v_scales: torch.Tensor | None,
) -> None:
    """Raise ValueError unless the arguments of `decode_attention` fit together.

    Shapes and dtypes only: the values of `rows` and `positions` are the caller's promise
    (rows in 0..R-1, positions in 0..end-1), checked by the reference, not by the kernel.
    """
    if q.dim() != 3 or q.dtype not in FLOAT_DTYPES:
        raise ValueError(f"q must be (B, H, D) float16/bfloat16/float32, got {q.dtype} {q.shape}")
    batch, heads, head_dim = q.shape
    capacity = _check_kv(batch, heads, head_dim, k, v, rows, k_scales, v_scales)
    _check_per_sequence("positions", positions, batch)
    if not 0 < end <= capacity:
        raise ValueError(f"end must be in 1..{capacity} (the cache length), got {end}")


def _float_rows(
    cache: torch.Tensor, scales: torch.Tensor | None, rows: torch.Tensor
) -> torch.Tensor:
    """Rows `rows` of a float or Q8_0 cache as float32: (B, Hkv, S, D)."""
    if cache.dtype == torch.int8:
        return dequantize_q8_0(cache[rows], scales[rows], torch.float32)
    return cache[rows].float()


def decode_attention_reference(
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
) -> torch.Tensor:
    """Attention of each sequence's new token over its cache entries 0..positions[b].

    q (B, H, D); k, v (R, Hkv, S, D) float or int8 Q8_0 codes (with `k_scales` /
    `v_scales` (R, Hkv, S, D // 32) float16); rows (B,) cache row per sequence (None:
    0..B-1); every positions[b] < end. Computed in float32, returned (B, H, D) in q's dtype.
    """
    check_decode_attention_args(q, k, v, rows, positions, end, k_scales, v_scales)
    batch, heads, _ = q.shape
    group = heads // k.shape[1]
    lengths = positions.cpu().long() + 1
    if lengths.min() < 1 or lengths.max() > end:
        raise ValueError(f"positions must lie in 0..{end - 1}, got {positions.tolist()}")
    row_ids = torch.arange(batch, device=k.device) if rows is None else rows.to(k.device).long()
    keys = _float_rows(k, k_scales, row_ids)  # (B, Hkv, S, D)
    values = _float_rows(v, v_scales, row_ids)  # (B, Hkv, S, D)
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)  # (B, H, D)
    for b in range(batch):
        n = int(lengths[b])
        kb = keys[b, :, :n].repeat_interleave(group, dim=0)  # (H, n, D)
        vb = values[b, :, :n].repeat_interleave(group, dim=0)  # (H, n, D)
        scores = (kb @ q[b].float()[:, :, None]).squeeze(-1) * scale  # (H, n)
        weights = torch.softmax(scores, dim=-1)  # (H, n)
        out[b] = (weights[:, None, :] @ vb).squeeze(1)  # (H, D)
    return out.to(q.dtype)


def check_prefill_attention_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor | None,
    starts: torch.Tensor,
    k_scales: torch.Tensor | None,
    v_scales: torch.Tensor | None,
) -> None:
    """Raise ValueError unless the arguments of `prefill_attention` fit together.

    Shapes and dtypes only: the values of `rows` and `starts` are the caller's promise
    (rows in 0..R-1, starts in 0..S-T), checked by the reference, not by the kernel.
    """
    if q.dim() != 4 or q.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"q must be (B, T, H, D) float16/bfloat16/float32, got {q.dtype} {tuple(q.shape)}"
        )
    batch, n_new, heads, head_dim = q.shape
    capacity = _check_kv(batch, heads, head_dim, k, v, rows, k_scales, v_scales)
    if not 0 < n_new <= capacity:
        raise ValueError(f"q must hold 1..{capacity} new tokens (the cache length), got T={n_new}")
    _check_per_sequence("starts", starts, batch)


def prefill_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: torch.Tensor | None,
    starts: torch.Tensor,
    *,
    scale: float,
    k_scales: torch.Tensor | None = None,
    v_scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of T new tokens per sequence over their cache rows.

    q (B, T, H, D); k, v (R, Hkv, S, D) float or int8 Q8_0 codes (with `k_scales` /
    `v_scales` (R, Hkv, S, D // 32) float16); rows (B,) cache row per sequence (None:
    0..B-1); starts (B,): token t of sequence b sits at position starts[b] + t and attends
    to entries 0..starts[b] + t, every starts[b] in 0..S-T. Per sequence, SDPA in float32
    over the dequantized entries 0..starts[b] + T - 1 (those past it are never read);
    returned (B, T, H, D) in q's dtype.
    """
    check_prefill_attention_args(q, k, v, rows, starts, k_scales, v_scales)
    batch, n_new, heads, _ = q.shape
    capacity = k.shape[2]
    first = starts.cpu().long()
    if first.min() < 0 or first.max() > capacity - n_new:
        raise ValueError(f"starts must lie in 0..{capacity - n_new}, got {starts.tolist()}")
    row_ids = torch.arange(batch, device=k.device) if rows is None else rows.to(k.device).long()
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)  # (B, T, H, D)
    for b in range(batch):
        n = int(first[b]) + n_new  # entries 0..n-1: the prefix and the new tokens
        row = row_ids[b : b + 1]  # (1,)
        keys = _float_rows(k, k_scales, row)[:, :, :n]  # (1, Hkv, n, D)
        values = _float_rows(v, v_scales, row)[:, :, :n]  # (1, Hkv, n, D)
        query = q[b].float().transpose(0, 1)[None]  # (1, H, T, D)
        query_pos = torch.arange(n - n_new, n, device=q.device)  # (T,)
        key_pos = torch.arange(n, device=q.device)  # (n,)
        mask = key_pos[None, :] <= query_pos[:, None]  # (T, n)
        o = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=mask, scale=scale, enable_gqa=heads != k.shape[1]
        )  # (1, H, T, D)
        out[b] = o[0].transpose(0, 1)  # (T, H, D)
    return out.to(q.dtype)
