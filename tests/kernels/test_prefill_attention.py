"""Prefill attention (Triton kernel and torch twin) against torch's own attention.

The oracle is `torch.nn.functional.scaled_dot_product_attention` per sequence over its
whole cache row in float32, with an explicit causal-with-offset mask (token t of sequence
b sees entries 0..starts[b] + t); for a Q8_0 cache it attends over the values gguf-py
dequantizes from the same blocks. Shapes are irregular on purpose: T = 1, 5, 17, 40 new
tokens, query groups of 1, 3 and 4 heads (3 splits a token's heads across row tiles),
head dims 64, 80 and 128, starts at 0 and past it, different per sequence and crossing
key-tile boundaries, rows permuted or omitted. On CPU the kernel runs in Triton's
interpreter (see conftest.py), so caches stay at 128 positions or fewer.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from kernel_cases import assert_close_to
from test_decode_attention import cache

from corral.kernels.attention_reference import prefill_attention_reference
from corral.kernels.triton.attention import decode_attention
from corral.kernels.triton.prefill_attention import (
    FLOAT32_TILES,
    Tiles,
    prefill_attention,
    tile_config,
)

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
Q8 = torch.int8
IMPLEMENTATIONS = [prefill_attention, prefill_attention_reference]


@dataclass
class Problem:
    """T new tokens per sequence over a cache, and the float32 cache the oracle reads."""

    q: torch.Tensor  # (B, T, H, D)
    k: torch.Tensor  # (R, Hkv, S, D) float or int8 codes
    v: torch.Tensor  # (R, Hkv, S, D)
    k_scales: torch.Tensor | None  # (R, Hkv, S, D/32) float16 when k is int8
    v_scales: torch.Tensor | None
    k_float: torch.Tensor  # (R, Hkv, S, D) float32: what k holds (gguf-py's Q8_0 values)
    v_float: torch.Tensor
    rows: torch.Tensor | None  # (B,)
    starts: torch.Tensor  # (B,)

    def run(self, fn: Callable, device: str, **kwargs) -> torch.Tensor:
        """fn (the kernel or its twin) on this problem's tensors moved to `device`."""

        def to(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return fn(
            to(self.q), to(self.k), to(self.v), to(self.rows), to(self.starts),
            scale=self.q.shape[-1] ** -0.5, k_scales=to(self.k_scales),
            v_scales=to(self.v_scales), **kwargs,
        )  # fmt: skip


def tile_id(tiles: Tiles) -> str:
    """Test id of a tile shape: rows and key positions."""
    return f"m{tiles.block_m}-n{tiles.block_n}"


def problem(
    heads: int, kv_heads: int, head_dim: int, capacity: int, n_new: int, starts: list[int],
    q_dtype: torch.dtype, k_kind: torch.dtype, v_kind: torch.dtype,
    rows: list[int] | None = None, n_rows: int | None = None, seed: int = 0,
) -> Problem:  # fmt: skip
    """Random queries at `starts` over random caches of the given kinds (Q8 = int8 codes)."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(starts)
    shape = (n_rows or batch, kv_heads, capacity, head_dim)  # (R, Hkv, S, D)
    q = (2 * torch.randn(batch, n_new, heads, head_dim, generator=gen)).to(q_dtype)  # (B,T,H,D)
    k, k_scales, k_float = cache(shape, k_kind, gen)
    v, v_scales, v_float = cache(shape, v_kind, gen)
    row_ids = None if rows is None else torch.tensor(rows)
    return Problem(q, k, v, k_scales, v_scales, k_float, v_float, row_ids, torch.tensor(starts))


def sdpa(p: Problem) -> torch.Tensor:
    """The oracle: torch's attention per sequence over its whole cache row, masked causally
    from its start: query t sees entries 0..starts[b] + t."""
    n_new, head_dim = p.q.shape[1], p.q.shape[3]
    key_pos = torch.arange(p.k_float.shape[2])  # (S,)
    out = []
    for b, start in enumerate(p.starts.tolist()):
        row = b if p.rows is None else int(p.rows[b])
        query = p.q[b].float().transpose(0, 1)[None]  # (1, H, T, D)
        mask = key_pos[None, :] <= start + torch.arange(n_new)[:, None]  # (T, S)
        keys, values = p.k_float[row][None], p.v_float[row][None]  # (1, Hkv, S, D) each
        o = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=mask, scale=head_dim**-0.5, enable_gqa=True
        )  # (1, H, T, D)
        out.append(o[0].transpose(0, 1))  # (T, H, D)
    return torch.stack(out)  # (B, T, H, D)


CASES = {
    "mha-f32-t40-from-0-rows-none": problem(2, 2, 64, 64, 40, [0], F32, F32, F32),
    "gqa4-d128-f16-t17-permuted-rows": problem(
        8, 2, 128, 96, 17, [62, 0], F16, F16, F16, rows=[3, 1], n_rows=4
    ),
    "group3-d80-bf16-t5-three-seqs": problem(
        6, 2, 80, 128, 5, [100, 0, 61], BF16, BF16, BF16, rows=[2, 0, 1]
    ),
    "mqa4-t1-q8-k-f16-v": problem(4, 1, 64, 80, 1, [70, 0, 63], F16, Q8, F16, n_rows=4),
    "group3-d128-bf16-q-f16-k-q8-v-t17": problem(
        3, 1, 128, 100, 17, [9, 63], BF16, F16, Q8, rows=[1, 0], seed=1
    ),
    "gqa4-f32-q8-both-t40": problem(8, 2, 64, 128, 40, [55], F32, Q8, Q8, rows=[1], n_rows=2),
    "mha-f16-q-f32-cache-t5": problem(3, 3, 64, 128, 5, [123, 0], F16, F32, F32, seed=2),
    "group3-d80-f32-t40-two-seqs": problem(
        3, 1, 80, 120, 40, [80, 17], F32, BF16, F16, rows=[0, 2], n_rows=3, seed=3
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_kernel_against_sdpa(name: str, device: str) -> None:
    p = CASES[name]
    assert_close_to(p.run(prefill_attention, device), sdpa(p), p.q.dtype)


@pytest.mark.parametrize("name", CASES)
def test_twin_against_sdpa(name: str) -> None:
    p = CASES[name]
    assert_close_to(p.run(prefill_attention_reference, "cpu"), sdpa(p), p.q.dtype)


@pytest.mark.parametrize(
    "tiles",
    [Tiles(16, 64, 4, 3), Tiles(32, 32, 4, 3), Tiles(128, 16, 8, 3)],
    ids=tile_id,
)
def test_tile_shapes(tiles: Tiles, device: str) -> None:
    """120 rows (40 tokens x 3 heads) in 8 tiles whose edges split a token's heads, in 4,
    or in one tile with padding rows; key tiles of 64, 32 and 16 positions; the diagonal
    crosses key tiles at both starts."""
    p = problem(6, 2, 64, 128, 40, [0, 70], F16, Q8, F16, rows=[1, 0], seed=4)
    assert_close_to(p.run(prefill_attention, device, tiles=tiles), sdpa(p), F16)


@pytest.mark.parametrize("layout", ["fused-qkv", "head-major"])
def test_strided_queries(layout: str, device: str) -> None:
    """q a view of a fused QKV projection's output, or of a (B, H, T, D) tensor."""
    p = problem(8, 2, 64, 64, 17, [0, 30], F16, F16, F16, seed=5)
    batch, n_new, heads, head_dim = p.q.shape
    if layout == "fused-qkv":
        qkv = torch.randn(batch, n_new, (heads + 2 * 2) * head_dim).to(F16)  # (B, T, (H+2Hkv)D)
        qkv[..., : heads * head_dim] = p.q.flatten(2)  # (B, T, H*D)
        q = qkv[..., : heads * head_dim].view(batch, n_new, heads, head_dim)  # (B, T, H, D)
    else:
        q = p.q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, T, H, D), T stride D
    assert not q.is_contiguous() and torch.equal(q, p.q)
    out = replace(p, q=q).run(prefill_attention, device)
    assert out.is_contiguous()
    assert_close_to(out, sdpa(p), F16)


