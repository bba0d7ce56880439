"""From a validated request body to the sequences the engine runs: sampling parameters,
stop conditions, constraints and the context check. Runs in a worker thread (building a
grammar or tokenizing a long prompt takes time); every problem is an APIError naming the
field."""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from corral.engine.parallel import sequence_params
from corral.interfaces.api import LLM
from corral.interfaces.server.errors import APIError, to_api_error
from corral.interfaces.server.protocol import GenerationFields
from corral.sampling import Constraint, SamplingParams, check_logit_bias, params_from_kwargs
from corral.sampling.constraint import build_constraint


@dataclass(frozen=True)
class SequenceSpec:
    """One choice of a response: what the engine generates for it."""

    index: int
    prompt_ids: list[int]
    params: SamplingParams
    constraint: Constraint | None


@dataclass(frozen=True)
class Job:
    """Everything a generation request asks of the engine."""

    sequences: list[SequenceSpec]
    prompt_tokens: int  # all prompts, each counted once however large n is
    stop_ids: frozenset[int]
    stop_strings: tuple[str, ...]
    wants_logprobs: bool


def build_job(
    llm: LLM,
    slot_context: int,
    prompts: Sequence[list[int]],
    request: GenerationFields,
    *,
    max_tokens: int | None,
    logprobs: bool,
    top_logprobs: int,
    format_stop_ids: frozenset[int],
    format_stop_strings: tuple[str, ...] = (),
    prompt_param: str = "prompt",
) -> Job:
    """The job for `prompts` (token ids) and the request's sampling fields.

    max_tokens None: as many as the slot context leaves after the longest prompt.
    format_stop_ids / format_stop_strings: what ends a reply besides the request's `stop`
    (the tokenizer's end-of-generation ids; a chat format's stop tokens and strings).
    """
    n_vocab = llm.config.n_vocab
    for p, ids in enumerate(prompts):
        for token in ids:
            if token >= n_vocab:
                where = f"{prompt_param}[{p}]" if len(prompts) > 1 else prompt_param
                raise APIError(
                    400,
                    f"{where}: token id {token} is outside the vocabulary [0, {n_vocab})",
                    param=prompt_param,
                )
    longest = max(len(ids) for ids in prompts)
    if max_tokens is None:
        max_tokens = max(1, slot_context - longest)
    for ids in prompts:
        check_context(len(ids), max_tokens, slot_context, prompt_param)
    try:
        params = params_from_kwargs(
            **request.sampling_kwargs(),
            max_tokens=max_tokens,
            stop=request.stops(),
            n=request.n,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )
        check_logit_bias(params, n_vocab)
    except ValueError as error:  # SamplingParamsError: the message starts with the field
        field = re.match(r"\w+", str(error))
        name = field.group(0) if field else None
        param = name if name in type(request).model_fields else None
        raise to_api_error(error, param=param) from None
    for token in params.stop_ids:
        if token >= n_vocab:
            raise APIError(
                400,
                f"stop: token id {token} is outside the vocabulary [0, {n_vocab})",
                param="stop",
            )
    constraint = constraint_kwargs(request)
    fmt = request.response_format
    from_format = fmt is not None and fmt.type != "text"
    constraint_param = "response_format" if from_format else next(iter(constraint), "")
    sequences = [
        SequenceSpec(
            index=p * request.n + i,
            prompt_ids=list(ids),
            params=sequence_params(params, i),
            constraint=make_constraint(llm, constraint, constraint_param),
        )
        for p, ids in enumerate(prompts)
        for i in range(request.n)
    ]
    return Job(
        sequences=sequences,
        prompt_tokens=sum(len(ids) for ids in prompts),
        stop_ids=format_stop_ids | params.stop_ids,
        stop_strings=(*format_stop_strings, *params.stop_strings),
        wants_logprobs=params.wants_logprobs,
    )


def check_context(prompt_tokens: int, max_tokens: int, slot_context: int, param: str) -> None:
    """400 naming the counts when prompt + max_tokens does not fit one sequence's context
    (never silent truncation)."""
    if prompt_tokens + max_tokens > slot_context:
        raise APIError(
            400,
            f"this request needs {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
            f"{param} + {max_tokens} max_tokens) but the context holds {slot_context} tokens "
            "per sequence; shorten the prompt or lower max_tokens",
            param=param if prompt_tokens >= slot_context else "max_tokens",
            code="context_length_exceeded",
        )


def constraint_kwargs(request: GenerationFields) -> dict[str, Any]:
    """The keywords of build_constraint that the request asks for: response_format
    (json_object, json_schema) or the extensions grammar, json_schema, regex."""
    kwargs: dict[str, Any] = {}
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise APIError(
                400,
                "response_format.json_schema.schema is required with type json_schema",
                param="response_format",
            )
        kwargs["json_schema"] = fmt.json_schema.schema_
    elif fmt is not None and fmt.type == "json_object":
        if fmt.schema_ is not None:
            kwargs["json_schema"] = fmt.schema_
        else:
            kwargs["json_mode"] = True
    for name in ("grammar", "json_schema", "regex"):
        value = getattr(request, name)
        if value is None:
            continue
        if kwargs:
            raise APIError(
                400,
                f"give only one of response_format, grammar, json_schema, regex; got {name} too",
                param=name,
            )
        kwargs[name] = value
    return kwargs


def make_constraint(llm: LLM, kwargs: dict[str, Any], param: str) -> Constraint | None:
    """A fresh constraint (each sequence advances its own) or None; 400 when invalid."""
    if not kwargs:
        return None
    try:
        return build_constraint(llm.tokenizer, **kwargs)
    except ValueError as error:
        raise APIError(400, str(error), param=param) from None
