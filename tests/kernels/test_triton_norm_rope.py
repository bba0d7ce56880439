"""The fused RMSNorm and RoPE kernels (corral.kernels.triton.norm, and RoPE as
corral.kernels.triton.kv_store.rope_and_store applies it to queries and to the keys it
stores) against
independent references: torch.nn.functional.rms_norm and a complex-number rotation
written from the RoPE formula, and against the model's own torch code
(corral.model.layers.RMSNorm, apply_rope). Irregular shapes (widths that are not powers
of two, partial rotary dims, 3 or 9 heads), per-sequence and shared position tables,
strided views, float32/float16/bfloat16.

Tolerances: float32 results within 1e-5 relative; float16/bfloat16 results at most 1 ulp
from the float32 reference rounded to their dtype (both sides compute in float32, so
they differ by rounding only).
"""

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from corral.config import ModelConfig
from corral.kernels.triton import norm, rope
from corral.kernels.triton.kv_store import rope_and_store
from corral.kernels.triton.norm import add_rms_norm, rms_norm
from corral.model import layers

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EPS = 1e-5


def randn(*shape: int, dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).to(dtype).to(device)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many representable values of their 16-bit dtype lie between a and b."""
    bits = torch.stack((a, b)).view(torch.int16).int()  # (2, ...) sign-magnitude patterns
    ordered = torch.where(bits < 0, -(bits & 0x7FFF), bits)  # monotonic in the value
    return (ordered[0] - ordered[1]).abs()


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """`actual` (dtype) against `expected` computed in float32 (then cast, for 16-bit
    dtypes): float32 within 1e-5 relative, float16/bfloat16 within 1 ulp."""
    assert actual.dtype == dtype and actual.shape == expected.shape
    actual, expected = actual.cpu(), expected.cpu().float()
    if dtype == torch.float32:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    else:
        worst = ulp_distance(actual, expected.to(dtype)).max().item()
        assert worst <= 1, f"{worst} ulps from the float32 reference"


def spacing(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The gap between neighbouring `dtype` values at each of `values` (float64)."""
    finfo = torch.finfo(dtype)
    return torch.exp2(torch.floor(torch.log2(values.abs().clamp(min=finfo.tiny)))) * finfo.eps


# ---------------------------------------------------------------------------- RMSNorm


def norm_references(x: torch.Tensor, weight: torch.Tensor, eps: float) -> list[torch.Tensor]:
    """torch's F.rms_norm in float32 (cast to x's dtype) and the model's RMSNorm."""
    width = x.shape[-1]
    functional = F.rms_norm(x.cpu().float(), [width], weight.cpu().float(), eps).to(x.dtype)
    module = layers.RMSNorm(width, eps)
    with torch.no_grad():
        module.weight.copy_(weight.cpu().float())
        return [functional, module(x.cpu())]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("shape", "block"),
    [
        ((3, 5, 576), None),  # SmolLM2's width in one block
        ((1, 1, 100), None),  # decode, masked tail
        ((2, 17, 100), 32),  # two-pass loop, masked last step
        ((3, 1, 576), 64),  # two-pass loop, whole steps
    ],
)
def test_rms_norm(
    shape: tuple[int, ...], block: int | None, dtype: torch.dtype, device: str
) -> None:
    x = randn(*shape, dtype=dtype, device=device, seed=1)
    weight = randn(shape[-1], dtype=torch.float32, device=device, seed=2) * 0.5 + 1
    actual = rms_norm(x, weight, EPS, block=block)
    for expected in norm_references(x, weight, EPS):
        assert_matches(actual, expected, dtype)


@pytest.mark.parametrize(
    ("dtype", "weight_dtype"),
    [
        (torch.float16, torch.bfloat16),
        (torch.float32, torch.float16),
        (torch.bfloat16, torch.float64),
    ],
)
def test_rms_norm_weight_dtypes(dtype: torch.dtype, weight_dtype: torch.dtype, device: str) -> None:
    x = randn(2, 3, 96, dtype=dtype, device=device, seed=3)
    weight = randn(96, dtype=weight_dtype, device=device, seed=4)
    actual = rms_norm(x, weight, 1e-6)
    for expected in norm_references(x, weight, 1e-6):
        assert_matches(actual, expected, dtype)


