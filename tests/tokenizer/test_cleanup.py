"""The clean_spaces pass, in one piece and streamed, against llama.cpp's loops.

`llama_cpp_clean` transcribes the three passes of llama_vocab::impl::detokenize
(src/llama-vocab.cpp) line by line, in-place buffer and all, as the oracle.
"""

from __future__ import annotations

import random

import pytest

from corral.tokenizer.cleanup import SpaceCleaner, clean_spaces


def llama_cpp_clean(data: bytes) -> bytes:
    text = bytearray(data)
    total = len(text)
    # first pass: characters ?!.,
    total1 = total
    total = 1 if total else 0
    for i in range(1, total1):
        x = text[i]
        if text[i - 1] == ord(" ") and x in b"?!.,":
            total -= 1
        text[total] = x
        total += 1
    # second pass: strip single apostrophe between spaces
    total2 = total
    total = 1 if total else 0
    i = 1
    while i < total2:
        x = text[i]
        if x == ord("'") and i + 1 < total2 and text[i - 1] == ord(" ") and text[i + 1] == ord(" "):
            total -= 1
            i += 1
            text[i] = 0
        text[total] = x
        total += 1
        i += 1
    # third pass: apostrophe contractions
    total3 = total
    total = 1 if total else 0
    for i in range(1, total3):
        x = text[i]
        if text[i - 1] == ord(" ") and x == ord("'") and i + 1 < total3:
            x1 = text[i + 1]
            if x1 in b"sm":
                total -= 1
            elif x1 not in b"td" and i + 2 < total3:
                if bytes([x1, text[i + 2]]) in (b"re", b"ve"):
                    total -= 1
        text[total] = x
        total += 1
    return bytes(text[:total])


def random_bytes(rng: random.Random) -> bytes:
    return bytes(rng.choice(b"  ''smtdrvle?!.,x") for _ in range(rng.randint(0, 24)))


def test_examples() -> None:
    assert clean_spaces(b"Hello , world . ") == b"Hello, world. "
    assert clean_spaces(b"a ' b ' ' c") == llama_cpp_clean(b"a ' b ' ' c") == b"a'b'' c"
    assert clean_spaces(b"it 's I 'm we 're you 've they 'll he 'd don 't") == (
        b"it's I'm we're you've they 'll he 'd don 't"
    )


@pytest.mark.parametrize("seed", range(4))
def test_matches_llama_cpp_loops(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(3000):
        data = random_bytes(rng)
        assert clean_spaces(data) == llama_cpp_clean(data), data


@pytest.mark.parametrize("seed", range(4))
def test_streaming_is_independent_of_chunking(seed: int) -> None:
    rng = random.Random(100 + seed)
    for _ in range(2000):
        data = random_bytes(rng)
        cleaner = SpaceCleaner()
        out = b""
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 4)
            out += cleaner.feed(data[pos : pos + step])
            pos += step
        out += cleaner.finish()
        assert out == llama_cpp_clean(data), data
