"""The Python API on the embedded model: generate, stream, seeds, stops and bad requests."""

import pytest

import corral
from corral.engine.generate import ContextOverflowError

CHATML_QUESTION = (
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def llm():
    return corral.load(n_ctx=256, device="cpu")


def test_default_model_is_smollm2(llm):
    assert llm.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (llm.config.n_head, llm.config.n_head_kv) == (9, 3)


def test_greedy_answer_stops_at_end_of_turn(llm):
    answer = llm.generate(CHATML_QUESTION, max_tokens=40, temperature=0, parse_special=True)
    assert answer == "The capital of France is Paris."


def test_stream_pieces_join_to_generate(llm):
    kwargs = dict(max_tokens=24, temperature=0.9, seed=5)
    pieces = list(llm.stream("Once upon a time", **kwargs))
    assert len(pieces) > 1
    assert "".join(pieces) == llm.generate("Once upon a time", **kwargs)


def test_seed_reproduces_and_differs(llm):
    def sample(seed):
        return llm.generate("My favourite food is", max_tokens=16, temperature=1.0, seed=seed)

    assert sample(1) == sample(1)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_max_tokens_bounds_the_output(llm):
    ids = list(llm.generate_tokens(llm.tokenize("The history of Rome"), 5, temperature=0))
    assert len(ids) == 5


def test_special_token_text_stays_plain_without_parse_special(llm):
    plain = llm.tokenize("<|im_end|>")
    assert len(plain) > 1 and llm.tokenizer.token_id("<|im_end|>") not in plain


def test_out_of_range_token_ids_are_refused(llm):
    with pytest.raises(ValueError, match="token id 49152"):
        list(llm.generate_tokens([1, 49152], 4))


def test_prompt_longer_than_context_is_refused(llm):
    with pytest.raises(ContextOverflowError, match="context window"):
        llm.generate("word " * 400, max_tokens=4)


def test_generation_stops_at_the_end_of_the_context(llm):
    prompt = llm.tokenize("count: " + "1 2 3 " * 40)
    room = 256 - len(prompt)
    generated = list(llm.generate_tokens(prompt, 1000, temperature=0))
    assert len(generated) <= room + 1


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        corral.load(tmp_path / "nope.gguf")


def test_n_completions_share_a_prefill_and_follow_their_seeds(llm):
    kwargs = dict(max_tokens=8, temperature=1.0, seed=3)
    completions = llm.generate_n("Once upon a time", 3, **kwargs)
    assert len(completions) == 3
    assert completions[1] == llm.generate("Once upon a time", **{**kwargs, "seed": 4})


def test_stop_accepts_token_ids_and_strings(llm):
    prompt = "The capital of France is"
    free = list(llm.generate_tokens(llm.tokenize(prompt), 12, temperature=0))
    stop_id = free[3]
    expected = llm.detokenize(free[: free.index(stop_id)])
    assert llm.generate(prompt, 12, temperature=0, stop=[stop_id]) == expected
    assert llm.generate(prompt, 12, temperature=0, stop=[stop_id, "zzz"]) == expected
    with pytest.raises(ValueError, match="stop token id 99999"):
        llm.generate(prompt, 4, stop=[99999])
