"""resolve_chat_format: the user's choice, else the model's template, else a documented guess,
else an error that says how to choose."""

from __future__ import annotations

import pathlib

import pytest
from chat_refs import smollm2_path

from corral.chat import BUILTIN_FORMATS, ChatError, TemplateError, resolve_chat_format
from corral.tokenizer import Tokenizer
from tests.tokenizer.tokenizer_data import corral_metadata as metadata

TEMPLATE_KEY = "tokenizer.chat_template"


def smol_metadata(**changes: object) -> dict[str, object]:
    meta = dict(metadata(smollm2_path()))
    meta.update(changes)
    return {key: value for key, value in meta.items() if value is not None}


def test_the_models_own_template(smol: Tokenizer) -> None:
    fmt, reason = resolve_chat_format(None, smol_metadata(), smol)
    assert fmt.name == "model"
    assert fmt.template == metadata(smollm2_path())[TEMPLATE_KEY]
    assert reason == "the model's own template (tokenizer.chat_template)"
    assert fmt.stop_tokens == ("<|im_end|>",) and fmt.stop_strings == ()
    assert fmt.default_system is None


@pytest.mark.parametrize("name", BUILTIN_FORMATS)
def test_a_name_wins_over_the_models_template(smol: Tokenizer, name: str) -> None:
    fmt, reason = resolve_chat_format(name, smol_metadata(), smol)
    assert fmt is BUILTIN_FORMATS[name] and reason == "asked for by name"


def test_a_file_wins_over_the_models_template(smol: Tokenizer, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}")
    fmt, reason = resolve_chat_format(str(path), smol_metadata(), smol)
    assert (fmt.name, fmt.template) == ("file", path.read_text())
    assert reason == f"asked for as the template file {path}"
    assert fmt.stop_tokens == ("<|im_end|>",)


def test_bad_choices(smol: Tokenizer, tmp_path: pathlib.Path) -> None:
    with pytest.raises(
        ChatError, match="'chatml2' is neither a built-in format .*chatml.* nor a file"
    ):
        resolve_chat_format("chatml2", smol_metadata(), smol)
    with pytest.raises(ChatError, match="neither"):
        resolve_chat_format(str(tmp_path / "missing.jinja"), smol_metadata(), smol)
    binary = tmp_path / "binary.jinja"
    binary.write_bytes(b"{{ 1 }}\xff")
    with pytest.raises(ChatError, match="not UTF-8"):
        resolve_chat_format(str(binary), smol_metadata(), smol)
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}")
    with pytest.raises(TemplateError, match="broken.jinja: .*syntax error.*--chat-template"):
        resolve_chat_format(str(broken), smol_metadata(), smol)


def test_a_broken_model_template(smol: Tokenizer) -> None:
    with pytest.raises(TemplateError, match="model's tokenizer.chat_template.*--chat-template"):
        resolve_chat_format(None, smol_metadata(**{TEMPLATE_KEY: "{% if %}"}), smol)
    with pytest.raises(ChatError, match="tokenizer.chat_template: expected a string, got int"):
        resolve_chat_format(None, smol_metadata(**{TEMPLATE_KEY: 3}), smol)


def test_guess_from_chatml_tokens(smol: Tokenizer) -> None:
    for template in (None, "", "  \n"):
        fmt, reason = resolve_chat_format(None, smol_metadata(**{TEMPLATE_KEY: template}), smol)
        assert fmt is BUILTIN_FORMATS["chatml"]
        assert reason.startswith("guessed: the vocabulary has <|im_start|> and <|im_end|>")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Vicuna 13B v1.5", "vicuna"),
        ("airoboros-l2-13b-gpt4-1.4.1", "airoboros"),
        ("OpenAssistant Llama2 13B Orca 8K 3319", "oasst-llama2"),
        ("llama2-13b-orca-8k-oasst", "oasst-llama2"),
        ("Llama 2 7B Chat", "llama-2-chat"),
        ("llama-2-13b-chat.ggmlv3", "llama-2-chat"),
    ],
)
def test_guess_from_the_name(spm: Tokenizer, name: str, expected: str) -> None:
    fmt, reason = resolve_chat_format(None, {"general.name": name}, spm)
    assert fmt is BUILTIN_FORMATS[expected]
    assert (
        reason == f"guessed from general.name {name!r} (the model has no tokenizer.chat_template)"
    )


def test_guess_from_basename_and_finetune(spm: Tokenizer) -> None:
    meta = {"general.name": "Models", "general.basename": "Llama-2", "general.finetune": "x"}
    with pytest.raises(ChatError):
        resolve_chat_format(None, meta, spm)
    fmt, reason = resolve_chat_format(None, {**meta, "general.finetune": "vicuna-v1.5"}, spm)
    assert fmt.name == "vicuna" and "general.finetune" in reason


def test_no_guess_says_how_to_choose(spm: Tokenizer) -> None:
    with pytest.raises(ChatError) as info:
        resolve_chat_format(None, {"general.name": "LLaMA v2"}, spm)
    message = str(info.value)
    assert "no tokenizer.chat_template" in message and "--chat-template NAME|FILE" in message
    assert all(name in message for name in BUILTIN_FORMATS)
