"""Tokenizers of HF model folders, with the interface of corral's GGUF Tokenizer.

- ``tokenizer.json`` (preferred, as transformers prefers it): :class:`HFJsonTokenizer`, a
  :class:`~corral.tokenizer.Tokenizer` whose vocabulary, special tokens, decoding and
  streaming are corral's own, while the text between special tokens is encoded by the
  ``tokenizers`` library running the file's own pipeline (normalizer, pre-tokenizer, BPE
  or Unigram model). That pipeline has many variants (regex splits, byte-level, Metaspace,
  Prepend/Replace normalizers, ...); running it, rather than re-implementing each, is what
  makes the ids equal to transformers'.
- ``tokenizer.model`` (SentencePiece BPE): decoded by corral (no sentencepiece/protobuf) into
  GGUF-style vocabulary metadata and built with ``Tokenizer.from_gguf_metadata``, so it
  encodes exactly as corral's (and llama.cpp's) SentencePiece tokenizer.

Special tokens, add_bos/add_eos and the chat template come from tokenizer_config.json and its
siblings (corral.tokenizer.hf_files); ``generation_config.json``'s eos ids end generation too.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import tokenizers

from corral.errors import ModelFormatError, TokenizerError
from corral.formats.hf import MAX_JSON_BYTES, read_json_object
from corral.tokenizer.hf_files import (
    AddedToken,
    TokenizerSettings,
    added_token,
    parse_token_id,
    read_tokenizer_settings,
)
from corral.tokenizer.pretokenizers import pre_tokenizer
from corral.tokenizer.sentencepiece_model import read_sentencepiece_model
from corral.tokenizer.special import Fragment
from corral.tokenizer.tokenizer import Tokenizer
from corral.tokenizer.vocab import TokenAttr, Vocab

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_SPM_DECODERS = frozenset({"Metaspace", "Replace", "ByteFallback", "Fuse", "Strip"})
_ALL_ROLES = (
    "bos", "eos", "eot", "eom", "unk", "sep", "pad", "mask",
    "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep",
)  # fmt: skip
_ROLE_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id"}


def _walk(node: Any, list_key: str) -> Iterator[dict[str, Any]]:
    """A pipeline component and, for a "Sequence", its members (depth first)."""
    if isinstance(node, dict):
        yield node
        for child in node.get(list_key) or ():
            yield from _walk(child, list_key)


def _without_prefix(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of a tokenizer.json that never prepends a space/"▁" to a text: for text that
    continues after a special token (Metaspace "first") and for encode_raw."""
    bare = copy.deepcopy(spec)
    for node in _walk(bare.get("pre_tokenizer"), "pretokenizers"):
        if node.get("type") == "Metaspace":
            node["prepend_scheme"] = "never"
            node.pop("add_prefix_space", None)
        elif node.get("type") == "ByteLevel":
            node["add_prefix_space"] = False
    normalizer = bare.get("normalizer")
    if isinstance(normalizer, dict) and normalizer.get("type") == "Prepend":
        bare["normalizer"] = None
    elif isinstance(normalizer, dict) and normalizer.get("type") == "Sequence":
        members = normalizer.get("normalizers") or []
        normalizer["normalizers"] = [n for n in members if n.get("type") != "Prepend"]
    return bare


def _backend(spec: dict[str, Any], source: str) -> tokenizers.Tokenizer:
    """A tokenizers.Tokenizer for raw text: no post-processing, special tokens as text."""
    try:
        backend = tokenizers.Tokenizer.from_str(json.dumps(spec))
    except Exception as error:  # the library raises plain Exception for bad files
        raise TokenizerError(f"{source}: the tokenizers library refused it: {error}") from None
    backend.encode_special_tokens = True
    backend.post_processor = None
    return backend


