"""Continuous batching on the embedded model: every request gets the tokens the
single-sequence path gives it alone, while sharing decode steps with the others."""

import asyncio
import threading

import numpy as np
import pytest

import corral
from corral.engine.generate import ContextOverflowError
from corral.engine.requests import EngineRequest, Finished, TokenEvent
from corral.engine.scheduler import Engine, EngineClosedError, QueueFullError
from corral.sampling import SamplingParams, SamplingParamsError
from tests.model.test_llama_cpp_golden import SMOLLM2_NEAR_TIE, golden, margins, smollm2_path

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "My favourite book is",
]
SLOT_CONTEXT = 96
N_TOKENS = 10


@pytest.fixture(scope="module")
def reference():
    """The single-sequence path (LLM.generate_tokens), run alone."""
    return corral.load(n_ctx=SLOT_CONTEXT, device="cpu", dtype=None)


@pytest.fixture(scope="module")
def engine():
    llm = corral.load(n_ctx=4 * SLOT_CONTEXT, device="cpu")
    engine = Engine(llm.model, n_slots=4, eos_ids=llm.tokenizer.eog_ids, max_queue=8)
    engine.start()
    engine.tokenizer = llm.tokenizer
    yield engine
    engine.shutdown(timeout=5)


def alone(llm, prompt_ids, params):
    sampling = {k: getattr(params, k) for k in ("temperature", "seed", "top_k", "top_p")}
    return list(llm.generate_tokens(prompt_ids, params.max_tokens, **sampling))


def collect(handle):
    tokens, finished = [], None
    for event in handle:
        if isinstance(event, TokenEvent):
            tokens.append(event.token_id)
        else:
            finished = event
    return tokens, finished


def request(engine, prompt, **params):
    ids = tuple(engine.tokenizer.encode(prompt))
    return EngineRequest(ids, SamplingParams(**params), stop_ids=engine.tokenizer.eog_ids)


@pytest.mark.parametrize("params", [{"temperature": 0.0}, {"temperature": 0.9, "seed": 7}])
def test_concurrent_requests_equal_alone(engine, reference, params):
    requests = [request(engine, p, max_tokens=N_TOKENS, **params) for p in PROMPTS]
    handles = [engine.submit(r) for r in requests]  # 6 requests, 4 slots: 2 wait, then join
    results = [collect(h) for h in handles]
    for req, (tokens, finished) in zip(requests, results, strict=True):
        assert tokens == alone(reference, list(req.prompt_ids), req.params)
        assert finished.reason in ("length", "stop")
        assert finished.completion_tokens == len(tokens)
        assert finished.prompt_tokens == len(req.prompt_ids)
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.kv_used_tokens) == (0, 0, 0)


def test_requests_joining_mid_generation_equal_alone(engine, reference):
    first = request(engine, PROMPTS[0], max_tokens=3 * N_TOKENS, temperature=0.0)
    handle = engine.submit(first)
    events = iter(handle)
    early = [next(events).token_id for _ in range(3)]  # the first is decoding now
    late = request(engine, PROMPTS[1], max_tokens=N_TOKENS, temperature=0.0)
    late_tokens, _ = collect(engine.submit(late))
    rest, _ = collect_rest(events)
    assert early + rest == alone(reference, list(first.prompt_ids), first.params)
    assert late_tokens == alone(reference, list(late.prompt_ids), late.params)


def collect_rest(events):
    tokens = []
    for event in events:
        if isinstance(event, Finished):
            return tokens, event
        tokens.append(event.token_id)
    raise AssertionError("no Finished event")


def test_shared_prompt_prefix_is_computed_once(engine, reference):
    prompt = "A long shared system prompt that every completion of this request starts with:"
    requests = [
        request(engine, prompt, max_tokens=N_TOKENS, temperature=1.0, seed=100 + i)
        for i in range(3)
    ]
    results = [collect(engine.submit(r)) for r in [*requests]]
    n_prompt = len(requests[0].prompt_ids)
    # the second and third reuse all but the last prompt token (in place or copied)
    assert [f.cached_tokens for _, f in results[1:]] == [n_prompt - 1] * 2
    for req, (tokens, _) in zip(requests, results, strict=True):
        assert tokens == alone(reference, list(req.prompt_ids), req.params)


