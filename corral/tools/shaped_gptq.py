"""Llama-2-shaped GPTQ folders with random valid weights: speed measurements without downloads.

The folder is what AutoGPTQ writes for a Llama (the layout `corral quantize-gptq` writes
too, see corral.tools.gptq_output), with the hyperparameters of a shape from
corral.tools.shaped_gguf (Llama-2 7B / 13B / 70B, or tiny for tests):

  config.json            LlamaForCausalLM config, fp16, with quantization_config
  quantize_config.json   AutoGPTQ's fields (bits, group_size, desc_act, sym, ...)
  model.safetensors      streamed tensor by tensor (a 70B 4-bit folder is ~36 GB)
  tokenizer.model        a SentencePiece BPE protobuf of shaped_gguf's Llama-like vocabulary
  tokenizer_config.json  LlamaTokenizer settings (<s> / </s> / <unk>, add_bos)

Every linear of the decoder layers is GPTQ (checkpoint_format "gptq": stored zero = zero - 1):

- qweight: random 32-bit words; every bit pattern is a valid run of codes in [0, 2^b);
- qzeros: the zero point 2^(b-1) (sym), or per group and output 2^(b-1) - 1 or 2^(b-1) at
  random (asym: centres the uniform codes, whose mean is 2^(b-1) - 1/2, on 0);
- scales: fp16, uniform in [0.5, 1.5) x WEIGHT_RMS / RMS(code - zero): weights of RMS ~0.02;
- g_idx: column k in group k // group_size; with act-order, a random permutation of the
  columns is grouped instead (each group still has exactly group_size columns).

Embeddings and lm_head are fp16 with |w| in [2^-7, 2^-5) (shaped_gguf.random_dense), norms 1.
"""

import dataclasses
import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corral.formats.gguf_writer import Progress
from corral.quant.ggml_types import GGMLType
from corral.quant.gptq_algorithm import GPTQSpec
from corral.quant.gptq_pack import pack_values
from corral.tools.gptq_output import (
    MODEL_FILE,
    StreamingSafetensorsWriter,
    TensorEntry,
    safetensors_metadata,
    write_configs,
)
from corral.tools.shaped_gguf import (
    SHAPES,
    WEIGHT_RMS,
    Shape,
    random_bytes,
    random_dense,
    spm_vocab,
)
from corral.weights.hf_names import LAYER_LINEARS

LINEAR_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")


@dataclass(frozen=True)
class ShapedGPTQ:
    """What `write_shaped_gptq` wrote."""

    path: Path
    size: int  # bytes of model.safetensors
    n_params: int  # parameters of the dense model it stands for
    spec: GPTQSpec


