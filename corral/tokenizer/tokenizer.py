"""The tokenizer of a GGUF checkpoint: text <-> token ids, equal to llama.cpp's."""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from typing import Any

from corral.errors import TokenizerError
from corral.tokenizer.bpe import BpeModel, merge_ranks
from corral.tokenizer.detokenizer import PieceRenderer
from corral.tokenizer.special import (
    C_WHITESPACE,
    Fragment,
    apply_special_rules,
    partition,
    special_token_order,
)
from corral.tokenizer.spm import SpmModel
from corral.tokenizer.vocab import TokenAttr, Vocab, load_vocab

_SURROGATES = re.compile("[\ud800-\udfff]")


class Tokenizer:
    """Encodes and decodes text for one vocabulary (SentencePiece-style or byte-level BPE).

    Build it with :meth:`from_gguf_metadata`. Encoding follows llama.cpp's ``llama_tokenize``
    and decoding its ``llama_detokenize``; see :meth:`encode` and :meth:`decode` for the two
    places where we differ on purpose.
    """

    def __init__(self, vocab: Vocab) -> None:
        self._vocab = vocab
        self.eog_ids: frozenset[int] = apply_special_rules(vocab)
        self._special_order = special_token_order(vocab)
        self._renderer = PieceRenderer(vocab)
        self._spm: SpmModel | None = None
        self._bpe: BpeModel | None = None
        if vocab.kind == "spm":
            unk = vocab.ids["unk"]
            assert unk is not None  # SentencePiece vocabularies default it to 0
            self._spm = SpmModel(vocab.token_to_id, vocab.scores, unk)
        else:
            assert vocab.pre is not None
            self._bpe = BpeModel(vocab.token_to_id, merge_ranks(vocab.merges), vocab.pre)

    @classmethod
    def from_gguf_metadata(
        cls, metadata: Mapping[str, Any], source: str = "GGUF metadata"
    ) -> Tokenizer:
        """Build the tokenizer from GGUF ``tokenizer.ggml.*`` keys (plain Python/numpy values).

        Raises TokenizerError naming `source` and the key when a key is missing or malformed:
        no tokens, arrays of different lengths, special ids outside the vocabulary, unknown
        tokenizer model or pre-tokenizer.
        """
        return cls(load_vocab(metadata, source))

    # -- properties ---------------------------------------------------------------------

    @property
    def renderer(self) -> PieceRenderer:
        """Token pieces of this vocabulary (used by StreamingDetokenizer)."""
        return self._renderer

    @property
    def vocab_size(self) -> int:
        """Number of tokens."""
        return len(self._vocab)

    @property
    def kind(self) -> str:
        """Either "spm" (``tokenizer.ggml.model`` "llama") or "bpe" ("gpt2")."""
        return self._vocab.kind

    @property
    def bos_id(self) -> int | None:
        """Beginning-of-sequence token."""
        return self._vocab.ids["bos"]

    @property
    def eos_id(self) -> int | None:
        """End-of-sequence token."""
        return self._vocab.ids["eos"]

    @property
    def eot_id(self) -> int | None:
        """End-of-turn token (from metadata, or found by text as llama.cpp does)."""
        return self._vocab.ids["eot"]

    @property
    def unk_id(self) -> int | None:
        """Unknown token."""
        return self._vocab.ids["unk"]

    @property
    def pad_id(self) -> int | None:
        """Padding token."""
        return self._vocab.ids["pad"]

    @property
    def add_bos(self) -> bool:
        """Whether ``encode(add_special=True)`` starts with BOS."""
        return self._vocab.add_bos

    @property
    def add_eos(self) -> bool:
        """Whether ``encode(add_special=True)`` ends with EOS."""
        return self._vocab.add_eos

    @property
    def add_space_prefix(self) -> bool:
        """Whether text after BOS or a special token gets a leading space (SentencePiece)."""
        return self._vocab.add_space_prefix

    # -- encoding -----------------------------------------------------------------------

    def encode(
        self, text: str, *, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        """Token ids of `text`.

        `add_special` adds BOS/EOS as the metadata says (``add_bos_token``/``add_eos_token``),
        but never a second BOS when the text itself starts with the BOS token (llama.cpp would
        add it and warn). `parse_special` turns control tokens written in the text (such as
        "<|im_start|>") into their ids; user-defined tokens are always recognised, as in
        llama.cpp. Lone surrogates become U+FFFD.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() takes str, not {type(text).__name__}")
        fragments = partition(self._clean(text), self._vocab, self._special_order, parse_special)
        return self._encode_fragments(fragments, add_special)

    def encode_parts(
        self, parts: Sequence[tuple[str, bool]], *, add_special: bool = True
    ) -> list[int]:
        """Token ids of the concatenated texts of `parts`, each a (text, parse_special) pair.

        Control tokens written in the text are read only inside parts whose flag is true
        (template text); in the others (message content) "<|im_end|>" stays plain text. A token
        is never read across a part boundary. Raw text on both sides of a boundary is
        tokenized as one piece, and special tokens strip the whitespace next to them across
        boundaries as they do within a text, so when no false part contains a control token's
        text the result equals ``encode("".join(texts), parse_special=True)``. `add_special`
        works as in :meth:`encode` (no second BOS when the first part starts with it).
        """
        vocab = self._vocab
        fragments: list[Fragment] = []
        pending: list[str] = []  # raw text not yet closed by a special token
        for i, part in enumerate(parts):
            if not (isinstance(part, tuple) and len(part) == 2 and isinstance(part[0], str)):
                raise TypeError(f"encode_parts(): parts[{i}] is not a (str, bool) pair")
            text, parse_special = part
            for fragment in partition(self._clean(text), vocab, self._special_order, parse_special):
                if isinstance(fragment, str):
                    if fragments and not pending and vocab.attrs[fragments[-1]] & TokenAttr.RSTRIP:
                        fragment = fragment.lstrip(C_WHITESPACE)
                    if fragment:
                        pending.append(fragment)
                    continue
                if pending:
                    raw = "".join(pending)
                    if vocab.attrs[fragment] & TokenAttr.LSTRIP:
                        raw = raw.rstrip(C_WHITESPACE)
                    if raw:
                        fragments.append(raw)
                    pending = []
                fragments.append(fragment)
        if pending:
            fragments.append("".join(pending))
        return self._encode_fragments(fragments, add_special)

    def encode_raw(self, text: str) -> list[int]:
        """The vocabulary's own split of `text` as one piece of raw text: no BOS/EOS, no
        special tokens, no SentencePiece space prefix (what grammar engines call the
        canonical tokenization of a byte string)."""
        if self._spm is not None:
            return self._spm.encode(text.replace(" ", "\u2581"))
        assert self._bpe is not None
        return self._bpe.encode(text)

    @staticmethod
    def _clean(text: str) -> str:
        """`text` with lone surrogates replaced by U+FFFD."""
        return text if text.isascii() else _SURROGATES.sub("\ufffd", text)

    def _encode_fragments(self, fragments: Sequence[Fragment], add_special: bool) -> list[int]:
        """Token ids of partitioned text (raw strings and special token ids)."""
        vocab = self._vocab
        bos = vocab.ids["bos"]
        ids: list[int] = []
        if add_special and vocab.add_bos and not (fragments and fragments[0] == bos):
            assert bos is not None
            ids.append(bos)
        prev_special = True
        for fragment in fragments:
            if isinstance(fragment, int):
                ids.append(fragment)
                prev_special = True
            else:
                if self._spm is not None and vocab.add_space_prefix and prev_special:
                    fragment = " " + fragment
                ids.extend(self.encode_raw(fragment))
                prev_special = False
        if add_special and vocab.add_eos:
            eos = vocab.ids["eos"]
            assert eos is not None
            ids.append(eos)
        return ids

    # -- decoding -----------------------------------------------------------------------

    def decode(
        self, ids: Sequence[int], *, skip_special: bool = False, clean_spaces: bool | None = None
    ) -> str:
        """Text of `ids`, as llama.cpp's ``llama_detokenize``.

        `skip_special` drops a leading BOS and trailing EOS the metadata adds and renders
        control/unknown tokens as nothing; otherwise they appear as their text. The one space
        SentencePiece puts in front of the text is removed from the first rendered token,
        also after a dropped BOS (llama.cpp keeps it there; llama-cpp-python and HF remove
        it, and then ``decode(encode(x), skip_special=True)`` gives `x` back). `clean_spaces`
        defaults to the pre-tokenizer's setting (llama.cpp's ``clean_spaces``, on for GPT-2
        and Llama-3 vocabularies: " ?" -> "?", " 's" -> "'s"); pass False for exact text.
        Invalid UTF-8 becomes U+FFFD. Out-of-range ids raise TokenizerError.
        """
        checked = [self.check_id(token) for token in ids]
        clean = self._vocab.clean_spaces if clean_spaces is None else clean_spaces
        data = self._renderer.render(checked, skip_special, clean)
        return data.decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int, *, special: bool = False) -> bytes:
        """Raw bytes of one token's piece (``llama_token_to_piece``).

        Control and unknown tokens give b"" unless `special` is true; user-defined tokens
        always give their text.
        """
        return self._renderer.piece(self.check_id(token_id), special)

    # -- token facts --------------------------------------------------------------------

    def is_eog(self, token_id: int) -> bool:
        """Whether `token_id` ends generation (EOS, EOT, EOM and llama.cpp's EOG texts)."""
        return token_id in self.eog_ids

    def is_control(self, token_id: int) -> bool:
        """Whether `token_id` is a control token (rendered only when asked)."""
        return bool(self._vocab.attrs[self.check_id(token_id)] & TokenAttr.CONTROL)

    def token_text(self, token_id: int) -> str:
        """The vocabulary entry of `token_id` as stored (e.g. "▁Hello", "ĠHello", "<s>")."""
        return self._vocab.tokens[self.check_id(token_id)]

    def token_id(self, text: str) -> int | None:
        """Id of the vocabulary entry `text` exactly (e.g. "<|im_end|>"), or None."""
        return self._vocab.token_to_id.get(text)

    def check_id(self, token_id: int) -> int:
        """`token_id` as int; TokenizerError naming it when it is outside the vocabulary."""
        try:
            token = operator.index(token_id)
        except TypeError:
            raise TokenizerError(f"token id {token_id!r} is not an integer") from None
        if not 0 <= token < len(self._vocab):
            raise TokenizerError(
                f"token id {token} outside the vocabulary (0..{len(self._vocab) - 1})"
            )
        return token
