"""corral's tokenizer against llama.cpp's own test vocabularies and vectors.

llama.cpp's tests/test-tokenizer-0.cpp tokenizes each input of models/ggml-vocab-*.gguf.inp
with add_special=false, parse_special=false and compares with the ids in the .out file; it
prints the detokenized result (common_detokenize: no special tokens removed, control tokens
rendered), which tests/golden/tokenizer_llama_cpp_vocabs.json holds as llama.cpp made it.
"""

from __future__ import annotations

import numpy as np
import pytest
from tokenizer_data import (
    corral_metadata,
    expected_encoding,
    flags_of,
    gguf_py_metadata,
    golden,
    read_vectors,
    tokenizer_for,
    vocab_path,
)

from corral.tokenizer import Tokenizer

GOLDEN = golden("tokenizer_llama_cpp_vocabs.json")
VOCABS = tuple(GOLDEN["vocabs"])
REQUIRED = {"llama-spm", "llama-bpe", "gpt-2"}


def test_golden_covers_the_required_vocabularies() -> None:
    assert REQUIRED <= set(VOCABS)


@pytest.mark.parametrize("name", VOCABS)
def test_tokens_equal_llama_cpp_vectors(name: str) -> None:
    tok = tokenizer_for(vocab_path(name))
    vectors = read_vectors(name)
    assert len(vectors) > 30
    for text, expected in vectors:
        assert tok.encode(text, add_special=False, parse_special=False) == expected, repr(text)


@pytest.mark.parametrize("name", VOCABS)
def test_detokenize_equals_llama_cpp(name: str) -> None:
    tok = tokenizer_for(vocab_path(name))
    vectors = read_vectors(name)
    recorded = GOLDEN["vocabs"][name]["vectors"]
    assert [case["text"] for case in recorded] == [text for text, _ in vectors]
    for (text, ids), case in zip(vectors, recorded, strict=True):
        assert tok.decode(ids) == case["detok"], repr(text)


@pytest.mark.parametrize("name", VOCABS)
def test_decode_of_encode_round_trips_without_space_cleaning(name: str) -> None:
    tok = tokenizer_for(vocab_path(name))
    for text, _ in read_vectors(name):
        ids = tok.encode(text, add_special=False)
        assert tok.decode(ids, clean_spaces=False) == text
        assert tok.decode(tok.encode(text), skip_special=True, clean_spaces=False) == text


@pytest.mark.parametrize("name", VOCABS)
def test_special_tokens_in_text_match_llama_cpp(name: str) -> None:
    tok = tokenizer_for(vocab_path(name))
    for case in GOLDEN["vocabs"][name]["special"]:
        for key, ids in case["tokens"].items():
            add_special, parse_special = flags_of(key)
            got = tok.encode(case["text"], add_special=add_special, parse_special=parse_special)
            assert got == expected_encoding(tok, ids, add_special), (case["text"], key)
        ids = case["tokens"]["a1p1"]
        assert tok.decode(ids) == case["detok"]["r0u1"]
        skipped = tok.decode(ids, skip_special=True)
        llama = case["detok"]["r1u0"]
        # Only allowed difference: the SentencePiece space after a dropped BOS goes too.
        assert skipped == llama or (
            tok.add_space_prefix and ids[0] == tok.bos_id and llama == " " + skipped
        )


@pytest.mark.parametrize("name", VOCABS)
def test_end_of_generation_ids_match_llama_cpp(name: str) -> None:
    tok = tokenizer_for(vocab_path(name))
    assert tok.eog_ids == frozenset(GOLDEN["vocabs"][name]["eog_ids"])
    assert all(tok.is_eog(t) for t in tok.eog_ids)
    assert tok.eos_id is None or tok.is_eog(tok.eos_id)


def test_gguf_py_metadata_gives_the_same_tokenizer() -> None:
    path = vocab_path("llama-spm")
    ours, theirs = corral_metadata(path), gguf_py_metadata(path)
    for key, value in theirs.items():
        if key.startswith("tokenizer."):
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(ours[key], value)
            else:
                assert ours[key] == value, key
    tok = Tokenizer.from_gguf_metadata(theirs, source=str(path))
    for text, expected in read_vectors("llama-spm"):
        assert tok.encode(text, add_special=False) == expected


def test_llama_spm_flags() -> None:
    tok = tokenizer_for(vocab_path("llama-spm"))
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.eos_id, tok.unk_id) == ("spm", 32000, 1, 2, 0)
    assert tok.add_bos and not tok.add_eos and tok.add_space_prefix
    assert tok.encode("Hello") == [1, 15043]
    assert tok.encode("") == [1]
    assert tok.encode("", add_special=False) == []
    assert tok.decode([1, 15043]) == "<s> Hello"
    assert tok.decode([1, 15043], skip_special=True) == "Hello"
    assert tok.token_bytes(15043) == b" Hello"
    assert tok.token_bytes(1) == b"" and tok.token_bytes(1, special=True) == b"<s>"
    assert tok.token_text(15043) == "\u2581Hello" and tok.token_id("\u2581Hello") == 15043


def test_llama_bpe_flags() -> None:
    tok = tokenizer_for(vocab_path("llama-bpe"))
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.eos_id) == ("bpe", 128256, 128000, 128001)
    assert tok.add_bos and not tok.add_space_prefix
    eot = tok.token_id("<|eot_id|>")
    assert eot is not None and tok.is_eog(eot) and tok.eot_id == eot
    text = "<|begin_of_text|>Hi<|eot_id|>"
    assert tok.encode(text, parse_special=True) == [128000, 13347, eot]  # no second BOS
    assert tok.encode(text)[0] == 128000 and len(tok.encode(text)) > 3
