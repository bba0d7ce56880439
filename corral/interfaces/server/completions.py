"""POST /v1/completions: OpenAI's legacy text completions.

`prompt` is a string, a list of token ids, or a list of several of either: each prompt gets
`n` choices, numbered prompt * n + i (prompts x n at most 16). Special tokens written in a
prompt string (such as "<|im_start|>") are read as such, as llama.cpp's server does.
`logprobs: k` (0..20) gives OpenAI's legacy shape {tokens, token_logprobs, top_logprobs,
text_offset}. `echo` puts the prompt in front of the text (not with logprobs: the prompt's
logprobs are not computed).
`suffix` and `best_of` other than n are refused.
"""

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from corral.interfaces.server.errors import APIError
from corral.interfaces.server.generation import Generation, Update
from corral.interfaces.server.prepare import Job, build_job
from corral.interfaces.server.protocol import MAX_CHOICES, CompletionRequest, parse_body
from corral.interfaces.server.responding import ChoiceOutput, answer, finite_logprob, stream
from corral.interfaces.server.state import ServerState
from corral.sampling import TokenLogprobs
from corral.tokenizer import Tokenizer

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint

router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    """Continue a prompt (see the module docstring)."""
    arrived = time.monotonic()
    body = parse_body(CompletionRequest, await request.body())
    state: ServerState = request.app.state.server
    state.check_model(body.model)
    llm, engine = state.require()
    check_unsupported(body)
    items = prompt_items(body)
    prompts = await run_in_threadpool(tokenize_all, llm.tokenizer, items)
    if len(prompts) * body.n > MAX_CHOICES:
        raise APIError(
            422,
            f"prompts x n is {len(prompts) * body.n}; at most {MAX_CHOICES} choices per request",
            param="n",
        )
    job = await run_in_threadpool(
        build_job,
        llm,
        engine.slot_context,
        prompts,
        body,
        max_tokens=body.max_tokens or DEFAULT_MAX_TOKENS,
        logprobs=body.logprobs is not None,
        top_logprobs=body.logprobs or body.n_probs or 0,
        format_stop_ids=llm.tokenizer.eog_ids,
    )
    generation = Generation(engine, llm.tokenizer, job, state.metrics, arrived)
    generation.submit()
    echoes = [echo_text(llm.tokenizer, item) for item in items] if body.echo else []
    shaper = CompletionShaper(state.model_id, llm.tokenizer, job, body.n, echoes)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return stream(generation, shaper, include_usage)
    return await answer(request, generation, shaper)


def check_unsupported(body: CompletionRequest) -> None:
    """Refuse the fields whose meaning corral does not implement."""
    if body.suffix:
        raise APIError(400, "suffix (fill-in-the-middle) is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of other than n is not supported", param="best_of")
    if body.echo and body.logprobs is not None:
        raise APIError(400, "echo with logprobs is not supported", param="echo")


def prompt_items(body: CompletionRequest) -> list[str | list[int]]:
    """The prompts of the request: each a string or a list of token ids."""
    prompt = body.prompt
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        items: list[Any] = [prompt]
    else:
        items = list(prompt)
    if not items or any(not item for item in items):
        raise APIError(400, "prompt is empty: nothing to continue", param="prompt")
    if len(items) > MAX_CHOICES:
        raise APIError(422, f"at most {MAX_CHOICES} prompts per request", param="prompt")
    return items


def tokenize_all(tokenizer: Tokenizer, prompts: list[str | list[int]]) -> list[list[int]]:
    """Token ids of each prompt: a string is tokenized with BOS as the model asks and special
    tokens written in it read as such (as llama.cpp's server does: a ChatML prompt works);
    a list of ids is taken as it is."""
    return [
        tokenizer.encode(prompt, parse_special=True) if isinstance(prompt, str) else list(prompt)
        for prompt in prompts
    ]


def echo_text(tokenizer: Tokenizer, prompt: str | list[int]) -> str:
    """The prompt as `echo` shows it: the string sent, or the text of the ids sent."""
    return prompt if isinstance(prompt, str) else tokenizer.decode(prompt)


class CompletionShaper:
    """Chunks and bodies of /v1/completions."""

    def __init__(
        self, model: str, tokenizer: Tokenizer, job: Job, n: int, echoes: list[str]
    ) -> None:
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.tokenizer = tokenizer
        self.wants_logprobs = job.wants_logprobs
        self.n = n
        self.echoes = echoes
        self.offsets = [0] * len(job.sequences)  # text offset of each choice's next token

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def opening(self, generation: Generation) -> list[dict[str, Any]]:
        """With echo, each choice starts with its prompt."""
        return [
            self._envelope([choice_object(c.index, self.echoes[c.index // self.n])])
            for c in generation.choices
            if self.echoes
        ]

    def chunk(self, update: Update) -> dict[str, Any]:
        logprobs = self._logprobs(update.index, update.logprobs)
        choice = choice_object(update.index, update.text, logprobs, update.finish_reason)
        return self._envelope([choice])

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self._envelope([]), "usage": usage}

    def body(self, outputs: list[ChoiceOutput], usage: dict[str, Any]) -> dict[str, Any]:
        choices = []
        for index, output in enumerate(outputs):
            text = "".join(output.text)
            if self.echoes:
                text = self.echoes[index // self.n] + text
            logprobs = self._logprobs(index, output.logprobs)
            choices.append(choice_object(index, text, logprobs, output.finish_reason))
        return {**self._envelope(choices), "usage": usage}

    def _logprobs(self, index: int, tokens: list[TokenLogprobs]) -> dict[str, Any] | None:
        """OpenAI's legacy logprobs object for `tokens` of choice `index`."""
        if not self.wants_logprobs:
            return None
        result: dict[str, Any] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for entry in tokens:
            text = token_string(self.tokenizer, entry.token)
            result["tokens"].append(text)
            result["token_logprobs"].append(finite_logprob(entry.logprob))
            top = {token_string(self.tokenizer, t): finite_logprob(lp) for t, lp in entry.top}
            result["top_logprobs"].append(top)
            result["text_offset"].append(self.offsets[index])
            self.offsets[index] += len(text)
        return result


def choice_object(
    index: int,
    text: str,
    logprobs: dict[str, Any] | None = None,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """One entry of `choices`."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def token_string(tokenizer: Tokenizer, token: int) -> str:
    """A token's text for logprobs (its bytes decoded; a partial UTF-8 character shows as
    U+FFFD, its exact bytes are in the chat endpoint's `bytes`)."""
    return tokenizer.token_bytes(token, special=True).decode("utf-8", errors="replace")
