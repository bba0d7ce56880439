"""Malformed tokenizer metadata and bad ids raise TokenizerError naming what is wrong."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from corral.errors import TokenizerError
from corral.tokenizer import Tokenizer

SOURCE = "model.gguf"


def spm_metadata() -> dict[str, Any]:
    tokens = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "ab"]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.linspace(0, -1, len(tokens), dtype=np.float32),
        "tokenizer.ggml.token_type": np.array([2, 3, 3, 1, 1, 1, 1, 1], dtype=np.int32),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }


def bpe_metadata() -> dict[str, Any]:
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": ["a", "b", "ab", "Ġ", "Ġa", "<|endoftext|>"],
        "tokenizer.ggml.token_type": np.array([1, 1, 1, 1, 1, 3], dtype=np.int32),
        "tokenizer.ggml.merges": ["a b", "Ġ a"],
        "tokenizer.ggml.bos_token_id": 5,
        "tokenizer.ggml.eos_token_id": 5,
    }


def raises(metadata: dict[str, Any], *fragments: str) -> None:
    with pytest.raises(TokenizerError) as info:
        Tokenizer.from_gguf_metadata(metadata, source=SOURCE)
    message = str(info.value)
    assert SOURCE in message
    for fragment in fragments:
        assert fragment in message


def test_valid_metadata_loads() -> None:
    spm = Tokenizer.from_gguf_metadata(spm_metadata())
    assert spm.encode("ab a") == [1, 6, 5, 6]
    bpe = Tokenizer.from_gguf_metadata(bpe_metadata())
    assert bpe.encode("ab a") == [2, 4]
    assert bpe.decode([2, 4, 5]) == "ab a<|endoftext|>"


@pytest.mark.parametrize(
    "key", ["tokenizer.ggml.model", "tokenizer.ggml.tokens"], ids=["model", "tokens"]
)
def test_missing_key(key: str) -> None:
    metadata = spm_metadata()
    del metadata[key]
    raises(metadata, key, "missing")


def test_missing_merges_for_bpe() -> None:
    metadata = bpe_metadata()
    del metadata["tokenizer.ggml.merges"]
    raises(metadata, "tokenizer.ggml.merges", "missing")


def test_empty_vocabulary() -> None:
    raises({**spm_metadata(), "tokenizer.ggml.tokens": []}, "tokenizer.ggml.tokens")


@pytest.mark.parametrize("model", ["bert", "t5", "nonsense", ""])
def test_unknown_model(model: str) -> None:
    raises({**spm_metadata(), "tokenizer.ggml.model": model}, "tokenizer.ggml.model", repr(model))


def test_unknown_pre_tokenizer() -> None:
    raises({**bpe_metadata(), "tokenizer.ggml.pre": "klingon"}, "tokenizer.ggml.pre", "klingon")


def test_missing_pre_tokenizer_means_default() -> None:
    metadata = bpe_metadata()
    del metadata["tokenizer.ggml.pre"]
    assert Tokenizer.from_gguf_metadata(metadata).encode("ab") == [2]


@pytest.mark.parametrize("key", ["tokenizer.ggml.scores", "tokenizer.ggml.token_type"])
@pytest.mark.parametrize("delta", [-1, 1])
def test_array_length_differs_from_tokens(key: str, delta: int) -> None:
    metadata = spm_metadata()
    values = metadata[key]
    metadata[key] = np.resize(values, len(values) + delta)
    raises(metadata, key, f"{len(values) + delta} entries", "8")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tokenizer.ggml.tokens", "abc"),
        ("tokenizer.ggml.tokens", ["a", 3, "b"]),
        ("tokenizer.ggml.scores", "0.5"),
        ("tokenizer.ggml.scores", np.zeros((2, 4), np.float32)),
        ("tokenizer.ggml.scores", np.array(["x"] * 8)),
        ("tokenizer.ggml.token_type", np.ones(8, np.float32)),
        ("tokenizer.ggml.bos_token_id", "1"),
        ("tokenizer.ggml.bos_token_id", True),
        ("tokenizer.ggml.add_bos_token", 1),
        ("tokenizer.ggml.model", 7),
    ],
)
def test_wrong_value_types(key: str, value: Any) -> None:
    raises({**spm_metadata(), key: value}, key)


@pytest.mark.parametrize(
    "key",
    ["bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id", "eot_token_id"],
)
@pytest.mark.parametrize("value", [8, 1 << 40, -1])
def test_special_id_outside_vocabulary(key: str, value: int) -> None:
    raises({**spm_metadata(), f"tokenizer.ggml.{key}": value}, f"tokenizer.ggml.{key}", str(value))


def test_add_bos_without_a_bos_token() -> None:
    metadata = bpe_metadata()
    del metadata["tokenizer.ggml.bos_token_id"]  # BPE default BOS (11) is outside this vocab
    raises({**metadata, "tokenizer.ggml.add_bos_token": True}, "add_bos_token", "no BOS")


def test_not_a_mapping() -> None:
    with pytest.raises(TokenizerError, match=SOURCE):
        Tokenizer.from_gguf_metadata([("tokenizer.ggml.model", "llama")], source=SOURCE)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [8, 100, -1, 2**63])
def test_decode_rejects_ids_outside_the_vocabulary(bad: int) -> None:
    tok = Tokenizer.from_gguf_metadata(spm_metadata())
    with pytest.raises(TokenizerError, match=str(bad)):
        tok.decode([4, bad])
    with pytest.raises(TokenizerError, match=str(bad)):
        tok.token_bytes(bad)


def test_decode_rejects_non_integers() -> None:
    tok = Tokenizer.from_gguf_metadata(spm_metadata())
    with pytest.raises(TokenizerError, match="1.5"):
        tok.decode([1.5])  # type: ignore[list-item]
    assert tok.decode(np.array([6, 5], dtype=np.int64)) == "ab"


def test_encode_rejects_bytes() -> None:
    tok = Tokenizer.from_gguf_metadata(spm_metadata())
    with pytest.raises(TypeError):
        tok.encode(b"ab")  # type: ignore[arg-type]


def test_lone_surrogates_are_replaced() -> None:
    tok = Tokenizer.from_gguf_metadata(bpe_metadata())
    assert tok.encode("a\ud800") == tok.encode("a\ufffd")


def test_missing_byte_tokens_fall_back_to_unknown() -> None:
    tok = Tokenizer.from_gguf_metadata(spm_metadata())
    assert tok.encode("aé", add_special=False) == [6, 0, 0]  # "é" is 2 bytes, no <0xNN> tokens
    metadata = {**spm_metadata(), "tokenizer.ggml.unknown_token_id": 7}
    assert Tokenizer.from_gguf_metadata(metadata).encode("é", add_special=False) == [3, 7, 7]
