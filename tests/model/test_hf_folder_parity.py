"""HF Llama folders saved by transformers, loaded by corral, against transformers'
LlamaForCausalLM on the same folder: logits (float32, max abs diff < 1e-4) over whole
sequences and through the KV cache, for GQA, linear RoPE scaling, tied embeddings, sharded
and half-precision checkpoints; and the Python API on such a folder (tokenizer, chat
template, greedy generation) against transformers."""

import pytest
import torch
from transformers import AutoTokenizer

import corral
from corral.checkpoints import load_model
from tests.fixtures.tiny_hf import reload_float32, save_llama_folder, tiny_llama

TOLERANCE = 1e-4
CPU = torch.device("cpu")
VARIANTS = {
    "gqa-4:1-sharded": (dict(num_attention_heads=8, num_key_value_heads=2), "40KB"),
    "mqa": (dict(num_attention_heads=4, num_key_value_heads=1), None),
    "rope-linear-x4": (
        dict(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 50000.0}),
        None,
    ),
    "tied-sharded": (dict(tie_word_embeddings=True), "30KB"),
}


def random_ids(n: int, seed: int, vocab: int = 320) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers(tmp_path, variant):
    overrides, shard = VARIANTS[variant]
    folder = save_llama_folder(tmp_path / "m", tiny_llama(1, **overrides), max_shard_size=shard)
    if shard:
        assert (folder / "model.safetensors.index.json").is_file()
    reference = reload_float32(folder)
    model = load_model(folder, CPU, torch.float32, n_ctx=128).model
    ids = random_ids(100, seed=2)
    with torch.no_grad():
        expected = reference(ids).logits  # (1, T, V)
    assert expected.abs().max() > 1.0, "logits too small for a meaningful comparison"
    assert (model(ids, 0) - expected).abs().max().item() < TOLERANCE
    rows = [model(ids[:, :60], 0)[0]]  # prefill, then one token at a time through the cache
    for position in range(60, 100):
        rows.append(model(ids[:, position : position + 1], position)[0])
    assert (torch.cat(rows) - expected[0]).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints_match_transformers(tmp_path, dtype):
    folder = save_llama_folder(tmp_path / "m", tiny_llama(3), dtype=dtype)
    reference = reload_float32(folder)  # the stored 16-bit weights, widened exactly
    model = load_model(folder, CPU, torch.float32, n_ctx=64).model
    ids = random_ids(48, seed=4)
    with torch.no_grad():
        expected = reference(ids).logits
    assert (model(ids, 0) - expected).abs().max().item() < TOLERANCE


def test_api_on_a_folder_matches_transformers_tokenizer_template_and_greedy_text(tmp_path):
    folder = save_llama_folder(tmp_path / "m", tiny_llama(5), max_shard_size="40KB")
    llm = corral.load(folder, device="cpu", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    reference = reload_float32(folder)

    text = "the GNU General Public License, version 3 <tool> and <|im_end|>"
    assert llm.tokenize(text, parse_special=True) == tokenizer.encode(text)
    assert llm.chat_format is not None and llm.chat_format.name == "model"
    messages = [
        {"role": "system", "content": "You are free software."},
        {"role": "user", "content": "Convey the work, 2 times!"},
    ]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert llm.chat_prompt_ids(messages) == expected["input_ids"]

    prompt = llm.tokenize("Everyone is permitted to copy")
    generated = list(llm.generate_tokens(prompt, 12, temperature=0.0, ignore_eos=True))
    with torch.no_grad():
        reference_out = reference.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None
        )
    assert generated == reference_out[0, len(prompt) :].tolist()
    assert llm.generation_defaults["eos_token_id"] == [tokenizer.eos_token_id]


def test_cli_runs_and_describes_a_folder(tmp_path, capsys):
    from corral.interfaces.cli import main

    folder = save_llama_folder(tmp_path / "m", tiny_llama(6))
    assert main(["info", str(folder)]) == 0
    info = capsys.readouterr().out
    assert "format:" in info and "hf" in info and "tokenizer.json" in info
    assert "model (the model's own template" in info
    args = ["run", "-m", str(folder), "-p", "Everyone", "-n", "4", "--temp", "0", "--device", "cpu"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("Everyone")
    assert main(["run", "-m", str(tmp_path / "missing"), "-p", "x"]) == 1
    assert "not found" in capsys.readouterr().err
