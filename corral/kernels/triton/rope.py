"""Rotary position embedding (GGUF "normal" mode) inside Triton kernels: the rotation of
a tile of head rows, the launch tiles and the argument checks. `kv_store.rope_and_store`
rotates queries and keys with it in the kernel that stores the keys and values.

For every token (b, t), head h and pair i < rope_dim / 2 of x (B, T, heads, D):

    (x[2i], x[2i+1]) -> (x[2i] cos - x[2i+1] sin, x[2i] sin + x[2i+1] cos)

with cos/sin = table[b or 0, t, i] (float32, `corral.model.layers.rope_tables` indexed by
position), computed in float32; dims >= rope_dim pass through unchanged. This is
`corral.model.layers.apply_rope` (~10 torch ops).

Tiles: a program owns one token and BLOCK_H heads. It loads a (BLOCK_H, BLOCK_D) tile of
whole head rows, contiguous along D so the compiler issues 16-byte vector loads, and
splits it into even and odd lanes in registers (reshape to (.., BLOCK_D / 2, 2),
tl.split) rather than loading x[2i] and x[2i+1] with stride-2 accesses; the cos/sin of
the token are loaded once per program and shared by its heads. Inputs may be strided
views (a slice of a fused QKV projection: any strides on B, T and heads, unit stride on
D), read in place.

Launch config (for an H100): BLOCK_D = next_power_of_2(D); BLOCK_H heads such that a
tile holds about 1024 values (8 heads of D = 128), with 4 warps: 8 values per thread, one
16-byte vector of fp16/bf16.
"""

import torch
import triton
import triton.language as tl

TILE = 1024  # values per program's tile (BLOCK_H * BLOCK_D), at most
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def rotate_tile(x, TAB, tab_off, sti, stc, HALF, BLOCK_D: tl.constexpr):
    """Rotate the pairs of x (BLOCK_H, BLOCK_D) float32 head rows of one token by the
    cos/sin at TAB + tab_off (pair i at + i * sti, sin at + stc); pairs >= HALF pass."""
    x0, x1 = tl.split(tl.reshape(x, (x.shape[0], BLOCK_D // 2, 2)))  # (BLOCK_H, BLOCK_D/2)
    i = tl.arange(0, BLOCK_D // 2)  # (BLOCK_D/2,) pair index
    rotated = i < HALF
    pair_off = tab_off + i * sti  # (BLOCK_D/2,)
    cos = tl.load(TAB + pair_off, mask=rotated, other=1.0)[None, :]  # (1, BLOCK_D/2)
    sin = tl.load(TAB + pair_off + stc, mask=rotated, other=0.0)[None, :]
    y0 = tl.where(rotated[None, :], x0 * cos - x1 * sin, x0)
    y1 = tl.where(rotated[None, :], x0 * sin + x1 * cos, x1)
    return tl.reshape(tl.join(y0, y1), (x.shape[0], BLOCK_D))  # pairs interleaved again


def check_heads(name: str, x: torch.Tensor) -> None:
    """ValueError unless x is a (B, T, heads, D) float tensor with a unit stride on D."""
    if x.dim() != 4:
        raise ValueError(f"{name} must be (B, T, heads, D), got shape {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        raise ValueError(f"{name}'s last dim (D) must be contiguous, got strides {x.stride()}")


def check_table(table: torch.Tensor, x: torch.Tensor) -> None:
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
