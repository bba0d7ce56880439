"""Shaped GPTQ folders (corral.tools.shaped_gptq) checked by independent tools: AutoGPTQ's own
QuantLinear dequantizes their linears (and checks their shapes), safetensors reads the file,
transformers reads config.json (and counts the parameters of Llama-2's configs), sentencepiece
reads tokenizer.model, and corral loads and runs them."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece
import torch
from safetensors import safe_open
from transformers import GPTQConfig, LlamaConfig, LlamaForCausalLM

import corral
from corral.formats.gptq import read_gptq_config, read_gptq_linear
from corral.quant.gptq import dequantize_gptq
from corral.quant.gptq_algorithm import GPTQSpec
from corral.tokenizer.hf import load_hf_tokenizer
from corral.tools.shaped_gguf import SHAPES
from corral.tools.shaped_gptq import (
    dense_params,
    linear_shapes,
    write_shaped_gptq,
    write_side_files,
)
from tests.autogptq_reference import dequantize_packed
from tests.fixtures.llama2_configs import LLAMA2_HF_CONFIGS
from tests.fixtures.tiny_hf import training_lines

ROOT = Path(__file__).resolve().parents[2]
TINY = SHAPES["tiny"]
# (bits, group_size, act_order, sym)
SETTINGS = [
    (bits, group, act_order, True)
    for bits, group, act_order in itertools.product((2, 3, 4, 8), (32, 128, -1), (False, True))
] + [(4, 128, False, False), (3, 32, True, False)]


def setting_id(setting: tuple[int, int, bool, bool]) -> str:
    bits, group, act_order, sym = setting
    return f"{bits}bit-g{group}" + ("-act" if act_order else "") + ("" if sym else "-asym")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[tuple[int, int, bool, bool], Path]:
    root = tmp_path_factory.mktemp("shaped-gptq")
    out = {}
    for setting in SETTINGS:
        bits, group, act_order, sym = setting
        out[setting] = root / setting_id(setting)
        write_shaped_gptq(out[setting], "tiny", bits, group, act_order, sym=sym, seed=3)
    return out


def linear_prefixes(layers: range = range(TINY.n_layer)) -> list[tuple[str, tuple[int, int]]]:
    return [
        (f"model.layers.{i}.{name}", dims)
        for i in layers
        for name, dims in linear_shapes(TINY).items()
    ]


def getter(tensors: dict[str, torch.Tensor], prefix: str):
    """`tensors` (keyed by suffix) as read_gptq_linear's getter of full names."""
    return lambda name: tensors.get(name.removeprefix(f"{prefix}."))


