"""Which prompt format a model gets, and why.

In this order:

1. the choice of the user (``--chat-template NAME|FILE``): a built-in format's name, else a
   path to a jinja file (a name wins over a file of the same name);
2. the model's own template, GGUF ``tokenizer.chat_template``;
3. a guess from the metadata, first by the vocabulary, then by the model's name
   (``general.name``, ``general.basename``, ``general.finetune``, compared lowercase with
   everything but letters and digits removed):

   - tokens ``<|im_start|>`` and ``<|im_end|>``             -> chatml
   - tokens ``<|prompter|>`` and ``<|assistant|>``          -> oasst-llama2
   - a name with "airoboros"                               -> airoboros
   - a name with "vicuna"                                  -> vicuna
   - a name with "oasst" or "openassistant"                -> oasst-llama2
   - a name with "llama2" and "chat" ("Llama 2 7B Chat")   -> llama-2-chat

4. otherwise a ChatError that says how to choose.

The model's own template and a template file stop at the model's EOS token and at every
end-of-generation token whose text the template writes.
"""

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.chat.errors import ChatError, TemplateError
from corral.chat.formats import BUILTIN_FORMATS, ChatFormat
from corral.chat.sandbox import MAX_TEMPLATE_CHARS, compile_template

if TYPE_CHECKING:
    from corral.tokenizer import Tokenizer

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
MODEL_TEMPLATE_REASON = "the model's own template (tokenizer.chat_template)"
_NAME_KEYS = ("general.name", "general.basename", "general.finetune")

_TOKEN_GUESSES = (
    (("<|im_start|>", "<|im_end|>"), "chatml"),
    (("<|prompter|>", "<|assistant|>"), "oasst-llama2"),
)
_NAME_GUESSES = (
    (("airoboros",), "airoboros"),
    (("vicuna",), "vicuna"),
    (("oasst",), "oasst-llama2"),
    (("openassistant",), "oasst-llama2"),
    (("llama2", "chat"), "llama-2-chat"),
)


def resolve_chat_format(
    choice: str | None, metadata: Mapping[str, Any], tokenizer: "Tokenizer"
) -> tuple[ChatFormat, str]:
    """The prompt format for a model and the reason it was picked (see the module docstring).

    `choice` is a built-in name or a template file path, or None to decide from `metadata`
    (GGUF key -> value) and `tokenizer`. Raises ChatError when nothing fits or the choice is
    unknown, TemplateError when the chosen or the model's template does not compile.
    """
    if choice is not None:
        return _chosen(choice, tokenizer)
    template = metadata.get(CHAT_TEMPLATE_KEY)
    if template is not None and not isinstance(template, str):
        raise ChatError(f"{CHAT_TEMPLATE_KEY}: expected a string, got {type(template).__name__}")
    if template and template.strip():
        _compile(template, f"the model's {CHAT_TEMPLATE_KEY}")
        return _template_format("model", template, tokenizer), MODEL_TEMPLATE_REASON
    guess = _guess(metadata, tokenizer)
    if guess is not None:
        return guess
    raise ChatError(
        f"no prompt format for this model: it has no {CHAT_TEMPLATE_KEY} and its metadata names "
        f"no known format; choose one with --chat-template NAME|FILE (NAME: {_names()})"
    )


def _names() -> str:
    """The built-in format names, comma separated."""
    return ", ".join(BUILTIN_FORMATS)


def _chosen(choice: str, tokenizer: "Tokenizer") -> tuple[ChatFormat, str]:
    """The format the user asked for by name or file."""
    if not isinstance(choice, str) or not choice:
        raise ChatError(f"chat template choice must be a name or a file path, got {choice!r}")
    if choice in BUILTIN_FORMATS:
        return BUILTIN_FORMATS[choice], "asked for by name"
    path = Path(choice)
    if not path.is_file():
        raise ChatError(
            f"chat template {choice!r} is neither a built-in format ({_names()}) nor a file"
        )
    template = _read_template(path)
    _compile(template, f"template file {path}")
    return _template_format("file", template, tokenizer), f"asked for as the template file {path}"


def _read_template(path: Path) -> str:
    """A template file's text: UTF-8, at most MAX_TEMPLATE_CHARS characters."""
    try:
        with path.open("rb") as f:
            data = f.read(4 * MAX_TEMPLATE_CHARS + 1)
    except OSError as e:
        raise ChatError(f"cannot read the template file {path}: {e.strerror}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ChatError(f"template file {path} is not UTF-8 (byte {e.start})") from e
    if len(data) > 4 * MAX_TEMPLATE_CHARS or len(text) > MAX_TEMPLATE_CHARS:
        raise ChatError(f"template file {path} is longer than {MAX_TEMPLATE_CHARS} characters")
    return text


def _compile(template: str, what: str) -> None:
    """Compile `template` now, so a broken one fails when it is chosen, not when used."""
    try:
        compile_template(template)
    except TemplateError as e:
        raise TemplateError(f"{what}: {e}; choose another with --chat-template NAME|FILE") from e


def _template_format(name: str, template: str, tokenizer: "Tokenizer") -> ChatFormat:
    """A format for a template of the model or the user: stops at EOS and at the
    end-of-generation tokens the template writes."""
    stops = []
    if tokenizer.eos_id is not None:
        stops.append(tokenizer.token_text(tokenizer.eos_id))
    for token in sorted(tokenizer.eog_ids):
        text = tokenizer.token_text(token)
        if text in template and text not in stops:
            stops.append(text)
    return ChatFormat(name, template, (), tuple(stops), None)


def _guess(metadata: Mapping[str, Any], tokenizer: "Tokenizer") -> tuple[ChatFormat, str] | None:
    """A built-in format guessed from the vocabulary or the model's name, with the reason."""
    missing = f"the model has no {CHAT_TEMPLATE_KEY}"
    for texts, name in _TOKEN_GUESSES:
        if all(tokenizer.token_id(text) is not None for text in texts):
            listed = " and ".join(texts)
            return BUILTIN_FORMATS[name], f"guessed: the vocabulary has {listed} ({missing})"
    for key in _NAME_KEYS:
        value = metadata.get(key)
        if not isinstance(value, str):
            continue
        normalized = re.sub(r"[^a-z0-9]", "", value.lower())
        for words, name in _NAME_GUESSES:
            if all(word in normalized for word in words):
                return BUILTIN_FORMATS[name], f"guessed from {key} {value!r} ({missing})"
    return None
