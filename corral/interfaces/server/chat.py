"""POST /v1/chat/completions: the reply to a conversation, in the model's chat format.

Messages go through corral.chat (validation, the model's template in a sandbox); the reply
ends at the format's stop tokens and strings, at the request's `stop`, or at max_tokens
(max_completion_tokens; default: what the context leaves). `logprobs: true` with
`top_logprobs: k` gives OpenAI's {content: [{token, logprob, bytes, top_logprobs}]}.
Tools and functions are refused.
"""

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from corral.engine.stops import stop_token_ids
from corral.interfaces.api import LLM
from corral.interfaces.server.errors import APIError, to_api_error
from corral.interfaces.server.generation import Generation, Update
from corral.interfaces.server.prepare import Job, build_job
from corral.interfaces.server.protocol import ChatCompletionRequest, parse_body
from corral.interfaces.server.responding import ChoiceOutput, answer, finite_logprob, stream
from corral.interfaces.server.state import ServerState
from corral.sampling import TokenLogprobs
from corral.tokenizer import Tokenizer

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """Answer a conversation (see the module docstring)."""
    arrived = time.monotonic()
    body = parse_body(ChatCompletionRequest, await request.body())
    state: ServerState = request.app.state.server
    state.check_model(body.model)
    llm, engine = state.require()
    check_unsupported(body)
    job = await run_in_threadpool(prepare, llm, engine.slot_context, body)
    generation = Generation(engine, llm.tokenizer, job, state.metrics, arrived)
    generation.submit()
    shaper = ChatShaper(state.model_id, llm.tokenizer, job)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return stream(generation, shaper, include_usage)
    return await answer(request, generation, shaper)


def check_unsupported(body: ChatCompletionRequest) -> None:
    """Refuse tool and function calling, which corral does not implement."""
    if body.tools or body.functions or body.tool_choice not in (None, "none"):
        param = "tools" if body.tools else "functions" if body.functions else "tool_choice"
        raise APIError(400, "tool and function calling is not supported", param=param)


def prepare(llm: LLM, slot_context: int, body: ChatCompletionRequest) -> Job:
    """The job for a chat request: the rendered conversation and the format's stops."""
    try:
        ids = llm.chat_prompt_ids([message.as_dict() for message in body.messages])
    except ValueError as error:  # ChatError, TemplateError
        raise to_api_error(error, param="messages") from None
    fmt = llm.chat_format
    assert fmt is not None  # chat_prompt_ids raised ChatError otherwise
    return build_job(
        llm,
        slot_context,
        [ids],
        body,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or body.n_probs or 0,
        format_stop_ids=stop_token_ids(llm.tokenizer, fmt.stop_tokens),
        format_stop_strings=fmt.stop_strings,
        prompt_param="messages",
    )


class ChatShaper:
    """Chunks and bodies of /v1/chat/completions."""

    def __init__(self, model: str, tokenizer: Tokenizer, job: Job) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.tokenizer = tokenizer
        self.wants_logprobs = job.wants_logprobs

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def opening(self, generation: Generation) -> list[dict[str, Any]]:
        """A first chunk per choice with the assistant role, as OpenAI sends it."""
        delta = {"role": "assistant", "content": ""}
        return [
            self._envelope("chat.completion.chunk", [_chunk_choice(choice.index, delta)])
            for choice in generation.choices
        ]

    def chunk(self, update: Update) -> dict[str, Any]:
        delta = {"content": update.text} if update.text else {}
        logprobs = self._logprobs(update.logprobs)
        choice = _chunk_choice(update.index, delta, logprobs, update.finish_reason)
        return self._envelope("chat.completion.chunk", [choice])

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self._envelope("chat.completion.chunk", []), "usage": usage}

    def body(self, outputs: list[ChoiceOutput], usage: dict[str, Any]) -> dict[str, Any]:
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": "".join(output.text)},
                "logprobs": self._logprobs(output.logprobs),
                "finish_reason": output.finish_reason,
            }
            for index, output in enumerate(outputs)
        ]
        return {**self._envelope("chat.completion", choices), "usage": usage}

    def _logprobs(self, tokens: list[TokenLogprobs]) -> dict[str, Any] | None:
        """OpenAI's chat logprobs object for `tokens`."""
        if not self.wants_logprobs:
            return None
        content = []
        for entry in tokens:
            top = [self._token(token, logprob) for token, logprob in entry.top]
            content.append({**self._token(entry.token, entry.logprob), "top_logprobs": top})
        return {"content": content, "refusal": None}

    def _token(self, token: int, logprob: float) -> dict[str, Any]:
        data = self.tokenizer.token_bytes(token, special=True)
        text = data.decode("utf-8", errors="replace")
        return {"token": text, "logprob": finite_logprob(logprob), "bytes": list(data)}


def _chunk_choice(
    index: int,
    delta: dict[str, Any],
    logprobs: dict[str, Any] | None = None,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
