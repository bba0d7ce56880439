"""The official openai client against a live server on the embedded model: completions and
chat, streaming and not, n, logprobs, seeds, stop strings, JSON schema (checked with
jsonschema), tokenize/detokenize. Greedy text is compared with llama.cpp's greedy output on
the same file (tests/golden), prompt token counts with llama.cpp's tokenization."""

import json
import math
import re

import jsonschema
import pytest
from server_refs import confident_steps

CHATML = "chatml"  # golden prompt: a ChatML question whose greedy answer ends at <|im_end|>
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_lists_the_served_model(live_server):
    models = live_server.client().models.list().data
    assert [model.id for model in models] == [live_server.model_id]
    meta = models[0].model_extra["meta"]
    assert meta["slot_context"] == 512 and meta["n_slots"] == 4
    assert live_server.client().models.retrieve(live_server.model_id).id == live_server.model_id


@pytest.mark.parametrize("name", ["capital", "code", CHATML])
def test_greedy_completion_follows_llama_cpp(live_server, golden, name):
    steps = confident_steps(golden, name)
    response = live_server.client().completions.create(
        model=live_server.model_id,
        prompt=str(golden[f"{name}_text"]),
        max_tokens=steps,
        temperature=0,
    )
    choice = response.choices[0]
    expected = str(golden[f"{name}_greedy_text"])
    assert choice.text and expected.startswith(choice.text)
    usage = response.usage
    if steps == len(golden[f"{name}_greedy"]) and golden[f"{name}_greedy"][-1] == 2:
        # llama.cpp ended with <|im_end|>, which ends the text and is not part of it
        assert choice.text == expected and choice.finish_reason == "stop"
        assert usage.completion_tokens == steps - 1
    else:
        assert choice.finish_reason == "length" and usage.completion_tokens == steps
    assert usage.prompt_tokens == len(golden[f"{name}_ids"])
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_completion_equals_the_whole_one(live_server, golden):
    kwargs = dict(
        model=live_server.model_id,
        prompt=str(golden["capital_text"]),
        max_tokens=12,
        temperature=0.9,
        seed=11,
    )
    client = live_server.client()
    whole = client.completions.create(**kwargs)
    chunks = list(
        client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1
    assert text == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_chat_answers_and_streams_the_same_reply(live_server):
    client = live_server.client()
    reply = client.chat.completions.create(
        model=live_server.model_id, messages=QUESTION, max_tokens=32, temperature=0
    )
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    stream = client.chat.completions.create(
        model=live_server.model_id, messages=QUESTION, max_tokens=32, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == reply.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.id for c in chunks} == {chunks[0].id}


def test_chat_content_parts_and_system_message(live_server):
    messages = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
    ]
    reply = live_server.client().chat.completions.create(
        model=live_server.model_id, messages=messages, max_tokens=16, temperature=0
    )
    assert reply.usage.prompt_tokens > 10 and reply.choices[0].message.content


def test_n_choices_are_seed_plus_index(live_server):
    client = live_server.client()
    common = dict(
        model=live_server.model_id,
        prompt="My favourite food is",
        max_tokens=10,
        temperature=1.0,
        extra_body={"top_k": 0},
    )
    several = client.completions.create(n=3, seed=100, **common)
    assert [c.index for c in several.choices] == [0, 1, 2]
    texts = [c.text for c in several.choices]
    assert len(set(texts)) > 1
    for i, text in enumerate(texts):
        alone = client.completions.create(seed=100 + i, **common)
        assert alone.choices[0].text == text
    assert several.usage.prompt_tokens == alone.usage.prompt_tokens


def test_chat_n_streams_every_choice(live_server):
    stream = live_server.client().chat.completions.create(
        model=live_server.model_id,
        messages=QUESTION,
        max_tokens=8,
        n=2,
        seed=3,
        stream=True,
    )
    finished = {}
    for chunk in stream:
        for choice in chunk.choices:
            if choice.finish_reason is not None:
                finished[choice.index] = choice.finish_reason
    assert set(finished) == {0, 1}


def test_completion_logprobs_have_openai_legacy_shape(live_server):
    response = live_server.client().completions.create(
        model=live_server.model_id,
        prompt="The capital of France is",
        max_tokens=4,
        temperature=0,
        logprobs=3,
    )
    choice = response.choices[0]
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 4
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.text_offset == [sum(map(len, logprobs.tokens[:i])) for i in range(4)]
    for token, logprob, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert len(top) == 3 and logprob <= 0
        # greedy: the chosen token is the most likely one
        assert max(top.values()) == pytest.approx(logprob) and top[token] == pytest.approx(logprob)
    total = sum(math.exp(lp) for lp in logprobs.top_logprobs[0].values())
    assert total <= 1.0 + 1e-5