class HFJsonTokenizer(Tokenizer):
    """A Tokenizer whose raw text is encoded by the ``tokenizers`` library (see the module
    docstring); everything else is inherited."""

    def __init__(self, vocab: Vocab, spec: dict[str, Any], source: str) -> None:
        super().__init__(vocab)
        self._full = _backend(spec, source)
        self._bare = _backend(_without_prefix(spec), source)
        # Metaspace "first" prefixes only the text at offset 0, not text after a special token
        self._prefix_after_special = not any(
            node.get("type") == "Metaspace" and node.get("prepend_scheme") == "first"
            for node in _walk(spec.get("pre_tokenizer"), "pretokenizers")
        )

    def encode_raw(self, text: str) -> list[int]:
        """The pipeline's split of `text` alone: no BOS/EOS, no special tokens, no prefix."""
        return self._bare.encode(text, add_special_tokens=False).ids

    def _encode_fragments(self, fragments: Sequence[Fragment], add_special: bool) -> list[int]:
        """Token ids of partitioned text: the first raw fragment through the full pipeline,
        later ones with or without the prefix as transformers would encode them."""
        ids: list[int] = []
        bos, eos = self.bos_id, self.eos_id
        if add_special and self.add_bos and not (fragments and fragments[0] == bos):
            assert bos is not None
            ids.append(bos)
        for i, fragment in enumerate(fragments):
            if isinstance(fragment, int):
                ids.append(fragment)
                continue
            backend = self._full if i == 0 or self._prefix_after_special else self._bare
            ids.extend(backend.encode(fragment, add_special_tokens=False).ids)
        if add_special and self.add_eos:
            assert eos is not None
            ids.append(eos)
        return ids


def _decoder_kind(spec: dict[str, Any], source: str) -> tuple[str, bool]:
    """("bpe" | "spm", strip the first space on decode) from the decoder."""
    nodes = list(_walk(spec.get("decoder"), "decoders"))
    types = {node.get("type") for node in nodes} - {"Sequence"}
    if "ByteLevel" in types:
        return "bpe", False
    if types and types <= _SPM_DECODERS:
        strip = any(
            (node.get("type") == "Strip" and _positive_int(node.get("start")))
            or (
                node.get("type") == "Metaspace"
                and node.get("prepend_scheme", "always") != "never"
                and node.get("add_prefix_space", True)
            )
            for node in nodes
        )
        return "spm", strip
    raise TokenizerError(f"{source}: decoder {sorted(map(str, types))} is not supported")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _special_item(item: Any) -> str | None:
    """The token text of a TemplateProcessing {"SpecialToken": {"id": text}} item, else None."""
    special = item.get("SpecialToken") if isinstance(item, dict) else None
    text = special.get("id") if isinstance(special, dict) else None
    return text if isinstance(text, str) else None


def _template_specials(spec: dict[str, Any]) -> tuple[str | None, str | None]:
    """Texts of the special tokens the post-processor puts before and after a single text."""
    for node in _walk(spec.get("post_processor"), "processors"):
        if node.get("type") != "TemplateProcessing":
            continue
        items = node.get("single")
        texts = [_special_item(item) for item in items] if isinstance(items, list) else []
        return (texts[0] if texts else None), (texts[-1] if len(texts) > 1 else None)
    return None, None


def _base_vocab(model: dict[str, Any], source: str) -> tuple[dict[int, str], dict[int, float]]:
    """id -> text (and scores for Unigram) of a BPE or Unigram model section."""
    kind = model.get("type")
    if kind == "BPE" and isinstance(model.get("vocab"), dict):
        pairs = model["vocab"].items()
        if not all(isinstance(i, int) and 0 <= i < 1 << 24 for _, i in pairs):
            raise TokenizerError(f"{source}: model.vocab ids must be integers in [0, 2^24)")
        return {i: text for text, i in pairs}, {}
    if kind == "Unigram" and isinstance(model.get("vocab"), list):
        entries = model["vocab"]
        if not all(_unigram_entry(e) for e in entries):
            raise TokenizerError(f"{source}: model.vocab must list [piece, score] pairs")
        return dict(enumerate(e[0] for e in entries)), {
            i: float(e[1]) for i, e in enumerate(entries)
        }
    raise TokenizerError(f"{source}: tokenizer model {kind!r} is not supported (BPE, Unigram)")


def _unigram_entry(entry: Any) -> bool:
    """Whether `entry` is a [piece, score] pair."""
    return (
        isinstance(entry, list)
        and len(entry) == 2
        and isinstance(entry[0], str)
        and isinstance(entry[1], int | float)
        and not isinstance(entry[1], bool)
    )


