"""Special tokens: llama.cpp's text-based detection rules, EOG set, and text partitioning.

GGUF files do not say which tokens end a generation or fill FIM roles; llama.cpp guesses it
from token texts (``llama_vocab::impl::load``) and marks the tokens it finds as control
tokens. :func:`apply_special_rules` repeats those rules; :func:`partition` cuts text at
special tokens written in it (``tokenizer_st_partition``).
"""

from __future__ import annotations

from collections.abc import Sequence

from corral.tokenizer.vocab import TokenAttr, Vocab

# Texts that name a role when no metadata key gave it (llama.cpp's lists).
_ROLE_TEXTS = {
    "eot": (
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
        "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
        "<end_of_utterance>",
    ),
    "eom": ("<|eom_id|>",),
    "fim_pre": (
        "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
        "▁<PRE>", "<|code_prefix|>", "<|prefix|>",
    ),
    "fim_suf": (
        "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
        "▁<SUF>", "<|code_suffix|>", "<|suffix|>",
    ),
    "fim_mid": (
        "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
        "▁<MID>", "<|code_middle|>", "<|middle|>",
    ),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}  # fmt: skip

# Texts of tokens that end a generation (llama.cpp's list).
_EOG_TEXTS = frozenset(
    {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
        "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
        "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
        "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
    }
)  # fmt: skip

# gpt-oss: always rendered as text.
_ALWAYS_USER_DEFINED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")

_SPECIAL_ATTRS = TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN
C_WHITESPACE = " \t\n\v\f\r"


def apply_special_rules(vocab: Vocab) -> frozenset[int]:
    """Fill missing roles and fix token attributes as llama.cpp does; return the EOG ids."""
    attrs = vocab.attrs

    def make_control(token: int) -> None:
        attrs[token] |= TokenAttr.CONTROL

    # llama.cpp takes the first candidate in hash order; we take the first text of its list.
    for role, texts in _ROLE_TEXTS.items():
        if vocab.ids[role] is None:
            found = next((vocab.token_to_id[t] for t in texts if t in vocab.token_to_id), None)
            if found is not None:
                vocab.ids[role] = found
                make_control(found)

    for text, i in vocab.token_to_id.items():
        if attrs[i] & TokenAttr.CONTROL and "unused" in text:
            attrs[i] |= TokenAttr.UNUSED

    eog = {vocab.ids[r] for r in ("fim_pad", "fim_rep", "fim_sep") if vocab.ids[r] is not None}
    for text in _EOG_TEXTS & vocab.token_to_id.keys():
        eog.add(vocab.token_to_id[text])
        make_control(vocab.token_to_id[text])
    for text in _ALWAYS_USER_DEFINED:
        if text in vocab.token_to_id:
            attrs[vocab.token_to_id[text]] = TokenAttr.USER_DEFINED
    eog.update(vocab.ids[r] for r in ("eos", "eot", "eom") if vocab.ids[r] is not None)
    _apply_eog_workarounds(vocab, eog)
    _apply_strip_rules(vocab)
    return frozenset(eog)


def _apply_eog_workarounds(vocab: Vocab, eog: set[int]) -> None:
    """llama.cpp's exceptions: "<|end|>" of harmony-style vocabs, "</s>" of gemma4/plamo."""
    texts = {vocab.tokens[i]: i for i in eog}
    has_call = "<|call|>" in texts or "<|calls|>" in texts
    if "<|end|>" in texts and has_call and ("<|return|>" in texts or "<|flush|>" in texts):
        eog.discard(texts["<|end|>"])
        vocab.attrs[texts["<|end|>"]] = TokenAttr.USER_DEFINED
    if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
        eog.discard(texts["</s>"])
        vocab.attrs[texts["</s>"]] = TokenAttr.NORMAL


def _apply_strip_rules(vocab: Vocab) -> None:
    """Phi-3: special tokens swallow the whitespace after them (llama.cpp keys on the name)."""
    if "phi-3" not in vocab.model_name and "phi3" not in vocab.model_name:
        return
    for i, attr in enumerate(vocab.attrs):
        if attr & _SPECIAL_ATTRS:
            vocab.attrs[i] |= TokenAttr.RSTRIP
    for text, strip in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
        token = vocab.token_to_id.get(text)
        if token is not None:
            vocab.attrs[token] = (
                vocab.attrs[token] | TokenAttr.RSTRIP
                if strip
                else vocab.attrs[token] & ~TokenAttr.RSTRIP
            )


def special_token_order(vocab: Vocab) -> list[int]:
    """Ids of control, user-defined and unknown tokens, longest text first."""
    special = [i for i, attr in enumerate(vocab.attrs) if attr & _SPECIAL_ATTRS]
    return sorted(special, key=lambda i: (-len(vocab.tokens[i]), i))


Fragment = str | int  # raw text, or a special token id


def partition(
    text: str, vocab: Vocab, special_ids: Sequence[int], parse_special: bool
) -> list[Fragment]:
    """Cut `text` at special tokens written in it (llama.cpp's tokenizer_st_partition).

    Tokens are matched one at a time in the order of `special_ids` over all text fragments
    left so far. User-defined tokens are always matched; control and unknown tokens only
    when `parse_special` is true.
    """
    fragments: list[Fragment] = [text] if text else []
    for token in special_ids:
        attr = vocab.attrs[token]
        if not parse_special and attr & (TokenAttr.CONTROL | TokenAttr.UNKNOWN):
            continue
        token_text = vocab.tokens[token]
        if token_text not in text:
            continue
        lstrip = bool(attr & TokenAttr.LSTRIP)
        rstrip = bool(attr & TokenAttr.RSTRIP)
        updated: list[Fragment] = []
        for fragment in fragments:
            if isinstance(fragment, int) or token_text not in fragment:
                updated.append(fragment)
            else:
                updated.extend(_split_at(fragment, token_text, token, lstrip, rstrip))
        fragments = updated
    return fragments


def _split_at(
    fragment: str, token_text: str, token: int, lstrip: bool, rstrip: bool
) -> list[Fragment]:
    """Split one raw fragment at each occurrence of `token_text`, left to right."""
    out: list[Fragment] = []
    pos = 0
    end = len(fragment)
    while pos < end:
        found = fragment.find(token_text, pos)
        if found < 0:
            break
        left = fragment[pos:found]
        if lstrip:
            left = left.rstrip(C_WHITESPACE)
        if left:
            out.append(left)
        out.append(token)
        pos = found + len(token_text)
        if rstrip:
            while pos < end and fragment[pos] in C_WHITESPACE:
                pos += 1
    if pos < end:
        out.append(fragment[pos:])
    return out
