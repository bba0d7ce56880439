"""Byte-level BPE (``tokenizer.ggml.model == "gpt2"``), as llama.cpp's llm_tokenizer_bpe.

Text is split by the pre-tokenizer, each pre-token is written as GPT-2 byte-level characters
and merged on its own: the adjacent pair with the lowest merge rank (leftmost on ties) is
merged until no ranked pair is left, using a heap of candidate pairs. Results are cached per
pre-token, so repeated words cost one dictionary lookup.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Sequence

from corral.tokenizer.pretokenizers import PreTokenizer
from corral.tokenizer.unicode import byte_encode

_WORD_CACHE_SIZE = 1 << 16


def merge_ranks(merges: Sequence[str]) -> dict[str, int]:
    """Rank of each merge keyed by its "left right" text; the first occurrence wins.

    llama.cpp splits a merge at its first space after position 0; an entry without one
    never matches, so it is left out.
    """
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        if merge.find(" ", 1) > 0:
            ranks.setdefault(merge, rank)
    return ranks


class BpeModel:
    """Encodes text (without special tokens) into token ids."""

    def __init__(
        self, token_to_id: dict[str, int], ranks: dict[str, int], pre: PreTokenizer
    ) -> None:
        self._token_to_id = token_to_id
        self._ranks = ranks
        self._pre = pre
        self.encode_word = functools.lru_cache(maxsize=_WORD_CACHE_SIZE)(self._encode_word)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""
        ids: list[int] = []
        for word in self._pre.split(text):
            ids.extend(self.encode_word(word))
        return ids

    def _encode_word(self, word: str) -> tuple[int, ...]:
        """Token ids of one pre-token."""
        encoded = byte_encode(word)
        if self._pre.ignore_merges and encoded in self._token_to_id:
            return (self._token_to_id[encoded],)
        ids: list[int] = []
        for symbol in self._merge(encoded):
            token = self._token_to_id.get(symbol)
            if token is not None:
                ids.append(token)
                continue
            # llama.cpp falls back to single-byte tokens of the symbol's UTF-8 text; only
            # ASCII bytes can name a token, the others are dropped.
            for byte in symbol.encode("utf-8"):
                token = self._token_to_id.get(chr(byte)) if byte < 0x80 else None
                if token is not None:
                    ids.append(token)
        return tuple(ids)

    def _merge(self, word: str) -> list[str]:
        """The symbols left after applying the ranked merges to the characters of `word`."""
        n = len(word)
        if n < 2:
            return [word] if word else []
        ranks = self._ranks
        # Symbol i starts at character i; merging grows the left symbol and empties the right.
        size = [1] * n
        prev = list(range(-1, n - 1))
        nxt = [*range(1, n), -1]
        heap: list[tuple[int, int, int, int, int]] = []  # (rank, left, right, size_l, size_r)
        for i in range(n - 1):
            rank = ranks.get(word[i] + " " + word[i + 1])
            if rank is not None:
                heap.append((rank, i, i + 1, 1, 1))
        heapq.heapify(heap)
        while heap:
            _, left, right, size_l, size_r = heapq.heappop(heap)
            if size[left] != size_l or size[right] != size_r:
                continue  # outdated: one side was merged since
            size[left] = size_l + size_r
            size[right] = 0
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prev[after] = left
            before = prev[left]
            if before >= 0:
                self._push(heap, word, before, left, size)
            if after >= 0:
                self._push(heap, word, left, after, size)
        symbols = []
        i = 0
        while i >= 0:
            symbols.append(word[i : i + size[i]])
            i = nxt[i]
        return symbols

    def _push(
        self,
        heap: list[tuple[int, int, int, int, int]],
        word: str,
        left: int,
        right: int,
        size: list[int],
    ) -> None:
        """Queue the pair (left, right) if its texts form a ranked merge."""
        rank = self._ranks.get(
            word[left : left + size[left]] + " " + word[right : right + size[right]]
        )
        if rank is not None:
            heapq.heappush(heap, (rank, left, right, size[left], size[right]))