def _model_unk(model: dict[str, Any], token_to_id: dict[str, int], n_vocab: int) -> int | None:
    """The model's unknown token: BPE's unk_token text or Unigram's unk_id."""
    text, index = model.get("unk_token"), model.get("unk_id")
    if isinstance(text, str) and text in token_to_id:
        return token_to_id[text]
    if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < n_vocab:
        return index
    return None


def _fill(texts: dict[int, str], n_vocab: int, source: str) -> list[str]:
    """Tokens in id order, holes and the model's extra rows filled with unused placeholders."""
    size = max(texts, default=-1) + 1
    if size > n_vocab:
        raise TokenizerError(
            f"{source}: the tokenizer has {size} tokens but the model's vocabulary only {n_vocab}"
        )
    return [texts.get(i, f"[PAD{i}]") for i in range(n_vocab)]


def _role_ids(
    settings: TokenizerSettings, token_to_id: dict[str, int], source: str
) -> dict[str, int | None]:
    ids: dict[str, int | None] = {}
    for role, text in settings.special.items():
        if text not in token_to_id:
            raise TokenizerError(f"{source}: {role}_token {text!r} is not in the vocabulary")
        ids[role] = token_to_id[text]
    return ids


def _json_tokenizer(
    path: Path, settings: TokenizerSettings, n_vocab: int, source: str
) -> HFJsonTokenizer:
    spec = read_json_object(path)
    assert spec is not None
    model = spec.get("model")
    if not isinstance(model, dict):
        raise TokenizerError(f"{source}: 'model' must be an object")
    texts, scores = _base_vocab(model, source)
    entries = spec.get("added_tokens") or []
    if not isinstance(entries, list) or not all(isinstance(t, dict) for t in entries):
        raise TokenizerError(f"{source}: 'added_tokens' must be a list of objects")
    added = [added_token(t, parse_token_id(t.get("id"), "added token", source), source)
             for t in entries]  # fmt: skip
    for token in added:
        texts[token.id] = token.content
    tokens = _fill(texts, n_vocab, source)
    kind, strip_space = _decoder_kind(spec, source)
    attrs = [TokenAttr.NORMAL if i in texts else TokenAttr.UNUSED for i in range(n_vocab)]
    if model.get("byte_fallback"):
        for i, text in texts.items():
            if _BYTE_TOKEN.fullmatch(text):
                attrs[i] = TokenAttr.BYTE
    _mark_added(attrs, added)
    token_to_id: dict[str, int] = {}
    for i, text in enumerate(tokens):
        token_to_id.setdefault(text, i)
    first, last = _template_specials(spec)
    if first is not None:
        settings.special.setdefault("bos", first)
    if last is not None:
        settings.special.setdefault("eos", last)
    ids: dict[str, int | None] = dict.fromkeys(_ALL_ROLES)
    ids.update(_role_ids(settings, token_to_id, source))
    unk = _model_unk(model, token_to_id, n_vocab)
    if unk is not None:
        ids["unk"] = unk
        attrs[unk] |= TokenAttr.UNKNOWN
    if kind == "spm" and ids["unk"] is None:
        raise TokenizerError(f"{source}: a SentencePiece-style tokenizer needs an unk token")
    add_bos = settings.add_bos if settings.add_bos is not None else first is not None
    add_eos = settings.add_eos if settings.add_eos is not None else last is not None
    _check_flags(ids, add_bos, add_eos, source)
    vocab = Vocab(
        kind=kind,
        tokens=tokens,
        scores=[scores.get(i, 0.0) for i in range(n_vocab)],
        attrs=attrs,
        token_to_id=token_to_id,
        ids=ids,
        add_bos=add_bos,
        add_eos=add_eos,
        add_space_prefix=strip_space,
        clean_spaces=settings.clean_spaces,
        pre=pre_tokenizer("default") if kind == "bpe" else None,
    )
    return HFJsonTokenizer(vocab, spec, source)


