"""StreamingDetokenizer: UTF-8-safe incremental text that adds up to decode()."""

from __future__ import annotations

import random

import pytest
from tokenizer_data import golden, smollm2_path, tokenizer_for, vocab_path

from corral.errors import TokenizerError
from corral.tokenizer import StreamingDetokenizer, Tokenizer

MULTIBYTE = "Llamas 🦙 say 你好世界 and 😶‍🌫️ — ok? naïve ✅ 한국어"


def stream_all(tok: Tokenizer, ids: list[int], **kwargs: bool) -> list[str]:
    """Each push's text, then the flush's."""
    stream = StreamingDetokenizer(tok, **kwargs)
    return [stream.push(t) for t in ids] + [stream.flush()]


@pytest.fixture(scope="module")
def spm() -> Tokenizer:
    return tokenizer_for(vocab_path("llama-spm"))


def test_spm_emoji_comes_from_byte_tokens(spm: Tokenizer) -> None:
    ids = spm.encode("🦙", add_special=False)
    assert [spm.token_text(t) for t in ids] == ["\u2581", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    parts = stream_all(spm, ids)
    assert parts == ["", "", "", "", "🦙", ""]  # the leading space is stripped, bytes held


@pytest.mark.parametrize("vocab", ["llama-spm", "gpt-2", "llama-bpe", "smollm2"])
@pytest.mark.parametrize("add_special", [False, True])
def test_streamed_text_is_never_broken_and_adds_up(vocab: str, add_special: bool) -> None:
    tok = tokenizer_for(smollm2_path() if vocab == "smollm2" else vocab_path(vocab))
    ids = tok.encode(MULTIBYTE, add_special=add_special)
    assert any(not tok.token_bytes(t).decode("utf-8", errors="ignore") for t in ids[1:]), (
        "expected some tokens that carry only part of a character"
    )
    for skip_special in (True, False):
        parts = stream_all(tok, ids, skip_special=skip_special)
        assert not any("\ufffd" in part for part in parts)
        assert "".join(parts) == tok.decode(ids, skip_special=skip_special)
    assert "".join(stream_all(tok, ids)) == MULTIBYTE


def test_incomplete_utf8_becomes_replacement_at_flush(spm: Tokenizer) -> None:
    ids = [spm.token_id("<0xE4>"), spm.token_id("<0xBD>")]
    stream = StreamingDetokenizer(spm)
    assert [stream.push(t) for t in ids] == ["", ""]
    assert stream.flush() == "\ufffd"
    assert spm.decode(ids) == "\ufffd"


def test_invalid_bytes_become_replacement(spm: Tokenizer) -> None:
    ids = [spm.token_id("<0xFF>"), spm.token_id("\u2581Hello"), spm.token_id("<0xC3>")]
    parts = stream_all(spm, ids)
    assert parts == ["\ufffd", " Hello", "", "\ufffd"]
    assert "".join(parts) == spm.decode(ids) == "\ufffd Hello\ufffd"


def test_flush_starts_a_new_sequence(spm: Tokenizer) -> None:
    stream = StreamingDetokenizer(spm)
    ids = spm.encode("Hello world")
    first = "".join([*map(stream.push, ids), stream.flush()])
    second = "".join([*map(stream.push, ids), stream.flush()])
    assert first == second == "Hello world"


def test_special_tokens_rendered_or_skipped(spm: Tokenizer) -> None:
    ids = [spm.bos_id, *spm.encode("Hi", add_special=False), spm.eos_id]
    assert "".join(stream_all(spm, ids)) == "Hi"
    assert "".join(stream_all(spm, ids, skip_special=False)) == "<s> Hi</s>"


@pytest.mark.parametrize("vocab", ["gpt-2", "llama-bpe"])
def test_space_cleaning_streams_like_llama_cpp_detokenize(vocab: str) -> None:
    tok = tokenizer_for(vocab_path(vocab))
    cases = golden("tokenizer_llama_cpp_vocabs.json")["vocabs"][vocab]["special"]
    case = next(c for c in cases if c["text"].startswith("Hello , world"))
    ids, detok = case["tokens"]["a1p1"], case["detok"]
    assert detok["r1u0"] != case["text"]  # llama.cpp cleaned spaces
    assert "".join(stream_all(tok, ids, skip_special=False)) == detok["r0u1"]
    assert "".join(stream_all(tok, ids, skip_special=True)) == detok["r1u0"]
    assert "".join(stream_all(tok, ids, clean_spaces=False)) == case["text"]


def test_push_rejects_ids_outside_the_vocabulary(spm: Tokenizer) -> None:
    stream = StreamingDetokenizer(spm)
    with pytest.raises(TokenizerError, match="32000"):
        stream.push(32000)
    with pytest.raises(TokenizerError, match="-1"):
        stream.push(-1)


@pytest.mark.parametrize("vocab", ["llama-spm", "gpt-2", "smollm2"])
def test_random_id_sequences_stream_like_decode(vocab: str) -> None:
    tok = tokenizer_for(smollm2_path() if vocab == "smollm2" else vocab_path(vocab))
    rng = random.Random(vocab)
    specials = [t for t in (tok.bos_id, tok.eos_id) if t is not None]
    for _ in range(300):
        ids = [
            rng.choice(specials) if rng.random() < 0.1 else rng.randrange(tok.vocab_size)
            for _ in range(rng.randint(0, 12))
        ]
        for skip_special in (True, False):
            for clean_spaces in (True, False):
                kwargs = {"skip_special": skip_special, "clean_spaces": clean_spaces}
                assert "".join(stream_all(tok, ids, **kwargs)) == tok.decode(ids, **kwargs), ids