@pytest.mark.parametrize("width", [norm.MAX_BLOCK, norm.MAX_BLOCK + 100])
def test_rms_norm_wide_rows(width: int, device: str) -> None:
    """The widest row held in one block, and one past it (the default two-pass loop)."""
    x = randn(2, width, dtype=torch.float16, device=device, seed=5)
    weight = randn(width, dtype=torch.float32, device=device, seed=6)
    actual = rms_norm(x, weight, EPS)
    for expected in norm_references(x, weight, EPS):
        assert_matches(actual, expected, torch.float16)


def test_rms_norm_strided_views(device: str) -> None:
    """A slice of a wider projection (row stride 3E) and a transposed batch (its leading
    dims cannot be flattened without a copy) give contiguous results of their shape."""
    weight = randn(100, dtype=torch.float32, device=device, seed=7)
    fused = randn(3, 5, 300, dtype=torch.bfloat16, device=device, seed=8)
    sliced = fused[..., 100:200]  # (3, 5, 100), strides (1500, 300, 1)
    transposed = randn(5, 3, 100, dtype=torch.bfloat16, device=device, seed=9).transpose(0, 1)
    for x in (sliced, transposed):  # (3, 5, 100) each
        actual = rms_norm(x, weight, EPS)
        assert actual.is_contiguous()
        for expected in norm_references(x, weight, EPS):
            assert_matches(actual, expected, torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("block", [None, 32])
def test_add_rms_norm(block: int | None, dtype: torch.dtype, device: str) -> None:
    """s is bit-for-bit torch's x + residual (x a strided slice), the norm is of s."""
    fused = randn(3, 5, 200, dtype=dtype, device=device, seed=10)
    x = fused[..., 100:]  # (3, 5, 100), row stride 200
    residual = randn(3, 5, 100, dtype=dtype, device=device, seed=11) * 4
    weight = randn(100, dtype=torch.bfloat16, device=device, seed=12)
    total, normed = add_rms_norm(x, residual, weight, EPS, block=block)
    assert total.dtype == dtype and torch.equal(total, x + residual)
    for expected in norm_references(x + residual, weight, EPS):
        assert_matches(normed, expected, dtype)


@pytest.mark.parametrize(
    ("width", "block", "expected"),
    [
        (576, None, (1024, 2, True)),
        (4096, None, (4096, 8, True)),
        (8192, None, (8192, 16, True)),
        (norm.MAX_BLOCK, None, (norm.MAX_BLOCK, 16, True)),
        (norm.MAX_BLOCK + 1, None, (norm.LOOP_BLOCK, 8, False)),
        (100, 32, (32, 1, False)),
        (100, 256, (128, 1, True)),
    ],
)
def test_norm_launch_config(width: int, block: int | None, expected: tuple) -> None:
    assert norm.launch_config(width, block) == expected


NORM_MISUSE: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], object], str]] = {
    "weight width": (lambda x, w: rms_norm(x, w[:-1], EPS), "weight has shape"),
    "weight rank": (lambda x, w: rms_norm(x, w[None], EPS), "weight has shape"),
    "weight dtype": (lambda x, w: rms_norm(x, w.int(), EPS), "weight must be a float"),
    "x dtype": (lambda x, w: rms_norm(x.int(), w, EPS), "x must be float32"),
    "x scalar": (lambda x, w: rms_norm(x[0, 0, 0], w, EPS), "non-empty last dim"),
    "x last stride": (lambda x, w: rms_norm(x.mT, w[:3], EPS), "last dim must be contiguous"),
    "block": (lambda x, w: rms_norm(x, w, EPS, block=48), "power of two"),
    "residual shape": (lambda x, w: add_rms_norm(x, x[:, :2], w, EPS), "residual has shape"),
    "residual dtype": (lambda x, w: add_rms_norm(x, x.half(), w, EPS), "residual is"),
}