def test_chat_logprobs_have_openai_shape(live_server):
    reply = live_server.client().chat.completions.create(
        model=live_server.model_id,
        messages=QUESTION,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = reply.choices[0].logprobs.content
    assert "".join(entry.token for entry in content) == reply.choices[0].message.content
    for entry in content:
        assert bytes(entry.bytes).decode() == entry.token
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob


def test_stop_strings_end_the_text_before_them(live_server, golden):
    kwargs = dict(model=live_server.model_id, prompt=str(golden["capital_text"]), temperature=0)
    client = live_server.client()
    free = client.completions.create(**kwargs, max_tokens=5).choices[0].text  # " Paris.\n\nThe"
    assert "." in free
    cut = client.completions.create(**kwargs, max_tokens=5, stop=["."])
    assert cut.choices[0].text == free[: free.index(".")]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(**kwargs, max_tokens=5, stop=".", stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == cut.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_json_schema_response_format_validates(live_server):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "population": {"type": "integer"},
        },
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    reply = live_server.client().chat.completions.create(
        model=live_server.model_id,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        max_tokens=64,
        temperature=0.7,
        seed=1,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_json_object_mode_gives_an_object(live_server):
    reply = live_server.client().chat.completions.create(
        model=live_server.model_id,
        messages=[{"role": "user", "content": "Give me a JSON object about a cat."}],
        max_tokens=32,
        temperature=0,
        response_format={"type": "json_object"},
    )
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:  # out of tokens mid-object: still the start of one
        assert reply.choices[0].message.content.startswith("{")


def test_llama_cpp_extension_fields_are_honoured(live_server):
    client = live_server.client()
    digits = client.completions.create(
        model=live_server.model_id,
        prompt="My phone number is",
        temperature=0.8,
        seed=2,
        max_tokens=16,
        extra_body={"regex": "[0-9]{3}-[0-9]{3}", "top_k": 5, "min_p": 0.1, "repeat_penalty": 1.1},
    )
    assert re.fullmatch("[0-9]{3}-[0-9]{3}", digits.choices[0].text)
    assert digits.choices[0].finish_reason == "stop"
    grammar = 'root ::= ("yes" | "no")'
    answer = client.completions.create(
        model=live_server.model_id,
        prompt="Is the sky blue? Answer:",
        max_tokens=4,
        extra_body={"grammar": grammar},
    )
    assert answer.choices[0].text in ("yes", "no")


def test_token_id_prompts_and_several_prompts(live_server, golden):
    ids = golden["capital_ids"].tolist()
    client = live_server.client()
    by_text = client.completions.create(
        model=live_server.model_id, prompt=str(golden["capital_text"]), max_tokens=3, temperature=0
    )
    both = client.completions.create(
        model=live_server.model_id, prompt=[ids, ids], max_tokens=3, temperature=0
    )
    assert [c.text for c in both.choices] == [by_text.choices[0].text] * 2
    assert both.usage.prompt_tokens == 2 * len(ids)


def test_echo_puts_the_prompt_first(live_server):
    response = live_server.client().completions.create(
        model=live_server.model_id, prompt="Hello there", max_tokens=3, temperature=0, echo=True
    )
    assert response.choices[0].text.startswith("Hello there")


def test_tokenize_matches_llama_cpp_and_detokenize_inverts_it(live_server, golden):
    with live_server.http() as http:
        for name in ("capital", "chatml", "code", "unicode"):
            text = str(golden[f"{name}_text"])
            ids = http.post("/tokenize", json={"content": text}).json()["tokens"]
            assert ids == golden[f"{name}_ids"].tolist(), name
            back = http.post("/detokenize", json={"tokens": ids}).json()["content"]
            assert back == text
        pieces = http.post("/tokenize", json={"content": "é東", "with_pieces": True}).json()
        for entry in pieces["tokens"]:
            assert set(entry) == {"id", "piece"}
        joined = b"".join(
            bytes(p["piece"]) if isinstance(p["piece"], list) else p["piece"].encode()
            for p in pieces["tokens"]
        )
        assert joined.decode() == "é東"
