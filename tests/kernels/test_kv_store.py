"""`rope_and_store` (new tokens' queries and keys rotated, keys and values written into
the KV cache, one kernel) against the torch path KVCache.write, whose q8_0 blocks equal
gguf-py's quantizer
(tests/model/test_kv_cache_q8.py): every cache type, keys and values of different types,
one token per sequence (decode) or several (prefill) at shared or per-sequence positions,
rows given or not, strided views, irregular head dims, more heads than one program's
tile, and ties of the rounding. The writes are checked with the identity rotation (cos 1,
sin 0: exact in float32); with a real one, the stored keys are rotated exactly as the
queries, whose rotation tests/kernels/test_triton_norm_rope.py checks."""

import pytest
import torch

from corral.kernels.triton.kv_store import rope_and_store
from corral.model.kv_cache import KVCache


def caches(
    key_type: str, dim: int, device: str, value_type: str | None = None, heads: int = 3
) -> tuple[KVCache, KVCache]:
    """Two equal caches of 5 rows, `heads` KV heads, 12 positions holding random old entries."""
    types = (key_type, value_type or key_type)
    shape = (5, heads, 12, dim)
    made = [KVCache(5, 12, heads, dim, torch.float32, torch.device(device), types) for _ in "ab"]
    old = torch.randn(shape, generator=torch.Generator().manual_seed(dim)).to(device)
    everywhere = torch.arange(12, device=device)[None]  # (1, S)
    for cache in made:
        cache.write(None, everywhere, old, old)
    return made[0], made[1]


def assert_same(ours: KVCache, torch_path: KVCache) -> None:
    for mine, reference in zip(
        [*ours.k.parts, *ours.v.parts], [*torch_path.k.parts, *torch_path.v.parts], strict=True
    ):
        assert torch.equal(mine, reference)


def store_unrotated(
    keys: torch.Tensor,
    values: torch.Tensor,
    key_parts: tuple[torch.Tensor, ...],
    value_parts: tuple[torch.Tensor, ...],
    rows: torch.Tensor | None,
    positions: torch.Tensor,
) -> None:
    """`rope_and_store` of keys (as q too) and values under the identity rotation."""
    batch, n_tokens, _, dim = keys.shape
    table = torch.zeros(batch, n_tokens, dim // 2, 2, device=keys.device)  # (B, T, D/2, 2)
    table[..., 0] = 1.0  # cos 1, sin 0
    rotated = rope_and_store(keys, keys, values, table, key_parts, value_parts, rows, positions)
    assert torch.equal(rotated, keys)


def stored_both_ways(
    ours: KVCache,
    torch_path: KVCache,
    keys: torch.Tensor,
    values: torch.Tensor,
    rows: torch.Tensor | None,
    positions: torch.Tensor,
) -> None:
    """keys, values (B, T, Hkv, D) at positions (B|1, T): by the kernel into `ours`, by
    KVCache.write (which takes (B, Hkv, T, D)) into `torch_path`."""
    store_unrotated(keys, values, ours.k.parts, ours.v.parts, rows, positions)
    torch_path.write(rows, positions, keys.transpose(1, 2), values.transpose(1, 2))
    assert_same(ours, torch_path)


@pytest.mark.parametrize("types", ["f32", "f16", "bf16", "q8_0", "q8_0/f16", "f16/q8_0"])
@pytest.mark.parametrize("with_rows", [False, True])
def test_one_token_per_sequence_equals_the_torch_path(types: str, with_rows: bool, device: str):
    dim = 64
    key_type, _, value_type = types.partition("/")  # "q8_0/f16": keys q8_0, values f16
    ours, torch_path = caches(key_type, dim, device, value_type or None)
    gen = torch.Generator().manual_seed(3)
    new = torch.randn(3, 1, 3, dim, generator=gen).to(device)  # (B, 1, Hkv, D)
    new[0, 0, 1, :32] = 0  # an all-zero block
    edge = torch.tensor([0.5, -0.5, 1.5, 127.0], device=device)  # codes at rounding edges
    new[1, 0, 2, :4] = edge * (new[1, 0, 2, 4:32].abs().max() / 127)
    rows = torch.tensor([4, 0, 2], device=device) if with_rows else None
    positions = torch.tensor([[11], [0], [5]], device=device)  # (B, 1)
    stored_both_ways(ours, torch_path, new, -new, rows, positions)


@pytest.mark.parametrize("types", ["f16", "q8_0", "q8_0/bf16"])
@pytest.mark.parametrize("shared", [False, True])
def test_several_tokens_per_sequence_equal_the_torch_path(types: str, shared: bool, device: str):
    key_type, _, value_type = types.partition("/")
    ours, torch_path = caches(key_type, 64, device, value_type or None, heads=19)
    gen = torch.Generator().manual_seed(5)
    qkv = torch.randn(2, 7, 3 * 19 * 64, generator=gen).to(device)  # a fused projection
    keys = qkv[..., 19 * 64 : 38 * 64].view(2, 7, 19, 64)  # (B, T, Hkv, D) strided views
    values = qkv[..., 38 * 64 :].view(2, 7, 19, 64)
    offsets = torch.arange(7, device=device)[None]  # (1, T)
    positions = offsets + (2 if shared else torch.tensor([[4], [1]], device=device))  # (B|1, T)
    rows = torch.tensor([3, 1], device=device)
    stored_both_ways(ours, torch_path, keys, values, rows, positions)


@pytest.mark.parametrize(("cache_type", "dim"), [("f16", 80), ("q8_0", 96)])
def test_head_dims_that_are_not_powers_of_two(cache_type: str, dim: int, device: str):
    ours, torch_path = caches(cache_type, dim, device)
    new = torch.randn(2, 3, 3, dim, generator=torch.Generator().manual_seed(4)).to(device)
    positions = torch.tensor([[3, 4, 5], [7, 8, 9]], device=device)
    stored_both_ways(ours, torch_path, new, 2 * new, None, positions)


@pytest.mark.parametrize("types", ["f16", "q8_0", "q8_0/bf16"])
def test_rope_and_store_stores_the_keys_rotated_like_the_queries(types: str, device: str):
    key_type, _, value_type = types.partition("/")
    ours, torch_path = caches(key_type, 64, device, value_type or None)
    gen = torch.Generator().manual_seed(6)
    keys, values = (torch.randn(2, 3, 3, 64, generator=gen).half().to(device) for _ in "kv")
    table = torch.randn(2, 3, 32, 2, generator=gen).to(device)  # (B, T, rope_dim/2, 2)
    positions = torch.tensor([[2, 3, 4], [9, 10, 11]], device=device)  # (B, T)
    rows = torch.tensor([1, 4], device=device)
    rotated = rope_and_store(keys, keys, values, table, ours.k.parts, ours.v.parts, rows, positions)
    torch_path.write(rows, positions, rotated.transpose(1, 2), values.transpose(1, 2))
    assert_same(ours, torch_path)
    assert not torch.equal(rotated, keys)


def test_mismatched_shapes_are_refused(device: str):
    cache, _ = caches("f16", 64, device)
    new = torch.zeros(1, 1, 2, 64, device=device)
    with pytest.raises(ValueError, match="does not hold vectors"):
        parts = cache.k.parts, cache.v.parts
        store_unrotated(new, new, *parts, None, torch.zeros(1, 1, device=device))
    new = torch.zeros(1, 2, 3, 64, device=device)
    with pytest.raises(ValueError, match="positions"):
        parts = cache.k.parts, cache.v.parts
        store_unrotated(new, new, *parts, None, torch.zeros(1, 3, device=device))