@pytest.mark.parametrize("case", NORM_MISUSE)
def test_norm_rejects(case: str, device: str) -> None:
    call, message = NORM_MISUSE[case]
    x = randn(4, 3, 8, dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match=message):
        call(x, torch.ones(8, device=device))


# ---------------------------------------------------------------------------- RoPE

BASE = 10000.0


def rope_table(positions: torch.Tensor, rope_dim: int, scale: float, device: str) -> torch.Tensor:
    """The model's cos/sin table of `positions` (B|1, T): (B|1, T, rope_dim/2, 2) float32."""
    config = ModelConfig(
        n_vocab=32, n_embd=64, n_layer=1, n_ff=64, n_head=1, n_head_kv=1, head_dim=64,
        rope_dim=rope_dim, rope_freq_base=BASE, rope_scale=scale, rms_eps=EPS,
        context_length=64,
    )  # fmt: skip
    return layers.rope_tables(config, 64, torch.device("cpu"))[positions].to(device)


def rope_complex(
    x: torch.Tensor, positions: torch.Tensor, rope_dim: int, scale: float
) -> torch.Tensor:
    """float64 RoPE from the formula: pairs (x[2i], x[2i+1]) as complex numbers times
    exp(j theta), theta = (p / scale) * BASE^(-2i / rope_dim); dims >= rope_dim kept."""
    half = rope_dim // 2
    inv_freq = BASE ** (-2 * torch.arange(half, dtype=torch.float64) / rope_dim)  # (rd/2,)
    theta = positions.double()[..., None] / scale * inv_freq  # (B|1, T, rd/2)
    x64 = x.cpu().double()
    pairs = x64[..., :rope_dim].reshape(*x.shape[:-1], half, 2)  # (B, T, heads, rd/2, 2)
    turned = torch.view_as_complex(pairs) * torch.exp(1j * theta)[:, :, None]  # (B, T, heads, rd/2)
    rotated = torch.view_as_real(turned).flatten(-2)  # (B, T, heads, rope_dim)
    return torch.cat((rotated, x64[..., rope_dim:]), dim=-1)


def check_rope(
    actual: torch.Tensor,
    x: torch.Tensor,
    table: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
) -> None:
    """actual = RoPE of x: within 1 ulp of the model's apply_rope (same float32 table);
    within 1 ulp plus the float32 table's own rounding of the float64 formula."""
    assert actual.shape == x.shape and actual.is_contiguous()
    assert_matches(actual, layers.apply_rope(x.cpu(), table.cpu()), x.dtype)
    expected = rope_complex(x, positions, table.shape[2] * 2, scale)
    slack = 1e-5 * x.abs().max().item()  # float32 angles up to 24 rad: ~3e-6 each
    error = (actual.cpu().double() - expected).abs()
    assert (error <= spacing(expected, x.dtype) + slack).all(), f"max error {error.max():.3g}"


def stored_by_rope_and_store(
    q: torch.Tensor, table: torch.Tensor, keys: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rotated q, keys and values read back from the cache) from one `rope_and_store` of
    q and `keys` (default: q) (B, T, heads, D), keys as values too, into a float cache of
    their dtype, token t at position t. No checks: it also runs inside a graph capture."""
    keys = q if keys is None else keys
    batch, n_tokens, heads, dim = keys.shape if keys.dim() == 4 else (1, 1, 1, 1)  # misuse
    key_cache, value_cache = (
        torch.zeros(batch, heads, n_tokens, dim, dtype=keys.dtype, device=keys.device) for _ in "kv"
    )  # (B, Hkv, S = T, D) each
    positions = torch.arange(n_tokens, device=keys.device)[None]  # (1, T)
    q_out = rope_and_store(q, keys, keys, table, (key_cache,), (value_cache,), None, positions)
    return q_out, key_cache.transpose(1, 2), value_cache.transpose(1, 2)  # (B, T, H|Hkv, D)


def rotated_by_store(
    q: torch.Tensor, table: torch.Tensor, keys: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rotated q, rotated keys read back from the cache), as `stored_by_rope_and_store`;
    the values, stored unrotated, are checked on the way."""
    q_out, stored_keys, stored_values = stored_by_rope_and_store(q, table, keys)
    assert torch.equal(stored_values, q if keys is None else keys)
    return q_out, stored_keys


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """RoPE of x by the kernel, as a query; the same rotation of x as keys must match."""
    q_out, stored = rotated_by_store(x, table)
    assert torch.equal(stored, q_out)
    return q_out


