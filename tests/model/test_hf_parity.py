"""corral's Llama forward pass against HF transformers' LlamaForCausalLM on tiny random models.

Each model is converted to GGUF the way llama.cpp's converter does it (Q/K rows permuted for
interleaved RoPE), loaded through corral's own GGUF reader and loader, and its logits compared
with transformers' in float32: over a whole sequence at once, and through the KV cache one
token at a time.
"""

import pytest
import torch
from transformers import LlamaForCausalLM

from corral.formats.gguf import GGUFFile
from corral.loader import load_gguf_model
from tests.fixtures.tiny_gguf import write_llama_gguf
from tests.fixtures.tiny_hf import tiny_llama

TOLERANCE = 1e-4
VARIANTS = {
    "mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa-4:1": dict(num_attention_heads=8, num_key_value_heads=2),
    "mqa": dict(num_attention_heads=4, num_key_value_heads=1),
    "rope-linear-x2": dict(
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0},
    ),
    "tied-output": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}


def load_corral(tmp_path, hf: LlamaForCausalLM):
    path = tmp_path / "model.gguf"
    write_llama_gguf(path, hf.config, hf.state_dict())
    with GGUFFile(path) as gguf:
        return load_gguf_model(gguf, torch.device("cpu"), torch.float32, n_ctx=128).model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_full_sequence_logits_match_transformers(tmp_path, variant):
    hf = tiny_llama(seed=1, **VARIANTS[variant])
    model = load_corral(tmp_path, hf)
    ids = torch.randint(
        3, hf.config.vocab_size, (1, 48), generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        expected = hf(ids).logits  # (1, T, V)
    actual = model(ids, 0)
    assert expected.abs().max() > 1.0, "logits too small for a meaningful comparison"
    assert (actual - expected).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("variant", ["gqa-4:1", "rope-linear-x2"])
def test_cached_decode_matches_transformers(tmp_path, variant):
    hf = tiny_llama(seed=3, **VARIANTS[variant])
    model = load_corral(tmp_path, hf)
    ids = torch.randint(
        3, hf.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(4)
    )
    with torch.no_grad():
        expected = hf(ids).logits[0]  # (T, V)
    prompt = 25
    rows = [model(ids[:, :prompt], 0)[0]]  # (prompt, V)
    for position in range(prompt, ids.shape[1]):
        rows.append(model(ids[:, position : position + 1], position)[0])  # (1, V)
    actual = torch.cat(rows)
    assert (actual - expected).abs().max().item() < TOLERANCE


def test_position_far_into_context_matches(tmp_path):
    """RoPE at large positions (linear scaling halves them) stays equal to transformers."""
    hf = tiny_llama(seed=5, **VARIANTS["rope-linear-x2"])
    model = load_corral(tmp_path, hf)
    ids = torch.randint(
        3, hf.config.vocab_size, (1, 120), generator=torch.Generator().manual_seed(6)
    )
    with torch.no_grad():
        expected = hf(ids).logits
    assert (model(ids, 0) - expected).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_path_stays_close_to_transformers(tmp_path, dtype):
    """The 16-bit path (CUDA's default, CPU's when float32 does not fit) on the same weights."""
    hf = tiny_llama(seed=7, **VARIANTS["gqa-4:1"])
    path = tmp_path / "model.gguf"
    write_llama_gguf(path, hf.config, hf.state_dict())
    with GGUFFile(path) as gguf:
        model = load_gguf_model(gguf, torch.device("cpu"), dtype, n_ctx=64).model
    ids = torch.randint(
        3, hf.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(8)
    )
    with torch.no_grad():
        expected = hf(ids).logits
    actual = model(ids, 0)
    assert actual.dtype == torch.float32
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max().item() < 0.03 * scale
    assert (actual.argmax(-1) == expected.argmax(-1)).float().mean().item() > 0.9
