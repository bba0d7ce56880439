"""The vocabulary read from GGUF tokenizer metadata, with llama.cpp's defaults and checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.tokenizer.metadata import MetadataReader
from corral.tokenizer.pretokenizers import PreTokenizer, pre_tokenizer


class TokenAttr:
    """Bits of a token's attributes (llama.cpp's llama_token_attr); plain ints, combined with |."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8
    SINGLE_WORD = 1 << 9


# tokenizer.ggml.token_type values (gguf TokenType) -> attribute; other values: UNDEFINED.
_TYPE_ATTR = {
    1: TokenAttr.NORMAL,
    2: TokenAttr.UNKNOWN,
    3: TokenAttr.CONTROL,
    4: TokenAttr.USER_DEFINED,
    5: TokenAttr.UNUSED,
    6: TokenAttr.BYTE,
}

# Special-token roles and the keys that set them; later keys win (deprecated FIM names last).
_ID_KEYS = {
    "bos": ("bos_token_id",),
    "eos": ("eos_token_id",),
    "eot": ("eot_token_id",),
    "eom": ("eom_token_id",),
    "unk": ("unknown_token_id",),
    "sep": ("seperator_token_id",),
    "pad": ("padding_token_id",),
    "mask": ("mask_token_id",),
    "fim_pre": ("fim_pre_token_id", "prefix_token_id"),
    "fim_suf": ("fim_suf_token_id", "suffix_token_id"),
    "fim_mid": ("fim_mid_token_id", "middle_token_id"),
    "fim_pad": ("fim_pad_token_id",),
    "fim_rep": ("fim_rep_token_id",),
    "fim_sep": ("fim_sep_token_id",),
}

# Per-model defaults of the special ids (llama.cpp's, dropped when outside the vocabulary).
_DEFAULT_IDS = {"spm": {"bos": 1, "eos": 2, "unk": 0}, "bpe": {"bos": 11, "eos": 11}}
_MODELS = {"llama": "spm", "gpt2": "bpe"}
_PREFIX = "tokenizer.ggml."


@dataclass
class Vocab:
    """Tokens, their scores and attributes, special ids and the flags that steer encoding."""

    kind: str  # "spm" or "bpe"
    tokens: list[str]
    scores: list[float]
    attrs: list[int]  # TokenAttr bits
    token_to_id: dict[str, int]
    ids: dict[str, int | None]  # role ("bos", "eos", "eot", ...) -> id or None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    clean_spaces: bool
    pre: PreTokenizer | None = None  # BPE only
    merges: list[str] = field(default_factory=list)  # BPE only
    model_name: str = ""  # general.name, lowercased (some llama.cpp rules key on it)

    def __len__(self) -> int:
        return len(self.tokens)


def load_vocab(metadata: Mapping[str, Any], source: str) -> Vocab:
    """Read and check the tokenizer keys of `metadata`; errors name `source` and the key."""
    md = MetadataReader(metadata, source)
    model = md.string(_PREFIX + "model", required=True)
    kind = _MODELS.get(model or "")
    if kind is None:
        raise md.error(_PREFIX + "model", f"unknown or unsupported tokenizer model {model!r}")
    pre: PreTokenizer | None = None
    merges: list[str] = []
    if kind == "bpe":
        pre_name = md.string(_PREFIX + "pre")
        pre = pre_tokenizer(pre_name)
        if pre is None:
            raise md.error(_PREFIX + "pre", f"unknown pre-tokenizer {pre_name!r}")
        merges = md.strings(_PREFIX + "merges", required=True) or []

    tokens = md.strings(_PREFIX + "tokens", required=True) or []
    if not tokens:
        raise md.error(_PREFIX + "tokens", "empty vocabulary")
    n = len(tokens)
    tokens = [text or f"[EMPTY_{i}]" for i, text in enumerate(tokens)]
    scores = md.numbers(_PREFIX + "scores", "float", n) or [0.0] * n
    types = md.numbers(_PREFIX + "token_type", "int", n)
    attrs = (
        [_TYPE_ATTR.get(int(t), TokenAttr.UNDEFINED) for t in types]
        if types is not None
        else [TokenAttr.NORMAL] * n
    )

    ids: dict[str, int | None] = {role: None for role in _ID_KEYS}
    for role, default in _DEFAULT_IDS[kind].items():
        ids[role] = default if default < n else None
    for role, keys in _ID_KEYS.items():
        for key in keys:
            value = md.integer(_PREFIX + key)
            if value is None:
                continue
            if not 0 <= value < n:
                raise md.error(
                    _PREFIX + key, f"token id {value} outside the vocabulary (0..{n - 1})"
                )
            ids[role] = value

    spm = kind == "spm"
    add_bos = _flag(md, "add_bos_token", spm or (pre is not None and pre.add_bos))
    add_eos = _flag(md, "add_eos_token", False)
    add_space_prefix = _flag(md, "add_space_prefix", spm)
    if add_bos and ids["bos"] is None:
        raise md.error(_PREFIX + "add_bos_token", "is true but there is no BOS token")
    if add_eos and ids["eos"] is None:
        raise md.error(_PREFIX + "add_eos_token", "is true but there is no EOS token")

    token_to_id = {text: i for i, text in enumerate(tokens)}
    return Vocab(
        kind=kind,
        tokens=tokens,
        scores=scores,
        attrs=attrs,
        token_to_id=token_to_id,
        ids=ids,
        add_bos=add_bos,
        add_eos=add_eos,
        add_space_prefix=add_space_prefix,
        clean_spaces=pre.clean_spaces if pre is not None else False,
        pre=pre,
        merges=merges,
        model_name=(md.string("general.name") or "").lower(),
    )


def _flag(md: MetadataReader, name: str, default: bool) -> bool:
    value = md.boolean(_PREFIX + name)
    return default if value is None else value