def hf_config(shape: Shape) -> dict[str, Any]:
    """The config.json of a `shape`-shaped LlamaForCausalLM (as meta-llama's Llama-2 -hf)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "_name_or_path": f"llama-2-{shape.name}-shaped-gptq (random weights)",
        "hidden_size": shape.n_embd,
        "intermediate_size": shape.n_ff,
        "num_hidden_layers": shape.n_layer,
        "num_attention_heads": shape.n_head,
        "num_key_value_heads": shape.n_head_kv,
        "vocab_size": shape.n_vocab,
        "max_position_embeddings": shape.n_ctx,
        "rms_norm_eps": shape.rms_eps,
        "rope_theta": shape.rope_freq_base,
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float16",
    }


def linear_shapes(shape: Shape) -> dict[str, tuple[int, int]]:
    """Linear name (in LAYER_LINEARS order) -> dense (out, in) shape, for one layer."""
    e, ff = shape.n_embd, shape.n_ff
    q, kv = shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    dims = [(q, e), (kv, e), (kv, e), (e, q), (ff, e), (ff, e), (e, ff)]
    return dict(zip(LAYER_LINEARS, dims, strict=True))


def n_groups(n_in: int, group_size: int) -> int:
    """Groups of a linear with `n_in` input columns (-1: one group)."""
    return 1 if group_size == -1 else math.ceil(n_in / group_size)


def tensor_entries(shape: Shape, spec: GPTQSpec) -> list[TensorEntry]:
    """Every tensor of model.safetensors, in the order they are written."""
    f16, i32, b = torch.float16, torch.int32, spec.bits
    entries = [TensorEntry("model.embed_tokens.weight", f16, (shape.n_vocab, shape.n_embd))]
    for i in range(shape.n_layer):
        layer = f"model.layers.{i}"
        entries.append(TensorEntry(f"{layer}.input_layernorm.weight", f16, (shape.n_embd,)))
        entries.append(
            TensorEntry(f"{layer}.post_attention_layernorm.weight", f16, (shape.n_embd,))
        )
        for name, (n_out, n_in) in linear_shapes(shape).items():
            groups = n_groups(n_in, spec.group_size)
            entries += [
                TensorEntry(f"{layer}.{name}.qweight", i32, (n_in * b // 32, n_out)),
                TensorEntry(f"{layer}.{name}.qzeros", i32, (groups, n_out * b // 32)),
                TensorEntry(f"{layer}.{name}.scales", f16, (groups, n_out)),
                TensorEntry(f"{layer}.{name}.g_idx", i32, (n_in,)),
            ]
    entries.append(TensorEntry("model.norm.weight", f16, (shape.n_embd,)))
    entries.append(TensorEntry("lm_head.weight", f16, (shape.n_vocab, shape.n_embd)))
    return entries


def dense_params(shape: Shape) -> int:
    """Parameters of the dense model: embeddings, norms, linears, lm_head."""
    linears = sum(n_out * n_in for n_out, n_in in linear_shapes(shape).values())
    per_layer = linears + 2 * shape.n_embd
    return shape.n_layer * per_layer + 2 * shape.n_vocab * shape.n_embd + shape.n_embd


def code_rms(bits: int) -> float:
    """RMS of (code - zero) for codes uniform in [0, 2^b) and the zero points written here:
    variance (4^b - 1) / 12 plus the squared offset 1/4 of the mean from the zero point."""
    return math.sqrt((4**bits - 1) / 12 + 0.25)


def random_linear(
    rng: np.random.Generator, n_out: int, n_in: int, spec: GPTQSpec
) -> dict[str, torch.Tensor]:
    """The qweight / qzeros / scales / g_idx of one random linear of dense shape (n_out, n_in)."""
    bits, groups = spec.bits, n_groups(n_in, spec.group_size)
    n_words = n_in * bits // 32
    words = random_bytes(rng, n_words * n_out * 4).view("<i4").reshape(n_words, n_out)
    half = 1 << (bits - 1)
    if spec.sym:
        zeros = np.full((groups, n_out), half, dtype=np.int64)
    else:
        zeros = half - rng.integers(0, 2, (groups, n_out))
    stored = torch.from_numpy(zeros - 1).t()  # (N, G): format "gptq" stores zero - 1
    steps = rng.uniform(0.5, 1.5, (groups, n_out)) * (WEIGHT_RMS / code_rms(bits))
    size = n_in if spec.group_size == -1 else spec.group_size
    columns = rng.permutation(n_in) if spec.act_order else np.arange(n_in)
    g_idx = np.empty(n_in, dtype=np.int32)
    g_idx[columns] = np.arange(n_in) // size  # the i-th column taken falls in group i // size
    return {
        "qweight": torch.from_numpy(words),  # (K*b/32, N)
        "qzeros": pack_values(stored, bits).t().contiguous(),  # (G, N*b/32)
        "scales": torch.from_numpy(steps.astype(np.float16)),  # (G, N)
        "g_idx": torch.from_numpy(g_idx),  # (K,)
    }


def random_f16(rng: np.random.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Random fp16 values with |w| in [2^-7, 2^-5) of `shape`."""
    words = random_dense(rng, GGMLType.F16, math.prod(shape))  # (n,) uint16
    return torch.from_numpy(words.view(np.float16).reshape(shape))


