"""Messages -> prompt, with message content told apart from template text.

The tokenizer must read special tokens (``<|im_start|>``) in what the template wrote but
never in what a user wrote, so the prompt comes back as parts flagged for that.

How: the template is rendered twice in the sandbox, once with the messages as they are (that
text is the prompt, equal to what HF ``apply_chat_template`` renders), and once with each
message's content wrapped in two private-use characters that occur nowhere in the template,
the messages or the special tokens. The second rendering is split at those sentinels, which
says which characters came from a message. When the template changed the content (``trim``,
``strip()``: Llama-2, Llama-3 and Gemma templates do), the sentinels kept it from reaching the
whitespace inside them, so the two renderings differ by that whitespace: the marked text,
sentinels removed, is matched against the prompt character by character, dropping whitespace
the prompt does not have. Every non-space character keeps the flag of where it came from;
which side a matched space is given to does not matter to the tokenizer.

When a template does more with the content than strip it (it slices it, splits it, tests it)
the two renderings no longer match; then each message's content (or its strip()) is looked
for in the prompt in order, and what is found is flagged as content. That fallback is best
effort: content the template rewrote is read with special tokens.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from corral.chat.budget import Budget
from corral.chat.errors import ChatError, TemplateError
from corral.chat.formats import ChatFormat
from corral.chat.messages import Message
from corral.chat.sandbox import render_template

Part = tuple[str, bool]  # (text, parse_special)

_PRIVATE_USE = re.compile("[\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd]")
_PRIVATE_USE_RANGES = (range(0xE000, 0xF900), range(0xF0000, 0xFFFFE), range(0x100000, 0x10FFFE))


@dataclass(frozen=True)
class RenderedPrompt:
    """A rendered chat prompt: template text (parse_special True) and message content (False)."""

    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        """The whole prompt."""
        return "".join(text for text, _ in self.parts)


def render(
    fmt: ChatFormat,
    messages: Sequence[Message],
    *,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool = True,
) -> RenderedPrompt:
    """Render `messages` with `fmt` (its default system prompt added when they have none).

    Tokenize the result with ``Tokenizer.encode_parts(prompt.parts)``. Raises TemplateError
    when the template fails or exceeds its budget, ChatError for messages that are not
    Message objects.
    """
    messages = _with_default_system(fmt, messages)
    budget = Budget()  # one budget for both renderings
    variables = (bos_token, eos_token, add_generation_prompt)
    plain = render_template(fmt.template, _context(messages, *variables), budget)
    parts = _marked_parts(fmt.template, messages, variables, plain, budget)
    if parts is None:
        parts = _find_contents(plain, messages)
    return RenderedPrompt(_merge(parts))


def _marked_parts(
    template: str,
    messages: list[Message],
    variables: tuple[str, str, bool],
    plain: str,
    budget: Budget,
) -> list[Part] | None:
    """Parts of `plain` told apart by a rendering with sentinels, or None if that fails."""
    sentinels = _sentinels(template, variables[0], variables[1], *(m.content for m in messages))
    if sentinels is None:
        return None
    start, end = sentinels
    marked_messages = [Message(m.role, start + m.content + end) for m in messages]
    try:
        marked = render_template(template, _context(marked_messages, *variables), budget)
    except TemplateError:
        return None
    return _split_marked(plain, marked, start, end)


def _with_default_system(fmt: ChatFormat, messages: Sequence[Message]) -> list[Message]:
    """`messages` checked, with the format's default system prompt in front when needed."""
    checked = list(messages)
    for i, message in enumerate(checked):
        if not isinstance(message, Message):
            raise ChatError(f"messages[{i}]: expected a Message, got {type(message).__name__}")
    if fmt.default_system is not None and not any(m.role == "system" for m in checked):
        checked.insert(0, Message("system", fmt.default_system))
    return checked


def _context(
    messages: Sequence[Message], bos_token: str, eos_token: str, add_generation_prompt: bool
) -> dict[str, Any]:
    """The variables a chat template sees (those HF passes that we have)."""
    return {
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "bos_token": bos_token,
        "eos_token": eos_token,
        "add_generation_prompt": add_generation_prompt,
        "tools": None,
        "documents": None,
    }


def _sentinels(*texts: str) -> tuple[str, str] | None:
    """Two private-use characters that occur in none of `texts` (None if all are taken)."""
    used = set()
    for text in texts:
        used.update(_PRIVATE_USE.findall(text))
    free = (c for c in map(chr, chain(*_PRIVATE_USE_RANGES)) if c not in used)
    start, end = next(free, None), next(free, None)
    return None if start is None or end is None else (start, end)


def _split_marked(plain: str, marked: str, start: str, end: str) -> list[Part] | None:
    """Parts of `plain` flagged by the sentinels in `marked`, or None when they disagree.

    `marked` is the rendering with content between `start` and `end`. Whitespace that
    `plain` lacks is dropped; any other difference, or unpaired sentinels, gives None.
    """
    segments: list[tuple[str, bool]] = []  # (text, is_content)
    inside = False
    for piece in re.split(f"([{re.escape(start)}{re.escape(end)}])", marked):
        if piece in (start, end):
            if (piece == start) == inside:
                return None
            inside = not inside
        elif piece:
            segments.append((piece, inside))
    if inside:
        return None
    parts: list[Part] = []
    pos = 0
    for text, is_content in segments:
        if plain.startswith(text, pos):
            kept = text
        else:
            matched = []
            for char in text:
                if pos + len(matched) < len(plain) and plain[pos + len(matched)] == char:
                    matched.append(char)
                elif not char.isspace():
                    return None
            kept = "".join(matched)
        parts.append((kept, not is_content))
        pos += len(kept)
    return parts if pos == len(plain) else None


def _find_contents(plain: str, messages: Sequence[Message]) -> list[Part]:
    """Fallback: each message's content (or its strip()) found in `plain`, in order."""
    parts: list[Part] = []
    pos = 0
    for message in messages:
        for candidate in (message.content, message.content.strip()):
            found = plain.find(candidate, pos) if candidate else -1
            if found >= 0:
                parts += [(plain[pos:found], True), (candidate, False)]
                pos = found + len(candidate)
                break
    parts.append((plain[pos:], True))
    return parts


def _merge(parts: list[Part]) -> tuple[Part, ...]:
    """Drop empty parts and join neighbours with the same flag."""
    runs: list[tuple[list[str], bool]] = []
    for text, special in parts:
        if not text:
            continue
        if runs and runs[-1][1] == special:
            runs[-1][0].append(text)
        else:
            runs.append(([text], special))
    return tuple(("".join(texts), special) for texts, special in runs)
