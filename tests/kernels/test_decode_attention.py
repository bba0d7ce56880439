"""Decode attention (Triton kernel and torch twin) against torch's own attention.

The oracle is `torch.nn.functional.scaled_dot_product_attention` over each sequence's
cache row sliced to positions 0..positions[b], in float32; for a Q8_0 cache it attends
over the values gguf-py dequantizes from the same blocks. Shapes are irregular on
purpose: query groups of 1, 3 and 4 heads, head dims 64, 80, 96 and 128, positions at 0,
1, chunk and tile boundaries and end - 1 in one batch, `end` not a multiple of a tile,
rows permuted, repeated or omitted. On CPU the kernel runs in Triton's interpreter (see
conftest.py), so caches stay short.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants
from kernel_cases import assert_close_to

from corral.kernels.act_quant import quantize_activations_reference
from corral.kernels.attention_reference import decode_attention_reference
from corral.kernels.kv_q8 import dequantize_q8_0, quantize_q8_0
from corral.kernels.triton.attention import BLOCK_N, MIN_SPLIT, decode_attention, split_size
from corral.kernels.triton.int8_act import int8_activations

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
Q8 = torch.int8
IMPLEMENTATIONS = [decode_attention, decode_attention_reference]


def gguf_dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """gguf-py's float32 values of Q8_0 blocks given as codes (..., D), scales (..., D/32)."""
    d_bytes = scales.numpy().view(np.uint8).reshape(*scales.shape, 2)  # (..., D/32, 2)
    q_bytes = codes.numpy().view(np.uint8).reshape(*scales.shape, 32)  # (..., D/32, 32)
    blocks = np.concatenate([d_bytes, q_bytes], axis=-1)  # (..., D/32, 34): ggml's block_q8_0
    values = gguf_quants.dequantize(blocks.reshape(-1, 34), GGMLQuantizationType.Q8_0)  # (n, 32)
    values = np.ascontiguousarray(values, dtype=np.float32)
    return torch.from_numpy(values).reshape(codes.shape)  # (..., D)


