"""`store_token` (one decode token's keys and values into the KV cache, one kernel) against
the torch path KVCache.write, whose q8_0 blocks equal gguf-py's quantizer
(tests/model/test_kv_cache_q8.py): every cache type, keys and values of different types,
rows given or not, irregular head dims, and ties of the rounding."""

import pytest
import torch

from corral.kernels.triton.kv_store import store_token
from corral.model.kv_cache import KVCache


def caches(
    key_type: str, dim: int, device: str, value_type: str | None = None
) -> tuple[KVCache, KVCache]:
    """Two equal caches of 5 rows, 3 KV heads, 12 positions holding random old entries."""
    types = (key_type, value_type or key_type)
    made = [KVCache(5, 12, 3, dim, torch.float32, torch.device(device), types) for _ in range(2)]
    old = torch.randn(5, 3, 12, dim, generator=torch.Generator().manual_seed(dim)).to(device)
    everywhere = torch.arange(12, device=device)[None]  # (1, S)
    for cache in made:
        cache.write(None, everywhere, old, old)
    return made[0], made[1]


@pytest.mark.parametrize("types", ["f32", "f16", "bf16", "q8_0", "q8_0/f16", "f16/q8_0"])
@pytest.mark.parametrize("with_rows", [False, True])
def test_store_equals_the_torch_path(types: str, with_rows: bool, device: str):
    dim = 64
    key_type, _, value_type = types.partition("/")  # "q8_0/f16": keys q8_0, values f16
    ours, torch_path = caches(key_type, dim, device, value_type or None)
    gen = torch.Generator().manual_seed(3)
    new = torch.randn(3, 3, dim, generator=gen).to(device)
    new[0, 1, :32] = 0  # an all-zero block
    edge = torch.tensor([0.5, -0.5, 1.5, 127.0], device=device)  # codes at rounding edges
    new[1, 2, :4] = edge * (new[1, 2, 4:32].abs().max() / 127)
    rows = torch.tensor([4, 0, 2], device=device) if with_rows else None
    positions = torch.tensor([11, 0, 5], device=device)
    store_token(new, -new, ours.k.parts, ours.v.parts, rows, positions)
    torch_path.write(rows, positions[:, None], new[:, :, None], -new[:, :, None])
    for mine, reference in zip(
        [*ours.k.parts, *ours.v.parts], [*torch_path.k.parts, *torch_path.v.parts], strict=True
    ):
        assert torch.equal(mine, reference)


@pytest.mark.parametrize(("cache_type", "dim"), [("f16", 80), ("q8_0", 96)])
def test_head_dims_that_are_not_powers_of_two(cache_type: str, dim: int, device: str):
    ours, torch_path = caches(cache_type, dim, device)
    new = torch.randn(2, 3, dim, generator=torch.Generator().manual_seed(4)).to(device)
    positions = torch.tensor([3, 7], device=device)
    store_token(new, 2 * new, ours.k.parts, ours.v.parts, None, positions)
    torch_path.write(None, positions[:, None], new[:, :, None], 2 * new[:, :, None])
    for mine, reference in zip(
        [*ours.k.parts, *ours.v.parts], [*torch_path.k.parts, *torch_path.v.parts], strict=True
    ):
        assert torch.equal(mine, reference)


def test_mismatched_shapes_are_refused(device: str):
    cache, _ = caches("f16", 64, device)
    with pytest.raises(ValueError, match="does not hold vectors"):
        new = torch.zeros(1, 2, 64, device=device)
        store_token(new, new, cache.k.parts, cache.v.parts, None, torch.zeros(1, device=device))