def test_cancel_frees_the_slot_within_a_step(engine):
    handles = [
        engine.submit(request(engine, p, max_tokens=60, temperature=0.0)) for p in PROMPTS[:4]
    ]
    events = iter(handles[0])
    next(events)
    for handle in handles:
        handle.cancel()
    finals = [collect(h)[1] for h in handles[1:]] + [collect_rest(events)[1]]
    assert all(f.reason == "cancelled" for f in finals)
    assert all(f.completion_tokens < 60 for f in finals)
    stats = engine.stats()
    assert (stats.running, stats.kv_used_tokens) == (0, 0)


def test_events_reach_an_asyncio_consumer(engine, reference):
    req = request(engine, PROMPTS[2], max_tokens=N_TOKENS, temperature=0.0)

    async def consume():
        tokens = []
        async for event in engine.submit(req).events():
            if isinstance(event, TokenEvent):
                tokens.append(event.token_id)
        return tokens

    assert asyncio.run(consume()) == alone(reference, list(req.prompt_ids), req.params)


def test_bad_requests_are_refused_at_submit(engine):
    with pytest.raises(ContextOverflowError, match=r"max_tokens is 95.*96 tokens"):
        engine.submit(request(engine, PROMPTS[0], max_tokens=95))
    with pytest.raises(ValueError, match="empty"):
        engine.submit(EngineRequest((), SamplingParams()))
    with pytest.raises(ValueError, match="out of range"):
        engine.submit(EngineRequest((1, 10**6), SamplingParams()))
    with pytest.raises(SamplingParamsError, match="logit_bias"):
        engine.submit(request(engine, PROMPTS[0], max_tokens=4, logit_bias={10**6: 1.0}))


def test_queue_bound_and_shutdown():
    llm = corral.load(n_ctx=2 * SLOT_CONTEXT, device="cpu")
    engine = Engine(llm.model, n_slots=2, eos_ids=llm.tokenizer.eog_ids, max_queue=2)
    engine.tokenizer = llm.tokenizer
    # not started: nothing leaves the queue
    for _ in range(2):
        engine.submit(request(engine, PROMPTS[0], max_tokens=4))
    with pytest.raises(QueueFullError):
        engine.submit(request(engine, PROMPTS[0], max_tokens=4))
    engine.start()
    done = threading.Event()
    threading.Thread(target=lambda: (engine.shutdown(timeout=30), done.set())).start()
    assert done.wait(60)
    with pytest.raises(EngineClosedError):
        engine.submit(request(engine, PROMPTS[0], max_tokens=4))


def test_concurrent_greedy_requests_follow_llama_cpp():
    """An outside reference for batched decoding: llama.cpp's greedy continuations of the
    golden prompts, up to llama.cpp's first near-tie, with all prompts decoding together."""
    path = smollm2_path()
    gold = golden("smollm2-q4_1.npz", path)
    llm = corral.load(path, n_ctx=5 * 192, device="cpu")
    engine = Engine(llm.model, n_slots=5)
    engine.start()
    try:
        expected, handles = {}, {}
        for name in gold["prompt_names"]:
            greedy = gold[f"{name}_greedy"].tolist()
            tie = np.flatnonzero(margins(gold[f"{name}_greedy_top_logits"]) < SMOLLM2_NEAR_TIE)
            expected[name] = greedy[: int(tie[0]) if len(tie) else len(greedy)]
            params = SamplingParams(temperature=0.0, max_tokens=len(greedy))
            prompt = tuple(gold[f"{name}_ids"].tolist())
            handles[name] = engine.submit(EngineRequest(prompt, params))
        for name, handle in handles.items():
            tokens, _ = collect(handle)
            assert tokens[: len(expected[name])] == expected[name], name
    finally:
        engine.shutdown(timeout=5)
