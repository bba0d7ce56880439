"""`corral chat` driven through a pseudo-terminal, as a person at a terminal would use it."""

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CORRAL = [sys.executable, "-m", "corral.interfaces.cli"]
CORRAL_CHAT = [*CORRAL, "chat"]
TINY = Path(__file__).parents[1] / "fixtures" / "models" / "tiny-llama-Q4_0.gguf"
WAIT = 180  # seconds any one expected output may take (model load included) before failing
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")
QUESTION = "What is the capital of France?"


class Terminal:
    """`corral chat` on a pseudo-terminal: send lines, wait (bounded) for expected output."""

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [*CORRAL_CHAT, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            env={**os.environ, "TERM": "dumb"},
        )
        os.close(slave)
        self.fd = master
        self.output = ""  # everything read so far, "\r\n" -> "\n", escape codes removed
        self.seen = 0  # output before this index was matched already

    def _read(self, deadline: float) -> bool:
        """Read what is available before `deadline`; False at end of output."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not data:
            return False
        text = self.output + data.decode("utf-8", errors="replace")
        self.output = ANSI.sub("", text.replace("\r\n", "\n"))
        return True

    def expect(self, text: str, timeout: float = WAIT) -> str:
        """Wait for `text`; return the output from the last match up to and including it."""
        deadline = time.monotonic() + timeout
        while (found := self.output.find(text, self.seen)) < 0:
            if time.monotonic() > deadline or not self._read(deadline):
                raise AssertionError(f"no {text!r} within {timeout}s; got:\n{self.output}")
        chunk = self.output[self.seen : found + len(text)]
        self.seen = found + len(text)
        return chunk

    def wait_for_more(self, timeout: float = WAIT) -> None:
        """Wait until some output arrives after what was matched."""
        deadline = time.monotonic() + timeout
        while len(self.output) <= self.seen:
            if time.monotonic() > deadline or not self._read(deadline):
                raise AssertionError(f"no output within {timeout}s; got:\n{self.output}")

    def send(self, line: str) -> None:
        """Type `line` and Enter."""
        os.write(self.fd, (line + "\n").encode())

    def ask(self, line: str) -> str:
        """Send `line` and return everything printed until the next input prompt."""
        self.send(line)
        self.expect("\n")  # the end of the terminal's echo of the line
        return self.expect("\n> ")

    def finish(self, timeout: float = 60) -> int:
        """Wait for the process to end; its exit status."""
        try:
            return self.proc.wait(timeout)
        finally:
            os.close(self.fd)

    def kill(self) -> None:
        """End the process if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def corral(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, timeout=WAIT)


@pytest.fixture
def terminal():
    started: list[Terminal] = []

    def start(*args: str) -> Terminal:
        term = Terminal(*args)
        started.append(term)
        term.expect("/exit or Ctrl-D to quit")
        term.expect("> ")
        return term

    yield start
    for term in started:
        term.kill()


def test_chat_answers_and_runs_its_commands(terminal):
    term = terminal("--temp", "0", "-n", "64", "-c", "512")
    assert "Paris" in term.ask(QUESTION)

    shown = term.ask("/prompt")
    assert "<|im_start|>system\n" in shown
    assert f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n" in shown
    assert re.search(r"<\|im_start\|>assistant\n[^<]*Paris[^<]*<\|im_end\|>", shown)

    assert "/system TEXT" in term.ask("/help")
    assert "unknown command /frobnicate" in term.ask("/frobnicate")
    assert "cleared" in term.ask("/reset")
    assert QUESTION not in term.ask("/prompt")

    assert "system prompt set" in term.ask("/system You are a pirate. Always say Arr.")
    assert "You are a pirate. Always say Arr.<|im_end|>" in term.ask("/prompt")

    term.send("/exit")
    assert term.finish() == 0


def test_chat_drops_oldest_turns_with_a_notice_when_the_context_is_full(terminal):
    term = terminal("--temp", "0", "-n", "24", "-c", "80", "--system", "Be brief.")
    notices = []
    for question in (QUESTION, "What is the capital of Italy?", "And of Spain?", "And Peru?"):
        reply = term.ask(question)
        notices += re.findall(r"outgrew the 80-token context: dropped the (?:\d+ )?oldest", reply)
    assert notices, "no overflow notice after four turns in an 80-token context"
    shown = term.ask("/prompt")
    assert "Be brief." in shown  # the system prompt is kept
    assert QUESTION not in shown  # the oldest turn is gone

    reply = term.ask("word " * 200)
    assert "does not fit" in reply and "-c" in reply
    assert "And Peru?" in term.ask("/prompt")  # a message that does not fit changes nothing
    term.send("/exit")
    assert term.finish() == 0


def test_ctrl_c_stops_only_the_reply_and_ctrl_d_ends(terminal):
    term = terminal("--temp", "0", "-n", "400")
    request = "Write a long story about a dragon who learns to bake bread."
    term.send(request)
    term.expect("\n")  # the echo
    term.wait_for_more()  # the reply has started
    term.proc.send_signal(signal.SIGINT)
    term.expect("[reply stopped]")
    term.expect("\n> ")
    assert term.proc.poll() is None  # still running, ready for the next message
    # the part of the reply that was shown stays in the conversation
    shown = term.ask("/prompt")
    assert re.search(r"bread\.<\|im_end\|>\n<\|im_start\|>assistant\n[^<]+<\|im_end\|>", shown)

    os.write(term.fd, b"\x04")  # Ctrl-D at the prompt
    assert term.finish() == 0


def test_run_with_chat_template_sends_the_prompt_as_a_user_message():
    result = corral("run", "--chat-template", "chatml", "-p", QUESTION, "-n", "40", "--temp", "0")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout and QUESTION not in result.stdout


def test_info_says_which_chat_format_and_why():
    own = corral("info").stdout
    assert re.search(r"chat format: +model \(the model's own template", own)
    chosen = corral("info", "--chat-template", "vicuna").stdout
    assert re.search(r"chat format: +vicuna \(asked for by name\)", chosen)
    assert re.search(r"chat format: +none \(.*--chat-template", corral("info", str(TINY)).stdout)


def test_chat_without_a_known_format_says_how_to_choose():
    result = corral("chat", "-m", str(TINY))
    assert result.returncode == 1
    assert "--chat-template" in result.stderr and "Traceback" not in result.stderr
    result = corral("chat", "--chat-template", "no-such-format")
    assert result.returncode == 1 and "no-such-format" in result.stderr


def test_system_preset_is_the_system_prompt(terminal):
    from corral.chat import SYSTEM_PRESETS

    term = terminal("--temp", "0", "-n", "8", "--system-preset", "orca-2")
    shown = term.ask("/system")
    assert f"system prompt: {SYSTEM_PRESETS['orca-2']}" in shown
    term.send("/exit")
    assert term.finish() == 0
