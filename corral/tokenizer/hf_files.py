"""The tokenizer settings of an HF folder: ``tokenizer_config.json``, ``special_tokens_map.json``,
``added_tokens.json`` and the chat template (``chat_template.jinja`` or the config's key).

Only data is read: ``tokenizer_class`` and ``auto_map`` are ignored, no code is imported.
Special tokens may be written as a string or as an AddedToken object (``{"content": ...}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import ModelFormatError, TokenizerError
from corral.formats.hf import read_json_object

ROLES = ("bos", "eos", "unk", "pad")
MAX_TEMPLATE_BYTES = 1 << 20


@dataclass(frozen=True)
class AddedToken:
    """A token added on top of the base vocabulary (HF AddedToken)."""

    id: int
    content: str
    special: bool
    lstrip: bool = False
    rstrip: bool = False


@dataclass
class TokenizerSettings:
    """What the JSON files around a tokenizer say."""

    special: dict[str, str] = field(default_factory=dict)  # role -> token text
    special_texts: set[str] = field(default_factory=set)  # every token HF calls special
    added: list[AddedToken] = field(default_factory=list)
    add_bos: bool | None = None
    add_eos: bool | None = None
    clean_spaces: bool = False
    chat_template: str | None = None


def _token_text(value: Any, key: str, source: str) -> str | None:
    """The text of a special-token entry: a string, an AddedToken object, or null."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise TokenizerError(f"{source}: '{key}' must be a token string")
    return value


def _flag(config: Mapping[str, Any], key: str, source: str) -> bool | None:
    value = config.get(key)
    if value is not None and not isinstance(value, bool):
        raise TokenizerError(f"{source}: '{key}' must be true or false")
    return value


def added_token(value: Any, token_id: int, source: str) -> AddedToken:
    """An AddedToken from a tokenizer.json / added_tokens_decoder entry."""
    if not isinstance(value, dict):
        raise TokenizerError(f"{source}: added token {token_id} must be an object")
    content = _token_text(value, f"added token {token_id}", source)
    assert content is not None
    flags = {}
    for key in ("special", "lstrip", "rstrip"):
        flag = value.get(key, False)
        if not isinstance(flag, bool):
            raise TokenizerError(f"{source}: added token {token_id}: '{key}' must be a bool")
        flags[key] = flag
    return AddedToken(token_id, content, **flags)


def parse_token_id(value: Any, what: str, source: str) -> int:
    """A token id (an int, or a numeric string as JSON object keys are) in [0, 2^24)."""
    try:
        token_id = int(value)
    except (TypeError, ValueError):
        raise TokenizerError(f"{source}: {what} has a bad token id {value!r}") from None
    if isinstance(value, bool) or not 0 <= token_id < 1 << 24:
        raise TokenizerError(f"{source}: {what} has a bad token id {value!r}")
    return token_id


def _special_lists(config: Mapping[str, Any], source: str) -> set[str]:
    """Texts listed as additional/extra special tokens."""
    out: set[str] = set()
    for key in ("additional_special_tokens", "extra_special_tokens"):
        value = config.get(key)
        if isinstance(value, dict):  # v5 may name them: {"name": token}
            value = list(value.values())
        if value is None:
            continue
        if not isinstance(value, list):
            raise TokenizerError(f"{source}: '{key}' must be a list")
        for item in value:
            text = _token_text(item, key, source)
            if text is not None:
                out.add(text)
    return out


def read_chat_template(folder: Path, config: Mapping[str, Any]) -> str | None:
    """``chat_template.jinja`` if present, else the config's ``chat_template`` (a string, or
    a list of {"name", "template"} of which "default" is taken)."""
    path = folder / "chat_template.jinja"
    if path.is_file():
        with path.open("rb") as f:
            data = f.read(MAX_TEMPLATE_BYTES + 1)
        if len(data) > MAX_TEMPLATE_BYTES:
            raise ModelFormatError(f"{path}: larger than {MAX_TEMPLATE_BYTES} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ModelFormatError(f"{path}: not UTF-8 (byte {error.start})") from None
    value = config.get("chat_template")
    if isinstance(value, list):
        named = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
        value = named.get("default")
    if value is not None and not isinstance(value, str):
        raise ModelFormatError(f"{folder / 'tokenizer_config.json'}: bad 'chat_template'")
    return value


def read_tokenizer_settings(folder: Path) -> TokenizerSettings:
    """Merge tokenizer_config.json, special_tokens_map.json and added_tokens.json."""
    config_path = folder / "tokenizer_config.json"
    map_path = folder / "special_tokens_map.json"
    config = read_json_object(config_path, required=False) or {}
    special_map = read_json_object(map_path, required=False) or {}
    settings = TokenizerSettings()
    for source, values in ((str(map_path), special_map), (str(config_path), config)):
        for role in ROLES:
            text = _token_text(values.get(f"{role}_token"), f"{role}_token", source)
            if text is not None:
                settings.special[role] = text
        settings.special_texts |= _special_lists(values, source)
    settings.special_texts |= set(settings.special.values())
    settings.add_bos = _flag(config, "add_bos_token", str(config_path))
    settings.add_eos = _flag(config, "add_eos_token", str(config_path))
    settings.clean_spaces = bool(_flag(config, "clean_up_tokenization_spaces", str(config_path)))
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise TokenizerError(f"{config_path}: 'added_tokens_decoder' must be an object")
    added = {}
    for key, value in decoder.items():
        token_id = parse_token_id(key, "added_tokens_decoder", str(config_path))
        added[token_id] = added_token(value, token_id, str(config_path))
    added_path = folder / "added_tokens.json"
    for text, value in (read_json_object(added_path, required=False) or {}).items():
        token_id = parse_token_id(value, f"token {text!r}", str(added_path))
        if token_id not in added:
            added[token_id] = AddedToken(token_id, text, text in settings.special_texts)
    settings.added = [added[i] for i in sorted(added)]
    settings.chat_template = read_chat_template(folder, config)
    return settings
