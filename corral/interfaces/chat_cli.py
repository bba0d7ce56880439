"""`corral chat`: an interactive terminal chat with streaming replies and multi-turn history.

Type a message and the reply streams back; the conversation so far goes with every message.
Commands: ``/help``, ``/reset`` (forget the conversation), ``/system TEXT`` (set the system
prompt and start over; ``/system`` alone shows it), ``/prompt`` (show the exact prompt text
of the conversation so far), ``/exit``. Ctrl-D (end of input) also quits; Ctrl-C during a
reply stops that reply (what was shown of it stays in the conversation as the reply).

When the conversation outgrows the context window: before each reply the whole conversation
(system prompt, earlier turns, the new message) is rendered in the chat format and counted in
tokens. While those tokens plus the reply budget (``-n``) exceed the context window (``-c``),
the oldest turn (a user message and the reply to it) is dropped; the system prompt is always
kept. A notice says how many turns were dropped; nothing is ever cut silently. If the system
prompt and the new message alone do not fit, nothing is sent: a notice says so, and the
message can be shortened, or ``-n`` lowered, or ``-c`` raised.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from corral.errors import CorralError

if TYPE_CHECKING:
    from corral.interfaces.api import LLM

DEFAULT_REPLY_TOKENS = 512
HELP = """\
commands:
  /reset          forget the conversation (keeps the system prompt)
  /system TEXT    set the system prompt and start a new conversation
  /system         show the system prompt
  /prompt         show the exact prompt text of the conversation so far
  /help           this list
  /exit           quit (Ctrl-D too); Ctrl-C stops a reply"""


class DoesNotFit(CorralError, ValueError):
    """The system prompt and one message, plus the reply budget, exceed the context window."""


class ChatSession:
    """A conversation with one model: system prompt, turns so far, and the context policy."""

    def __init__(
        self,
        llm: LLM,
        *,
        max_tokens: int,
        system: str | None = None,
        sampling: dict[str, Any] | None = None,
    ) -> None:
        """`system`: the system prompt (None: the chat format's default, if it has one)."""
        self.llm = llm
        self.max_tokens = max_tokens
        self.system = system
        self.sampling = sampling or {}
        self.turns: list[tuple[str, str]] = []  # (user message, assistant reply)

    def reset(self, system: str | None = None) -> None:
        """Forget the conversation; a new `system` prompt replaces the old one."""
        self.turns.clear()
        if system is not None:
            self.system = system

    def messages(self, turns: list[tuple[str, str]], new_user: str | None = None) -> list[dict]:
        """The message list of the system prompt, `turns` and an optional new user message."""
        messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        for user, assistant in turns:
            messages += [
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
        if new_user is not None:
            messages.append({"role": "user", "content": new_user})
        return messages

    def fit(self, user_text: str) -> tuple[list[dict], int]:
        """Messages for a reply to `user_text` that fit the context window with room for
        the reply, dropping the oldest turns as needed; returns them and how many turns
        were dropped (the history is changed only when it fits). Raises DoesNotFit."""
        for dropped in range(len(self.turns) + 1):
            messages = self.messages(self.turns[dropped:], user_text)
            n_prompt = len(self.llm.chat_prompt_ids(messages))
            if n_prompt + self.max_tokens <= self.llm.n_ctx:
                del self.turns[:dropped]
                return messages, dropped
        raise DoesNotFit(
            f"this message does not fit: the prompt would be {n_prompt} tokens and the reply "
            f"up to {self.max_tokens} (-n), but the context window holds {self.llm.n_ctx} "
            "(-c); shorten the message, lower -n or raise -c"
        )

    def reply(self, messages: list[dict]) -> Iterator[str]:
        """Stream the reply to `messages` (from :meth:`fit`)."""
        return self.llm.chat_stream(messages, self.max_tokens, **self.sampling)

    def record(self, user_text: str, reply: str) -> None:
        """Add a finished (or interrupted) turn to the history."""
        self.turns.append((user_text, reply))

    def prompt_text(self) -> tuple[str, int]:
        """The exact prompt text of the conversation so far and its length in tokens
        ("" and 0 while there is neither a system prompt nor a turn)."""
        messages = self.messages(self.turns)
        if not messages:
            return "", 0
        rendered = self.llm.chat_prompt(messages, add_generation_prompt=False)
        return rendered.text, len(self.llm.tokenizer.encode_parts(rendered.parts))


class ChatTerminal:
    """Reads lines, runs commands, streams replies: the terminal side of a ChatSession."""

    def __init__(
        self,
        session: ChatSession,
        *,
        read_line: Callable[[str], str] = input,
        out: TextIO = sys.stdout,
    ) -> None:
        self.session = session
        self.read_line = read_line
        self.out = out
        self.commands: dict[str, Callable[[str], bool]] = {
            "/help": self._help,
            "/reset": self._reset,
            "/system": self._system,
            "/prompt": self._prompt,
            "/exit": self._exit,
        }

    def say(self, text: str = "") -> None:
        """Print a line at once."""
        self.out.write(text + "\n")
        self.out.flush()

    def run(self) -> None:
        """Talk until /exit or end of input."""
        llm = self.session.llm
        self.say(f"corral chat: {llm.path.name}, context {llm.n_ctx} tokens")
        self.say(f"chat format: {llm.chat_format.name} ({llm.chat_format_reason})")
        self.say("type /help for commands, /exit or Ctrl-D to quit")
        while True:
            try:
                line = self.read_line("> ")
            except EOFError:
                self.say()
                return
            except KeyboardInterrupt:
                self.say("\n(use /exit or Ctrl-D to quit)")
                continue
            try:
                if not self.handle(line.strip()):
                    return
            except KeyboardInterrupt:
                self.say("\n[stopped]")

    def handle(self, line: str) -> bool:
        """Act on one input line; False when the chat should end."""
        if not line:
            return True
        if line.startswith("/"):
            name, _, argument = line.partition(" ")
            command = self.commands.get(name)
            if command is None:
                self.say(f"unknown command {name}; /help lists the commands")
                return True
            return command(argument.strip())
        self._answer(line)
        return True

    def _answer(self, user_text: str) -> None:
        try:
            messages, dropped = self.session.fit(user_text)
            pieces = self.session.reply(messages)
        except CorralError as error:
            self.say(f"[{error}]")
            return
        if dropped:
            turns = "the oldest turn" if dropped == 1 else f"the {dropped} oldest turns"
            self.say(
                f"[the conversation outgrew the {self.session.llm.n_ctx}-token context: "
                f"dropped {turns}, kept the system prompt]"
            )
        reply = []
        try:
            for piece in pieces:
                reply.append(piece)
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            self.say("\n[reply stopped]")
        else:
            self.say()
        self.session.record(user_text, "".join(reply))

    def _help(self, _: str) -> bool:
        self.say(HELP)
        return True

    def _reset(self, _: str) -> bool:
        self.session.reset()
        self.say("[conversation cleared]")
        return True

    def _system(self, text: str) -> bool:
        if not text:
            current = self.session.system
            default = self.session.llm.chat_format.default_system
            if current is not None:
                self.say(f"system prompt: {current}")
            elif default is not None:
                self.say(f"system prompt (the format's default): {default}")
            else:
                self.say("no system prompt (the chat template may add its own)")
            return True
        self.session.reset(system=text)
        self.say("[system prompt set; conversation cleared]")
        return True

    def _prompt(self, _: str) -> bool:
        try:
            text, n_tokens = self.session.prompt_text()
        except CorralError as error:
            self.say(f"[{error}]")
            return True
        if not n_tokens:
            self.say("[the conversation is empty]")
            return True
        self.say(f"----- prompt: {n_tokens} tokens of {self.session.llm.n_ctx} -----")
        self.say(text)
        self.say("----- end of prompt -----")
        return True

    def _exit(self, _: str) -> bool:
        return False


def chat(
    llm: LLM,
    *,
    max_tokens: int | None = None,
    system: str | None = None,
    sampling: dict[str, Any] | None = None,
) -> None:
    """Run an interactive chat on the terminal (stdin/stdout) until /exit or Ctrl-D.

    `max_tokens` bounds each reply; default 512, or half the context window if smaller.
    """
    if llm.chat_format is None:
        raise CorralError(llm.chat_format_reason)
    if max_tokens is None:
        max_tokens = min(DEFAULT_REPLY_TOKENS, llm.n_ctx // 2)
    if max_tokens < 1:
        raise ValueError(f"-n must be at least 1, got {max_tokens}")
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    session = ChatSession(llm, max_tokens=max_tokens, system=system, sampling=sampling)
    ChatTerminal(session).run()