def random_tensors(shape: Shape, spec: GPTQSpec, seed: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor of model.safetensors, one at a time; each tensor
    depends only on the seed and its place (one generator per tensor or linear)."""
    e = shape.n_embd
    yield (
        "model.embed_tokens.weight",
        random_f16(np.random.default_rng((seed, 0)), (shape.n_vocab, e)),
    )
    ones = torch.ones(e, dtype=torch.float16)
    for i in range(shape.n_layer):
        layer = f"model.layers.{i}"
        yield f"{layer}.input_layernorm.weight", ones
        yield f"{layer}.post_attention_layernorm.weight", ones
        for j, (name, (n_out, n_in)) in enumerate(linear_shapes(shape).items()):
            rng = np.random.default_rng((seed, 1 + i, j))
            for suffix, tensor in random_linear(rng, n_out, n_in, spec).items():
                yield f"{layer}.{name}.{suffix}", tensor
    yield "model.norm.weight", ones
    yield (
        "lm_head.weight",
        random_f16(np.random.default_rng((seed, 2 + shape.n_layer)), (shape.n_vocab, e)),
    )


# -- tokenizer.model: a SentencePiece ModelProto (see corral.tokenizer.sentencepiece_model) --


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes | int) -> bytes:
    """One protobuf field: a varint (wire 0), fixed32 bytes (5) or length-delimited (2)."""
    key = _varint(number << 3 | wire)
    if wire == 0:
        assert isinstance(payload, int)
        return key + _varint(payload)
    assert isinstance(payload, bytes)
    return key + (_varint(len(payload)) if wire == 2 else b"") + payload


def sentencepiece_proto(n_vocab: int) -> bytes:
    """A Llama-like SentencePiece BPE tokenizer.model of `n_vocab` pieces (shaped_gguf's
    spm_vocab): byte fallback, identity normalization, dummy prefix, whitespace as "▁"."""
    vocab = spm_vocab(n_vocab)
    pieces = zip(
        vocab["tokenizer.ggml.tokens"],
        vocab["tokenizer.ggml.scores"].tolist(),
        vocab["tokenizer.ggml.token_type"].tolist(),
        strict=True,
    )
    out = bytearray()
    for text, score, kind in pieces:
        piece = _field(1, 2, text.encode("utf-8")) + _field(2, 5, struct.pack("<f", score))
        out += _field(1, 2, piece + _field(3, 0, kind))
    trainer = _field(3, 0, 2) + _field(4, 0, n_vocab) + _field(35, 0, 1)  # BPE, byte_fallback
    out += _field(2, 2, trainer)
    normalizer = _field(1, 2, b"identity") + _field(3, 0, 1) + _field(4, 0, 0) + _field(5, 0, 1)
    out += _field(3, 2, normalizer)  # name, add_dummy_prefix, remove_extra_ws, escape_ws
    return bytes(out)


TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": None,
    "add_bos_token": True,
    "add_eos_token": False,
    "legacy": True,
    "clean_up_tokenization_spaces": False,
}


def write_side_files(folder: str | Path, shape: Shape, spec: GPTQSpec) -> None:
    """config.json, quantize_config.json, tokenizer.model and tokenizer_config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_configs(folder, hf_config(shape), spec)
    (folder / "tokenizer.model").write_bytes(sentencepiece_proto(shape.n_vocab))
    text = json.dumps(TOKENIZER_CONFIG, indent=2) + "\n"
    (folder / "tokenizer_config.json").write_text(text, encoding="utf-8")


def write_shaped_gptq(
    folder: str | Path,
    shape: Shape | str,
    bits: int,
    group_size: int,
    act_order: bool,
    sym: bool = True,
    seed: int = 0,
    n_layer: int | None = None,
    progress: Progress | None = None,
) -> ShapedGPTQ:
    """Write a `shape`-shaped AutoGPTQ Llama folder with random weights (the same files for
    the same arguments). `n_layer` overrides the shape's layer count; `progress(done,
    total)` is called with bytes of model.safetensors after each tensor."""
    shape = SHAPES[shape] if isinstance(shape, str) else shape
    if n_layer is not None:
        shape = dataclasses.replace(shape, n_layer=n_layer)
    spec = GPTQSpec(bits=bits, group_size=group_size, sym=sym, act_order=act_order)
    for n_out, n_in in linear_shapes(shape).values():
        if n_in % 32 or n_out % 32:
            raise ValueError(f"GPTQ needs linear sizes divisible by 32, got {n_out}x{n_in}")
    folder = Path(folder)
    write_side_files(folder, shape, spec)
    entries = tensor_entries(shape, spec)
    total = sum(entry.nbytes for entry in entries)
    path = folder / MODEL_FILE
    writer = StreamingSafetensorsWriter(path, entries, safetensors_metadata(spec))
    done = 0
    try:
        for name, tensor in random_tensors(shape, spec, seed):
            writer.write(name, tensor)
            done += writer.entries[name].nbytes
            if progress is not None:
                progress(done, total)
    except BaseException:
        writer.discard()
        path.unlink(missing_ok=True)
        raise
    writer.close()
    return ShapedGPTQ(
        path=folder, size=path.stat().st_size, n_params=dense_params(shape), spec=spec
    )
