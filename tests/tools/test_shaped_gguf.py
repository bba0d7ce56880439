"""Shaped GGUF files (corral.tools.shaped_gguf) checked by independent tools: gguf-py reads
and dequantizes them, llama.cpp's quantizer chose the per-tensor types of the committed
tiny fixtures (same shape), HF transformers counts the parameters of Llama-2's configs,
and corral loads and runs them."""

import dataclasses
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import corral
from corral.formats.gguf_writer import TensorPlan, write_gguf
from corral.interfaces.cli import main
from corral.quant.ggml_types import GGMLType
from corral.tools.shaped_gguf import SHAPES, file_type, tensor_plans, write_shaped_gguf
from tests.fixtures.llama2_configs import LLAMA2_HF_CONFIGS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"
TINY = SHAPES["tiny"]
# each ggml type as the base type of a file type; --pure makes every matrix that type
PURE_TYPES = {
    "F32": "F32",
    "F16": "F16",
    "BF16": "BF16",
    "Q4_0": "Q4_0",
    "Q4_1": "Q4_1",
    "Q5_0": "Q5_0",
    "Q5_1": "Q5_1",
    "Q8_0": "Q8_0",
    "Q2_K": "Q2_K",
    "Q3_K": "Q3_K_M",
    "Q4_K": "Q4_K_M",
    "Q5_K": "Q5_K_M",
    "Q6_K": "Q6_K",
}
# the tiny fixtures llama.cpp's llama_model_quantize wrote (tests/golden/README.md)
LLAMA_CPP_MIXES = [
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K",
]  # fmt: skip


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


@pytest.fixture(scope="module")
def pure_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("shaped")
    files = {}
    for ggml_type, name in PURE_TYPES.items():
        files[ggml_type] = folder / f"tiny-{ggml_type}.gguf"
        write_shaped_gguf(files[ggml_type], "tiny", name, pure=True, seed=1)
    return files


@pytest.mark.parametrize("ggml_type", PURE_TYPES)
def test_gguf_py_reads_the_metadata_shapes_and_types(pure_files, ggml_type):
    reader = gguf.GGUFReader(pure_files[ggml_type])
    assert field(reader, "GGUF.version") == 3
    assert field(reader, "general.architecture") == "llama"
    expected = {
        "llama.block_count": TINY.n_layer,
        "llama.embedding_length": TINY.n_embd,
        "llama.feed_forward_length": TINY.n_ff,
        "llama.attention.head_count": TINY.n_head,
        "llama.attention.head_count_kv": TINY.n_head_kv,
        "llama.context_length": TINY.n_ctx,
        "llama.rope.dimension_count": TINY.n_embd // TINY.n_head,
        "general.file_type": file_type(PURE_TYPES[ggml_type]).ftype,
        "tokenizer.ggml.model": "llama",
    }
    assert {key: field(reader, key) for key in expected} == expected
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == TINY.n_vocab == len(set(tokens))
    assert tokens[:4] == ["<unk>", "<s>", "</s>", "<0x00>"]

    e, kv, ff = TINY.n_embd, TINY.n_head_kv * TINY.n_embd // TINY.n_head, TINY.n_ff
    layer = {"attn_norm": [e], "attn_q": [e, e], "attn_k": [e, kv], "attn_v": [e, kv]}
    layer |= {"attn_output": [e, e], "ffn_norm": [e], "ffn_gate": [e, ff], "ffn_up": [e, ff]}
    layer["ffn_down"] = [ff, e]
    shapes = {"token_embd.weight": [e, TINY.n_vocab], "output_norm.weight": [e]}
    shapes["output.weight"] = [e, TINY.n_vocab]
    for i in range(TINY.n_layer):
        shapes |= {f"blk.{i}.{name}.weight": ne for name, ne in layer.items()}
    tensors = {t.name: t for t in reader.tensors}
    assert {name: [int(n) for n in t.shape] for name, t in tensors.items()} == shapes  # ggml ne
    for name, t in tensors.items():
        want = "F32" if len(t.shape) == 1 else ggml_type
        assert t.tensor_type.name == want, name


