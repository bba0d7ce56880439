"""BPE pre-tokenizers: the regex splits llama.cpp applies per ``tokenizer.ggml.pre``.

Each pre-tokenizer is a list of llama.cpp regexes applied in turn: every regex splits each
piece left by the previous one into its matches and the text between them (llama.cpp's
``unicode_regex_split``). Regexes that use ``\\p{..}`` classes run on the collapsed text of
:mod:`corral.tokenizer.unicode` with the classes rewritten into stand-in character sets, the
others on the text with non-ASCII whitespace turned into ``\\v``; both as ECMAScript-like
ASCII regexes, as llama.cpp's ``std::regex`` sees them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from corral.tokenizer import unicode

# llama.cpp's patterns, verbatim (src/llama-vocab.cpp, llm_tokenizer_bpe).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEFAULT = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")
_STARCODER = (r"\p{N}", _GPT2)


@dataclass(frozen=True)
class PreTokenizer:
    """How a BPE vocabulary splits text before merging, plus the flags llama.cpp ties to it."""

    name: str
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a pre-token that is itself a token is not merged
    add_bos: bool = False  # default of tokenizer.ggml.add_bos_token
    clean_spaces: bool = True  # detokenize removes " ?", " 's", ... (clean_up_tokenization_spaces)

    def split(self, text: str) -> list[str]:
        """Split `text` into pre-tokens (code point slices of `text`, in order)."""
        return split(text, self.regexes)


def _family(names: str, regexes: tuple[str, ...], **flags: bool) -> dict[str, PreTokenizer]:
    return {name: PreTokenizer(name, regexes, **flags) for name in names.split()}


PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    **_family("default", _DEFAULT),
    **_family(
        "llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano",
        (_LLAMA3,),
        ignore_merges=True,
        add_bos=True,
    ),
    **_family("dbrx smaug-bpe", (_LLAMA3,)),
    **_family(
        "gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert "
        "mpt olmo exaone4",
        (_GPT2,),
    ),
    **_family("starcoder refact codeshell exaone minerva-7b mellum2", _STARCODER),
    **_family("smollm command-r", _STARCODER, clean_spaces=False),
}


def pre_tokenizer(name: str | None) -> PreTokenizer | None:
    """The pre-tokenizer llama.cpp uses for `name` ("" or None: "default"); None if unknown."""
    return PRE_TOKENIZERS.get(name or "default")


# ASCII members of llama.cpp's classes, after its stand-in (unicode_regex_split: k_ucat_map).
_CLASS_SETS = {
    "N": unicode.NUMBER + "0-9",
    "L": unicode.LETTER + "A-Za-z",
    "P": unicode.PUNCTUATION + r"!-#%-*,-/:;?@\[-\]_{}",
    "M": unicode.MARK,
    "S": unicode.SYMBOL + r"$+<->^`|~",
}
_CLASS_REF = re.compile(r"\\p\{(L[ultmo]?|[NPMS])\}")


@dataclass(frozen=True)
class _Compiled:
    pattern: re.Pattern[str]
    subject: Callable[[str], str]  # what the pattern runs on: text -> collapsed text


@functools.cache
def _compile(expr: str) -> _Compiled:
    """Rewrite a llama.cpp regex for Python's engine over the collapsed alphabet."""
    if not _CLASS_REF.search(expr):
        return _Compiled(re.compile(expr, re.ASCII), unicode.collapse_whitespace)
    out: list[str] = []
    inside = False
    i = 0
    while i < len(expr):
        ch = expr[i]
        found = _CLASS_REF.match(expr, i)
        if found:
            members = _CLASS_SETS[found.group(1)[0]]
            out.append(members if inside else f"[{members}]")
            i = found.end()
            continue
        if ch == "\\":
            out.append(expr[i : i + 2])
            i += 2
            continue
        if ch == "[":
            inside = True
        elif ch == "]":
            inside = False
        out.append(ch)
        i += 1
    return _Compiled(re.compile("".join(out), re.ASCII), unicode.collapse)


def split(text: str, regexes: tuple[str, ...]) -> list[str]:
    """Split `text` with llama.cpp's regex list semantics (matches and gaps are pieces)."""
    if not text:
        return []
    subjects: dict[Callable[[str], str], str] = {}
    lengths = [len(text)]
    for expr in regexes:
        compiled = _compile(expr)
        if compiled.subject not in subjects:
            subjects[compiled.subject] = compiled.subject(text)
        lengths = _split_pieces(compiled.pattern, subjects[compiled.subject], lengths)
    pieces = []
    start = 0
    for length in lengths:
        pieces.append(text[start : start + length])
        start += length
    return pieces


def _split_pieces(pattern: re.Pattern[str], subject: str, lengths: list[int]) -> list[int]:
    """Lengths of the pieces after splitting each piece (given by length) with `pattern`."""
    out: list[int] = []
    start = 0
    for length in lengths:
        piece = subject[start : start + length]
        done = 0
        for found in pattern.finditer(piece):
            begin, end = found.span()
            if begin > done:
                out.append(begin - done)
            if end > begin:
                out.append(end - begin)
            done = end
        if done < length:
            out.append(length - done)
        start += length
    return out
