"""Chat prompts: messages -> prompt text in the model's format, rendered in a sandbox.

    fmt, reason = resolve_chat_format(None, gguf.metadata, tokenizer)
    messages = parse_messages([{"role": "user", "content": "Hi"}])
    prompt = render(fmt, messages, bos_token="<s>", eos_token="</s>")
    ids = tokenizer.encode_parts(prompt.parts)  # special tokens read only in template text

Modules: messages (validation), formats (ChatFormat and the built-ins), presets (system
prompts), select (which format, and why), render (content vs template text), sandbox and
budget/guards (jinja2 sandbox with time and size limits).
"""

from corral.chat.errors import ChatError, TemplateError
from corral.chat.formats import BUILTIN_FORMATS, ChatFormat
from corral.chat.messages import Message, parse_messages
from corral.chat.presets import SYSTEM_PRESETS
from corral.chat.render import RenderedPrompt, render
from corral.chat.select import resolve_chat_format

__all__ = [
    "BUILTIN_FORMATS",
    "SYSTEM_PRESETS",
    "ChatError",
    "ChatFormat",
    "Message",
    "RenderedPrompt",
    "TemplateError",
    "parse_messages",
    "render",
    "resolve_chat_format",
]
