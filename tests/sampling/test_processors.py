"""Each processor against distributions computed by hand, and against HF transformers."""

import math

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from corral.sampling import processors

INF = float("inf")


def random_logits(seed: int, size: int = 1000) -> torch.Tensor:
    return torch.randn(size, generator=torch.Generator().manual_seed(seed)) * 3


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits)).flatten().tolist())


def from_probs(*probs: float) -> torch.Tensor:
    return torch.log(torch.tensor(probs, dtype=torch.float32))


# -- by hand ----------------------------------------------------------------------------------


def test_top_k_by_hand_with_ties():
    logits = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.5])
    assert kept(processors.top_k(logits, 2)) == {1, 2}  # exactly k; the lower id of the tie
    assert kept(processors.top_k(logits, 2, keep_ties=True)) == {1, 2, 3}
    assert kept(processors.top_k(logits, 1)) == {1}
    assert torch.equal(processors.top_k(logits, 5), logits)
    assert torch.equal(processors.top_k(logits, 50), logits)  # k larger than the vocab
    assert torch.equal(processors.top_k(logits, 0), logits)


def test_top_k_counts_only_remaining_candidates():
    logits = torch.tensor([1.0, -INF, 2.0, -INF])
    assert torch.equal(processors.top_k(logits, 3), logits)
    assert kept(processors.top_k(logits, 1)) == {2}


def test_top_p_by_hand():
    logits = from_probs(0.5, 0.25, 0.125, 0.125)
    assert kept(processors.top_p(logits, 0.5)) == {0}  # 0.5 reaches 0.5
    assert kept(processors.top_p(logits, 0.6)) == {0, 1}
    assert kept(processors.top_p(logits, 0.8)) == {0, 1, 2}  # tie: the lower id
    assert kept(processors.top_p(logits, 0.01)) == {0}  # the first always stays
    assert torch.equal(processors.top_p(logits, 1.0), logits)


def test_min_p_by_hand():
    logits = from_probs(0.4, 0.3, 0.2, 0.1)
    assert kept(processors.min_p(logits, 0.5)) == {0, 1, 2}  # >= 0.2
    assert kept(processors.min_p(logits, 0.51)) == {0, 1}
    assert kept(processors.min_p(logits, 1.0)) == {0}
    assert torch.equal(processors.min_p(logits, 0.0), logits)


def test_typical_by_hand():
    # p = (0.4, 0.3, 0.2, 0.1): entropy H = 1.2799; |-ln p - H| = 0.364, 0.076, 0.330, 1.023
    logits = from_probs(0.4, 0.3, 0.2, 0.1)
    logp = torch.log_softmax(logits, -1)
    entropy = float(-(logp.exp() * logp).sum())
    assert math.isclose(entropy, 1.2799, abs_tol=1e-4)
    # ranked 1, 2, 0, 3 with masses 0.3, 0.5, 0.9, 1.0
    assert kept(processors.typical(logits, 0.25)) == {1}
    assert kept(processors.typical(logits, 0.6)) == {0, 1, 2}
    assert kept(processors.typical(logits, 0.95)) == {0, 1, 2, 3}
    assert torch.equal(processors.typical(logits, 1.0), logits)


def test_typical_boundary_and_ties_llama_cpp_vs_hf():
    # p = (1/2, 1/4, 1/8, 1/8), exact in binary: H = 1.2130 nats; |-ln p - H| = 0.520,
    # 0.173, 0.866, 0.866: ranked 1, 0, then 2 and 3 tied, with masses 1/4, 3/4, 7/8, 1
    logits = from_probs(0.5, 0.25, 0.125, 0.125)
    assert kept(processors.typical(logits, 0.25)) == {0, 1}  # llama.cpp: mass must exceed p
    assert kept(processors.typical(logits, 0.25, hf=True)) == {1}  # HF: reaching p is enough
    assert kept(processors.typical(logits, 0.8)) == {0, 1, 2}  # the tie: lower id
    assert kept(processors.typical(logits, 0.8, hf=True)) == {0, 1, 2, 3}  # HF keeps ties
    expected = hf(TypicalLogitsWarper(mass=0.8), logits)
    assert kept(expected) == {0, 1, 2, 3}
    assert kept(hf(TypicalLogitsWarper(mass=0.25), logits)) == {1}


def test_typical_uniform_keeps_by_mass():
    logits = torch.zeros(4)  # all equally typical: ranked by id
    assert kept(processors.typical(logits, 0.3)) == {0, 1}
    assert kept(processors.typical(logits, 0.3, hf=True)) == {0, 1, 2, 3}  # ties kept


