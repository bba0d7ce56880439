"""Sampler: turns the last position's logits into the next token id."""

import random

import torch

from corral.sampling import processors
from corral.sampling.params import SamplingParams


class Sampler:
    """Chooses tokens with one seeded generator per generation, so a seed reproduces output."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """Pick the next token from logits (V,)."""
        params = self.params
        if params.greedy:
            return int(torch.argmax(logits))
        logits = logits.float().cpu()
        logits = processors.top_k(logits, params.top_k)
        logits = processors.top_p(logits, params.top_p)
        logits = processors.temperature(logits, params.temperature)
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
