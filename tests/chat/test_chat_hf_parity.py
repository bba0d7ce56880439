"""Chat prompts against HF transformers on the same template: the rendered text
(``render_jinja_template``, what ``apply_chat_template`` renders) and the token ids of HF
tokenizers that transformers builds from the GGUF files themselves.

SmolLM2 (byte-level BPE): every built-in format and the model's own template, ids against
``apply_chat_template(tokenize=True)``. Llama-2 SentencePiece vocabulary: llama-2-chat against
Meta's per-turn encoding, the other Llama-2 formats against the legacy (SentencePiece-era)
way HF's LlamaTokenizer encoded a prompt, piece by piece between special tokens, which is how
FastChat-trained models saw them. (HF's converted fast tokenizer adds no "▁" after a special
token, unlike SentencePiece, llama.cpp and corral, so whole-prompt ids differ there.)
"""

from __future__ import annotations

import pytest
from chat_refs import (
    CONVERSATIONS,
    hf_render,
    hf_tokenizer,
    legacy_spm_ids,
    llama_spm_path,
    meta_llama2_turns,
    smollm2_path,
)

from corral.chat import BUILTIN_FORMATS, ChatFormat, parse_messages, render, resolve_chat_format
from tests.tokenizer.tokenizer_data import corral_metadata as metadata
from tests.tokenizer.tokenizer_data import tokenizer_for as corral_tokenizer

SMOL_SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
LLAMA_SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}
CASES = [(f, c) for f in BUILTIN_FORMATS for c in CONVERSATIONS]


def with_default_system(fmt: ChatFormat, dialog: list[dict[str, str]]) -> list[dict[str, str]]:
    """The dialog HF is given: ours adds the format's default system prompt itself."""
    if fmt.default_system is None or any(m["role"] == "system" for m in dialog):
        return dialog
    return [{"role": "system", "content": fmt.default_system}] + dialog


def smollm2_model_format() -> ChatFormat:
    fmt, _ = resolve_chat_format(None, metadata(smollm2_path()), corral_tokenizer(smollm2_path()))
    return fmt


@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize(("name", "conversation"), CASES)
def test_builtin_text_equals_hf(name: str, conversation: str, generation_prompt: bool) -> None:
    fmt = BUILTIN_FORMATS[name]
    dialog = CONVERSATIONS[conversation]
    ours = render(
        fmt, parse_messages(dialog), add_generation_prompt=generation_prompt, **LLAMA_SPECIAL
    )
    theirs = hf_render(
        fmt.template,
        with_default_system(fmt, dialog),
        add_generation_prompt=generation_prompt,
        **LLAMA_SPECIAL,
    )
    assert ours.text == theirs


@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_smollm2_own_template_text_equals_hf(conversation: str, generation_prompt: bool) -> None:
    fmt = smollm2_model_format()
    dialog = CONVERSATIONS[conversation]
    ours = render(
        fmt, parse_messages(dialog), add_generation_prompt=generation_prompt, **SMOL_SPECIAL
    )
    theirs = hf_tokenizer(smollm2_path()).apply_chat_template(
        dialog, tokenize=False, add_generation_prompt=generation_prompt
    )
    assert ours.text == theirs


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_smollm2_own_template_ids_equal_hf(conversation: str) -> None:
    dialog = CONVERSATIONS[conversation]
    prompt = render(smollm2_model_format(), parse_messages(dialog), **SMOL_SPECIAL)
    ours = corral_tokenizer(smollm2_path()).encode_parts(prompt.parts)
    theirs = hf_tokenizer(smollm2_path()).apply_chat_template(
        dialog, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert ours == theirs


@pytest.mark.parametrize(("name", "conversation"), CASES)
def test_builtin_ids_on_smollm2_equal_hf(name: str, conversation: str) -> None:
    fmt = BUILTIN_FORMATS[name]
    dialog = CONVERSATIONS[conversation]
    prompt = render(fmt, parse_messages(dialog), **SMOL_SPECIAL)
    ours = corral_tokenizer(smollm2_path()).encode_parts(prompt.parts)
    theirs = hf_tokenizer(smollm2_path()).apply_chat_template(
        with_default_system(fmt, dialog),
        chat_template=fmt.template,
        tokenize=True,
        add_generation_prompt=True,
        return_dict=False,
    )
    assert ours == theirs


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_llama_2_chat_ids_equal_metas_per_turn_encoding(conversation: str) -> None:
    dialog = CONVERSATIONS[conversation]
    hf = hf_tokenizer(llama_spm_path())
    expected = []
    for text, bos, eos in meta_llama2_turns(dialog):
        expected += [hf.bos_token_id] * bos + hf.encode(text, add_special_tokens=False)
        expected += [hf.eos_token_id] * eos
    prompt = render(BUILTIN_FORMATS["llama-2-chat"], parse_messages(dialog), **LLAMA_SPECIAL)
    assert corral_tokenizer(llama_spm_path()).encode_parts(prompt.parts) == expected


@pytest.mark.parametrize("name", ["system-user-assistant", "airoboros", "vicuna", "oasst-llama2"])
@pytest.mark.parametrize("conversation", ["system", "multi", "multi-no-system"])
def test_llama_2_format_ids_equal_legacy_spm(name: str, conversation: str) -> None:
    fmt = BUILTIN_FORMATS[name]
    dialog = CONVERSATIONS[conversation]
    hf = hf_tokenizer(llama_spm_path())
    prompt = render(fmt, parse_messages(dialog), **LLAMA_SPECIAL)
    specials = {"<s>": hf.bos_token_id, "</s>": hf.eos_token_id}
    expected = [hf.bos_token_id] + legacy_spm_ids(hf, prompt.text, specials)
    assert corral_tokenizer(llama_spm_path()).encode_parts(prompt.parts) == expected


def test_special_token_text_in_a_message_stays_text_like_hf_split_special_tokens() -> None:
    hf = hf_tokenizer(smollm2_path())
    dialog = [{"role": "user", "content": "Hi <|im_end|> x"}]
    prompt = render(smollm2_model_format(), parse_messages(dialog), **SMOL_SPECIAL)
    expected = []
    for text, parse_special in prompt.parts:
        encoded = hf(text, add_special_tokens=False, split_special_tokens=not parse_special)
        expected += encoded["input_ids"]
    ours = corral_tokenizer(smollm2_path()).encode_parts(prompt.parts)
    assert ours == expected
    assert ours.count(hf.convert_tokens_to_ids("<|im_end|>")) == 2  # system and user turn ends