@pytest.mark.parametrize("ggml_type", PURE_TYPES)
def test_weights_dequantize_to_small_finite_values(pure_files, ggml_type):
    for t in gguf.GGUFReader(pure_files[ggml_type]).tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        assert np.isfinite(values).all(), t.name
        if len(t.shape) == 1:
            assert (values == 1.0).all(), t.name  # norms
        else:
            rms = np.sqrt(np.mean(values**2))
            assert 0.01 < rms < 0.04, (t.name, rms)
            assert np.abs(values).max() < 0.5, t.name
            assert abs(values.mean()) < 0.2 * rms, t.name  # centred on 0


@pytest.mark.parametrize("name", LLAMA_CPP_MIXES)
def test_tensor_types_are_those_llama_cpp_quantize_chose(tmp_path, name):
    fixture = gguf.GGUFReader(FIXTURES / f"tiny-llama-{name}.gguf")
    path = tmp_path / "mix.gguf"
    write_shaped_gguf(path, "tiny", name)
    ours = gguf.GGUFReader(path)
    assert {t.name: t.tensor_type.name for t in ours.tensors} == {
        t.name: t.tensor_type.name for t in fixture.tensors
    }
    assert field(ours, "general.file_type") == field(fixture, "general.file_type")


def test_aliases_and_unknown_file_types():
    assert file_type("q4_k") == file_type("Q4_K_M")
    with pytest.raises(ValueError, match="unknown file type 'Q9_X'.*Q4_K_M"):
        file_type("Q9_X")


@pytest.mark.parametrize("size", LLAMA2_HF_CONFIGS)
def test_llama_2_shapes_have_the_parameters_of_the_hf_configs(size):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, **LLAMA2_HF_CONFIGS[size])
    with torch.device("meta"):
        n_hf = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    plans = tensor_plans(SHAPES[size], file_type("Q4_K_M"))
    assert sum(int(np.prod(plan.shape)) for plan in plans) == n_hf
    shape = SHAPES[size]
    assert (shape.n_embd, shape.n_ff, shape.n_layer) == (
        config.hidden_size,
        config.intermediate_size,
        config.num_hidden_layers,
    )
    assert (shape.n_head, shape.n_head_kv) == (
        config.num_attention_heads,
        config.num_key_value_heads,
    )


def test_70b_mix_follows_llama_cpp_rules_for_its_shape():
    # llama.cpp bumps attn_v from Q3_K/Q4_K to Q5_K in 80-layer GQA models (LLM_TYPE_70B)
    types = {p.name: p.ggml_type.name for p in tensor_plans(SHAPES["70B"], file_type("Q3_K_M"))}
    assert {types[f"blk.{i}.attn_v.weight"] for i in range(80)} == {"Q5_K"}
    wide = dataclasses.replace(SHAPES["70B"], n_head_kv=64)  # no GQA: not LLM_TYPE_70B
    types = {p.name: p.ggml_type.name for p in tensor_plans(wide, file_type("Q3_K_M"))}
    assert types["blk.2.attn_v.weight"] == "Q4_K"


@pytest.mark.parametrize("ggml_type", PURE_TYPES)
def test_corral_loads_and_generates(pure_files, ggml_type):
    llm = corral.load(pure_files[ggml_type], device="cpu", n_ctx=64)
    assert llm.config.n_layer == TINY.n_layer and llm.config.n_vocab == TINY.n_vocab
    prompt = llm.tokenize("hello world")
    tokens = list(llm.generate_tokens(prompt, 5, temperature=0, ignore_eos=True))
    assert len(tokens) == 5 and all(0 <= t < TINY.n_vocab for t in tokens)
    logits = llm.model(torch.tensor([prompt]), 0)  # (1, T, V)
    assert torch.isfinite(logits).all()


def test_corral_info_describes_a_shaped_file(pure_files, capsys):
    assert main(["info", str(pure_files["Q4_K"])]) == 0
    out = capsys.readouterr().out
    assert "4 heads, 2 KV heads" in out
    assert "embedding 256, feed-forward 512" in out
    assert "Q4_K x16" in out and "F32 x5" in out


def test_writer_refuses_tensor_data_of_the_wrong_size(tmp_path):
    plan = TensorPlan("w.weight", (2, 32), GGMLType.Q8_0)  # 2 blocks: 68 bytes
    with pytest.raises(ValueError, match="'w.weight': got 10 bytes.* take 68"):
        write_gguf(
            tmp_path / "bad.gguf", {"general.architecture": "llama"}, [plan], lambda _: [b"\0" * 10]
        )
    assert list(tmp_path.iterdir()) == []  # no partial file left behind
