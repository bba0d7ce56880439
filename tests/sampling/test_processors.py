"""Sampling filters against HF transformers' logits warpers, and sampler behaviour."""

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from corral.sampling import Sampler, SamplingParams, processors


def random_logits(seed: int, size: int = 1000) -> torch.Tensor:
    return torch.randn(size, generator=torch.Generator().manual_seed(seed)) * 3


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits)).flatten().tolist())


@pytest.mark.parametrize("k", [1, 5, 40, 999])
def test_top_k_matches_transformers(k):
    logits = random_logits(k)
    expected = TopKLogitsWarper(top_k=k)(None, logits[None].clone())[0]
    assert kept(processors.top_k(logits, k)) == kept(expected)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.95])
def test_top_p_matches_transformers(p):
    logits = random_logits(int(p * 100))
    expected = TopPLogitsWarper(top_p=p)(None, logits[None].clone())[0]
    assert kept(processors.top_p(logits, p)) == kept(expected)


def test_temperature_matches_transformers():
    logits = random_logits(7)
    expected = TemperatureLogitsWarper(0.7)(None, logits[None].clone())[0]
    assert torch.allclose(processors.temperature(logits, 0.7), expected)


def test_disabled_filters_keep_everything():
    logits = random_logits(3)
    assert torch.equal(processors.top_k(logits, 0), logits)
    assert torch.equal(processors.top_p(logits, 1.0), logits)


def test_greedy_is_argmax():
    logits = random_logits(11)
    assert Sampler(SamplingParams(temperature=0.0))(logits) == int(logits.argmax())


def test_same_seed_same_tokens_and_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=42)
    first = Sampler(params)
    draws = [first(logits) for _ in range(3000)]
    second = Sampler(params)
    assert draws[:50] == [second(logits) for _ in range(50)]
    frequencies = torch.bincount(torch.tensor(draws), minlength=3).float() / len(draws)
    assert torch.allclose(frequencies, torch.tensor([0.5, 0.3, 0.2]), atol=0.04)


def test_top_k_one_never_picks_another_token():
    logits = random_logits(5)
    sampler = Sampler(SamplingParams(temperature=1.5, top_k=1, seed=1))
    assert {sampler(logits) for _ in range(20)} == {int(logits.argmax())}


@pytest.mark.parametrize(
    "field, value", [("temperature", -0.1), ("top_k", -1), ("top_p", 0.0), ("top_p", 1.5)]
)
def test_invalid_parameters_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})
