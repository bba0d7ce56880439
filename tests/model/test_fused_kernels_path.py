"""The model with its Triton kernels wired in (RMSNorm with the residual add, RoPE, the
flash-decoding attention over the KV cache: Transformer.use_fused_kernels), against HF
transformers on tiny random models: the path every CUDA model takes, run here on CPU in
Triton's interpreter (so the models stay tiny).

Whole sequences (prefill from position 0: fused norms and RoPE, SDPA), chunks after a
cached prefix (the prefill attention kernel), one token at a time through the decode
kernel, batches of sequences at different positions in their own cache rows, and q8_0
caches read in place by both kernels (against transformers with Q8_0-rounded keys and
values, tests/model/test_kv_cache_q8.py).
"""

import pytest
import torch

from tests.fixtures.tiny_hf import tiny_llama
from tests.model.test_kv_cache_q8 import (
    SETTINGS,
    assert_equal_up_to_code_flips,
    corral_model,
    hf_logits,
)

TOLERANCE = 1e-4
VARIANTS = {
    "gqa-2:1": SETTINGS,
    "mha": dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=4),
    "gqa-3:1-head-dim-48": dict(hidden_size=144, num_attention_heads=3, num_key_value_heads=1),
}


def fused_model(tmp_path, hf, cache_types=(None, None), batch: int = 1):
    model = corral_model(tmp_path, hf, cache_types, batch=batch)
    model.use_fused_kernels(devices=("cpu",))
    assert model.layers[0].attn.fused and model.norm.fused
    return model


def stepped_logits(model, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    """(T, V): the first `prompt` tokens at once, then one token at a time."""
    rows = [model(ids[:, :prompt], 0)[0]]  # (prompt, V)
    for position in range(prompt, ids.shape[1]):
        rows.append(model(ids[:, position : position + 1], position)[0])  # (1, V)
    return torch.cat(rows)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_prefill_and_decode_match_transformers(tmp_path, variant):
    hf = tiny_llama(seed=21, **VARIANTS[variant])
    model = fused_model(tmp_path, hf)
    ids = torch.randint(3, 320, (1, 24), generator=torch.Generator().manual_seed(22))
    expected = hf_logits(hf, ids, (None, None))[0]  # (T, V)
    assert (model(ids, 0)[0] - expected).abs().max().item() < TOLERANCE
    assert (stepped_logits(model, ids, 16) - expected).abs().max().item() < TOLERANCE


def test_chunked_prefill_after_a_cached_prefix_matches_transformers(tmp_path):
    hf = tiny_llama(seed=27, **SETTINGS)
    model = fused_model(tmp_path, hf)
    ids = torch.randint(3, 320, (1, 30), generator=torch.Generator().manual_seed(28))
    expected = hf_logits(hf, ids, (None, None))[0]  # (T, V)
    chunks = [model(ids[:, a:b], a)[0] for a, b in ((0, 7), (7, 19), (19, 30))]  # (n, V) each
    assert (torch.cat(chunks) - expected).abs().max().item() < TOLERANCE


def test_batched_chunks_at_different_starts_match_transformers(tmp_path):
    hf = tiny_llama(seed=29, **SETTINGS)
    model = fused_model(tmp_path, hf, batch=2)
    gen = torch.Generator().manual_seed(30)
    first, second = (torch.randint(3, 320, (1, n), generator=gen) for n in (20, 11))
    model(first[:, :17], 0, rows=[1])
    model(second[:, :8], 0, rows=[0])
    chunk = torch.cat([first[:, 17:], second[:, 8:]])  # (2, 3)
    actual = model(chunk, [17, 8], rows=[1, 0])  # (2, 3, V)
    for out, ids in zip(actual, (first, second), strict=True):
        assert (out - hf_logits(hf, ids, (None, None))[0, -3:]).abs().max() < TOLERANCE


def test_batched_rows_at_different_positions_match_transformers(tmp_path):
    hf = tiny_llama(seed=23, **SETTINGS)
    model = fused_model(tmp_path, hf, batch=3)
    gen = torch.Generator().manual_seed(24)
    first, second = (torch.randint(3, 320, (1, n), generator=gen) for n in (21, 6))
    model(first[:, :-1], 0, rows=[2])
    model(second[:, :-1], 0, rows=[0])
    last = torch.cat([first[:, -1:], second[:, -1:]])  # (2, 1)
    actual = model(last, [20, 5], rows=[2, 0])[:, 0]  # (2, V)
    expected = torch.stack([hf_logits(hf, ids, (None, None))[0, -1] for ids in (first, second)])
    assert (actual - expected).abs().max().item() < TOLERANCE


def test_q8_0_cache_read_by_both_kernels_matches_transformers(tmp_path):
    hf = tiny_llama(seed=25, **SETTINGS)
    model = fused_model(tmp_path, hf, ("q8_0", "q8_0"))
    ids = torch.randint(3, 320, (1, 24), generator=torch.Generator().manual_seed(26))
    expected = hf_logits(hf, ids, ("q8_0", "q8_0"))[0]
    assert_equal_up_to_code_flips(stepped_logits(model, ids, 16), expected)
    chunks = [model(ids[:, a:b], a)[0] for a, b in ((0, 9), (9, 24))]  # (n, V) each
    assert_equal_up_to_code_flips(torch.cat(chunks), expected)
