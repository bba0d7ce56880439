"""Several completions of one prompt (`n`): one prefill, its KV entries shared by every
sequence, then all sequences decoded together as one batch.

Sequence i samples with seed + i (when a seed is given), so each completion can be
reproduced alone with that seed. A finished sequence keeps its batch slot (it is fed its last
token again and its results are dropped) so decode shapes stay static.
"""

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace

import torch

from corral.engine.generate import check_prompt, prefill
from corral.model.llama import Transformer
from corral.sampling import Sampler, SamplingParams
from corral.sampling.params import MAX_COMPLETIONS


def sequence_params(params: SamplingParams, index: int) -> SamplingParams:
    """The sampling parameters of completion `index`: seed + index when seeded."""
    return params if params.seed is None else replace(params, seed=params.seed + index)


def generate_n_ids(
    model: Transformer,
    prompt_ids: Sequence[int],
    n: int,
    max_tokens: int,
    params: SamplingParams,
    is_stop: Callable[[int], bool],
    *,
    eos_ids: Collection[int] = frozenset(),
) -> list[list[int]]:
    """`n` completions of `prompt_ids`, each up to `max_tokens` new ids, ending before a
    token for which `is_stop` is true or when the context window is full."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_COMPLETIONS:
        raise ValueError(f"n must be an integer from 1 to {MAX_COMPLETIONS}, got {n!r}")
    check_prompt(model, prompt_ids)
    vocab = model.config.n_vocab
    samplers = [Sampler(sequence_params(params, i), vocab, eos_ids=eos_ids) for i in range(n)]
    n_ctx = model.n_positions
    model.setup_cache(n, n_ctx)
    try:
        rows = prefill(model, prompt_ids).expand(n, -1)  # (n, V): one prefill for all
        model.share_prefix(len(prompt_ids))
        return _decode(model, rows, prompt_ids, samplers, max_tokens, is_stop)
    finally:
        model.setup_cache(1, n_ctx)


def _decode(
    model: Transformer,
    rows: torch.Tensor,
    prompt_ids: Sequence[int],
    samplers: list[Sampler],
    max_tokens: int,
    is_stop: Callable[[int], bool],
) -> list[list[int]]:
    """Decode all sequences in lockstep from logits `rows` (n, V) after the prompt."""
    histories = [list(prompt_ids) for _ in samplers]
    live = [True] * len(samplers)
    position = len(prompt_ids)
    for _ in range(max_tokens):
        for i, sampler in enumerate(samplers):
            if not live[i]:
                continue
            token = sampler.sample(rows[i], histories[i])
            if is_stop(token):
                live[i] = False
                continue
            sampler.accept(token)
            histories[i].append(token)
        if not any(live) or position >= model.n_positions:
            break
        step = torch.tensor([h[-1] for h in histories], device=rows.device)[:, None]  # (n, 1)
        rows = model(step, position)[:, -1]  # (n, V)
        position += 1
    return [history[len(prompt_ids) :] for history in histories]
