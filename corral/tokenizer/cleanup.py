"""llama.cpp's ``clean_spaces`` pass of detokenization, in one piece or streamed.

Vocabularies whose pre-tokenizer asks for it (GPT-2, Llama-3, default BPE) have their decoded
text cleaned like HF's ``clean_up_tokenization_spaces``. llama.cpp does it in three passes
over the bytes (``llama_vocab::impl::detokenize``), each equal to one regex substitution:

1. drop a space before ``?``, ``!``, ``.`` or ``,``;
2. turn ``" ' "`` into ``"'"`` (left to right, matches do not overlap);
3. drop a space before ``'s``, ``'m``, ``'re`` or ``'ve``.

:class:`SpaceCleaner` runs them on a stream: each pass holds back the few trailing bytes whose
fate depends on bytes not seen yet, so any chunking gives the same text as one call.
"""

from __future__ import annotations

import re

_BEFORE_PUNCT = re.compile(rb" (?=[?!.,])")
_QUOTE_BETWEEN_SPACES = re.compile(rb" ' ")
_BEFORE_CONTRACTION = re.compile(rb" (?='(?:[sm]|re|ve))")


def _held_pass1(data: bytes) -> int:
    """Bytes at the end of `data` that pass 1 cannot decide yet."""
    return 1 if data.endswith(b" ") else 0


def _held_pass2(data: bytes) -> int:
    """Bytes at the end of `data` that could start a pass-2 match still to be completed."""
    last_end = 0
    for found in _QUOTE_BETWEEN_SPACES.finditer(data):
        last_end = found.end()
    tail = data[last_end:]
    if tail.endswith(b" '"):
        return 2
    return 1 if tail.endswith(b" ") else 0


def _held_pass3(data: bytes) -> int:
    """Bytes at the end of `data` whose space pass 3 cannot decide yet."""
    for suffix in (b" 'r", b" 'v", b" '", b" "):
        if data.endswith(suffix):
            return len(suffix)
    return 0


_PASSES = (
    (_BEFORE_PUNCT, b"", _held_pass1),
    (_QUOTE_BETWEEN_SPACES, b"'", _held_pass2),
    (_BEFORE_CONTRACTION, b"", _held_pass3),
)


def clean_spaces(data: bytes) -> bytes:
    """The three passes applied to the whole of `data`."""
    for pattern, replacement, _ in _PASSES:
        data = pattern.sub(replacement, data)
    return data


class SpaceCleaner:
    """Streaming :func:`clean_spaces`: ``feed`` chunks, then ``finish`` once."""

    def __init__(self) -> None:
        self._held = [b"", b"", b""]

    def feed(self, data: bytes) -> bytes:
        """Cleaned bytes that no later input can change."""
        for stage, (pattern, replacement, held_count) in enumerate(_PASSES):
            data = self._held[stage] + data
            keep = held_count(data)
            cut = len(data) - keep
            self._held[stage] = data[cut:]
            data = pattern.sub(replacement, data[:cut])
        return data

    def finish(self) -> bytes:
        """Everything still held (end of input decides the pending cases); resets the state."""
        out = b""
        for stage, (pattern, replacement, _) in enumerate(_PASSES):
            out = pattern.sub(replacement, self._held[stage] + out)
            self._held[stage] = b""
        return out
