"""render(): message content comes back as parts the tokenizer reads without special tokens,
template text as parts it reads with them, and the joined text is always HF's rendering."""

from __future__ import annotations

import pytest
from chat_refs import hf_render

from corral.chat import BUILTIN_FORMATS, ChatError, ChatFormat, Message, parse_messages, render

# Llama-3's template trims the content inside the sentinels' reach.
LLAMA_3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
# Templates that look at the content, not only copy it.
SLICING = "{% for m in messages %}[{{ m['content'][:4] }}]{% endfor %}"
SPLITTING = (
    "{% for m in messages %}<|im_start|>{{ m['content'].split('</think>')[-1] | trim }}"
    "<|im_end|>{% endfor %}"
)
BRANCHING = (
    "{% for m in messages %}{% if m['content'] %}<a>{{ m['content'] }}{% else %}<none>"
    "{% endif %}{% endfor %}"
)


def fmt(template: str) -> ChatFormat:
    return ChatFormat("file", template, (), (), None)


def rendered(template: str, dialog: list[dict[str, str]]):
    messages = parse_messages(dialog)
    prompt = render(fmt(template), messages, bos_token="<s>", eos_token="</s>")
    expected = hf_render(
        template, dialog, bos_token="<s>", eos_token="</s>", add_generation_prompt=True
    )
    assert prompt.text == expected
    return prompt


def content_parts(prompt) -> list[str]:
    return [text.strip() for text, special in prompt.parts if not special]


def template_text(prompt) -> str:
    return "".join(text for text, special in prompt.parts if special)


def test_chatml_parts() -> None:
    messages = [Message("system", "S"), Message("user", "Hi <|im_end|> x")]
    prompt = render(BUILTIN_FORMATS["chatml"], messages, bos_token="<s>", eos_token="</s>")
    assert prompt.parts == (
        ("<|im_start|>system\n", True),
        ("S", False),
        ("<|im_end|>\n<|im_start|>user\n", True),
        ("Hi <|im_end|> x", False),
        ("<|im_end|>\n<|im_start|>assistant\n", True),
    )
    assert prompt.text == "".join(text for text, _ in prompt.parts)


def test_trimmed_content_matches_hf_and_keeps_its_flags() -> None:
    dialog = [
        {"role": "system", "content": "  <|eot_id|> sys  "},
        {"role": "user", "content": "\n\nHi <|start_header_id|>\t"},
    ]
    prompt = rendered(LLAMA_3, dialog)
    assert content_parts(prompt) == ["<|eot_id|> sys", "Hi <|start_header_id|>"]
    assert template_text(prompt).count("<|eot_id|>") == 2
    assert "<|start_header_id|>user<|end_header_id|>" in template_text(prompt)


def test_llama_2_strip_keeps_content_flags() -> None:
    dialog = [
        {"role": "user", "content": "  [INST] <s> hi  "},
        {"role": "assistant", "content": " </s> "},
        {"role": "user", "content": "q"},
    ]
    prompt = rendered(BUILTIN_FORMATS["llama-2-chat"].template, dialog)
    assert content_parts(prompt) == ["[INST] <s> hi", "</s>", "q"]
    assert template_text(prompt).replace(" ", "") == "<s>[INST][/INST]</s><s>[INST][/INST]"


@pytest.mark.parametrize("template", [SLICING, SPLITTING, BRANCHING], ids=["slice", "split", "if"])
def test_templates_that_rewrite_content_still_give_hf_text(template: str) -> None:
    dialog = [
        {"role": "user", "content": "<|im_end|>abcdef"},
        {"role": "assistant", "content": "x</think> <|im_start|>y "},
        {"role": "user", "content": ""},
    ]
    prompt = rendered(template, dialog)
    assert prompt.text  # the joined parts are HF's text (checked in rendered)


def test_fallback_flags_the_messages_it_finds_in_the_text() -> None:
    # split() drops the opening sentinel of the first message, so render() looks for each
    # content (or its strip()) in the text: the rewritten one is not found, the other is.
    dialog = [
        {"role": "assistant", "content": "a</think> <|im_start|>b"},
        {"role": "user", "content": " <|im_end|> c "},
    ]
    prompt = rendered(SPLITTING, dialog)
    assert prompt.parts == (
        ("<|im_start|><|im_start|>b<|im_end|><|im_start|>", True),
        ("<|im_end|> c", False),
        ("<|im_end|>", True),
    )


def test_content_may_hold_the_sentinel_characters() -> None:
    dialog = [{"role": "user", "content": "\ue000 \ue001 <|im_end|> \ue002"}]
    prompt = rendered(BUILTIN_FORMATS["chatml"].template, dialog)
    assert content_parts(prompt) == [dialog[0]["content"].strip()]


def test_empty_content_gives_no_empty_parts() -> None:
    dialog = [{"role": "user", "content": ""}]
    prompt = rendered(BUILTIN_FORMATS["chatml"].template, dialog)
    assert prompt.parts == (("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n", True),)


def test_default_system_prompt_is_content() -> None:
    fmt_ = BUILTIN_FORMATS["vicuna"]
    prompt = render(fmt_, [Message("user", "Hi")], bos_token="<s>", eos_token="</s>")
    assert prompt.parts[0] == (fmt_.default_system, False)


def test_render_wants_messages() -> None:
    with pytest.raises(ChatError, match=r"messages\[0\]: expected a Message, got dict"):
        bad = [{"role": "user", "content": "x"}]
        render(BUILTIN_FORMATS["chatml"], bad, bos_token="<s>", eos_token="</s>")  # type: ignore[arg-type]


def test_content_holding_every_private_use_character() -> None:
    ranges = (range(0xE000, 0xF900), range(0xF0000, 0xFFFFE), range(0x100000, 0x10FFFE))
    everything = "".join(chr(c) for r in ranges for c in r)
    dialog = [{"role": "user", "content": everything + " <|im_end|>"}]
    prompt = rendered(BUILTIN_FORMATS["chatml"].template, dialog)
    assert content_parts(prompt) == [dialog[0]["content"]]
