"""What goes into the engine (EngineRequest) and what comes out (events on a RequestHandle).

A handle is filled by the engine's thread and read by one consumer: an asyncio task
(`async for event in handle.events()`) when the request was submitted from a running event
loop, else a plain thread (`for event in handle`). Every request ends with one Finished.
"""

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Literal

from corral.sampling import Constraint, SamplingParams, TokenLogprobs

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class EngineRequest:
    """One sequence to generate: token ids in, token ids out.

    stop_ids: token ids that end the sequence without being emitted (the tokenizer's
        end-of-generation ids plus the caller's stop ids).
    constraint: a grammar the output must follow (corral.sampling.constraint); it is
        stateful, so one constraint object serves one request only.
    """

    prompt_ids: tuple[int, ...]
    params: SamplingParams
    stop_ids: frozenset[int] = frozenset()
    constraint: Constraint | None = None


@dataclass(frozen=True)
class TokenEvent:
    """A generated token (and its log-probabilities when the params asked for them)."""

    token_id: int
    logprobs: TokenLogprobs | None = None


@dataclass(frozen=True)
class Finished:
    """The end of a request. reason: "stop" (a stop id, or the grammar is complete),
    "length" (max_tokens, or the slot's context is full), "cancelled", "error" (message)."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    message: str | None = None


Event = TokenEvent | Finished


@dataclass(eq=False)
class RequestHandle:
    """The caller's side of a submitted request: its events, and a way to cancel it."""

    request: EngineRequest
    id: int
    _loop: asyncio.AbstractEventLoop | None = None
    _async_events: asyncio.Queue | None = None
    _sync_events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def create(cls, request: EngineRequest, request_id: int) -> "RequestHandle":
        """A handle whose events go to the running event loop if there is one."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return cls(request, request_id)
        return cls(request, request_id, loop, asyncio.Queue())

    def cancel(self) -> None:
        """Ask the engine to stop this request; thread-safe, idempotent. The engine frees
        its sequence at the next step and sends Finished("cancelled")."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called."""
        return self._cancelled.is_set()

    def put(self, event: Event) -> None:
        """Deliver an event (called by the engine's thread)."""
        if self._loop is None:
            self._sync_events.put(event)
            return
        try:
            self._loop.call_soon_threadsafe(self._async_events.put_nowait, event)
        except RuntimeError:  # the consumer's event loop is closed: nobody is listening
            self.cancel()

    async def events(self) -> AsyncIterator[Event]:
        """The request's events, ending with Finished (for handles made in an event loop)."""
        if self._async_events is None:
            raise RuntimeError("this request was not submitted from an event loop")
        while True:
            event = await self._async_events.get()
            yield event
            if isinstance(event, Finished):
                return

    def __iter__(self) -> Iterator[Event]:
        """The request's events, blocking, ending with Finished (for handles made outside an
        event loop)."""
        if self._loop is not None:
            raise RuntimeError("this request was submitted from an event loop: use events()")
        while True:
            event = self._sync_events.get()
            yield event
            if isinstance(event, Finished):
                return
