"""The q8_0 KV cache (llama.cpp's -ctk/-ctv q8_0) against independent references.

- Storage: codes and scales equal gguf-py's Q8_0 quantizer byte for byte, and reads equal
  gguf-py's dequantizer.
- Model: logits with q8_0 keys and/or values equal transformers' LlamaForCausalLM run with
  a cache that rounds every new key/value vector through gguf-py's Q8_0 quantizer (blocks
  taken in GGUF's interleaved-RoPE element order, which is what corral stores), over a
  whole sequence, through the cache one token at a time, and for a batch of sequences at
  different positions in their own cache rows.
"""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants
from transformers import DynamicCache

from corral.formats.gguf import GGUFFile
from corral.kernels.kv_q8 import dequantize_q8_0, quantize_q8_0
from corral.loader import build_model, load_gguf_model
from corral.model.kv_cache import KVCache
from tests.fixtures.tiny_gguf import write_llama_gguf
from tests.fixtures.tiny_hf import tiny_llama

Q8_0 = GGMLQuantizationType.Q8_0
TOLERANCE = 1e-4
# A vector within float rounding of a Q8_0 rounding boundary can get the neighbouring code
# in one implementation and not the other (seen: about one code in 10^4 values). Its
# effect on the logits stays below FLIP_TOLERANCE, far below what q8_0 rounding itself
# moves them (max > 0.08, mean > 0.01 in every case here), and the mean error below
# TOLERANCE.
FLIP_TOLERANCE = 0.02


def assert_equal_up_to_code_flips(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """actual, expected (T, V): max error below FLIP_TOLERANCE, mean error below TOLERANCE."""
    error = (actual - expected).abs()
    assert error.max().item() < FLIP_TOLERANCE
    assert error.mean().item() < TOLERANCE


SETTINGS = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2)  # head dim 32


