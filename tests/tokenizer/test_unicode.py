"""Code point classes against llama.cpp's generated table, and the GPT-2 byte map."""

from __future__ import annotations

import bisect
import re

from transformers.convert_slow_tokenizer import bytes_to_unicode

from corral.tokenizer import unicode
from tests.reference_data import llama_cpp_source

# llama.cpp's unicode_cpt_flags categories -> our stand-ins (whitespace is checked first).
FLAG_STAND_IN = {
    0x0002: unicode.NUMBER,
    0x0004: unicode.LETTER,
    0x0010: unicode.MARK,
    0x0020: unicode.PUNCTUATION,
    0x0040: unicode.SYMBOL,
}


def llama_cpp_tables() -> tuple[list[tuple[int, int]], set[int]]:
    """(start, flags) ranges and the whitespace set of llama.cpp's src/unicode-data.cpp."""
    source = llama_cpp_source("src/unicode-data.cpp").read_text(encoding="utf-8")

    def block(name: str) -> str:
        start = source.index(name)
        return source[start : source.index("};", start)]

    ranges = [
        (int(start, 16), int(flags, 16))
        for start, flags in re.findall(r"\{0x([0-9A-F]+), 0x([0-9A-F]+)\}", block("ranges_flags"))
    ]
    whitespace = {int(cp, 16) for cp in re.findall(r"0x([0-9A-F]+)", block("set_whitespace"))}
    return ranges, whitespace


def test_every_code_point_collapses_like_llama_cpp() -> None:
    ranges, whitespace = llama_cpp_tables()
    assert len(ranges) > 1000 and 0x3000 in whitespace
    starts = [start for start, _ in ranges]
    code_points = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    collapsed = unicode.collapse("".join(map(chr, code_points)))
    mismatches = []
    for cp, got in zip(code_points, collapsed, strict=True):
        if cp < 0x80:
            expected = chr(cp)
        elif cp in whitespace:
            expected = unicode.WHITESPACE
        else:
            flags = ranges[bisect.bisect_right(starts, cp) - 1][1]
            expected = FLAG_STAND_IN.get(flags & 0xFF, unicode.OTHER)
        if got != expected:
            mismatches.append(hex(cp))
    assert mismatches == []


def test_whitespace_only_collapse() -> None:
    assert unicode.collapse_whitespace("a\u3000b\u00a0c\u2028é") == "a\vb\vc\vé"


def test_byte_map_is_gpt2s() -> None:
    reference = bytes_to_unicode()
    assert unicode.BYTE_TO_UNICODE == tuple(reference[b] for b in range(256))
    assert unicode.byte_encode(" héllo\n") == "Ġh" + reference[0xC3] + reference[0xA9] + "lloĊ"
