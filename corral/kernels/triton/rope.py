"""Fused rotary position embedding (GGUF "normal" mode) of queries and keys: one launch.

For every token (b, t), head h and pair i < rope_dim / 2 of x (B, T, heads, D):

    (x[2i], x[2i+1]) -> (x[2i] cos - x[2i+1] sin, x[2i] sin + x[2i+1] cos)

with cos/sin = table[b or 0, t, i] (float32, `corral.model.layers.rope_tables` indexed by
position), computed in float32 and rounded to x's dtype; dims >= rope_dim pass through
unchanged. This is `corral.model.layers.apply_rope`, ~10 torch ops, in one kernel, and
`apply_rope_qk` does queries and keys in the same launch.

Kernel: a program owns one token and BLOCK_H heads of one tensor (grid: B * T tokens by
the query head blocks followed by the key head blocks). It loads a (BLOCK_H, BLOCK_D)
tile of whole head rows, contiguous along D so the compiler issues 16-byte vector loads,
and splits it into even and odd lanes in registers (reshape to (.., BLOCK_D / 2, 2),
tl.split) rather than loading x[2i] and x[2i+1] with stride-2 accesses; the cos/sin of
the token are loaded once per program and shared by its heads. The output is written
contiguous, (B, T, heads, D).

Inputs may be strided views (a slice of a fused QKV projection: any strides on B, T and
heads, unit stride on D), read in place: no .contiguous() copy.

Launch config (for an H100): BLOCK_D = next_power_of_2(D); BLOCK_H heads such that a
tile holds about 1024 values (8 heads of D = 128), with 4 warps: 8 values per thread, one
16-byte vector of fp16/bf16. Decode of a 7B model (32 query and 8 key heads of 128) is
then 5 programs per token, prefill of 512 tokens 2560. No value is read on the host and
the grid depends on shapes only, so the launch is CUDA-graph safe.
"""

import torch
import triton
import triton.language as tl

from corral.kernels.triton.pdl import launch_options, release_dependents, wait_for_inputs

