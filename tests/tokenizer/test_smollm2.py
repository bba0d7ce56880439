"""SmolLM2-135M-Instruct (BPE, pre "smollm", ChatML) against llama.cpp's tokenizer.

tests/golden/tokenizer_smollm2.json is written by scripts/golden/make_tokenizer_golden.py
with llama-cpp-python: tokens for every (add_bos, special) combination, llama_detokenize
with every (remove_special, unparse_special) combination, token pieces and EOG ids.
"""

from __future__ import annotations

import hashlib

import pytest
from tokenizer_data import expected_encoding, flags_of, golden, smollm2_path, tokenizer_for

from corral.tokenizer import StreamingDetokenizer, Tokenizer

GOLDEN = golden("tokenizer_smollm2.json")
CASES = GOLDEN["cases"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return tokenizer_for(smollm2_path())


def test_model_file_is_the_one_the_golden_data_was_made_from() -> None:
    digest = hashlib.sha256(smollm2_path().read_bytes()).hexdigest()
    assert digest == GOLDEN["model_sha256"]


def test_vocabulary_facts(tok: Tokenizer) -> None:
    assert tok.kind == "bpe"
    assert tok.vocab_size == GOLDEN["n_tokens"]
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (
        GOLDEN["bos_id"],
        GOLDEN["eos_id"],
        GOLDEN["add_bos"],
    )
    assert not tok.add_eos and not tok.add_space_prefix
    assert tok.eog_ids == frozenset(GOLDEN["eog_ids"])
    control = set(GOLDEN["control_ids"])
    assert {t for t in range(tok.vocab_size) if tok.is_control(t)} == control


@pytest.mark.parametrize("case", CASES, ids=[repr(c["text"])[:40] for c in CASES])
def test_encode_matches_llama_cpp(tok: Tokenizer, case: dict) -> None:
    for key, ids in case["tokens"].items():
        add_special, parse_special = flags_of(key)
        got = tok.encode(case["text"], add_special=add_special, parse_special=parse_special)
        assert got == expected_encoding(tok, ids, add_special), key


@pytest.mark.parametrize("case", CASES, ids=[repr(c["text"])[:40] for c in CASES])
def test_decode_matches_llama_cpp(tok: Tokenizer, case: dict) -> None:
    ids = case["tokens"]["a1p1"]
    assert tok.decode(ids) == case["detok"]["r0u1"]
    assert tok.decode(ids, skip_special=True) == case["detok"]["r1u0"]


@pytest.mark.parametrize("case", CASES, ids=[repr(c["text"])[:40] for c in CASES])
def test_streaming_equals_decode(tok: Tokenizer, case: dict) -> None:
    ids = case["tokens"]["a1p1"]
    for skip_special in (True, False):
        stream = StreamingDetokenizer(tok, skip_special=skip_special)
        parts = [stream.push(t) for t in ids]
        parts.append(stream.flush())
        assert "".join(parts) == tok.decode(ids, skip_special=skip_special)


def test_chatml_special_tokens(tok: Tokenizer) -> None:
    text = "<|im_start|>user\nHi<|im_end|>"
    start, end = tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")
    parsed = tok.encode(text, parse_special=True)
    assert parsed[0] == start and parsed[-1] == end
    plain = tok.encode(text)
    assert start not in plain and end not in plain
    assert end is not None and tok.is_eog(end)
    assert tok.decode(parsed, skip_special=True) == "user\nHi"
    assert tok.decode(parsed) == text


def test_token_pieces_match_llama_cpp(tok: Tokenizer) -> None:
    pieces = GOLDEN["pieces"]
    assert len(pieces) > 400
    for token, piece in pieces.items():
        assert tok.token_bytes(int(token)).hex() == piece["plain"], token
        assert tok.token_bytes(int(token), special=True).hex() == piece["special"], token
