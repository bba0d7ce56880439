"""Sampling through the engine and the Python API, on the tiny GGUF fixture model."""

from pathlib import Path

import pytest
import torch

import corral
from corral.engine.generate import generate_ids
from corral.sampling import SamplingParams, SamplingParamsError

TINY = Path(__file__).parents[1] / "fixtures" / "models" / "tiny-llama-Q4_0.gguf"
PROMPT = [1, 20, 30, 40, 50]


@pytest.fixture(scope="module")
def llm():
    return corral.load(TINY, n_ctx=128, device="cpu")


def never(_token: int) -> bool:
    return False


def test_seeded_runs_repeat_with_every_control(llm):
    kwargs = dict(
        temperature=1.1,
        top_k=30,
        top_p=0.9,
        min_p=0.02,
        typical_p=0.95,
        repeat_penalty=1.2,
        frequency_penalty=0.3,
        presence_penalty=0.2,
        logit_bias={"7": 2.0},
        seed=11,
    )
    first = list(llm.generate_tokens(PROMPT, 24, stop_ids=(), **kwargs))
    assert first == list(llm.generate_tokens(PROMPT, 24, stop_ids=(), **kwargs))
    other = list(llm.generate_tokens(PROMPT, 24, stop_ids=(), **{**kwargs, "seed": 12}))
    assert first != other


def test_greedy_spellings_agree(llm):
    greedy = list(llm.generate_tokens(PROMPT, 8, stop_ids=(), temperature=0))
    assert list(llm.generate_tokens(PROMPT, 8, stop_ids=(), do_sample=False)) == greedy
    assert list(llm.generate_tokens(PROMPT, 99, stop_ids=(), temp=0, max_new_tokens=8)) == greedy


def test_bad_parameters_fail_at_the_call(llm):
    with pytest.raises(SamplingParamsError, match="token id 512"):
        llm.generate_tokens(PROMPT, 4, logit_bias={512: 1.0})
    with pytest.raises(SamplingParamsError, match="top_p"):
        llm.generate("the cat", 4, top_p=0.0)
    with pytest.raises(SamplingParamsError, match="max_tokens"):
        llm.generate_tokens(PROMPT, -1)


def test_ignore_eos_and_logit_bias_steer_tokens(llm):
    greedy = list(llm.generate_tokens(PROMPT, 4, stop_ids=(), temperature=0))
    eos = greedy[0]
    steered = list(llm.generate_tokens(PROMPT, 4, stop_ids={eos}, temperature=0, ignore_eos=True))
    assert eos not in steered and len(steered) == 4
    forced = list(llm.generate_tokens(PROMPT, 3, stop_ids=(), temperature=0, logit_bias={9: 1e4}))
    assert forced == [9, 9, 9]


def test_on_logprobs_reports_each_token(llm):
    seen = []
    tokens = list(
        llm.generate_tokens(PROMPT, 5, stop_ids=(), seed=1, top_logprobs=2, on_logprobs=seen.append)
    )
    assert [entry.token for entry in seen] == tokens
    assert all(len(entry.top) == 2 and entry.logprob <= 0 for entry in seen)


class OnlyThen:
    """A stand-in constraint: allows token 5, then token 6, then is done."""

    def __init__(self, vocab: int) -> None:
        self.vocab, self.accepted = vocab, []

    def allowed(self) -> torch.Tensor:
        mask = torch.zeros(self.vocab, dtype=torch.bool)
        mask[5 + len(self.accepted)] = True
        return mask

    def accept(self, token: int) -> None:
        self.accepted.append(token)

    def is_done(self) -> bool:
        return len(self.accepted) == 2


def test_engine_applies_a_constraint_and_stops_when_done(llm):
    constraint = OnlyThen(llm.config.n_vocab)
    params = SamplingParams(temperature=1.0, seed=0)
    tokens = list(generate_ids(llm.model, PROMPT, 10, params, never, constraint=constraint))
    assert tokens == [5, 6] and constraint.accepted == [5, 6]
