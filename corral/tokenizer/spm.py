"""SentencePiece-style BPE (``tokenizer.ggml.model == "llama"``), as llama.cpp's llm_tokenizer_spm.

The text (spaces already written as "▁") starts as one symbol per character. A heap holds
every adjacent pair whose concatenation is a token, best score first (leftmost on ties); the
best pair is merged and its new neighbours queued, until no pair is left. Symbols that are
not tokens fall back to byte tokens (``<0xNN>``), or to the unknown token where a byte has
none (llama.cpp aborts there).

When no token contains "▁" right after another character (true of Llama's and Phi-3's
vocabularies), no merge can join the text before such a "▁" with the text after it, so the
text is cut there into words that are merged on their own and cached; the result is the same.
"""

from __future__ import annotations

import functools
import heapq
import re

_INNER_SPACE = re.compile("[^\u2581]\u2581")
_WORDS = re.compile("\u2581*[^\u2581]+|\u2581+")
_WORD_CACHE_SIZE = 1 << 16


class SpmModel:
    """Encodes text (escaped, without special tokens) into token ids."""

    def __init__(self, token_to_id: dict[str, int], scores: list[float], unk_id: int) -> None:
        self._token_to_id = token_to_id
        self._scores = scores
        self._byte_ids = [self._byte_token(b, unk_id) for b in range(256)]
        self._by_words = not any(_INNER_SPACE.search(text) for text in token_to_id)
        self._encode_word = functools.lru_cache(maxsize=_WORD_CACHE_SIZE)(self._encode_symbols)

    def _byte_token(self, byte: int, unk_id: int) -> int:
        """llama.cpp's byte_to_token: "<0xNN>", else the one-character token, else unknown."""
        token = self._token_to_id.get(f"<0x{byte:02X}>")
        if token is None and byte < 0x80:
            token = self._token_to_id.get(chr(byte))
        return unk_id if token is None else token

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""
        if not self._by_words:
            return list(self._encode_symbols(text))
        ids: list[int] = []
        for word in _WORDS.findall(text):
            ids.extend(self._encode_word(word))
        return ids

    def _encode_symbols(self, text: str) -> tuple[int, ...]:
        """Token ids of `text`, merged as one sequence of symbols."""
        n = len(text)
        if n == 0:
            return ()
        token_to_id = self._token_to_id
        scores = self._scores
        # Symbol i starts at character i; merging grows the left symbol and empties the right.
        size = [1] * n
        prev = list(range(-1, n - 1))
        nxt = [*range(1, n), -1]
        heap: list[tuple[float, int, int, int]] = []  # (-score, left, right, merged size)

        def push(left: int, right: int) -> None:
            merged = text[left : right + size[right]]
            token = token_to_id.get(merged)
            if token is not None:
                heapq.heappush(heap, (-scores[token], left, right, len(merged)))

        for i in range(n - 1):
            push(i, i + 1)
        while heap:
            _, left, right, merged_size = heapq.heappop(heap)
            size_l, size_r = size[left], size[right]
            if size_l == 0 or size_r == 0 or size_l + size_r != merged_size:
                continue  # outdated: one side was merged since
            size[left] = merged_size
            size[right] = 0
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prev[after] = left
            if prev[left] >= 0:
                push(prev[left], left)
            if after >= 0:
                push(left, after)
        return self._emit(text, size, nxt)

    def _emit(self, text: str, size: list[int], nxt: list[int]) -> tuple[int, ...]:
        """Ids of the final symbols; a symbol that is no token becomes its byte tokens."""
        ids: list[int] = []
        i = 0
        while i >= 0:
            symbol = text[i : i + size[i]]
            token = self._token_to_id.get(symbol)
            if token is not None:
                ids.append(token)
            else:
                ids.extend(self._byte_ids[byte] for byte in symbol.encode("utf-8"))
            i = nxt[i]
        return tuple(ids)