@dataclass
class Problem:
    """One batch of decode queries over a cache, and the float32 cache the oracle reads."""

    q: torch.Tensor  # (B, H, D)
    k: torch.Tensor  # (R, Hkv, S, D) float or int8 codes
    v: torch.Tensor  # (R, Hkv, S, D)
    k_scales: torch.Tensor | None  # (R, Hkv, S, D/32) float16 when k is int8
    v_scales: torch.Tensor | None
    k_float: torch.Tensor  # (R, Hkv, S, D) float32: what k holds
    v_float: torch.Tensor
    rows: torch.Tensor | None  # (B,)
    positions: torch.Tensor  # (B,)

    def run(self, fn: Callable, device: str, end: int, **kwargs) -> torch.Tensor:
        """fn (the kernel or its twin) on this problem's tensors moved to `device`."""

        def to(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return fn(
            to(self.q), to(self.k), to(self.v), to(self.rows), to(self.positions), end,
            scale=self.q.shape[-1] ** -0.5, k_scales=to(self.k_scales),
            v_scales=to(self.v_scales), **kwargs,
        )  # fmt: skip


def cache(shape: tuple[int, ...], kind: torch.dtype, gen: torch.Generator):
    """(stored cache, its Q8_0 scales or None, the float32 values it holds), random."""
    values = torch.randn(shape, generator=gen)
    if kind == Q8:
        codes, scales = quantize_q8_0(values)
        return codes, scales, gguf_dequantize(codes, scales)
    stored = values.to(kind)
    return stored, None, stored.float()


def problem(
    heads: int, kv_heads: int, head_dim: int, capacity: int, positions: list[int],
    q_dtype: torch.dtype, k_kind: torch.dtype, v_kind: torch.dtype,
    rows: list[int] | None = None, n_rows: int | None = None, seed: int = 0,
) -> Problem:  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    batch = len(positions)
    shape = (n_rows or batch, kv_heads, capacity, head_dim)  # (R, Hkv, S, D)
    q = (2 * torch.randn(batch, heads, head_dim, generator=gen)).to(q_dtype)  # (B, H, D)
    k, k_scales, k_float = cache(shape, k_kind, gen)
    v, v_scales, v_float = cache(shape, v_kind, gen)
    row_ids = None if rows is None else torch.tensor(rows)
    return Problem(q, k, v, k_scales, v_scales, k_float, v_float, row_ids, torch.tensor(positions))


def sdpa(p: Problem) -> torch.Tensor:
    """The oracle: torch's attention per sequence over its rows' entries 0..positions[b]."""
    out = []
    for b, pos in enumerate(p.positions.tolist()):
        row = b if p.rows is None else int(p.rows[b])
        keys = p.k_float[row, :, : pos + 1][None]  # (1, Hkv, n, D)
        values = p.v_float[row, :, : pos + 1][None]  # (1, Hkv, n, D)
        query = p.q[b].float()[None, :, None, :]  # (1, H, 1, D)
        o = F.scaled_dot_product_attention(
            query, keys, values, scale=p.q.shape[-1] ** -0.5, enable_gqa=True
        )  # (1, H, 1, D)
        out.append(o[0, :, 0])  # (H, D)
    return torch.stack(out)  # (B, H, D)


# name -> (problem, end): every positions[b] < end <= S
CASES = {
    "mha-f32-rows-none": (
        problem(4, 4, 64, 200, [199], F32, F32, F32),
        200,
    ),
    "gqa4-f16-permuted-rows": (
        problem(8, 2, 128, 260, [0, 202, 37], F16, F16, F16, rows=[4, 0, 2], n_rows=5),
        203,
    ),
    "group3-d80-bf16-repeated-rows": (
        problem(6, 2, 80, 150, [1, 0, 149, 64, 95], BF16, BF16, BF16, [3, 0, 3, 1, 6], 7),
        150,
    ),
    "group3-f16-q-f32-cache": (
        problem(9, 3, 64, 140, [63, 31, 131], F16, F32, F32, rows=[2, 1, 0]),
        133,
    ),
    "mqa-d96-bf16-q-f16-k-bf16-v": (
        problem(4, 1, 96, 100, [32, 99], BF16, F16, BF16),
        100,
    ),
    "q8-k-f16-v": (
        problem(8, 2, 64, 130, [129, 0, 65], F16, Q8, F16, rows=[1, 3, 2], n_rows=4),
        130,
    ),
    "f16-k-q8-v": (
        problem(4, 1, 128, 120, [118], BF16, F16, Q8, seed=1),
        119,
    ),
    "q8-both-d96-f32": (
        problem(6, 2, 96, 110, [33, 1, 108, 64, 0], F32, Q8, Q8, rows=[5, 4, 3, 2, 1], n_rows=6),
        109,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_kernel_against_sdpa(name: str, device: str) -> None:
    p, end = CASES[name]
    assert_close_to(p.run(decode_attention, device, end), sdpa(p), p.q.dtype)


@pytest.mark.parametrize("name", CASES)
def test_twin_against_sdpa(name: str) -> None:
    p, end = CASES[name]
    assert_close_to(p.run(decode_attention_reference, "cpu", end), sdpa(p), p.q.dtype)


@pytest.mark.parametrize("split", [BLOCK_N, 96, 256])
def test_chunk_sizes(split: int, device: str) -> None:
    """One tile per chunk, three tiles (not a power of two), one chunk for all of `end`."""
    p, end = CASES["gqa4-f16-permuted-rows"]
    assert_close_to(p.run(decode_attention, device, end, split=split), sdpa(p), p.q.dtype)


@pytest.mark.parametrize("kinds", [(F16, F16), (Q8, Q8)])
def test_output_does_not_depend_on_end(kinds: tuple[torch.dtype, ...], device: str) -> None:
    """`end` only fixes the grid: the tightest bound and the whole cache agree."""
    p = problem(8, 2, 64, 300, [120, 5, 71], F32, *kinds, seed=2)
    tight = p.run(decode_attention, device, end=121)
    loose = p.run(decode_attention, device, end=300)
    assert_close_to(tight, sdpa(p), F32)
    assert_close_to(loose, sdpa(p), F32)
    assert_close_to(tight, loose.float().cpu(), F32)


@pytest.mark.parametrize("kinds", [(F16, F16), (Q8, Q8), (Q8, F32)])
def test_garbage_past_positions_does_not_leak(kinds: tuple[torch.dtype, ...], device: str) -> None:
    """Entries past each position and rows no sequence reads hold NaN and inf."""
    clean = problem(4, 2, 64, 100, [0, 70, 99, 31], F16, *kinds, rows=[2, 0, 4, 1], n_rows=5)
    dirty = problem(4, 2, 64, 100, [0, 70, 99, 31], F16, *kinds, rows=[2, 0, 4, 1], n_rows=5)
    for stored, scales in ((dirty.k, dirty.k_scales), (dirty.v, dirty.v_scales)):
        target = stored if scales is None else scales  # a Q8_0 cache: poison the scales
        target[3] = float("nan")  # a row no sequence reads
        for row, pos in zip(dirty.rows.tolist(), dirty.positions.tolist(), strict=True):
            target[row, :, pos + 1 :: 2] = float("nan")
            target[row, :, pos + 2 :: 2] = float("inf")
    out = dirty.run(decode_attention, device, end=100)
    assert torch.isfinite(out).all()
    assert torch.equal(out, clean.run(decode_attention, device, end=100))
    twin = dirty.run(decode_attention_reference, "cpu", end=100)
    assert_close_to(twin, sdpa(clean), F16)


def test_q8_dequantization_matches_gguf() -> None:
    """The twin's Q8_0 dequantization is gguf-py's, bit for bit."""
    codes, scales = quantize_q8_0(
        torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(3))
    )
    expected = gguf_dequantize(codes, scales)
    assert torch.equal(dequantize_q8_0(codes, scales, torch.float32), expected)


def refused(**changes) -> dict:
    """Valid arguments of a small problem with `changes` applied."""
    p = problem(4, 2, 64, 40, [3, 39], F16, F16, F16)
    args = dict(
        q=p.q, k=p.k, v=p.v, rows=None, positions=p.positions, end=40, scale=0.125,
        k_scales=None, v_scales=None,
    )  # fmt: skip
    args.update(changes)
    return args


def q8_cache(head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero int8 codes (2, 2, 40, head_dim) and scales, whatever head_dim is."""
    return torch.zeros(2, 2, 40, head_dim, dtype=Q8), torch.ones(2, 2, 40, 2, dtype=F16)


BAD_ARGS = {
    "head dim 72": (
        dict(q=torch.zeros(2, 4, 72), k=torch.zeros(2, 2, 40, 72), v=torch.zeros(2, 2, 40, 72)),
        "72",
    ),
    "q8 head dim 48": (
        dict(
            q=torch.zeros(2, 4, 48),
            k=q8_cache(48)[0],
            k_scales=q8_cache(48)[1],
            v=torch.zeros(2, 2, 40, 48),
        ),
        "48",
    ),
    "heads not a multiple": (dict(q=torch.zeros(2, 5, 64)), "5 query heads"),
    "v shape": (dict(v=torch.zeros(2, 2, 41, 64, dtype=F16)), "v has shape"),
    "k head dim": (dict(k=torch.zeros(2, 2, 40, 32, dtype=F16)), "k has shape"),
    "int8 without scales": (dict(k=q8_cache(64)[0]), "k_scales"),
    "scales for a float cache": (dict(v_scales=q8_cache(64)[1]), "v_scales"),
    "float64 cache": (dict(k=torch.zeros(2, 2, 40, 64, dtype=torch.float64)), "k must be"),
    "positions shape": (dict(positions=torch.tensor([1, 2, 3])), "positions"),
    "rows shape": (dict(rows=torch.tensor([0])), "rows"),
    "end past the cache": (dict(end=41), "end"),
    "end zero": (dict(end=0), "end"),
}


@pytest.mark.parametrize("fn", IMPLEMENTATIONS, ids=["triton", "twin"])
@pytest.mark.parametrize("case", BAD_ARGS)
def test_refuses(fn: Callable, case: str) -> None:
    changes, message = BAD_ARGS[case]
    with pytest.raises(ValueError, match=message):
        fn(**refused(**changes))


def test_kernel_refuses_a_split_off_the_tile() -> None:
    with pytest.raises(ValueError, match="split"):
        decode_attention(**refused(), split=BLOCK_N + 16)


def test_kernel_refuses_a_cache_strided_along_d() -> None:
    k = torch.zeros(2, 2, 64, 40, dtype=F16).transpose(2, 3)  # (R, Hkv, S, D), D stride S
    with pytest.raises(ValueError, match="contiguous"):
        decode_attention(**refused(k=k))


def test_split_policy() -> None:
    """About four phase-1 programs per SM, chunks a power of two of at least MIN_SPLIT."""
    assert split_size(batch=1, kv_heads=8, end=4096, sm_count=132) == 64  # 512 programs
    assert split_size(batch=64, kv_heads=8, end=4096, sm_count=132) == 2048  # 1024
    assert split_size(batch=1, kv_heads=2, end=32768, sm_count=132) == 128  # 512
    assert split_size(batch=1, kv_heads=8, end=100, sm_count=132) == MIN_SPLIT


@pytest.mark.parametrize("bits", [4, 8])
def test_int8_blocks_of_the_output(bits: int, device: str) -> None:
    """With int8_bits, phase 2 also writes the int8 blocks of each output row (B, H * D),
    bit-exact with quantizing the stored output (the torch twin of `int8_act`), and
    attaches them to the output; the output itself is unchanged."""
    p, end = CASES["gqa4-f16-permuted-rows"]
    plain = p.run(decode_attention, device, end)
    out = p.run(decode_attention, device, end, int8_bits=bits)
    assert torch.equal(out, plain)
    rows = out.reshape(out.shape[0], -1)  # (B, H * D)
    blocks = int8_activations(out, bits)  # attached: no quantizing launch would be needed
    want = quantize_activations_reference(rows.cpu(), bits)
    assert torch.equal(blocks.codes.cpu(), want.codes) and torch.equal(blocks.d.cpu(), want.d)
    assert torch.equal(blocks.s.cpu(), want.s)