def _mark_added(attrs: list[int], added: Iterable[AddedToken]) -> None:
    """Special added tokens are control tokens, others user-defined; strip flags kept."""
    for token in added:
        attr = TokenAttr.CONTROL if token.special else TokenAttr.USER_DEFINED
        attr |= TokenAttr.LSTRIP if token.lstrip else 0
        attr |= TokenAttr.RSTRIP if token.rstrip else 0
        attrs[token.id] = attr


def _check_flags(ids: dict[str, int | None], add_bos: bool, add_eos: bool, source: str) -> None:
    if add_bos and ids["bos"] is None:
        raise TokenizerError(f"{source}: add_bos_token is true but there is no bos_token")
    if add_eos and ids["eos"] is None:
        raise TokenizerError(f"{source}: add_eos_token is true but there is no eos_token")


def _sentencepiece_tokenizer(path: Path, settings: TokenizerSettings, n_vocab: int) -> Tokenizer:
    """Convert tokenizer.model (+ added tokens) to GGUF-style metadata and build from it."""
    model = read_sentencepiece_model(path)
    texts = dict(enumerate(model.pieces))
    types = dict(enumerate(model.types))
    for token in settings.added:
        if token.id < len(model.pieces) and model.pieces[token.id] != token.content:
            raise TokenizerError(
                f"{path.parent}: added token {token.content!r} has id {token.id}, which is "
                f"the piece {model.pieces[token.id]!r} of tokenizer.model"
            )
        texts[token.id] = token.content
        types[token.id] = 3 if token.special else 4  # CONTROL, USER_DEFINED
    tokens = _fill(texts, n_vocab, str(path))
    token_to_id: dict[str, int] = {}
    for i, text in enumerate(tokens):
        token_to_id.setdefault(text, i)
    ids = _role_ids(settings, token_to_id, str(path.parent))
    for role, default in (("bos", "<s>"), ("eos", "</s>")):
        if role not in ids and default in token_to_id:
            ids[role] = token_to_id[default]
    unk = next((i for i, kind in types.items() if kind == 2), None)
    metadata: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [
            model.scores[i] if i < len(model.scores) else 0.0 for i in range(n_vocab)
        ],
        "tokenizer.ggml.token_type": [types.get(i, 5) for i in range(n_vocab)],
        "tokenizer.ggml.add_bos_token": True if settings.add_bos is None else settings.add_bos,
        "tokenizer.ggml.add_eos_token": bool(settings.add_eos),
        "tokenizer.ggml.add_space_prefix": model.add_dummy_prefix,
    }
    for role, key in _ROLE_KEYS.items():
        value = ids.get(role) if role != "unk" else ids.get("unk", unk)
        if value is not None:
            metadata[f"tokenizer.ggml.{key}"] = value
    if ids.get("pad") is not None:
        metadata["tokenizer.ggml.padding_token_id"] = ids["pad"]
    return Tokenizer.from_gguf_metadata(metadata, source=str(path))


def load_hf_tokenizer(
    folder: Path,
    n_vocab: int,
    extra_eog_ids: Iterable[int] = (),
    settings: TokenizerSettings | None = None,
) -> Tokenizer:
    """The tokenizer of an HF folder for a model with `n_vocab` embedding rows.

    `extra_eog_ids` (e.g. generation_config's eos_token_id) also end generation. `settings`
    are the folder's tokenizer settings when already read (see read_tokenizer_settings).
    """
    settings = copy.deepcopy(settings) if settings is not None else read_tokenizer_settings(folder)
    json_path, model_path = folder / "tokenizer.json", folder / "tokenizer.model"
    if json_path.is_file():
        if json_path.stat().st_size > MAX_JSON_BYTES:
            raise ModelFormatError(f"{json_path}: larger than {MAX_JSON_BYTES} bytes")
        tokenizer: Tokenizer = _json_tokenizer(json_path, settings, n_vocab, str(json_path))
    elif model_path.is_file():
        tokenizer = _sentencepiece_tokenizer(model_path, settings, n_vocab)
    else:
        raise ModelFormatError(f"{folder}: no tokenizer.json or tokenizer.model")
    extra = frozenset(extra_eog_ids)
    for token in extra:
        tokenizer.check_id(token)
    tokenizer.eog_ids = tokenizer.eog_ids | extra
    return tokenizer
