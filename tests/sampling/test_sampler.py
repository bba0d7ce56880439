"""The Sampler: chain order against transformers, seeds, logprobs, constraints, bad logits."""

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from corral.sampling import (
    Sampler,
    SamplingError,
    SamplingParams,
    SamplingParamsError,
)

INF = float("inf")
OPEN = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)  # no filter, no scaling


def random_logits(seed: int, size: int = 512) -> torch.Tensor:
    return torch.randn(size, generator=torch.Generator().manual_seed(seed)) * 3


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits)).flatten().tolist())


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.7, top_k=50, top_p=0.9, min_p=0.05, typical_p=1.0),
        dict(temperature=1.3, top_k=0, top_p=0.8, min_p=0.0, typical_p=0.9),
        dict(temperature=0.5, top_k=20, top_p=1.0, min_p=0.2, typical_p=0.7),
        dict(temperature=1.0, top_k=100, top_p=0.95, min_p=0.0, typical_p=1.0),
    ],
)
def test_hf_order_matches_transformers_chain(settings):
    logits = random_logits(sum(map(hash, map(str, settings.values()))) % 1000)
    history = [4, 4, 9, 100, 200, 300, 9]
    params = SamplingParams(order="hf", repetition_penalty=1.2, **settings)
    ours = Sampler(params, len(logits)).process(logits, history)
    chain = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.2)])
    chain.append(TemperatureLogitsWarper(settings["temperature"]))
    if settings["top_k"]:
        chain.append(TopKLogitsWarper(settings["top_k"]))
    if settings["top_p"] < 1:
        chain.append(TopPLogitsWarper(settings["top_p"]))
    if settings["min_p"] > 0:
        chain.append(MinPLogitsWarper(settings["min_p"]))
    if settings["typical_p"] < 1:
        chain.append(TypicalLogitsWarper(settings["typical_p"]))
    theirs = chain(torch.tensor([history]), logits[None].clone())[0]
    assert kept(ours) == kept(theirs)
    finite = torch.isfinite(theirs)
    assert torch.allclose(ours[finite], theirs[finite], atol=1e-5)


def test_orders_differ_where_temperature_moves():
    # llama.cpp filters before temperature, HF after: min_p at a high temperature differs
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    llama = Sampler(SamplingParams(temperature=3.0, top_k=0, top_p=1.0, min_p=0.2), 3)
    hf = Sampler(SamplingParams(temperature=3.0, top_k=0, top_p=1.0, min_p=0.2, order="hf"), 3)
    assert kept(llama.process(logits, [])) == {0, 1}
    assert kept(hf.process(logits, [])) == {0, 1, 2}


def test_llama_cpp_penalty_window_and_hf_generated_only():
    logits = torch.zeros(8) + 1.0
    history = [1, 1, 2, 3]  # prompt; nothing generated yet
    llama = Sampler(SamplingParams(frequency_penalty=1.0, repeat_last_n=2, **OPEN), 8)
    out = llama.process(logits, history)  # window: [2, 3]
    assert out[:4].tolist() == [1.0, 1.0, 0.0, 0.0]
    whole = Sampler(SamplingParams(frequency_penalty=1.0, repeat_last_n=-1, **OPEN), 8)
    assert whole.process(logits, history)[:4].tolist() == [1.0, -1.0, 0.0, 0.0]
    off = Sampler(SamplingParams(frequency_penalty=1.0, repeat_last_n=0, **OPEN), 8)
    assert torch.equal(off.process(logits, history), logits)
    hf = Sampler(SamplingParams(frequency_penalty=1.0, presence_penalty=0.5, order="hf", **OPEN), 8)
    assert torch.equal(hf.process(logits, history), logits)  # the prompt does not count
    hf.accept(5)
    hf.accept(5)
    assert hf.process(logits, history + [5, 5])[5] == pytest.approx(1.0 - 2.0 - 0.5)


def test_greedy_is_argmax_and_sees_penalties():
    logits = random_logits(11)
    assert Sampler(SamplingParams(temperature=0.0), len(logits))(logits) == int(logits.argmax())
    top = int(logits.argmax())
    banned = SamplingParams(temperature=0.0, logit_bias={top: -INF})
    second = int(logits.topk(2).indices[1])
    assert Sampler(banned, len(logits)).sample(logits, []) == second
    penalised = SamplingParams(temperature=0.0, repeat_penalty=100.0)
    assert Sampler(penalised, len(logits)).sample(logits, [top]) != top


def test_same_seed_same_tokens_and_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=42)
    first = Sampler(params, 3)
    draws = [first(logits) for _ in range(3000)]
    second = Sampler(params, 3)
    assert draws[:50] == [second(logits) for _ in range(50)]
    frequencies = torch.bincount(torch.tensor(draws), minlength=3).float() / len(draws)
    assert torch.allclose(frequencies, torch.tensor([0.5, 0.3, 0.2]), atol=0.04)