TILE = 1024  # values per program's tile (BLOCK_H * BLOCK_D), at most
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _rope_heads(
    X, OUT, TAB, b, t, token, h0, n_heads, sxb, sxt, sxh, stb, stt, sti, stc, D, HALF,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Rotate heads h0 .. h0 + BLOCK_H of token (b, t) of X into the contiguous OUT."""
    hs = h0 + tl.arange(0, BLOCK_H)  # (BLOCK_H,)
    ds = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    mask = (hs < n_heads)[:, None] & (ds < D)[None, :]  # (BLOCK_H, BLOCK_D)
    x_off = b * sxb + t * sxt + hs[:, None] * sxh + ds[None, :]  # (BLOCK_H, BLOCK_D)
    x = tl.load(X + x_off, mask=mask, other=0.0).to(tl.float32)
    x0, x1 = tl.split(tl.reshape(x, (BLOCK_H, BLOCK_D // 2, 2)))  # (BLOCK_H, BLOCK_D/2) each
    i = tl.arange(0, BLOCK_D // 2)  # (BLOCK_D/2,) pair index
    rotated = i < HALF
    tab_off = b * stb + t * stt + i * sti  # (BLOCK_D/2,)
    cos = tl.load(TAB + tab_off, mask=rotated, other=1.0)[None, :]  # (1, BLOCK_D/2)
    sin = tl.load(TAB + tab_off + stc, mask=rotated, other=0.0)[None, :]
    y0 = tl.where(rotated[None, :], x0 * cos - x1 * sin, x0)
    y1 = tl.where(rotated[None, :], x0 * sin + x1 * cos, x1)
    y = tl.reshape(tl.join(y0, y1), (BLOCK_H, BLOCK_D))  # (BLOCK_H, BLOCK_D), pairs interleaved
    out_off = (token * n_heads + hs[:, None]) * D + ds[None, :]  # (BLOCK_H, BLOCK_D)
    tl.store(OUT + out_off, y.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(
    Q, K, QO, KO, TAB, T, n_q, n_k, q_blocks,
    sqb, sqt, sqh, skb, skt, skh, stb, stt, sti, stc, D, HALF,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Program (token, head block): query heads for the first q_blocks, then key heads."""
    release_dependents(PDL)
    wait_for_inputs(PDL)
    token = tl.program_id(0).to(tl.int64)
    b = token // T
    t = token % T
    hb = tl.program_id(1)
    if hb < q_blocks:
        _rope_heads(
            Q, QO, TAB, b, t, token, hb * BLOCK_H, n_q, sqb, sqt, sqh, stb, stt, sti, stc,
            D, HALF, BLOCK_H, BLOCK_D,
        )  # fmt: skip
    else:
        _rope_heads(
            K, KO, TAB, b, t, token, (hb - q_blocks) * BLOCK_H, n_k, skb, skt, skh,
            stb, stt, sti, stc, D, HALF, BLOCK_H, BLOCK_D,
        )  # fmt: skip


def _check_input(name: str, x: torch.Tensor) -> None:
    """ValueError unless x is a (B, T, heads, D) float tensor with a unit stride on D."""
    if x.dim() != 4:
        raise ValueError(f"{name} must be (B, T, heads, D), got shape {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        raise ValueError(f"{name}'s last dim (D) must be contiguous, got strides {x.stride()}")


def _check_table(table: torch.Tensor, x: torch.Tensor) -> None:
    """ValueError unless table is a (B or 1, T, rope_dim/2, 2) float32 table for x."""
    batch, n_tokens, _, dim = x.shape
    if table.dim() != 4 or table.shape[3] != 2:
        raise ValueError(
            f"table must be (B or 1, T, rope_dim/2, 2), got shape {tuple(table.shape)}"
        )
    if table.shape[0] not in (1, batch) or table.shape[1] != n_tokens:
        raise ValueError(
            f"table has shape {tuple(table.shape)}, expected ({batch} or 1, {n_tokens}, ...)"
        )
    if 2 * table.shape[2] > dim:
        raise ValueError(f"rope_dim {2 * table.shape[2]} is larger than the head dim {dim}")
    if table.dtype != torch.float32:
        raise ValueError(f"table must be float32, got {table.dtype}")
    if table.device != x.device:
        raise ValueError(f"table is on {table.device}, x on {x.device}")


def launch_config(dim: int, heads: int) -> tuple[int, int, int]:
    """(BLOCK_H, BLOCK_D, num_warps) for heads of `dim` values; see the module docstring."""
    block_d = triton.next_power_of_2(dim)
    block_h = min(triton.next_power_of_2(heads), max(1, TILE // block_d))
    num_warps = min(4, max(1, block_h * block_d // 256))
    return block_h, block_d, num_warps


def apply_rope_qk(
    q: torch.Tensor, k: torch.Tensor, table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`corral.model.layers.apply_rope` of q and of k, in one kernel launch.

    q: (B, T, H, D), k: (B, T, Hkv, D), same dtype (float32/float16/bfloat16) and device,
    any strides on B, T and heads but a contiguous D (views of a fused QKV output are
    read in place); table: (B or 1, T, rope_dim/2, 2) float32 cos/sin, rope_dim <= D.
    Returns new contiguous tensors of q's and k's shapes and dtype. Raises ValueError
    for a bad shape, dtype or device.
    """
    _check_input("q", q)
    _check_input("k", k)
    if k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"k has shape {tuple(k.shape)}, expected (B, T, Hkv, D) = "
            f"({q.shape[0]}, {q.shape[1]}, Hkv, {q.shape[3]}) like q's {tuple(q.shape)}"
        )
    if k.dtype != q.dtype or k.device != q.device:
        raise ValueError(f"k is {k.dtype} on {k.device}, q {q.dtype} on {q.device}")
    _check_table(table, q)
    return _launch(q, k, table)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """`corral.model.layers.apply_rope` in one kernel: x (B, T, heads, D), as in
    :func:`apply_rope_qk`, rotated by table (B or 1, T, rope_dim/2, 2); returns a new
    contiguous tensor of x's shape and dtype. Raises ValueError for a bad shape, dtype or
    device."""
    _check_input("x", x)
    _check_table(table, x)
    return _launch(x, None, table)[0]


def _launch(
    q: torch.Tensor, k: torch.Tensor | None, table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotated q, rotated k): one launch; without k, q's output twice (no key blocks)."""
    batch, n_tokens, n_q, dim = q.shape
    n_k = 0 if k is None else k.shape[2]
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = q_out if k is None else torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if batch * n_tokens == 0 or n_q + n_k == 0:
        return q_out, k_out
    block_h, block_d, num_warps = launch_config(dim, max(n_q, n_k))
    q_blocks = triton.cdiv(n_q, block_h)
    grid = (batch * n_tokens, q_blocks + triton.cdiv(n_k, block_h))
    k_in, k_dst = (q, q_out) if k is None else (k, k_out)
    table_batch_stride = table.stride(0) if table.shape[0] == batch else 0
    _rope_kernel[grid](
        q, k_in, q_out, k_dst, table, n_tokens, n_q, n_k, q_blocks,
        q.stride(0), q.stride(1), q.stride(2), k_in.stride(0), k_in.stride(1), k_in.stride(2),
        table_batch_stride, table.stride(1), table.stride(2), table.stride(3),
        dim, table.shape[2], BLOCK_H=block_h, BLOCK_D=block_d, num_warps=num_warps,
        **launch_options(q.device, batch * n_tokens),
    )  # fmt: skip
    return q_out, k_out
