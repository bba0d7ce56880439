"""One request's sequences in the engine: submit them, merge their events into text updates
per choice (stop strings applied), and cancel them when the client goes away.

    generation = Generation(engine, tokenizer, job, metrics, arrived)
    generation.submit()                  # APIError (429 / 503 / 400) before any output
    async with aclosing(generation.updates()) as updates:
        async for update in updates:     # Update(index, text, logprobs, finish_reason)
            ...
    generation.usage()                   # OpenAI's usage object

Stop strings are matched on the detokenized text (the engine only knows token ids): on a
match the choice ends with finish_reason "stop" at once and its sequence is cancelled.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from corral.engine.requests import EngineRequest, Finished, RequestHandle, TokenEvent
from corral.engine.scheduler import Engine
from corral.engine.stops import StopMatcher
from corral.interfaces.server.errors import APIError, to_api_error
from corral.interfaces.server.metrics import ServerMetrics
from corral.interfaces.server.prepare import Job, SequenceSpec
from corral.sampling import TokenLogprobs
from corral.tokenizer import StreamingDetokenizer, Tokenizer

FINISH_REASONS = {"stop": "stop", "length": "length"}


@dataclass
class Update:
    """New output of one choice: text (may be empty), the logprobs of the tokens that
    arrived, and finish_reason once the choice is over ("stop" or "length")."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    finish_reason: str | None = None


class Choice:
    """The text of one sequence as it is generated."""

    def __init__(
        self, spec: SequenceSpec, handle: RequestHandle, tokenizer: Tokenizer, job: Job
    ) -> None:
        self.index = spec.index
        self.handle = handle
        # no space clean-up on generated text: it would damage code (" ?" -> "?")
        self.detokenizer = StreamingDetokenizer(tokenizer, clean_spaces=False)
        self.matcher = StopMatcher(job.stop_strings)
        self.finish_reason: str | None = None
        self.finished: Finished | None = None
        self.first_token_at: float | None = None

    def on_token(self, event: TokenEvent) -> Update | None:
        """The update for one generated token (None when it adds nothing to show)."""
        if self.finish_reason is not None:
            return None
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        text, stopped = self.matcher.feed(self.detokenizer.push(event.token_id))
        logprobs = [event.logprobs] if event.logprobs is not None else []
        if stopped:
            self.finish_reason = "stop"
            self.handle.cancel()
            return Update(self.index, text, logprobs, "stop")
        return Update(self.index, text, logprobs) if text or logprobs else None

    def on_finished(self, event: Finished) -> Update | None:
        """The last update of the choice (None when a stop string already ended it)."""
        self.finished = event
        if self.finish_reason is not None:
            return None
        if event.reason not in FINISH_REASONS:
            detail = event.message or (
                "the request was cancelled" if event.reason == "cancelled" else "unknown error"
            )
            status = 503 if event.reason == "cancelled" else 500
            raise APIError(status, f"generation failed: {detail}")
        text, stopped = self.matcher.feed(self.detokenizer.flush())
        if not stopped:
            text += self.matcher.flush()
        self.finish_reason = "stop" if stopped else FINISH_REASONS[event.reason]
        return Update(self.index, text, [], self.finish_reason)


class Generation:
    """The engine sequences of one HTTP request."""

    def __init__(
        self,
        engine: Engine,
        tokenizer: Tokenizer,
        job: Job,
        metrics: ServerMetrics,
        arrived: float,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.job = job
        self.metrics = metrics
        self.arrived = arrived
        self.choices: list[Choice] = []

    def submit(self) -> None:
        """Submit every sequence; on a refusal cancel those already submitted and raise the
        APIError (429 queue full, 503 draining, 400 context overflow or bad parameters)."""
        try:
            for spec in self.job.sequences:
                request = EngineRequest(
                    prompt_ids=tuple(spec.prompt_ids),
                    params=spec.params,
                    stop_ids=self.job.stop_ids,
                    constraint=spec.constraint,
                )
                self.choices.append(
                    Choice(spec, self.engine.submit(request), self.tokenizer, self.job)
                )
        except Exception as error:
            self.cancel()
            raise to_api_error(error, param="prompt") from None
        self.metrics.prompt_tokens.inc(self.job.prompt_tokens)

    def cancel(self) -> None:
        """Cancel every sequence that has not finished (the engine frees it within a step)."""
        for choice in self.choices:
            if choice.finished is None:
                choice.handle.cancel()

    async def updates(self) -> AsyncIterator[Update]:
        """Updates of all choices in the order they happen, until every sequence has
        finished. Raises APIError when the engine fails a sequence. Closing the iterator
        early cancels the sequences still running."""
        queue: asyncio.Queue[tuple[Choice, TokenEvent | Finished | BaseException | None]]
        queue = asyncio.Queue()

        async def pump(choice: Choice) -> None:
            try:
                async for event in choice.handle.events():
                    queue.put_nowait((choice, event))
            except Exception as error:
                queue.put_nowait((choice, error))
            queue.put_nowait((choice, None))

        tasks = [asyncio.create_task(pump(choice)) for choice in self.choices]
        try:
            running = len(tasks)
            while running:
                choice, event = await queue.get()
                update = self._apply(choice, event)
                if event is None:
                    running -= 1
                if update is not None:
                    yield update
        finally:
            self.cancel()
            for task in tasks:
                task.cancel()

    def _apply(
        self, choice: Choice, event: TokenEvent | Finished | BaseException | None
    ) -> Update | None:
        """The update an engine event makes, with the metrics it updates."""
        if isinstance(event, TokenEvent):
            first = choice.first_token_at is None
            update = choice.on_token(event)
            if first and choice.first_token_at is not None:
                self.metrics.time_to_first_token.observe(choice.first_token_at - self.arrived)
            return update
        if isinstance(event, Finished):
            self.metrics.observe_choice(
                event.completion_tokens, choice.first_token_at, time.monotonic()
            )
            return choice.on_finished(event)
        if isinstance(event, BaseException):
            raise APIError(500, "generation failed") from event
        if choice.finished is None:  # the event stream ended without a Finished event
            raise APIError(500, "generation failed: the engine dropped the sequence")
        return None

    def usage(self) -> dict[str, Any]:
        """OpenAI's usage object: prompt tokens (each prompt once), generated tokens, and the
        prompt tokens the engine found already in its cache."""
        finished = [choice.finished for choice in self.choices if choice.finished is not None]
        completion = sum(event.completion_tokens for event in finished)
        prompt = self.job.prompt_tokens
        # n sequences of one prompt share its prefix: count the cache hits once per prompt
        cached = min(prompt, sum(event.cached_tokens for event in finished))
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
