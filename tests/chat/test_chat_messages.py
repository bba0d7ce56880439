"""parse_messages: OpenAI-style message lists validated, errors naming the entry and field."""

from __future__ import annotations

import pytest

from corral.chat import ChatError, Message, parse_messages
from corral.errors import CorralError


def test_valid_messages() -> None:
    raw = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Hi", "name": "ignored"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "<|im_end|>"},
    ]
    assert parse_messages(raw) == [
        Message("system", "S"),
        Message("user", "Hi"),
        Message("assistant", ""),
        Message("user", "<|im_end|>"),
    ]
    assert parse_messages(({"role": "user", "content": "x"},)) == [Message("user", "x")]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("hello", "messages: expected a list of {role, content} objects, got str"),
        ({"role": "user", "content": "x"}, "messages: expected a list .* got dict"),
        (None, "messages: expected a list .* got NoneType"),
        ([], "messages: the list is empty"),
        ([{"role": "user", "content": "x"}, "hi"], r"messages\[1\]: expected an object .* got str"),
        ([{"content": "x"}], r"messages\[0\]\.role: missing"),
        ([{"role": "user"}], r"messages\[0\]\.content: missing"),
        ([{"role": 1, "content": "x"}], r"messages\[0\]\.role: must be a string, got int"),
        ([{"role": "tool", "content": "x"}],
         r"messages\[0\]\.role: 'tool' is not one of system, user, assistant"),
        ([{"role": "user", "content": None}],
         r"messages\[0\]\.content: must be a string, got NoneType"),
        ([{"role": "user", "content": [{"type": "text", "text": "x"}]}],
         r"messages\[0\]\.content: must be a string, got list"),
        ([{"role": "user", "content": "x"}, {"role": "system", "content": "S"}],
         r"messages\[1\]\.role: the system message must come first"),
        ([{"role": "system", "content": "S"}, {"role": "system", "content": "T"}],
         r"messages\[1\]\.role: only one system message is allowed \(messages\[0\] is one\)"),
    ],
)  # fmt: skip
def test_malformed_messages(raw: object, message: str) -> None:
    with pytest.raises(ChatError, match=message) as info:
        parse_messages(raw)  # type: ignore[arg-type]
    assert isinstance(info.value, (CorralError, ValueError))
