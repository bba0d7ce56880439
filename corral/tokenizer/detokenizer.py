"""Token pieces and detokenization, in one call or streamed, as llama.cpp renders them.

A token's piece is the bytes llama.cpp's ``llama_token_to_piece`` gives: "▁" -> " " for
SentencePiece vocabularies, byte-level characters mapped back to bytes for BPE, ``<0xNN>``
byte tokens -> that byte, control/unknown tokens -> their text only when special tokens are
rendered. Detokenizing joins pieces, strips the one space SentencePiece put in front of the
text, optionally cleans spaces (:mod:`corral.tokenizer.cleanup`) and decodes UTF-8.
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

from corral.tokenizer.cleanup import SpaceCleaner
from corral.tokenizer.unicode import UNICODE_TO_BYTE
from corral.tokenizer.vocab import TokenAttr, Vocab

if TYPE_CHECKING:
    from corral.tokenizer.tokenizer import Tokenizer

_RAW_TEXT = TokenAttr.UNKNOWN | TokenAttr.CONTROL | TokenAttr.USER_DEFINED
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def token_piece(vocab: Vocab, token: int) -> bytes:
    """The piece of `token` with special tokens rendered (llama.cpp's piece cache)."""
    attr = vocab.attrs[token]
    text = vocab.tokens[token]
    if attr & _RAW_TEXT:
        return text.encode("utf-8")
    if attr & TokenAttr.NORMAL:
        if vocab.kind == "spm":
            return text.replace("\u2581", " ").encode("utf-8")
        return _byte_level_decode(text)
    if attr & TokenAttr.BYTE:
        return bytes([_byte_value(text)])
    return b""


def _byte_level_decode(text: str) -> bytes:
    """Bytes of a byte-level BPE token text (llama.cpp's llama_decode_text)."""
    try:
        return bytes(UNICODE_TO_BYTE[ch] for ch in text)
    except KeyError:
        pass
    out = bytearray()
    for ch in text:
        byte = UNICODE_TO_BYTE.get(ch)
        if byte is not None:
            out.append(byte)
        else:  # llama.cpp's marker for a character outside the byte map, verbatim
            out += f"[UNK_BYTE_0x{ch.encode('utf-8').hex()}{text}]".encode()
    return bytes(out)


def _byte_value(text: str) -> int:
    """The byte of a byte token "<0xNN>": hex digits from position 3, as strtol reads them."""
    digits = ""
    for ch in text[3:5]:
        if ch not in _HEX_DIGITS:
            break
        digits += ch
    return int(digits, 16) if digits else 0


class PieceRenderer:
    """Turns token ids into detokenized bytes for one vocabulary (pieces made on first use)."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self._pieces: list[bytes | None] = [None] * len(vocab)
        hidden = TokenAttr.UNKNOWN | TokenAttr.CONTROL
        self._hidden = frozenset(i for i, attr in enumerate(vocab.attrs) if attr & hidden)

    def piece(self, token: int, special: bool) -> bytes:
        """The piece of `token`; control and unknown tokens are empty unless `special`."""
        if not special and token in self._hidden:
            return b""
        piece = self._pieces[token]
        if piece is None:
            piece = self._pieces[token] = token_piece(self.vocab, token)
        return piece

    def render(self, ids: list[int], skip_special: bool, clean: bool) -> bytes:
        """Detokenized bytes of `ids` (already range-checked)."""
        vocab = self.vocab
        if skip_special:
            if vocab.add_bos and ids and ids[0] == vocab.ids["bos"]:
                ids = ids[1:]
            if vocab.add_eos and ids and ids[-1] == vocab.ids["eos"]:
                ids = ids[:-1]
        data = b"".join(self.piece(token, not skip_special) for token in ids)
        if vocab.add_space_prefix and ids and self.piece(ids[0], not skip_special)[:1] == b" ":
            data = data[1:]
        if clean:
            cleaner = SpaceCleaner()
            data = cleaner.feed(data) + cleaner.finish()
        return data


class StreamingDetokenizer:
    """Turns generated token ids into text as they come, never splitting a UTF-8 character.

    Pushing ids one by one and flushing gives exactly ``tokenizer.decode(ids, ...)`` with the
    same `skip_special` and `clean_spaces`. Incomplete UTF-8 at the end is held until more
    bytes arrive; :meth:`flush` turns what is left (and any invalid bytes) into U+FFFD.
    """

    def __init__(
        self, tokenizer: Tokenizer, *, skip_special: bool = True, clean_spaces: bool | None = None
    ) -> None:
        self._tokenizer = tokenizer
        self._renderer = tokenizer.renderer
        self._skip_special = skip_special
        self._clean = self._renderer.vocab.clean_spaces if clean_spaces is None else clean_spaces
        self._reset()

    def _reset(self) -> None:
        self._started = False  # a token was pushed (a leading BOS may be dropped before)
        self._strip_pending = True  # the next piece loses its SentencePiece leading space
        self._held_eos = False  # an EOS that render() would drop if it were the last token
        self._cleaner = SpaceCleaner() if self._clean else None
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Text that is complete after `token_id` (out-of-range ids raise TokenizerError)."""
        token = self._tokenizer.check_id(token_id)
        vocab = self._renderer.vocab
        started, self._started = self._started, True
        if self._skip_special:
            if not started and vocab.add_bos and token == vocab.ids["bos"]:
                return ""
            if vocab.add_eos and token == vocab.ids["eos"]:
                text = self._emit_held_eos()
                self._held_eos = True
                return text
        return self._emit_held_eos() + self._emit(
            self._renderer.piece(token, not self._skip_special)
        )

    def _emit_held_eos(self) -> str:
        if not self._held_eos:
            return ""
        self._held_eos = False
        return self._emit(self._renderer.piece(self._renderer.vocab.ids["eos"], False))

    def _emit(self, data: bytes) -> str:
        if self._strip_pending:
            self._strip_pending = False
            if self._renderer.vocab.add_space_prefix and data[:1] == b" ":
                data = data[1:]
        if self._cleaner is not None:
            data = self._cleaner.feed(data)
        return self._utf8.decode(data)

    def flush(self) -> str:
        """Whatever remains (incomplete UTF-8 becomes U+FFFD); then ready for a new sequence."""
        data = self._cleaner.finish() if self._cleaner is not None else b""
        text = self._utf8.decode(data, final=True)
        self._reset()
        return text
