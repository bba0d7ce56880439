"""Answering a generation request: Server-Sent Events as the tokens come, or one JSON body
at the end; either way a client that goes away cancels its sequences at once.

A Shaper turns updates into the endpoint's chunk and body objects (completions and chat
differ only there).
"""

import asyncio
import json
import math
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from corral.interfaces.server.errors import APIError
from corral.interfaces.server.generation import Generation, Update
from corral.sampling import TokenLogprobs

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class ChoiceOutput:
    """Everything one choice produced, for a non-streaming body."""

    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    finish_reason: str | None = None


class Shaper(Protocol):
    """How an endpoint writes its stream chunks and its complete body."""

    def opening(self, generation: Generation) -> list[dict[str, Any]]:
        """Chunks sent before any token (chat: the assistant role of each choice)."""
        ...

    def chunk(self, update: Update) -> dict[str, Any]:
        """The stream chunk of one update."""
        ...

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        """The last chunk when the client asked for usage: no choices, the usage."""
        ...

    def body(self, outputs: list[ChoiceOutput], usage: dict[str, Any]) -> dict[str, Any]:
        """The complete JSON body of a non-streaming response."""
        ...


def finite_logprob(value: float) -> float:
    """A logprob JSON can carry: -inf (a token the model rules out) becomes -9999.0, the
    value OpenAI reports for such tokens."""
    return value if math.isfinite(value) else -9999.0


def sse(data: dict[str, Any]) -> bytes:
    """One Server-Sent Event carrying `data` as JSON."""
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


def stream(generation: Generation, shaper: Shaper, include_usage: bool) -> StreamingResponse:
    """The response streaming `generation` as OpenAI's chunks, then `data: [DONE]`. An
    engine failure after the stream started is sent as an error event. When the client
    disconnects, Starlette cancels the body task and the sequences are cancelled with it
    (and once more by the background task, in case the body never started)."""

    async def events():
        async with aclosing(generation.updates()) as updates:
            try:
                for chunk in shaper.opening(generation):
                    yield sse(chunk)
                async for update in updates:
                    yield sse(shaper.chunk(update))
                if include_usage:
                    yield sse(shaper.usage_chunk(generation.usage()))
            except APIError as error:
                yield sse(error.body())
        yield b"data: [DONE]\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
        background=BackgroundTask(generation.cancel),
    )


async def answer(request: Request, generation: Generation, shaper: Shaper) -> Response:
    """The complete JSON response for `generation`, or 499 after cancelling it when the
    client disconnects first (watched while the tokens are generated)."""
    collecting = asyncio.create_task(collect(generation))
    watching = asyncio.create_task(wait_for_disconnect(request))
    try:
        await asyncio.wait({collecting, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not collecting.done():
            collecting.cancel()
            generation.cancel()
    if not collecting.done() or collecting.cancelled():
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    outputs = collecting.result()  # raises the APIError of a failed sequence
    return JSONResponse(shaper.body(outputs, generation.usage()))


async def collect(generation: Generation) -> list[ChoiceOutput]:
    """Run `generation` to its end; the outputs by choice index."""
    outputs = [ChoiceOutput() for _ in generation.choices]
    async with aclosing(generation.updates()) as updates:
        async for update in updates:
            output = outputs[update.index]
            output.text.append(update.text)
            output.logprobs.extend(update.logprobs)
            output.finish_reason = update.finish_reason or output.finish_reason
    return outputs


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client has closed the connection (the body is already read, so
    receive() has nothing else to deliver)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
