"""Single-sequence generation: chunked prefill into the KV cache, then incremental decode."""

from collections.abc import Callable, Collection, Iterator, Sequence

import torch

from corral.engine.slots import common_prefix
from corral.model.llama import Transformer
from corral.sampling import Constraint, Sampler, SamplingParams, TokenLogprobs

PREFILL_CHUNK = 512


class ContextOverflowError(ValueError):
    """The prompt does not fit in the context window."""


def check_prompt(model: Transformer, prompt_ids: Sequence[int]) -> None:
    """Refuse an empty prompt, or one that leaves no room in the context window."""
    if not prompt_ids:
        raise ValueError("the prompt is empty: nothing to continue")
    if len(prompt_ids) >= model.n_positions:
        raise ContextOverflowError(
            f"the prompt has {len(prompt_ids)} tokens but the context window holds "
            f"{model.n_positions}"
        )


def prefill(model: Transformer, prompt_ids: Sequence[int], start: int = 0) -> torch.Tensor:
    """Run `prompt_ids` through the model from position `start`; return the last logits (V,).

    The prompt goes through in chunks so activations stay bounded on long prompts.
    """
    device = model.tok_embeddings.weight.device
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)  # (1, T)
    logits = None
    for chunk_start in range(0, ids.shape[1], PREFILL_CHUNK):
        chunk = ids[:, chunk_start : chunk_start + PREFILL_CHUNK]  # (1, <=chunk)
        logits = model(chunk, start + chunk_start, last_only=True)
    if logits is None:
        raise ValueError("cannot prefill an empty prompt")
    return logits[0, -1]


def generate_ids(
    model: Transformer,
    prompt_ids: Sequence[int],
    max_tokens: int,
    params: SamplingParams,
    is_stop: Callable[[int], bool],
    *,
    eos_ids: Collection[int] = frozenset(),
    constraint: Constraint | None = None,
    on_logprobs: Callable[[TokenLogprobs], None] | None = None,
) -> Iterator[int]:
    """Yield up to `max_tokens` new token ids; stop after a token for which `is_stop` is true
    (that token is not yielded), when the context window is full, or when `constraint`
    says its grammar is complete (after yielding the token that completed it).

    eos_ids: the end-of-generation ids, masked when params.ignore_eos.
    on_logprobs: called with each yielded token's log-probabilities when params ask.
    The KV cache's row 0 may still hold an earlier call's tokens (`model.cached_tokens`):
    their common prefix with the prompt is not recomputed, so a chat's next turn reads only
    the new messages.
    The Sampler (and its logit_bias check against the vocabulary) is built before the
    prompt is processed, so bad parameters fail before any model work.
    """
    n_ctx = model.n_positions
    check_prompt(model, prompt_ids)
    sampler = Sampler(params, model.config.n_vocab, eos_ids=eos_ids, constraint=constraint)
    history = list(prompt_ids)
    reused = min(common_prefix(model.cached_tokens, prompt_ids), len(prompt_ids) - 1)
    logits = prefill(model, prompt_ids[reused:], start=reused)
    cached = model.cached_tokens = list(history)  # every forward clears it: declare ours
    device = logits.device
    position = len(prompt_ids)
    for _ in range(max_tokens):
        token = sampler.sample(logits, history)
        if is_stop(token):
            return
        sampler.accept(token)
        history.append(token)
        if on_logprobs is not None and sampler.last_logprobs is not None:
            on_logprobs(sampler.last_logprobs)
        yield token
        if position >= n_ctx or (constraint is not None and constraint.is_done()):
            return
        step = torch.tensor([[token]], dtype=torch.long, device=device)  # (1, 1)
        logits = model(step, position)[0, -1]
        cached.append(token)
        model.cached_tokens = cached
        position += 1