def gguf_q8_0(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gguf-py's (codes, scales, dequantized values) of x (..., D)."""
    raw = quants.quantize(x.float().numpy().reshape(-1, x.shape[-1]), Q8_0)
    blocks = raw.reshape(-1, 34)  # ggml block_q8_0: float16 d, then 32 int8 codes
    scales = blocks[:, :2].copy().view(np.float16).reshape(*x.shape[:-1], -1)
    codes = blocks[:, 2:].copy().view(np.int8).reshape(x.shape)
    values = quants.dequantize(raw, Q8_0).reshape(x.shape)
    return torch.from_numpy(codes), torch.from_numpy(scales), torch.from_numpy(values)


def test_q8_0_storage_equals_gguf_py():
    x = torch.randn(3, 2, 7, 64, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, :32] = 0  # an all-zero block: scale 0, codes 0
    x[1, 1, 2] *= 1e4
    x[2, 0, 3] *= 1e-4
    codes, scales = quantize_q8_0(x)
    expected_codes, expected_scales, expected_values = gguf_q8_0(x)
    assert torch.equal(codes, expected_codes)
    assert torch.equal(scales, expected_scales)
    assert torch.equal(dequantize_q8_0(codes, scales, torch.float32), expected_values)


def test_cache_rows_positions_and_prefix_copies_hold_gguf_values():
    cache = KVCache(3, 16, 2, 64, torch.float32, torch.device("cpu"), ("q8_0", "f16"))
    gen = torch.Generator().manual_seed(1)
    k, v = torch.randn(2, 2, 4, 64, generator=gen), torch.randn(2, 2, 4, 64, generator=gen)
    rows, positions = torch.tensor([2, 0]), torch.tensor([[5, 6, 7, 8], [0, 1, 2, 3]])
    keys, values = cache.update(rows, positions, k, v, end=9)
    expected_k = gguf_q8_0(k)[2]
    assert torch.equal(keys[0, :, 5:9], expected_k[0])
    assert torch.equal(keys[1, :, 0:4], expected_k[1])
    assert torch.equal(values[0, :, 5:9], v[0].half().float())
    cache.copy_prefix(source=0, target=1, n_positions=4)
    keys, _ = cache.read(torch.tensor([1]), 1, end=4)
    assert torch.equal(keys[0], expected_k[1])
    cache.share_prefix(4)
    keys, _ = cache.read(None, 3, end=4)
    assert torch.equal(keys[2], expected_k[1])


class GGUFOrderQ8Cache(DynamicCache):
    """transformers' cache, with each new key/value vector rounded through gguf-py's Q8_0.

    Keys: HF keeps rotate-half order within a head; GGUF (and corral) interleave the two
    halves, so keys are permuted to GGUF order for quantizing and back afterwards.
    """

    def __init__(self, quantize_keys: bool, quantize_values: bool) -> None:
        super().__init__()
        self.quantize_keys, self.quantize_values = quantize_keys, quantize_values

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.quantize_keys:
            rounded = gguf_q8_0(to_gguf_order(key_states).float())[2]
            key_states = to_hf_order(rounded).to(key_states.dtype)
        if self.quantize_values:
            value_states = gguf_q8_0(value_states.float())[2].to(value_states.dtype)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


def to_gguf_order(x: torch.Tensor) -> torch.Tensor:
    """(..., D) in HF's rotate-half order -> GGUF's interleaved order."""
    halves = x.unflatten(-1, (2, -1))  # (..., 2, D/2)
    return halves.transpose(-1, -2).flatten(-2)  # (..., D/2, 2) -> (..., D)


def to_hf_order(x: torch.Tensor) -> torch.Tensor:
    """Inverse of to_gguf_order."""
    pairs = x.unflatten(-1, (-1, 2))  # (..., D/2, 2)
    return pairs.transpose(-1, -2).flatten(-2)  # (..., 2, D/2) -> (..., D)


def hf_logits(hf, ids: torch.Tensor, cache_types: tuple[str | None, str | None]) -> torch.Tensor:
    cache = GGUFOrderQ8Cache(cache_types[0] == "q8_0", cache_types[1] == "q8_0")
    with torch.no_grad():
        return hf(ids, past_key_values=cache, use_cache=True).logits  # (B, T, V)


def corral_model(tmp_path, hf, cache_types, batch: int = 1, n_ctx: int = 96):
    path = tmp_path / "model.gguf"
    write_llama_gguf(path, hf.config, hf.state_dict())
    with GGUFFile(path) as gguf:
        model = load_gguf_model(gguf, torch.device("cpu"), torch.float32, n_ctx).model
    model.set_cache_types(*cache_types)
    model.setup_cache(batch, n_ctx)
    return model


CACHE_TYPES = [("q8_0", "q8_0"), ("q8_0", None), (None, "q8_0")]


@pytest.mark.parametrize("cache_types", CACHE_TYPES)
def test_logits_equal_transformers_with_q8_0_rounding(tmp_path, cache_types):
    hf = tiny_llama(seed=11, **SETTINGS)
    model = corral_model(tmp_path, hf, cache_types)
    ids = torch.randint(3, 320, (1, 40), generator=torch.Generator().manual_seed(12))
    expected = hf_logits(hf, ids, cache_types)[0]  # (T, V)
    full = model(ids, 0)[0]  # (T, V)
    rows = [model(ids[:, :25], 0)[0]]  # (25, V)
    for position in range(25, ids.shape[1]):
        rows.append(model(ids[:, position : position + 1], position)[0])  # (1, V)
    stepped = torch.cat(rows)
    plain = hf_logits(hf, ids, (None, None))[0]
    rounding = (plain - expected).abs()
    assert rounding.max() > 4 * FLIP_TOLERANCE and rounding.mean() > 50 * TOLERANCE
    assert_equal_up_to_code_flips(full, expected)
    assert_equal_up_to_code_flips(stepped, expected)


def test_batched_rows_at_different_positions_equal_transformers(tmp_path):
    hf = tiny_llama(seed=13, **SETTINGS)
    model = corral_model(tmp_path, hf, ("q8_0", "q8_0"), batch=3)
    gen = torch.Generator().manual_seed(14)
    first, second = (
        torch.randint(3, 320, (1, 30), generator=gen),
        torch.randint(3, 320, (1, 9), generator=gen),
    )
    model(first[:, :-1], 0, rows=[2])
    model(second[:, :-1], 0, rows=[0])
    last = torch.cat([first[:, -1:], second[:, -1:]])  # (2, 1)
    actual = model(last, [29, 8], rows=[2, 0])[:, 0]  # (2, V)
    expected = [hf_logits(hf, ids, ("q8_0", "q8_0"))[0, -1] for ids in (first, second)]
    assert (actual - torch.stack(expected)).abs().max() < FLIP_TOLERANCE


def test_bad_cache_types_are_refused_by_name(tmp_path):
    path = tmp_path / "model.gguf"
    hf = tiny_llama(seed=15)  # head dim 16: no whole Q8_0 blocks
    write_llama_gguf(path, hf.config, hf.state_dict())
    from corral.checkpoints import open_checkpoint

    cpu = torch.device("cpu")
    with open_checkpoint(path) as checkpoint:
        with pytest.raises(ValueError, match="head dimension divisible by 32, got 16"):
            build_model(checkpoint, cpu, torch.float32, 32, cache_types=("q8_0", None))
        with pytest.raises(ValueError, match="unknown KV cache type 'q4_0'"):
            build_model(checkpoint, cpu, torch.float32, 32, cache_types=(None, "q4_0"))
