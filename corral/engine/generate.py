"""Single-sequence generation: chunked prefill into the KV cache, then incremental decode."""

from collections.abc import Callable, Iterator, Sequence

import torch

from corral.model.llama import Transformer
from corral.sampling import Sampler, SamplingParams

PREFILL_CHUNK = 512


class ContextOverflowError(ValueError):
    """The prompt does not fit in the context window."""


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
) -> Iterator[int]:
    """Yield up to `max_tokens` new token ids; stop after a token for which `is_stop` is true
    (that token is not yielded) or when the context window is full."""
    n_ctx = model.n_positions
    if not prompt_ids:
        raise ValueError("the prompt is empty: nothing to continue")
    if len(prompt_ids) >= n_ctx:
        raise ContextOverflowError(
            f"the prompt has {len(prompt_ids)} tokens but the context window holds {n_ctx}"
        )
    sampler = Sampler(params)
    logits = prefill(model, prompt_ids)
    device = logits.device
    position = len(prompt_ids)
    for _ in range(max_tokens):
        token = sampler(logits)
        if is_stop(token):
            return
        yield token
        if position >= n_ctx:
            return
        step = torch.tensor([[token]], dtype=torch.long, device=device)  # (1, 1)
        logits = model(step, position)[0, -1]
        position += 1