@pytest.mark.parametrize("kinds", [(F16, F16), (Q8, Q8), (Q8, F32)])
def test_garbage_past_positions_does_not_leak(kinds: tuple[torch.dtype, ...], device: str) -> None:
    """Entries past each sequence's last new token and rows no sequence reads hold NaN and
    inf; every key tile holding the last token is partly poisoned."""
    args = (8, 2, 64, 128, 17, [0, 40, 100], F16, *kinds)
    clean = problem(*args, rows=[2, 0, 4], n_rows=5, seed=6)
    dirty = problem(*args, rows=[2, 0, 4], n_rows=5, seed=6)
    for stored, scales in ((dirty.k, dirty.k_scales), (dirty.v, dirty.v_scales)):
        target = stored if scales is None else scales  # a Q8_0 cache: poison the scales
        target[3] = float("nan")  # a row no sequence reads
        for row, start in zip(dirty.rows.tolist(), dirty.starts.tolist(), strict=True):
            end = start + 17  # entries end.. are stale
            target[row, :, end::2] = float("nan")
            target[row, :, end + 1 :: 2] = float("inf")
    out = dirty.run(prefill_attention, device)
    assert torch.isfinite(out).all()
    assert torch.equal(out, clean.run(prefill_attention, device))
    twin = dirty.run(prefill_attention_reference, "cpu")
    assert_close_to(twin, sdpa(clean), F16)


