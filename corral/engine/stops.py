"""Stop conditions: token ids that end generation, and a streaming stop-string matcher.

Generated text arrives in pieces that need not line up with a stop string ("US", "ER:" for
"USER:"). :class:`StopMatcher` emits text as soon as it can no longer be the start of a stop
string and holds back the rest, so a stop string is never emitted, not even in part:

    matcher = StopMatcher(["USER:"])
    matcher.feed("Paris. US")   # ("Paris. ", False): "US" is held back
    matcher.feed("ER: next")    # ("", True): stopped; the text before the stop was emitted
    matcher.flush()             # at the end without a stop: what is still held back

Generation stops as soon as a stop string is complete, so the text is cut where the first
stop string to be completed starts; piece boundaries never change the result.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.tokenizer import Tokenizer


class StopMatcher:
    """Finds the first of several stop strings to complete in text arriving piece by piece."""

    def __init__(self, stops: Iterable[str]) -> None:
        """`stops`: the stop strings (duplicates are ignored); empty strings are refused."""
        if isinstance(stops, str):
            raise TypeError("StopMatcher takes a sequence of stop strings, not one str")
        self.stops: tuple[str, ...] = tuple(dict.fromkeys(stops))
        for stop in self.stops:
            if not isinstance(stop, str):
                raise TypeError(f"stop strings must be str, not {type(stop).__name__}")
            if not stop:
                raise ValueError("a stop string must not be empty")
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        """Add generated `text`; return (text safe to emit, whether a stop string was hit).

        After a hit the emitted text ends just before that stop string, and further text is
        ignored. Text that could still become a stop string is held back until it does or
        cannot any more.
        """
        if self.stopped:
            return "", True
        buffer = self._held + text
        hit = self._first_completed(buffer)
        if hit is not None:
            self._held = ""
            self.stopped = True
            return buffer[:hit], True
        keep = self._partial_suffix(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """The held-back text, released at the end of generation (empty after a stop)."""
        held, self._held = self._held, ""
        return held

    def _first_completed(self, text: str) -> int | None:
        """Start of the stop string that is complete first in `text` (the longest of those
        that end at the same place), or None."""
        ends = []
        for stop in self.stops:
            start = text.find(stop)
            if start >= 0:
                ends.append((start + len(stop), start))
        return min(ends)[1] if ends else None

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest end of `text` that is the start of some stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest


def stop_token_ids(tokenizer: Tokenizer, stop_tokens: Iterable[str] = ()) -> frozenset[int]:
    """Token ids that end generation: the tokenizer's end-of-generation ids plus the ids of
    the vocabulary entries named in `stop_tokens` (texts not in the vocabulary are skipped:
    a format's stop token may be missing from a given model, its stop string still applies)."""
    ids = {tokenizer.token_id(text) for text in stop_tokens}
    return tokenizer.eog_ids | frozenset(token for token in ids if token is not None)