def positions_of(batch: int, n_tokens: int, shared: bool) -> torch.Tensor:
    """(1, T) consecutive positions, or (B, T) runs at per-sequence offsets, all < 24."""
    start = torch.tensor([[3]]) if shared else torch.arange(batch)[:, None] * 5 + 1  # (B|1, 1)
    return start + torch.arange(n_tokens)[None, :]  # (B|1, T)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("batch", "n_tokens", "heads", "dim", "rope_dim", "shared", "scale"),
    [
        (3, 1, 9, 64, 64, False, 1.0),  # decode, one position per sequence
        (1, 17, 3, 32, 32, True, 2.0),  # prefill, linear scaling
        (3, 5, 9, 40, 16, True, 1.0),  # partial rotary, D not a power of 2, shared table
        (2, 5, 3, 64, 32, False, 1.0),  # partial rotary, per-sequence table
    ],
)
def test_apply_rope(
    batch: int,
    n_tokens: int,
    heads: int,
    dim: int,
    rope_dim: int,
    shared: bool,
    scale: float,
    dtype: torch.dtype,
    device: str,
) -> None:
    x = randn(batch, n_tokens, heads, dim, dtype=dtype, device=device, seed=heads + dim)
    positions = positions_of(batch, n_tokens, shared)
    table = rope_table(positions, rope_dim, scale, device)
    check_rope(apply_rope(x, table), x, table, positions, scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rope_of_a_fused_projection(dtype: torch.dtype, device: str) -> None:
    """q and k read in place from slices of one fused QKV output, 9 and 3 heads."""
    batch, n_tokens, n_q, n_kv, dim = 3, 5, 9, 3, 32
    qkv = randn(batch, n_tokens, (n_q + 2 * n_kv) * dim, dtype=dtype, device=device, seed=13)
    q = qkv[..., : n_q * dim].view(batch, n_tokens, n_q, dim)  # (B, T, H, D)
    k = qkv[..., n_q * dim : (n_q + n_kv) * dim].view(batch, n_tokens, n_kv, dim)  # (B, T, Hkv, D)
    positions = positions_of(batch, n_tokens, shared=False)
    table = rope_table(positions, dim, 1.0, device)
    q_out, k_out = rotated_by_store(q, table, k)
    check_rope(q_out, q, table, positions, 1.0)
    check_rope(k_out.contiguous(), k, table, positions, 1.0)


def test_apply_rope_permuted_view(device: str) -> None:
    """x viewed from a (B, heads, T, D) buffer: strides in every order but D's."""
    buffer = randn(2, 3, 5, 16, dtype=torch.float16, device=device, seed=14)  # (B, heads, T, D)
    x = buffer.transpose(1, 2)  # (B, T, heads, D)
    positions = positions_of(2, 5, shared=True)
    table = rope_table(positions, 16, 1.0, device)
    check_rope(apply_rope(x, table), x, table, positions, 1.0)


def test_prefill_512_tokens(device: str) -> None:
    """T = 512: a grid of 512 tokens for both kernels (small heads to keep it quick)."""
    x = randn(1, 512, 2, 8, dtype=torch.bfloat16, device=device, seed=15)
    positions = torch.arange(512)[None, :] % 24  # (1, T), kept < 24 for the tolerance
    table = rope_table(positions, 8, 1.0, device)
    check_rope(apply_rope(x, table), x, table, positions, 1.0)
    rows = x.view(1, 512, 16)  # (B, T, E)
    weight = torch.ones(16, device=device)
    for expected in norm_references(rows, weight, EPS):
        assert_matches(rms_norm(rows, weight, EPS), expected, torch.bfloat16)


@pytest.mark.parametrize(
    ("dim", "heads", "expected"),
    [(128, 32, (8, 128, 4)), (64, 9, (16, 64, 4)), (40, 3, (4, 64, 1)), (16, 2, (2, 16, 1))],
)
def test_rope_launch_config(dim: int, heads: int, expected: tuple[int, int, int]) -> None:
    assert rope.launch_config(dim, heads) == expected


def _table(batch: int, n_tokens: int, half: int) -> torch.Tensor:
    return torch.zeros(batch, n_tokens, half, 2)  # (B|1, T, rd/2, 2)


ROPE_MISUSE: dict[str, tuple[Callable[[torch.Tensor], object], str]] = {
    "x rank": (lambda x: apply_rope(x[0], _table(3, 5, 4)), r"q must be \(B, T, heads, D\)"),
    "x dtype": (lambda x: apply_rope(x.int(), _table(3, 5, 4)), "q must be float32"),
    "x D stride": (lambda x: apply_rope(x.mT, _table(3, 5, 1)), "last dim .D. must be"),
    "table rank": (lambda x: apply_rope(x, torch.zeros(5, 4, 2)), "table must be"),
    "table pairs": (lambda x: apply_rope(x, torch.zeros(3, 5, 4, 3)), "table must be"),
    "table T": (lambda x: apply_rope(x, _table(3, 4, 4)), "table has shape"),
    "table B": (lambda x: apply_rope(x, _table(2, 5, 4)), "table has shape"),
    "rope_dim > D": (lambda x: apply_rope(x, _table(1, 5, 5)), "rope_dim 10 is larger"),
    "table dtype": (lambda x: apply_rope(x, _table(1, 5, 4).half()), "table must be float32"),
    "k T": (lambda x: rotated_by_store(x, _table(1, 5, 4), x[:, :4]), "and keys"),
    "k D": (lambda x: rotated_by_store(x, _table(1, 5, 2), x[..., :6]), "and keys"),
    "k dtype": (lambda x: rotated_by_store(x, _table(1, 5, 4), x.half()), "keys torch.float16"),
}


@pytest.mark.parametrize("case", ROPE_MISUSE)
def test_rope_rejects(case: str) -> None:
    call, message = ROPE_MISUSE[case]
    with pytest.raises(ValueError, match=message):
        call(torch.zeros(3, 5, 2, 8))  # (B, T, heads, D)


# ---------------------------------------------------------------------------- CUDA graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay() -> None:
    """The RoPE-and-store and both norm kernels captured in one graph and replayed on
    new input values."""
    qkv = torch.empty(2, 1, 7 * 64, dtype=torch.float16, device="cuda")  # static inputs
    residual = torch.empty(2, 1, 576, dtype=torch.float16, device="cuda")
    hidden = torch.empty(2, 1, 576, dtype=torch.float16, device="cuda")
    table = torch.empty(2, 1, 32, 2, device="cuda")
    weight = torch.rand(576, device="cuda") + 0.5

    def step() -> tuple[torch.Tensor, ...]:
        q = qkv[..., : 5 * 64].view(2, 1, 5, 64)  # (B, T, H, D)
        k = qkv[..., 5 * 64 :].view(2, 1, 2, 64)  # (B, T, Hkv, D)
        total, normed = add_rms_norm(hidden, residual, weight, EPS)
        stored = stored_by_rope_and_store(q, table, k)  # no checks: they sync the stream
        return (*stored, total, normed, rms_norm(hidden, weight, EPS))

    step()  # compiles every kernel before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    for seed in (16, 17):
        qkv.copy_(randn(*qkv.shape, dtype=torch.float16, device="cuda", seed=seed))
        residual.copy_(randn(*residual.shape, dtype=torch.float16, device="cuda", seed=seed + 2))
        hidden.copy_(randn(*hidden.shape, dtype=torch.float16, device="cuda", seed=seed + 4))
        table.copy_(rope_table(positions_of(2, 1, shared=False) + seed, 64, 1.0, "cuda"))
        graph.replay()
        assert torch.equal(outputs[2], qkv[..., 5 * 64 :].view(2, 1, 2, 64))  # values unrotated
        for replayed, eager in zip(outputs, step(), strict=True):
            assert torch.equal(replayed, eager)
