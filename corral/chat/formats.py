"""Prompt formats: a jinja template plus how a reply ends, and the built-in ones.

Built-ins are jinja templates rendered through the same sandbox as a model's own template,
written to give exactly the text their reference defines (golden tests in tests/chat):

- chatml: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, then
  ``<|im_start|>assistant\\n``. No default system prompt.
- llama-2-chat: Meta's ``chat_completion`` in llama/generation.py. Each exchange is
  ``<s>[INST] {prompt.strip()} [/INST] {answer.strip()} </s>``, the last prompt
  ``<s>[INST] {prompt.strip()} [/INST]``; a system message becomes
  ``<<SYS>>\\n{system}\\n<</SYS>>\\n\\n`` in front of the first prompt, inside that strip()
  (so the system text itself is not stripped). User and assistant must alternate.
- system-user-assistant: ``SYSTEM: {system}\\nUSER: {prompt}\\nASSISTANT: `` (the format
  distributed with GPTQ builds of Llama-2-70B-chat); each reply is followed by ``\\n``.
- airoboros: ``{preamble} USER: {prompt} ASSISTANT: `` with the airoboros preamble as default
  system prompt; earlier replies end with ``</s>`` (eos_token) as in FastChat's airoboros_v1.
- vicuna: FastChat's vicuna_v1.1 (SeparatorStyle.ADD_COLON_TWO, sep " ", sep2 "</s>"):
  ``{system} USER: {prompt} ASSISTANT: {reply}</s>USER: {prompt2} ASSISTANT:``, with
  FastChat's default system message, and its quirk that an empty message is written as
  ``ROLE:`` alone. FastChat picks the separator by position; here by role (the same for the
  alternating conversations FastChat builds).
- oasst-llama2: ``<|system|>{system}</s><|prompter|>{prompt}</s><|assistant|>`` and
  ``…<|assistant|>{reply}</s><|prompter|>{prompt2}</s><|assistant|>`` (model card of
  OpenAssistant/llama2-13b-orca-8k-3319).

"</s>" after a turn is written as ``eos_token`` (it is "</s>" in every Llama-2 vocabulary), and
the BOS of llama-2-chat as ``bos_token``.
"""

from dataclasses import dataclass

from corral.chat.presets import AIROBOROS_SYSTEM


@dataclass(frozen=True)
class ChatFormat:
    """How messages become a prompt, and how the reply ends.

    name: a built-in name, "model" for the model file's own template, "file" for a template
        file the user chose.
    template: jinja source, rendered in the sandbox (see corral.chat.sandbox).
    stop_strings: text that ends a reply (e.g. "USER:").
    stop_tokens: token texts that end a reply (e.g. "<|im_end|>"); map them with
        ``tokenizer.token_id`` (texts the vocabulary lacks are simply absent).
    default_system: system prompt used when the messages have none, or None.
    """

    name: str
    template: str
    stop_strings: tuple[str, ...]
    stop_tokens: tuple[str, ...]
    default_system: str | None


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

_CHATML = r"""
{%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"""

_LLAMA_2_CHAT = r"""
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set system = messages[0]['content'] -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set system = none -%}
{%- set turns = messages -%}
{%- endif -%}
{%- if not turns -%}
{{- raise_exception('llama-2-chat needs a user message') -}}
{%- endif -%}
{%- for message in turns -%}
{%- if message['role'] != ('user' if loop.index0 % 2 == 0 else 'assistant') -%}
{{- raise_exception('llama-2-chat needs user and assistant messages in turn, user first') -}}
{%- endif -%}
{%- if message['role'] == 'user' -%}
{%- if loop.first and system is not none -%}
{%- set content = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + message['content'] -%}
{%- else -%}
{%- set content = message['content'] -%}
{%- endif -%}
{{- bos_token + '[INST] ' + content | trim + ' [/INST]' -}}
{%- else -%}
{{- ' ' + message['content'] | trim + ' ' + eos_token -}}
{%- endif -%}
{%- endfor -%}
"""

_SYSTEM_USER_ASSISTANT = r"""
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{{- 'SYSTEM: ' + message['content'] + '\n' -}}
{%- elif message['role'] == 'user' -%}
{{- 'USER: ' + message['content'] + '\n' -}}
{%- else -%}
{{- 'ASSISTANT: ' + message['content'] + '\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- 'ASSISTANT: ' -}}
{%- endif -%}
"""

_AIROBOROS = r"""
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{{- message['content'] + ' ' -}}
{%- elif message['role'] == 'user' -%}
{{- 'USER: ' + message['content'] + ' ' -}}
{%- else -%}
{{- 'ASSISTANT: ' + message['content'] + eos_token -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- 'ASSISTANT: ' -}}
{%- endif -%}
"""

_VICUNA = r"""
{%- if messages and messages[0]['role'] == 'system' -%}
{{- messages[0]['content'] + ' ' -}}
{%- set turns = messages[1:] -%}
{%- else -%}
{{- ' ' -}}
{%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
{%- set role = 'USER' if message['role'] == 'user' else 'ASSISTANT' -%}
{%- if message['content'] -%}
{{- role + ': ' + message['content'] + (' ' if message['role'] == 'user' else eos_token) -}}
{%- else -%}
{{- role + ':' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- 'ASSISTANT:' -}}
{%- endif -%}
"""

_OASST_LLAMA2 = r"""
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{{- '<|system|>' + message['content'] + eos_token -}}
{%- elif message['role'] == 'user' -%}
{{- '<|prompter|>' + message['content'] + eos_token -}}
{%- else -%}
{{- '<|assistant|>' + message['content'] + eos_token -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|assistant|>' -}}
{%- endif -%}
"""

_EOS = ("</s>",)

BUILTIN_FORMATS: dict[str, ChatFormat] = {
    f.name: f
    for f in (
        ChatFormat("chatml", _CHATML, ("<|im_end|>",), ("<|im_end|>",), None),
        ChatFormat("llama-2-chat", _LLAMA_2_CHAT, (), _EOS, None),
        ChatFormat("system-user-assistant", _SYSTEM_USER_ASSISTANT, ("USER:",), _EOS, None),
        ChatFormat("airoboros", _AIROBOROS, ("USER:",), _EOS, AIROBOROS_SYSTEM),
        ChatFormat("vicuna", _VICUNA, ("USER:",), _EOS, VICUNA_SYSTEM),
        ChatFormat(
            "oasst-llama2", _OASST_LLAMA2, ("<|prompter|>",), ("</s>", "<|prompter|>"), None
        ),
    )
}
