"""Tokenizer.encode_parts: special tokens are read only in template text."""

from __future__ import annotations

import random

import pytest
from chat_refs import smollm2_path

from corral.tokenizer import Tokenizer
from tests.reference_data import llama_cpp_source
from tests.tokenizer.tokenizer_data import tokenizer_for as corral_tokenizer


def test_special_text_in_content_stays_plain_text(smol: Tokenizer) -> None:
    parts = [("<|im_start|>user\n", True), ("Hi <|im_end|> x", False), ("<|im_end|>\n", True)]
    im_start, im_end = smol.token_id("<|im_start|>"), smol.token_id("<|im_end|>")
    ids = smol.encode_parts(parts)
    assert ids == (
        smol.encode("<|im_start|>user\n", parse_special=True)
        + smol.encode("Hi <|im_end|> x", parse_special=False)
        + smol.encode("<|im_end|>\n", parse_special=True)
    )
    assert ids.count(im_start) == 1 and ids.count(im_end) == 1
    assert smol.decode(ids) == "".join(text for text, _ in parts)


def test_equals_encode_with_special_tokens_when_content_is_clean(smol: Tokenizer) -> None:
    parts = [("<|im_start|>user\n", True), ("Hello, world!\n\n", False), ("<|im_end|>\n", True)]
    joined = "".join(text for text, _ in parts)
    assert smol.encode_parts(parts) == smol.encode(joined, parse_special=True)


@pytest.mark.parametrize("name", ["llama-spm", "llama-bpe", "phi-3", "smollm2"])
def test_equals_encode_on_random_parts(name: str) -> None:
    path = (
        smollm2_path() if name == "smollm2" else llama_cpp_source(f"models/ggml-vocab-{name}.gguf")
    )
    tok = corral_tokenizer(path)
    control = [tok.token_text(t) for t in range(tok.vocab_size) if tok.is_control(t)][:20]
    plain = ["a", "b", " ", "  ", "\n", "x y", "é", "<", "|", "1234", "\t"]
    rng = random.Random(3)
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(0, 6)):
            special = rng.random() < 0.5
            pieces = rng.choices(plain + control if special else plain, k=rng.randint(0, 5))
            parts.append(("".join(pieces), special))
        joined = "".join(text for text, _ in parts)
        assert tok.encode_parts(parts) == tok.encode(joined, parse_special=True), parts


def test_raw_text_across_parts_is_one_piece(spm: Tokenizer) -> None:
    parts = [("[INST] Hel", True), ("lo wor", False), ("ld [/INST]", True)]
    assert spm.encode_parts(parts) == spm.encode("[INST] Hello world [/INST]")


def test_no_double_bos(spm: Tokenizer) -> None:
    bos = spm.bos_id
    ids = spm.encode_parts([("<s>[INST] ", True), ("hi", False), (" [/INST]", True)])
    assert ids[:2] == [bos, spm.encode("[INST]", add_special=False)[0]]
    assert ids.count(bos) == 1
    assert spm.encode_parts([("[INST] ", True), ("hi", False)])[0] == bos
    assert bos not in spm.encode_parts([("<s>", False)], add_special=False)


def test_a_token_is_not_read_across_a_boundary(smol: Tokenizer) -> None:
    ids = smol.encode_parts([("<|im_", True), ("end|>", False)])
    assert smol.token_id("<|im_end|>") not in ids


def test_rstrip_tokens_strip_across_boundaries() -> None:
    tok = corral_tokenizer(llama_cpp_source("models/ggml-vocab-phi-3.gguf"))
    parts = [("<|user|>", True), ("  \n", False), (" hi", False), ("<|end|>", True)]
    assert tok.encode_parts(parts) == tok.encode("<|user|>  \n hi<|end|>", parse_special=True)
    assert tok.encode_parts(parts) == tok.encode_parts([("<|user|>", True), ("hi<|end|>", True)])


def test_bad_parts(smol: Tokenizer) -> None:
    with pytest.raises(TypeError, match=r"parts\[1\]"):
        smol.encode_parts([("a", True), "b"])  # type: ignore[list-item]
    assert smol.encode_parts([]) == smol.encode("")
