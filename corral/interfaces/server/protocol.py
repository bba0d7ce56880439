"""Request bodies of the OpenAI-compatible endpoints, with bounds on everything a client sizes.

Field types are checked strictly (a string is not a number); values are checked again by
SamplingParams, which names the field. Unknown fields are ignored, as OpenAI-compatible
servers (llama.cpp, vLLM) do, except the ones that would change the meaning of the reply
(tools, functions, suffix, best_of > n), which are refused.

Sampling fields: OpenAI's names (temperature, top_p, presence_penalty, frequency_penalty,
logit_bias, seed, n, stop, logprobs/top_logprobs, max_tokens/max_completion_tokens) plus
llama.cpp server's extensions (top_k, min_p, typical_p, repeat_penalty, repeat_last_n,
mirostat, mirostat_tau, mirostat_eta, ignore_eos, n_probs, grammar, json_schema) and
corral's own (repetition_penalty, order, regex).
"""

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.interfaces.server.errors import validation_error
from corral.sampling.params import MAX_STOP_CHARS, MAX_STOPS, MAX_TOP_LOGPROBS

MAX_CHOICES = 16  # n x prompts of one request: each choice takes a sequence slot
MAX_MESSAGES = 4096
MAX_PROMPT_TOKENS = 1 << 20  # ids in one prompt; the real bound is the slot context
MAX_LOGIT_BIAS = 4096  # entries
MAX_TOKENS_LIMIT = 1 << 20  # the real bound is the slot context

Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)] | Annotated[int, Field(ge=0)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_PROMPT_TOKENS)]


def parse_body(model: type["RequestModel"], raw: bytes) -> "RequestModel":
    """The request body `raw` as `model`, whatever the Content-Type (curl -d sends JSON as
    a form): 400 when it is not a JSON object, 422 naming the first bad field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise validation_error(error.errors()) from None


class Strict(BaseModel):
    """Base of the request models: strict types, unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


RequestModel = TypeVar("RequestModel", bound=Strict)


class JsonSchemaFormat(Strict):
    """OpenAI's response_format.json_schema: {name, schema, strict, description}."""

    name: str | None = Field(None, max_length=256)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Strict):
    """{"type": "text" | "json_object" | "json_schema", "json_schema": {...}}; as in
    llama.cpp's server, "json_object" may carry a "schema" too."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")


class StreamOptions(Strict):
    """{"include_usage": true} adds a last chunk with usage and no choices."""

    include_usage: bool = False


class GenerationFields(Strict):
    """Fields both generation endpoints share."""

    model: str | None = Field(None, max_length=512)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: Stop | list[Stop] | None = Field(None, max_length=MAX_STOPS)
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=-(1 << 63), lt=1 << 64)
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS)
    response_format: ResponseFormat | None = None
    user: str | None = None
    # llama.cpp server extensions
    top_k: int | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    ignore_eos: bool | None = None
    n_probs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    grammar: str | None = None
    json_schema: dict[str, Any] | None = None
    # corral extensions
    repetition_penalty: float | None = None
    order: Literal["llama.cpp", "hf"] | None = None
    regex: str | None = None

    def sampling_kwargs(self) -> dict[str, Any]:
        """The sampling fields that were given, as keywords for params_from_kwargs."""
        names = (
            "temperature",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
            "seed",
            "top_k",
            "min_p",
            "typical_p",
            "repeat_penalty",
            "repeat_last_n",
            "mirostat",
            "mirostat_tau",
            "mirostat_eta",
            "ignore_eos",
            "repetition_penalty",
            "order",
        )
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def stops(self) -> list[str | int]:
        """`stop` as a list (one string is one stop)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str | int) else list(self.stop)


class CompletionRequest(GenerationFields):
    """POST /v1/completions. `prompt`: a string, a list of token ids, or a list of either
    (one choice group per prompt; prompts x n at most MAX_CHOICES)."""

    prompt: str | TokenIds | list[str] | list[TokenIds] = Field(max_length=MAX_PROMPT_TOKENS)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)


class TextPart(Strict):
    """One part of a message's content list; only text parts are supported."""

    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    """{role, content}: content a string or a list of text parts (joined)."""

    role: str = Field(max_length=64)
    content: str | list[TextPart] = Field(max_length=MAX_MESSAGES)
    name: str | None = None

    def as_dict(self) -> dict[str, str]:
        """The message as corral.chat takes it; "developer" (OpenAI's newer name for the
        system role) becomes "system"."""
        content = self.content
        text = content if isinstance(content, str) else "".join(part.text for part in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(GenerationFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Any] | None = Field(None, max_length=MAX_MESSAGES)
    functions: list[Any] | None = Field(None, max_length=MAX_MESSAGES)
    tool_choice: Any = None


class TokenizeRequest(Strict):
    """POST /tokenize, as llama.cpp's server: add_special default false, parse_special
    default true; with_pieces gives [{id, piece}] (piece a string, or a list of byte values
    when the token is not valid UTF-8 alone)."""

    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(Strict):
    """POST /detokenize: {"tokens": [ids]} -> {"content": text}."""

    tokens: TokenIds
