"""Code point classes as llama.cpp's tokenizer sees them, and GPT-2's byte-to-unicode map.

llama.cpp runs its pre-tokenizer regexes on a *collapsed* copy of the text: ASCII stays as it
is, every other code point becomes one stand-in character for its class (whitespace, number,
letter, punctuation, mark, symbol, anything else), so that a plain regex engine can match
``\\p{L}`` and friends (see ``unicode_regex_split`` in llama.cpp's ``src/unicode.cpp``). We do
the same, which makes our splits equal to llama.cpp's, including its hand-written splitters
for the GPT-2 and Llama-3 patterns (they agree with the regexes on the collapsed text).

llama.cpp's class table is generated from Unicode 15.1. We take classes from the ``regex``
module (a newer Unicode) and treat the code points assigned after 15.1 as unassigned, as
llama.cpp does. ``tests/tokenizer/test_unicode.py`` checks every code point against
llama.cpp's ``src/unicode-data.cpp``.
"""

from __future__ import annotations

import regex

# Stand-ins of the collapsed text (llama.cpp's choices, see unicode_regex_split).
WHITESPACE = "\x0b"
OTHER = "\xd0"
NUMBER = "\xd1"
LETTER = "\xd2"
PUNCTUATION = "\xd3"
MARK = "\xd4"
SYMBOL = "\xd5"

# Non-ASCII code points with the White_Space property (llama.cpp: unicode_set_whitespace).
_NON_ASCII_WHITESPACE = frozenset(
    {0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000}
)

# Code points the `regex` module knows but Unicode 15.1 left unassigned.
_ASSIGNED_AFTER_15_1 = regex.compile(
    "[\u088f\u0897\u0c5c\u0cdc\u1acf-\u1add\u1ae0-\u1aeb\u1b4e-\u1b4f\u1b7f\u1c89-\u1c8a"
    "\u20c1\u2427-\u2429\u2b96\u31e4-\u31e5\ua7cb-\ua7cf\ua7d2\ua7d4\ua7da-\ua7dc\ua7f1"
    "\ufbc3-\ufbd2\ufd90-\ufd91\ufdc8-\ufdce\U000105c0-\U000105f3\U00010940-\U00010959"
    "\U00010d40-\U00010d65\U00010d69-\U00010d85\U00010d8e-\U00010d8f\U00010ec2-\U00010ec7"
    "\U00010ed0-\U00010ed8\U00010efa-\U00010efc\U00011380-\U00011389\U0001138b\U0001138e"
    "\U00011390-\U000113b5\U000113b7-\U000113c0\U000113c2\U000113c5\U000113c7-\U000113ca"
    "\U000113cc-\U000113d5\U000113d7-\U000113d8\U000113e1-\U000113e2\U000116d0-\U000116e3"
    "\U00011b60-\U00011b67\U00011bc0-\U00011be1\U00011bf0-\U00011bf9\U00011db0-\U00011ddb"
    "\U00011de0-\U00011de9\U00011f5a\U00013460-\U000143fa\U00016100-\U00016139"
    "\U00016d40-\U00016d79\U00016ea0-\U00016eb8\U00016ebb-\U00016ed3\U00016ff2-\U00016ff6"
    "\U000187f8-\U000187ff\U00018cff\U00018d09-\U00018d1e\U00018d80-\U00018df2"
    "\U0001cc00-\U0001ccfc\U0001cd00-\U0001ceb3\U0001ceba-\U0001ced0\U0001cee0-\U0001cef0"
    "\U0001e5d0-\U0001e5fa\U0001e5ff\U0001e6c0-\U0001e6de\U0001e6e0-\U0001e6f5"
    "\U0001e6fe-\U0001e6ff\U0001f6d8\U0001f777-\U0001f77a\U0001f8b2-\U0001f8bb"
    "\U0001f8c0-\U0001f8c1\U0001f8d0-\U0001f8d8\U0001fa54-\U0001fa57\U0001fa89-\U0001fa8a"
    "\U0001fa8e-\U0001fa8f\U0001fabe\U0001fac6\U0001fac8\U0001facd\U0001fadc\U0001fadf"
    "\U0001fae9-\U0001faea\U0001faef\U0001fbcb-\U0001fbef\U0001fbfa\U0002b73a-\U0002b73f"
    "\U0002cea2-\U0002cead\U000323b0-\U00033479]"
)

# Group i of this pattern matching picks _STAND_INS[i].
_CATEGORY = regex.compile(r"(\p{N})|(\p{L})|(\p{P})|(\p{M})|(\p{S})")
_STAND_INS = (OTHER, NUMBER, LETTER, PUNCTUATION, MARK, SYMBOL)

# Most distinct characters we remember; past it, classes are computed again on each use.
_CACHE_LIMIT = 1 << 16


def collapsed_char(ch: str) -> str:
    """The stand-in of one character in llama.cpp's collapsed text (ASCII maps to itself)."""
    cp = ord(ch)
    if cp < 0x80:
        return ch
    if cp in _NON_ASCII_WHITESPACE:
        return WHITESPACE
    if _ASSIGNED_AFTER_15_1.match(ch):
        return OTHER
    found = _CATEGORY.match(ch)
    return _STAND_INS[found.lastindex] if found else OTHER


class _CollapseTable(dict[int, str | int]):
    """A ``str.translate`` table that classifies characters on first sight."""

    def __missing__(self, cp: int) -> str:
        stand_in = collapsed_char(chr(cp))
        if len(self) < _CACHE_LIMIT:
            self[cp] = stand_in
        return stand_in


_COLLAPSE = _CollapseTable({cp: cp for cp in range(0x80)})
_WHITESPACE_ONLY = {cp: WHITESPACE for cp in _NON_ASCII_WHITESPACE}


def collapse(text: str) -> str:
    """`text` with every non-ASCII character replaced by the stand-in of its class."""
    return text.translate(_COLLAPSE)


def collapse_whitespace(text: str) -> str:
    """`text` with non-ASCII whitespace replaced by ``\\v`` (llama.cpp's wide-regex input)."""
    return text.translate(_WHITESPACE_ONLY)


def _byte_to_unicode() -> tuple[str, ...]:
    """GPT-2's reversible map of the 256 byte values to printable characters."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return tuple(mapping[b] for b in range(256))


BYTE_TO_UNICODE = _byte_to_unicode()
UNICODE_TO_BYTE = {ch: b for b, ch in enumerate(BYTE_TO_UNICODE)}
_BYTE_ENCODE = str.maketrans({chr(b): ch for b, ch in enumerate(BYTE_TO_UNICODE)})


def byte_encode(word: str) -> str:
    """The UTF-8 bytes of `word`, each written as its GPT-2 byte-level character."""
    return word.encode("utf-8").decode("latin-1").translate(_BYTE_ENCODE)
