"""Many clients at once on the live server: 16 simultaneous streams each get exactly the
text they get alone (greedy and seeded), clients that disconnect (streaming or not) free
their sequences, and a full queue answers 429 with Retry-After at once."""

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
from server_refs import API_KEY

from conftest import MAX_QUEUE, N_SLOTS

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
]
# (prompt, sampling): greedy and seeded, each run by two clients at once
CONFIGS = [(p, {"temperature": 0}) for p in PROMPTS] + [
    (p, {"temperature": 0.8, "seed": 7 + i}) for i, p in enumerate(PROMPTS)
]
N_TOKENS = 16
LONG = 400  # max_tokens of requests the tests cut short


async def stream_text(client: openai.AsyncOpenAI, model: str, prompt: str, sampling: dict):
    """The text of one streamed completion and its finish reason."""
    stream = await client.completions.create(
        model=model, prompt=prompt, max_tokens=N_TOKENS, stream=True, **sampling
    )
    pieces, finish = [], None
    async for chunk in stream:
        pieces.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    return "".join(pieces), finish


class PeakRunning:
    """Watches engine.stats() in a thread and keeps the largest number of running
    sequences seen (to show the requests really overlapped)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.engine.stats().running)
            time.sleep(0.01)

    def __enter__(self) -> "PeakRunning":
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.done.set()
        self.thread.join()


def test_sixteen_simultaneous_streams_get_their_solo_text(live_server):
    model = live_server.model_id

    async def solo() -> list[tuple[str, str]]:
        client = openai.AsyncOpenAI(base_url=f"{live_server.url}/v1", api_key=API_KEY)
        return [await stream_text(client, model, p, s) for p, s in CONFIGS]

    async def together() -> list[tuple[str, str]]:
        client = openai.AsyncOpenAI(base_url=f"{live_server.url}/v1", api_key=API_KEY)
        jobs = [stream_text(client, model, p, s) for p, s in CONFIGS for _ in range(2)]
        return await asyncio.gather(*jobs)

    alone = asyncio.run(solo())
    assert live_server.wait_idle().running == 0
    with PeakRunning(live_server.engine) as watch:
        results = asyncio.run(together())
    assert len(results) == 16 and watch.peak == N_SLOTS
    for i, result in enumerate(results):
        assert result == alone[i // 2], CONFIGS[i // 2]
    assert {finish for _, finish in results} <= {"stop", "length"}
    stats = live_server.wait_idle()
    assert (stats.running, stats.waiting, stats.kv_used_tokens) == (0, 0, 0)


def long_chat(index: int) -> dict:
    return {
        "messages": [{"role": "user", "content": f"Count from {index} to a thousand."}],
        "max_tokens": LONG,
        "ignore_eos": True,
        "stream": True,
    }


async def open_stream(client: httpx.AsyncClient, body: dict):
    """Send a streaming request; the response with its headers read (the body not)."""
    request = client.build_request("POST", "/v1/chat/completions", json=body)
    return await client.send(request, stream=True)


async def next_event(lines) -> dict:
    """The next SSE data object of a response's line iterator."""
    async for line in lines:
        if line.startswith("data: "):
            return json.loads(line[len("data: ") :])
    raise AssertionError("the stream ended early")


def test_disconnected_clients_free_their_sequences(live_server):
    async def scenario() -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=live_server.url, headers=headers) as client:
            responses = [await open_stream(client, long_chat(i)) for i in range(N_SLOTS + 2)]
            readers = [response.aiter_lines() for response in responses]
            for reader in readers:  # the opening chunk with the role comes at once
                assert (await next_event(reader))["choices"][0]["delta"]["role"] == "assistant"
            for reader in readers[:2]:  # two of the running ones produce some text
                for _ in range(3):
                    await next_event(reader)
            assert live_server.engine.stats().running == N_SLOTS
            for response in responses:  # every client goes away mid-stream or in the queue
                await response.aclose()
            # a non-streaming client that gives up while its reply is generated
            body = {**long_chat(99), "stream": False}
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/v1/chat/completions", json=body, timeout=2.0)

    asyncio.run(scenario())
    stats = live_server.wait_idle()
    assert (stats.running, stats.waiting, stats.kv_used_tokens) == (0, 0, 0)
    # the 499 is counted once the handler returns, just after it cancelled the sequence
    counted = 'corral_requests_total{endpoint="/v1/chat/completions",status="499"}'
    with live_server.http() as http:
        for _ in range(100):
            if counted in http.get("/metrics").text:
                break
            time.sleep(0.05)
        assert counted in http.get("/metrics").text


def test_full_queue_is_429_with_retry_after(live_server):
    async def scenario() -> tuple[int, httpx.Response]:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=live_server.url, headers=headers) as client:
            accepted = []
            try:
                for i in range(N_SLOTS + MAX_QUEUE + 4):
                    response = await open_stream(client, long_chat(i))
                    if response.status_code != 200:
                        await response.aread()
                        refused = response
                        break
                    accepted.append(response)
                else:
                    raise AssertionError("the queue never filled up")
                with pytest.raises(openai.RateLimitError):
                    await openai.AsyncOpenAI(
                        base_url=f"{live_server.url}/v1", api_key=API_KEY, max_retries=0
                    ).chat.completions.create(
                        model=live_server.model_id, messages=[{"role": "user", "content": "Hi"}]
                    )
            finally:
                for response in accepted:
                    await response.aclose()
            return len(accepted), refused

    accepted, refused = asyncio.run(scenario())
    assert MAX_QUEUE <= accepted <= N_SLOTS + MAX_QUEUE
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
    stats = live_server.wait_idle()
    assert (stats.running, stats.waiting, stats.kv_used_tokens) == (0, 0, 0)


def test_metrics_report_tokens_latency_and_cache(live_server):
    from prometheus_client.parser import text_string_to_metric_families

    live_server.client().completions.create(
        model=live_server.model_id, prompt="Hello", max_tokens=4
    )
    with live_server.http() as http:
        text = http.get("/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    value = {s.name: s.value for f in families.values() for s in f.samples if not s.labels}
    assert value["corral_prompt_tokens_total"] > 0
    assert value["corral_completion_tokens_total"] >= 4
    assert value["corral_time_to_first_token_seconds_count"] >= 1
    assert value["corral_generation_tokens_per_second_count"] >= 1
    assert value["corral_kv_cache_capacity_tokens"] == live_server.engine.stats().kv_capacity_tokens
    for name in ("requests_waiting", "requests_running", "kv_cache_usage_ratio"):
        assert f"corral_{name}" in value
    ok = [
        s
        for s in families["corral_requests"].samples
        if s.labels == {"endpoint": "/v1/completions", "status": "200"}
    ]
    assert ok and ok[0].value >= 1
