"""`n` completions of one prompt: one prefill, shared KV prefix, batched decode."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from corral.engine.generate import generate_ids
from corral.engine.parallel import generate_n_ids
from corral.formats.gguf import GGUFFile
from corral.loader import load_gguf_model
from corral.sampling import SamplingParams

TINY = Path(__file__).parents[1] / "fixtures" / "models" / "tiny-llama-Q8_0.gguf"
PROMPT = [1, 17, 42, 99, 250, 400, 7]


def never_stop(_token: int) -> bool:
    return False


@pytest.fixture(scope="module")
def model():
    with GGUFFile(TINY) as gguf:
        return load_gguf_model(gguf, torch.device("cpu"), torch.float32, 128).model


def single(model, params: SamplingParams, max_tokens: int) -> list[int]:
    return list(generate_ids(model, PROMPT, max_tokens, params, never_stop))


def test_each_seeded_completion_equals_a_single_run_with_its_seed(model):
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=10)
    completions = generate_n_ids(model, PROMPT, 4, 24, params, never_stop)
    assert len(completions) == 4 and len({tuple(c) for c in completions}) > 1
    for i, completion in enumerate(completions):
        assert completion == single(model, replace(params, seed=10 + i), 24)


def test_the_prompt_is_processed_once(model):
    widths = []
    hook = model.register_forward_pre_hook(lambda _m, args: widths.append(args[0].shape))
    try:
        generate_n_ids(model, PROMPT, 4, 5, SamplingParams(temperature=0.0), never_stop)
    finally:
        hook.remove()
    assert widths[0] == (1, len(PROMPT))  # one prefill, batch 1
    assert all(shape == (4, 1) for shape in widths[1:])  # then the 4 sequences decode together


def test_stopped_sequences_end_and_the_cache_returns_to_one_sequence(model):
    greedy = SamplingParams(temperature=0.0)
    reference = single(model, greedy, 12)
    stop_token = reference[5]
    completions = generate_n_ids(model, PROMPT, 3, 12, greedy, lambda t: t == stop_token)
    assert completions == [reference[: reference.index(stop_token)]] * 3
    assert model.cache_batch == 1
    assert single(model, greedy, 12) == reference


@pytest.mark.parametrize("n", [0, -1, 129, 2.0, True])
def test_bad_n_is_refused(model, n):
    with pytest.raises(ValueError, match="n must be"):
        generate_n_ids(model, PROMPT, n, 4, SamplingParams(), never_stop)