def test_temperature_by_hand():
    logits = torch.tensor([2.0, -1.0, 4.0, 4.0])
    assert torch.equal(processors.temperature(logits, 2.0), torch.tensor([1.0, -0.5, 2.0, 2.0]))
    assert kept(processors.temperature(logits, 0.0)) == {2}  # greedy: lower id of the tie


def test_penalties_by_hand():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.0, 3.0])
    history = [0, 0, 1, 3, 0]
    out = processors.penalties(logits, history, repeat=2.0, frequency=0.5, presence=0.25)
    # token 0: 2/2 - 3*0.5 - 0.25; token 1: -2*2 - 0.5 - 0.25; token 3: 0*2 - 0.5 - 0.25
    expected = torch.tensor([1.0 - 1.75, -4.0 - 0.75, 1.0, -0.75, 3.0])
    assert torch.allclose(out, expected)
    assert torch.equal(processors.penalties(logits, []), logits)


def test_repetition_penalty_counts_each_token_once():
    logits = torch.tensor([2.0, -2.0, 1.0])
    out = processors.repetition_penalty(logits, [0, 0, 0, 1], 2.0)
    assert torch.allclose(out, torch.tensor([1.0, -4.0, 1.0]))


def test_logit_bias_and_mask():
    logits = torch.tensor([0.0, 1.0, 2.0])
    out = processors.logit_bias(logits, ((0, 5.0), (2, -INF)))
    assert out.tolist() == [5.0, 1.0, -INF]
    allowed = torch.tensor([True, False, True])
    assert kept(processors.mask(logits, allowed)) == {0, 2}


def test_mirostat_v2_truncates_by_surprise():
    logits = from_probs(0.5, 0.25, 0.125, 0.125)  # surprises 1, 2, 3, 3 bits
    assert kept(processors.mirostat_v2(logits, 2.5)) == {0, 1}
    assert kept(processors.mirostat_v2(logits, 0.5)) == {0}  # at least one
    assert processors.mirostat_update(10.0, 5.0, 0.1, 0.25) == pytest.approx(10.3)


# -- against HF transformers ----------------------------------------------------------------


def hf(warper, logits, input_ids=None):
    ids = torch.zeros((1, 0), dtype=torch.long) if input_ids is None else input_ids
    return warper(ids, logits[None].clone())[0]


@pytest.mark.parametrize("k", [1, 5, 40, 999, 5000])
def test_top_k_matches_transformers(k):
    logits = random_logits(k)
    assert kept(processors.top_k(logits, k, keep_ties=True)) == kept(
        hf(TopKLogitsWarper(top_k=k), logits)
    )
    assert kept(processors.top_k(logits, k)) == kept(hf(TopKLogitsWarper(top_k=k), logits))


def test_top_k_ties_match_transformers():
    logits = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.5])
    assert kept(processors.top_k(logits, 2, keep_ties=True)) == kept(
        hf(TopKLogitsWarper(top_k=2), logits)
    )


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.95])
def test_top_p_matches_transformers(p):
    logits = random_logits(int(p * 100))
    assert kept(processors.top_p(logits, p)) == kept(hf(TopPLogitsWarper(top_p=p), logits))


@pytest.mark.parametrize("p", [0.01, 0.05, 0.2, 0.9])
def test_min_p_matches_transformers(p):
    logits = random_logits(int(p * 1000))
    assert kept(processors.min_p(logits, p)) == kept(hf(MinPLogitsWarper(min_p=p), logits))


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9, 0.99])
def test_typical_matches_transformers(p):
    logits = random_logits(int(p * 1000) + 1)
    assert kept(processors.typical(logits, p, hf=True)) == kept(
        hf(TypicalLogitsWarper(mass=p), logits)
    )


def test_temperature_matches_transformers():
    logits = random_logits(7)
    expected = hf(TemperatureLogitsWarper(0.7), logits)
    assert torch.allclose(processors.temperature(logits, 0.7), expected)


@pytest.mark.parametrize("penalty", [0.8, 1.3])
def test_repetition_penalty_matches_transformers(penalty):
    logits = random_logits(13, 64)
    history = [3, 3, 7, 63, 0, 12, 12, 12, 40]
    expected = hf(
        RepetitionPenaltyLogitsProcessor(penalty), logits, torch.tensor([history], dtype=torch.long)
    )
    assert torch.allclose(processors.repetition_penalty(logits, history, penalty), expected)
