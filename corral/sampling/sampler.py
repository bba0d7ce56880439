"""Sampler: turns the last position's logits into the next token id.

The chain, per order (each stage a function of corral.sampling.processors; a stage whose
parameter is at its "off" value changes nothing):

  "llama.cpp" (llama.cpp's common_sampler with its default sampler list):
      constraint mask -> logit_bias (+ ignore_eos) -> penalties (repeat/frequency/presence
      over the last repeat_last_n tokens) -> repetition_penalty (HF, whole context) ->
      top_k -> typical_p -> top_p -> min_p -> temperature -> draw
  "hf" (transformers' _get_logits_processor, then the OpenAI penalties):
      constraint mask -> logit_bias (+ ignore_eos) -> repetition_penalty (whole context) ->
      repeat_penalty (last repeat_last_n) -> frequency/presence (generated tokens) ->
      temperature -> top_k (ties kept) -> top_p -> min_p -> typical_p -> draw
  mirostat 1/2 (either order): mask -> logit_bias -> penalties as above -> temperature ->
      mirostat truncation -> draw; mu starts at 2 tau and moves after each accepted token.

Logprobs are taken from the raw model logits (log-softmax before any stage), as OpenAI
and vLLM report them, not from the truncated distribution that was sampled.
"""

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from corral.sampling import processors as P
from corral.sampling.errors import SamplingError, SamplingParamsError
from corral.sampling.params import SamplingParams


class Constraint(Protocol):
    """Which tokens may come next in a constrained output (see corral.sampling.constraint)."""

    def allowed(self) -> torch.Tensor:
        """Bool tensor (vocab_size,): True for each token that may come next (end-of-generation
        tokens only where the grammar may end)."""
        ...

    def accept(self, token: int) -> None:
        """Advance past `token`; ConstraintError if it was not allowed (state unchanged)."""
        ...

    def is_done(self) -> bool:
        """Whether the grammar has accepted a complete output and allows nothing else."""
        ...