@pytest.mark.parametrize("setting", SETTINGS, ids=setting_id)
def test_autogptq_dequantizes_each_linear_like_corral_to_sane_weights(folders, setting):
    bits, group, act_order, sym = setting
    folder = folders[setting]
    config = read_gptq_config(folder, json.loads((folder / "config.json").read_text()))
    with safe_open(folder / "model.safetensors", framework="pt") as f:
        for prefix, (n_out, n_in) in linear_prefixes(range(1)):  # layers differ by seed only
            tensors = {s: f.get_tensor(f"{prefix}.{s}") for s in ("qweight", "qzeros", "scales")}
            tensors["g_idx"] = f.get_tensor(f"{prefix}.g_idx")
            reference = dequantize_packed(tensors, bits, group)  # AutoGPTQ's forward, (N, K)
            assert reference.shape == (n_out, n_in)

            get = getter(tensors, prefix)
            qtensor = read_gptq_linear(prefix, get, config, (n_out, n_in), str(folder))
            assert torch.equal(dequantize_gptq(qtensor), reference), prefix
            assert torch.isfinite(reference).all(), prefix
            rms = reference.pow(2).mean().sqrt().item()
            assert 0.01 < rms < 0.04, (prefix, rms)
            assert reference.abs().max() < 0.2, prefix
            if not sym:  # asymmetric zero points centre the weights
                assert abs(reference.mean().item()) < 0.1 * rms, prefix
            groups = tensors["g_idx"].long()
            size = n_in if group == -1 else group
            assert groups.bincount().tolist() == [size] * (n_in // size), prefix
            in_order = torch.equal(groups, torch.arange(n_in) // size)
            assert in_order == (not act_order or group == -1), prefix


@pytest.mark.parametrize("setting", SETTINGS, ids=setting_id)
def test_corral_loads_and_generates(folders, setting):
    llm = corral.load(folders[setting], device="cpu", n_ctx=64)
    assert llm.config.n_layer == TINY.n_layer and llm.config.n_vocab == TINY.n_vocab
    prompt = llm.tokenize("hello world")
    tokens = list(llm.generate_tokens(prompt, 4, temperature=0, ignore_eos=True))
    assert len(tokens) == 4 and all(0 <= t < TINY.n_vocab for t in tokens)
    logits = llm.model(torch.tensor([prompt]), 0)  # (1, T, V)
    assert torch.isfinite(logits).all()


def test_safetensors_reads_every_tensor_with_autogptq_metadata(folders):
    setting = (3, 32, True, True)
    folder = folders[setting]
    with safe_open(folder / "model.safetensors", framework="pt") as f:
        names = set(f.keys())
        metadata = f.metadata()
        dtypes = {name: f.get_tensor(name).dtype for name in names}
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for prefix, _ in linear_prefixes():
        expected |= {f"{prefix}.{s}" for s in ("qweight", "qzeros", "scales", "g_idx")}
    for i in range(TINY.n_layer):
        norms = ("input_layernorm", "post_attention_layernorm")
        expected |= {f"model.layers.{i}.{norm}.weight" for norm in norms}
    assert names == expected
    assert metadata["format"] == "pt" and metadata["gptq_bits"] == "3"
    assert {dtypes[n] for n in names if n.endswith(("qweight", "qzeros", "g_idx"))} == {torch.int32}
    assert {dtypes[n] for n in names if n.endswith(("scales", ".weight"))} == {torch.float16}
    quantize_config = json.loads((folder / "quantize_config.json").read_text())
    reference = GPTQConfig.from_dict(quantize_config)  # transformers' GPTQ config validation
    assert (reference.bits, reference.group_size, reference.desc_act, reference.sym) == (
        3,
        32,
        True,
        True,
    )
    assert quantize_config["checkpoint_format"] == "gptq"


@pytest.mark.parametrize("size", LLAMA2_HF_CONFIGS)
def test_transformers_reads_config_json_with_llama_2_parameter_counts(tmp_path, size):
    write_side_files(tmp_path, SHAPES[size], GPTQSpec(bits=4, group_size=128))
    config = LlamaConfig.from_pretrained(tmp_path)
    real = LlamaConfig(
        vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5, **LLAMA2_HF_CONFIGS[size]
    )
    for key in (*LLAMA2_HF_CONFIGS[size], "vocab_size", "max_position_embeddings", "rms_norm_eps"):
        assert getattr(config, key) == getattr(real, key), key
    assert config.tie_word_embeddings is False and config.hidden_act == "silu"
    with torch.device("meta"):
        n_ours = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
        n_real = sum(p.numel() for p in LlamaForCausalLM(real).parameters())
    assert n_ours == n_real == dense_params(SHAPES[size])
    assert config.quantization_config["bits"] == 4


def test_sentencepiece_reads_the_32000_piece_tokenizer_and_corral_encodes_alike(tmp_path):
    write_side_files(tmp_path, SHAPES["7B"], GPTQSpec(bits=4, group_size=128))
    reference = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert reference.vocab_size() == 32000
    assert [reference.id_to_piece(i) for i in (0, 1, 2, 3)] == ["<unk>", "<s>", "</s>", "<0x00>"]
    ours = load_hf_tokenizer(tmp_path, 32000)
    for line in training_lines()[:60] + ["Ünïcödé 文字 42 ✓"]:
        expected = [reference.bos_id(), *reference.encode(line)]
        assert ours.encode(line) == expected, line
        assert ours.decode(expected[1:]) == reference.decode(expected[1:]), line


def test_script_writes_a_folder_and_refuses_gguf_flags(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = str(ROOT / "scripts" / "make_shaped_gguf.py")
    out = tmp_path / "g"
    argv = [sys.executable, script, "--format", "gptq", "--shape", "tiny", "--bits", "2"]
    done = subprocess.run(
        [*argv, "--group-size", "-1", "--act-order", "-o", str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "GPTQ 2-bit, group size -1, desc_act True" in done.stdout
    assert json.loads((out / "quantize_config.json").read_text())["bits"] == 2
    with safe_open(out / "model.safetensors", framework="pt") as f:
        assert f.get_tensor("model.layers.0.mlp.down_proj.qweight").shape == (32, 256)
    refused = subprocess.run([*argv, "--type", "Q4_0"], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--type cannot be used with --format gptq" in refused.stderr
