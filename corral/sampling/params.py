"""SamplingParams: the user's sampling controls, validated once.

One dataclass for the API, the CLI and the server. Names are OpenAI's/HF's where they have
one; :func:`params_from_kwargs` maps the other spellings people copy from model cards.
"""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from corral.sampling.errors import SamplingParamsError

ORDERS = ("llama.cpp", "hf")
MAX_TOP_LOGPROBS = 20
MAX_COMPLETIONS = 128  # n
MAX_STOPS = 16  # entries of `stop`
MAX_STOP_CHARS = 512  # length of one stop string


@dataclass(frozen=True)
class SamplingParams:
    """Controls for choosing the next token, with llama.cpp's defaults.

    temperature: 0 = greedy (the most likely token left after the other stages).
    top_k: 0 = off. top_p, typical_p: 1.0 = off. min_p: 0.0 = off.
    repeat_penalty / repeat_last_n: llama.cpp's penalty over the last n tokens of the
        context (prompt included; -1 = the whole context, 0 = off); 1.0 = off.
    repetition_penalty: HF transformers' penalty over every previous token (prompt
        included); 1.0 = off.
    presence_penalty / frequency_penalty: subtract `presence` once and `frequency` per
        occurrence from a token's logit (OpenAI's formula). Which occurrences count depends
        on `order` (see README "Sampling"): "llama.cpp" counts the repeat_last_n window like
        llama.cpp (and its server), "hf" counts the tokens generated so far like OpenAI.
    logit_bias: token id -> value added to its logit (-inf bans it); a dict (ids may be
        strings, as JSON sends them) or pairs; stored as sorted pairs.
    seed: None draws a fresh random seed. ignore_eos: never choose an end-of-generation id.
    logprobs / top_logprobs: report the chosen token's log-probability and the top n
        alternatives (0..20), from the model's raw distribution.
    mirostat: 0 off, 1 = Mirostat, 2 = Mirostat 2.0, with target entropy mirostat_tau and
        learning rate mirostat_eta; replaces top_k/typical/top_p/min_p.
    order: "llama.cpp" (llama.cpp's default sampler chain) or "hf" (transformers' order).

    The request's generation controls live here too, so the API, CLI and server share one
    object: max_tokens (new tokens at most, >= 1), stop (strings that end the text, not
    included, and token ids that end generation; at most 16), n (completions of one
    prompt, 1..128; completion i samples with seed + i).
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Any = field(default=())
    seed: int | None = None
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    order: str = "llama.cpp"
    max_tokens: int = 128
    stop: Any = field(default=())
    n: int = 1

    def __post_init__(self) -> None:
        _number("temperature", self.temperature, low=0.0)
        _integer("top_k", self.top_k, low=0)
        _number("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        _number("min_p", self.min_p, low=0.0, high=1.0)
        _number("typical_p", self.typical_p, low=0.0, high=1.0, low_open=True)
        _number("repeat_penalty", self.repeat_penalty, low=0.0, low_open=True)
        _integer("repeat_last_n", self.repeat_last_n, low=-1)
        _number("repetition_penalty", self.repetition_penalty, low=0.0, low_open=True)
        _number("presence_penalty", self.presence_penalty)
        _number("frequency_penalty", self.frequency_penalty)
        object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias))
        if self.seed is not None:
            _integer("seed", self.seed)
        _boolean("ignore_eos", self.ignore_eos)
        _boolean("logprobs", self.logprobs)
        _integer("top_logprobs", self.top_logprobs, low=0, high=MAX_TOP_LOGPROBS)
        _integer("mirostat", self.mirostat, low=0, high=2)
        _number("mirostat_tau", self.mirostat_tau, low=0.0)
        _number("mirostat_eta", self.mirostat_eta, low=0.0, low_open=True)
        if self.order not in ORDERS:
            raise SamplingParamsError(f"order must be one of {ORDERS}, got {self.order!r}")
        _integer("max_tokens", self.max_tokens, low=1)
        object.__setattr__(self, "stop", _stops(self.stop))
        _integer("n", self.n, low=1, high=MAX_COMPLETIONS)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """The stop strings of `stop`."""
        return tuple(item for item in self.stop if isinstance(item, str))

    @property
    def stop_ids(self) -> frozenset[int]:
        """The stop token ids of `stop`."""
        return frozenset(item for item in self.stop if not isinstance(item, str))

    @property
    def greedy(self) -> bool:
        """True when the choice is the argmax of the processed logits."""
        return self.mirostat == 0 and (self.temperature == 0.0 or self.top_k == 1)

    @property
    def wants_logprobs(self) -> bool:
        """True when the caller asked for log-probabilities (top_logprobs implies it)."""
        return self.logprobs or self.top_logprobs > 0


def _fail(name: str, rule: str, value: Any) -> SamplingParamsError:
    return SamplingParamsError(f"{name} must be {rule}, got {value!r}")


def _number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    """Refuse non-numbers, NaN, infinities and values outside [low, high] ((low, high])."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(name, "a number", value)
    if not math.isfinite(value):
        raise _fail(name, "a finite number", value)
    if low is not None and (value < low or (low_open and value == low)):
        raise _fail(name, f"{'>' if low_open else '>='} {low}", value)
    if high is not None and value > high:
        raise _fail(name, f"<= {high}", value)


