"""The grammar engine's view of a corral vocabulary: one llguidance tokenizer per Tokenizer.

llguidance computes token masks from the raw bytes of every token, so it is built from our
own tokenizer (``Tokenizer.token_bytes``), never from a Hugging Face tokenizer, and works the
same for SentencePiece and byte-level BPE vocabularies. Control and unknown tokens are given
their text ("<|im_end|>") and marked special: a grammar never produces them as text, and the
end-of-generation tokens are allowed exactly where the grammar may end.

Building it walks the whole vocabulary (~0.1 s for 50k tokens), so the result is cached per
Tokenizer object.
"""

from __future__ import annotations

import threading
import weakref

import llguidance

from corral.tokenizer import Tokenizer

_CACHE: weakref.WeakKeyDictionary[Tokenizer, llguidance.LLTokenizer] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class _VocabView:
    """What ``llguidance.TokenizerWrapper`` reads: token bytes, special ids, EOS, and the
    text -> ids function llguidance uses for the bytes a grammar forces."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.tokens: list[bytes] = []
        self.special_token_ids: list[int] = []
        for token in range(tokenizer.vocab_size):
            piece = tokenizer.token_bytes(token, special=False)
            special_piece = tokenizer.token_bytes(token, special=True)
            if piece != special_piece:  # control / unknown token: rendered only when asked
                self.special_token_ids.append(token)
                piece = special_piece
            self.tokens.append(piece)
        self.eos_token_id = tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id

    def __call__(self, text: str | bytes) -> list[int]:
        """Token ids of exactly `text`, as the model's tokenizer splits it.

        llguidance trusts this to be the canonical split: where the grammar forces bytes it
        allows only the tokens of that split, so a split the model would never make (or one
        of byte-fallback tokens) would give wrong masks.
        """
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        # not encode(): SentencePiece would put a space in front of the text, and llguidance
        # needs the text's own split
        return self._tokenizer.encode_raw(text)


def end_tokens(tokenizer: Tokenizer) -> list[int]:
    """The tokens that end a constrained output: EOS first, then the other end-of-generation
    tokens (EOT, EOM, ...); empty when the vocabulary has none."""
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    return eos + sorted(set(tokenizer.eog_ids) - set(eos))


def grammar_tokenizer(tokenizer: Tokenizer) -> llguidance.LLTokenizer:
    """The llguidance tokenizer of `tokenizer`, built on first use and cached.

    The :func:`end_tokens` are the tokens the grammar allows where it may end; the caller
    checks there is at least one.
    """
    with _LOCK:
        cached = _CACHE.get(tokenizer)
        if cached is not None:
            return cached
        eos = end_tokens(tokenizer)
        assert eos, "a vocabulary without end-of-generation tokens"
        view = _VocabView(tokenizer)
        built = llguidance.LLTokenizer(
            llguidance.TokenizerWrapper(view), n_vocab=tokenizer.vocab_size, eos_token=eos
        )
        _CACHE[tokenizer] = built
        return built
