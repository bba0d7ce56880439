"""Chat messages: the validated form of an OpenAI-style list of {role, content} objects."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from corral.chat.errors import ChatError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One turn of a conversation: `role` is "system", "user" or "assistant"."""

    role: str
    content: str


def parse_messages(raw: Sequence[Mapping[str, Any]]) -> list[Message]:
    """Validate a list of {"role", "content"} objects and return them as Messages.

    Raises ChatError naming the offending entry, e.g. ``messages[2].role: 'tool' is not one
    of system, user, assistant``. Rules: a non-empty list; each entry an object with a string
    `role` among ROLES and a string `content` (other keys are ignored); at most one system
    message, and only as the first entry.
    """
    if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Sequence):
        raise ChatError(
            f"messages: expected a list of {{role, content}} objects, got {type(raw).__name__}"
        )
    if not raw:
        raise ChatError("messages: the list is empty")
    messages = [_parse_one(i, entry) for i, entry in enumerate(raw)]
    for i, message in enumerate(messages):
        if message.role == "system" and i > 0:
            first = next(j for j, m in enumerate(messages) if m.role == "system")
            if first < i:
                raise ChatError(
                    f"messages[{i}].role: only one system message is allowed "
                    f"(messages[{first}] is one)"
                )
            raise ChatError(f"messages[{i}].role: the system message must come first")
    return messages


def _parse_one(index: int, entry: object) -> Message:
    """One validated message; ChatError naming `messages[index]` and the field."""
    where = f"messages[{index}]"
    if not isinstance(entry, Mapping):
        raise ChatError(
            f"{where}: expected an object with 'role' and 'content', got {type(entry).__name__}"
        )
    for field in ("role", "content"):
        if field not in entry:
            raise ChatError(f"{where}.{field}: missing")
        if not isinstance(entry[field], str):
            raise ChatError(f"{where}.{field}: must be a string, got {type(entry[field]).__name__}")
    role = entry["role"]
    if role not in ROLES:
        raise ChatError(f"{where}.role: {role!r} is not one of {', '.join(ROLES)}")
    return Message(role, entry["content"])