def test_chunks_match_the_whole_prompt(device: str) -> None:
    """Chunked prefill (17 then 23 tokens) gives what one 40-token step gives."""
    p = problem(8, 2, 64, 64, 40, [0, 0], F16, Q8, Q8, rows=[1, 0], seed=7)
    whole = p.run(prefill_attention, device)
    first = replace(p, q=p.q[:, :17]).run(prefill_attention, device)  # (B, 17, H, D)
    rest = replace(p, q=p.q[:, 17:], starts=torch.tensor([17, 17])).run(prefill_attention, device)
    assert_close_to(torch.cat([first, rest], dim=1), whole.float().cpu(), F16)


def test_one_token_matches_decode(device: str) -> None:
    """T = 1 is the decode kernel's problem: both agree."""
    p = CASES["mqa4-t1-q8-k-f16-v"]
    q, k, v, starts, k_scales = (t.to(device) for t in (p.q[:, 0], p.k, p.v, p.starts, p.k_scales))
    end = p.k.shape[2]
    decoded = decode_attention(q, k, v, None, starts, end, scale=64**-0.5, k_scales=k_scales)
    assert_close_to(p.run(prefill_attention, device)[:, 0], decoded.float().cpu(), F16)


def test_tile_policy() -> None:
    """16-bit queries: short steps take one tile of just enough rows, long ones 128-row
    tiles while that leaves a program per SM, else 64; float32: the decode kernel's tiles."""
    sms = 132
    assert tile_config(1, 8, 1, 2, sms) == Tiles(16, 64, 4, 3)
    assert tile_config(1, 8, 20, 2, sms) == Tiles(32, 64, 4, 3)
    assert tile_config(1, 8, 64, 2, sms) == Tiles(64, 64, 4, 3)
    assert tile_config(1, 8, 2048, 2, sms) == Tiles(64, 64, 4, 3)  # 128 programs of 128
    assert tile_config(1, 8, 8192, 2, sms) == Tiles(128, 64, 8, 3)  # 512
    assert tile_config(4, 8, 2048, 2, sms) == Tiles(128, 64, 8, 3)  # 512
    assert tile_config(1, 8, 8192, 4, sms) == FLOAT32_TILES == Tiles(16, 32, 4, 2)