def _integer(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, "an integer", value)
    if low is not None and value < low:
        raise _fail(name, f">= {low}", value)
    if high is not None and value > high:
        raise _fail(name, f"<= {high}", value)


def _boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _fail(name, "true or false", value)


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """Normalise logit_bias to sorted (id, bias) pairs; string ids allowed (JSON keys)."""
    if value is None:
        return ()
    items: Iterable[Any] = value.items() if isinstance(value, Mapping) else value
    try:
        items = list(items)
    except TypeError:
        raise _fail("logit_bias", "a mapping of token id to bias", value) from None
    biases: dict[int, float] = {}
    for item in items:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise _fail("logit_bias", "a mapping of token id to bias", value)
        key, bias = item
        token = _token_id(key)
        if isinstance(bias, bool) or not isinstance(bias, int | float):
            raise _fail(f"logit_bias[{token}]", "a number", bias)
        if math.isnan(bias) or bias == math.inf:
            raise _fail(f"logit_bias[{token}]", "a finite number or -inf", bias)
        biases[token] = float(bias)
    return tuple(sorted(biases.items()))


def _stops(value: Any) -> tuple[str | int, ...]:
    """Normalise `stop` to a tuple of strings and token ids; one string is one stop."""
    if value is None:
        return ()
    items = (value,) if isinstance(value, str | int) else value
    try:
        items = tuple(items)
    except TypeError:
        raise _fail("stop", "a string, a token id or a list of them", value) from None
    if len(items) > MAX_STOPS:
        raise SamplingParamsError(f"stop has {len(items)} entries; at most {MAX_STOPS}")
    for item in items:
        if isinstance(item, str):
            if not item or len(item) > MAX_STOP_CHARS:
                raise _fail("stop", f"non-empty strings of at most {MAX_STOP_CHARS} chars", item)
        elif isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise _fail("stop", "strings or token ids", item)
    return tuple(dict.fromkeys(items))


def _token_id(key: Any) -> int:
    if isinstance(key, str):
        text = key.strip()
        if not text.lstrip("-").isdigit() or len(text) > 12:
            raise _fail("logit_bias", "keyed by token ids", key)
        key = int(text)
    if isinstance(key, bool) or not isinstance(key, int):
        raise _fail("logit_bias", "keyed by token ids", key)
    if key < 0:
        raise SamplingParamsError(f"logit_bias: token id {key} is negative")
    return key


# Other spellings of the same controls: HF generate(), OpenAI, llama-cpp-python, llama.cpp.
ALIASES = {
    "temp": "temperature",
    "typical": "typical_p",
    "penalty_last_n": "repeat_last_n",
    "last_n_tokens": "repeat_last_n",
    "mirostat_mode": "mirostat",
    "mirostat_lr": "mirostat_eta",
    "mirostat_ent": "mirostat_tau",
    "n_probs": "top_logprobs",
    "max_new_tokens": "max_tokens",
    "n_predict": "max_tokens",
}
FIELDS = frozenset(f.name for f in fields(SamplingParams))


def params_from_kwargs(**kwargs: Any) -> SamplingParams:
    """SamplingParams from keyword arguments in any of the usual spellings.

    `do_sample=False` means greedy (temperature 0); `do_sample=True` changes nothing.
    `max_new_tokens` (HF) and `n_predict` (llama.cpp) mean `max_tokens`. None values mean
    "default", as OpenAI clients send them. Unknown keywords are refused by name.
    """
    values: dict[str, Any] = {}
    do_sample = kwargs.pop("do_sample", None)
    for key, value in kwargs.items():
        name = ALIASES.get(key, key)
        if name not in FIELDS:
            raise SamplingParamsError(f"unknown sampling parameter {key!r}")
        if name in values:
            raise SamplingParamsError(f"{key!r} repeats the sampling parameter {name!r}")
        if value is not None or name == "seed":
            values[name] = value
    if do_sample is not None:
        _boolean("do_sample", do_sample)
        if not do_sample:
            values["temperature"] = 0.0
    return SamplingParams(**values)