def test_interleaved_requests_do_not_change_each_other():
    logits = random_logits(2, 64)
    a = SamplingParams(temperature=1.0, seed=1, top_k=0, min_p=0.0)
    b = SamplingParams(temperature=1.5, seed=2, top_k=0, min_p=0.0)
    alone_a = Sampler(a, 64)
    alone_b = Sampler(b, 64)
    expected_a = [alone_a(logits) for _ in range(30)]
    expected_b = [alone_b(logits) for _ in range(30)]
    torch.manual_seed(0)
    mixed_a, mixed_b = Sampler(a, 64), Sampler(b, 64)
    got_a, got_b = [], []
    for _ in range(30):
        got_b.append(mixed_b(logits))
        torch.rand(7)  # the global generator moves too
        got_a.append(mixed_a(logits))
    assert got_a == expected_a and got_b == expected_b


def test_top_k_one_never_picks_another_token():
    logits = random_logits(5)
    sampler = Sampler(SamplingParams(temperature=1.5, top_k=1, seed=1), len(logits))
    assert {sampler(logits) for _ in range(20)} == {int(logits.argmax())}


@pytest.mark.parametrize("bad", [float("nan"), INF])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_nan_or_inf_logits_fail_clearly(bad, temperature):
    logits = random_logits(3)
    logits[0] = bad
    sampler = Sampler(SamplingParams(temperature=temperature), len(logits))
    with pytest.raises(SamplingError, match="NaN or infinite"):
        sampler.sample(logits, [])


def test_all_banned_fails_clearly():
    logits = torch.zeros(3)
    sampler = Sampler(SamplingParams(logit_bias={0: -INF, 1: -INF, 2: -INF}), 3)
    with pytest.raises(SamplingError, match="no token"):
        sampler.sample(logits, [])


def test_logit_bias_outside_vocab_is_refused_by_id():
    with pytest.raises(SamplingParamsError, match="token id 70"):
        Sampler(SamplingParams(logit_bias={"70": 1.0}), 64)


def test_ignore_eos_masks_eos_ids():
    logits = torch.tensor([0.0, 10.0, 0.0])
    sampler = Sampler(SamplingParams(temperature=0.0, ignore_eos=True), 3, eos_ids={1})
    assert sampler.sample(logits, []) != 1
    assert Sampler(SamplingParams(temperature=0.0), 3, eos_ids={1}).sample(logits, []) == 1


def test_logprobs_are_the_raw_log_softmax():
    logits = random_logits(9, 100)
    params = SamplingParams(temperature=0.9, top_k=5, logprobs=True, top_logprobs=3, seed=3)
    sampler = Sampler(params, 100)
    token = sampler.sample(logits, [])
    reference = torch.log_softmax(logits, -1)
    got = sampler.last_logprobs
    assert got.token == token
    assert got.logprob == pytest.approx(float(reference[token]), abs=1e-6)
    values, ids = reference.topk(3)
    assert [i for i, _ in got.top] == ids.tolist()
    assert [v for _, v in got.top] == pytest.approx(values.tolist(), abs=1e-6)
    assert Sampler(SamplingParams(seed=3), 100).sample(logits, []) is not None
    quiet = Sampler(SamplingParams(seed=3), 100)
    quiet.sample(logits, [])
    assert quiet.last_logprobs is None


class Allow:
    """A stand-in constraint: allows a fixed set, records what it was given."""

    def __init__(self, allowed: list[bool]) -> None:
        self.mask = torch.tensor(allowed)
        self.accepted: list[int] = []

    def allowed(self) -> torch.Tensor:
        return self.mask

    def accept(self, token: int) -> None:
        self.accepted.append(token)

    def is_done(self) -> bool:
        return False


def test_constraint_mask_comes_first_and_is_told_the_choice():
    logits = torch.tensor([5.0, 0.0, 1.0, 9.0])
    constraint = Allow([False, True, True, False])
    params = SamplingParams(temperature=1.0, top_k=1, seed=0)  # top_k after the mask
    sampler = Sampler(params, 4, constraint=constraint)
    token = sampler(logits, [])
    assert token == 2 and constraint.accepted == [2]


def test_constraint_allowing_nothing_fails():
    sampler = Sampler(SamplingParams(), 2, constraint=Allow([False, False]))
    with pytest.raises(SamplingError, match="constraint allows no token"):
        sampler.sample(torch.zeros(2), [])


@pytest.mark.parametrize("version", [1, 2])
def test_mirostat_moves_mu_towards_tau(version):
    logits = random_logits(21, 256)
    params = SamplingParams(mirostat=version, mirostat_tau=3.0, mirostat_eta=0.1, seed=4)
    sampler = Sampler(params, 256)
    assert sampler.mu == 6.0
    surprises = []
    for _ in range(200):
        token = sampler.sample(logits, [])
        surprises.append(-torch.log2(torch.tensor(sampler._pending_prob)).item())
        sampler.accept(token)
    assert sampler.mu != 6.0
    assert abs(sum(surprises[100:]) / 100 - 3.0) < 1.0