@dataclass(frozen=True)
class TokenLogprobs:
    """The chosen token's log-probability and the most likely alternatives (raw model
    distribution, natural log), most likely first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


Stage = tuple[str, Callable[[torch.Tensor], torch.Tensor]]


class Sampler:
    """Chooses tokens for one request, with its own seeded generator so a seed reproduces
    the same tokens whatever else runs. Call :meth:`sample`, then :meth:`accept` with the
    token actually used (the engine does both)."""

    def __init__(
        self,
        params: SamplingParams,
        vocab_size: int,
        eos_ids: Collection[int] = frozenset(),
        constraint: Constraint | None = None,
    ) -> None:
        self.params = params
        self.vocab_size = vocab_size
        check_logit_bias(params, vocab_size)
        bias = dict(params.logit_bias)
        if params.ignore_eos:
            bias.update({token: float("-inf") for token in eos_ids if 0 <= token < vocab_size})
        self.bias = tuple(sorted(bias.items()))
        self.constraint = constraint
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.seed = seed % 2**64
        self.generator = torch.Generator().manual_seed(self.seed)
        self.mu = 2.0 * params.mirostat_tau
        self.generated: list[int] = []
        self.last_logprobs: TokenLogprobs | None = None
        self._pending_prob: float | None = None
        p = params
        self._plain_greedy = (
            p.greedy
            and p.temperature == 0.0
            and not self.bias
            and constraint is None
            and p.typical_p == 1.0
            and p.repetition_penalty == 1.0
            and (p.repeat_last_n == 0 or p.repeat_penalty == 1.0)
            and p.presence_penalty == 0.0
            and p.frequency_penalty == 0.0
            and not p.wants_logprobs
        )

    # -- the chain ----------------------------------------------------------------------

    def stages(self, history: Sequence[int]) -> list[Stage]:
        """The processing stages for the next token, in order, after the constraint mask."""
        p = self.params
        window = _window(history, p.repeat_last_n)
        stages: list[Stage] = [("logit_bias", lambda x: P.logit_bias(x, self.bias))]
        if p.order == "llama.cpp":
            stages += [
                (
                    "penalties",
                    lambda x: P.penalties(
                        x, window, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
                    ),
                ),
                (
                    "repetition_penalty",
                    lambda x: P.repetition_penalty(x, history, p.repetition_penalty),
                ),
            ]
        else:
            generated = self.generated
            stages += [
                (
                    "repetition_penalty",
                    lambda x: P.repetition_penalty(x, history, p.repetition_penalty),
                ),
                ("repeat_penalty", lambda x: P.penalties(x, window, p.repeat_penalty)),
                (
                    "frequency_presence",
                    lambda x: P.penalties(
                        x, generated, 1.0, p.frequency_penalty, p.presence_penalty
                    ),
                ),
            ]
        if p.mirostat:
            return stages + [("temperature", lambda x: P.temperature(x, p.temperature))]
        filters: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            "top_k": lambda x: P.top_k(x, p.top_k, keep_ties=p.order == "hf"),
            "typical": lambda x: P.typical(x, p.typical_p, hf=p.order == "hf"),
            "top_p": lambda x: P.top_p(x, p.top_p),
            "min_p": lambda x: P.min_p(x, p.min_p),
            "temperature": lambda x: P.temperature(x, p.temperature),
        }
        names = LLAMA_CPP_FILTERS if p.order == "llama.cpp" else HF_FILTERS
        return stages + [(name, filters[name]) for name in names]

    def process(
        self,
        logits: torch.Tensor,
        history: Sequence[int],
        trace: list[tuple[str, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """The logits (V,) after every stage; removed tokens are -inf. With `trace`, append
        (stage name, logits after it) for each stage."""
        logits = logits.detach().float().cpu()
        if logits.shape != (self.vocab_size,):
            raise SamplingError(
                f"expected logits of shape ({self.vocab_size},), got {tuple(logits.shape)}"
            )
        if torch.isnan(logits).any() or torch.isposinf(logits).any():
            raise SamplingError("the model produced NaN or infinite logits")
        if self.constraint is not None:
            allowed = self.constraint.allowed()  # (vocab,) bool
            padding = logits.shape[0] - allowed.shape[0]  # embeddings may pad the vocabulary
            if padding > 0:
                allowed = torch.nn.functional.pad(allowed, (0, padding), value=False)
            if allowed.shape != logits.shape or not bool(allowed.any()):
                raise SamplingError("the constraint allows no token")
            logits = P.mask(logits, allowed.cpu())
            if trace is not None:
                trace.append(("constraint", logits))
        for name, stage in self.stages(history):
            logits = stage(logits)
            if trace is not None:
                trace.append((name, logits))
        return logits

    # -- choosing -------------------------------------------------------------------------

    def sample(self, logits: torch.Tensor, history: Sequence[int] = ()) -> int:
        """The next token for logits (V,), given `history` (prompt + generated ids so far)."""
        raw = logits
        p = self.params
        if self._plain_greedy:
            # argmax survives top_k/top_p/min_p: skip the chain (and the copy to the host)
            if bool(torch.isnan(logits).any() or torch.isposinf(logits).any()):
                raise SamplingError("the model produced NaN or infinite logits")
            token = int(torch.argmax(logits))
            self._pending_prob = 1.0
            self.last_logprobs = None
            return token
        processed = self.process(logits, history)
        if not torch.isfinite(processed).any():
            raise SamplingError("no token is left to choose (all logits are -inf)")
        if p.mirostat:
            truncate = (
                (lambda x: P.mirostat_v1(x, self.mu, self.vocab_size))
                if p.mirostat == 1
                else (lambda x: P.mirostat_v2(x, self.mu))
            )
            processed = truncate(processed)
        if p.greedy:
            token = int(torch.argmax(processed))
            prob = 1.0
        else:
            probs = torch.softmax(processed, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
            prob = float(probs[token])
        self._pending_prob = prob
        self.last_logprobs = self._logprobs(raw, token) if p.wants_logprobs else None
        return token

    def accept(self, token: int) -> None:
        """Record that `token` was used: advance the constraint, mirostat's mu, and the
        generated tokens the "hf" order's frequency/presence penalties count."""
        self.generated.append(token)
        if self.constraint is not None:
            self.constraint.accept(token)
        if self.params.mirostat and self._pending_prob is not None:
            p = self.params
            self.mu = P.mirostat_update(self.mu, p.mirostat_tau, p.mirostat_eta, self._pending_prob)
        self._pending_prob = None

    def __call__(self, logits: torch.Tensor, history: Sequence[int] = ()) -> int:
        """sample() then accept(): the next token, with the sampler's state advanced."""
        token = self.sample(logits, history)
        self.accept(token)
        return token

    def _logprobs(self, raw: torch.Tensor, token: int) -> TokenLogprobs:
        logp = torch.log_softmax(raw.detach().float().cpu(), dim=-1)
        top: tuple[tuple[int, float], ...] = ()
        n = self.params.top_logprobs
        if n:
            values, ids = torch.topk(logp, min(n, len(logp)))
            top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
        return TokenLogprobs(token, float(logp[token]), top)


def check_logit_bias(params: SamplingParams, vocab_size: int) -> None:
    """Refuse logit_bias entries for token ids outside the vocabulary, naming the id."""
    for token, _ in params.logit_bias:
        if token >= vocab_size:
            raise SamplingParamsError(
                f"logit_bias: token id {token} is outside the vocabulary [0, {vocab_size})"
            )


LLAMA_CPP_FILTERS = ("top_k", "typical", "top_p", "min_p", "temperature")
HF_FILTERS = ("temperature", "top_k", "top_p", "min_p", "typical")


def _window(history: Sequence[int], last_n: int) -> Sequence[int]:
    """The last `last_n` tokens of `history` (-1: all of it, 0: none)."""
    if last_n == 0:
        return ()
    if last_n < 0:
        return history
    return history[-last_n:]