def refused(**changes) -> dict:
    """Valid arguments of a small problem with `changes` applied."""
    p = problem(4, 2, 64, 40, 5, [3, 35], F16, F16, F16)
    args = dict(
        q=p.q, k=p.k, v=p.v, rows=None, starts=p.starts, scale=0.125, k_scales=None,
        v_scales=None,
    )  # fmt: skip
    args.update(changes)
    return args


def q8_cache(head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero int8 codes (2, 2, 40, head_dim) and scales, whatever head_dim is."""
    return torch.zeros(2, 2, 40, head_dim, dtype=Q8), torch.ones(2, 2, 40, 2, dtype=F16)


BAD_ARGS = {
    "q without T": (dict(q=torch.zeros(2, 4, 64, dtype=F16)), r"q must be \(B, T, H, D\)"),
    "float64 q": (dict(q=torch.zeros(2, 5, 4, 64, dtype=torch.float64)), "q must be"),
    "head dim 72": (
        dict(q=torch.zeros(2, 5, 4, 72), k=torch.zeros(2, 2, 40, 72), v=torch.zeros(2, 2, 40, 72)),
        "72",
    ),
    "q8 head dim 48": (
        dict(
            q=torch.zeros(2, 5, 4, 48),
            k=q8_cache(48)[0],
            k_scales=q8_cache(48)[1],
            v=torch.zeros(2, 2, 40, 48),
        ),
        "48",
    ),
    "heads not a multiple": (dict(q=torch.zeros(2, 5, 5, 64)), "5 query heads"),
    "v shape": (dict(v=torch.zeros(2, 2, 41, 64, dtype=F16)), "v has shape"),
    "k head dim": (dict(k=torch.zeros(2, 2, 40, 32, dtype=F16)), "k has shape"),
    "int8 without scales": (dict(k=q8_cache(64)[0]), "k_scales"),
    "scales for a float cache": (dict(v_scales=q8_cache(64)[1]), "v_scales"),
    "no new tokens": (dict(q=torch.zeros(2, 0, 4, 64, dtype=F16)), "T=0"),
    "more tokens than the cache": (dict(q=torch.zeros(2, 41, 4, 64, dtype=F16)), "T=41"),
    "starts shape": (dict(starts=torch.tensor([1, 2, 3])), "starts"),
    "float starts": (dict(starts=torch.tensor([1.0, 2.0])), "starts"),
    "rows shape": (dict(rows=torch.tensor([0])), "rows"),
    "rows=None past R": (dict(q=torch.zeros(3, 5, 4, 64, dtype=F16)), "rows=None"),
}


@pytest.mark.parametrize("fn", IMPLEMENTATIONS, ids=["triton", "twin"])
@pytest.mark.parametrize("case", BAD_ARGS)
def test_refuses(fn: Callable, case: str) -> None:
    changes, message = BAD_ARGS[case]
    with pytest.raises(ValueError, match=message):
        fn(**refused(**changes))


@pytest.mark.parametrize("starts", [[3, 36], [-1, 0]])
def test_twin_refuses_starts_off_the_cache(starts: list[int]) -> None:
    """The kernel takes starts on trust (no host sync); its twin checks them."""
    with pytest.raises(ValueError, match="starts must lie in 0..35"):
        prefill_attention_reference(**refused(starts=torch.tensor(starts)))


@pytest.mark.parametrize("tiles", [Tiles(48, 64, 4, 3), Tiles(64, 8, 4, 3)], ids=tile_id)
def test_kernel_refuses_tiles_off_the_dot(tiles: Tiles) -> None:
    with pytest.raises(ValueError, match="tile sizes"):
        prefill_attention(**refused(), tiles=tiles)


@pytest.mark.parametrize("name", ["q", "k"])
def test_kernel_refuses_tensors_strided_along_d(name: str) -> None:
    args = refused()
    strided = args[name].transpose(-1, -2).contiguous().transpose(-1, -2)  # same shape
    with pytest.raises(ValueError, match=f"{name} must be contiguous"):
        prefill_attention(**{**args, name: strided})
