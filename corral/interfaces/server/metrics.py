"""Prometheus metrics of one app, in its own CollectorRegistry (two apps in one process,
as in tests, never share counters).

    corral_requests_total{endpoint, status}       HTTP requests answered
    corral_prompt_tokens_total                    prompt tokens of generation requests
    corral_completion_tokens_total                generated tokens
    corral_time_to_first_token_seconds            histogram, request arrival -> first token
    corral_generation_tokens_per_second           histogram, per choice, after its first token
    corral_requests_running / _waiting            engine sequences decoding / queued
    corral_kv_cache_used_tokens / _capacity_tokens, corral_kv_cache_usage_ratio
"""

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.engine.scheduler import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RATE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)


class EngineCollector(Collector):
    """Gauges read from engine.stats() at each scrape (nothing while the model loads)."""

    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self.stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        if stats is None:
            return
        capacity = stats.kv_capacity_tokens
        gauges = (
            ("corral_requests_running", "sequences being decoded", stats.running),
            ("corral_requests_waiting", "sequences waiting for a slot", stats.waiting),
            ("corral_slots", "sequence slots of the engine", stats.n_slots),
            ("corral_kv_cache_used_tokens", "KV cache entries in use", stats.kv_used_tokens),
            ("corral_kv_cache_capacity_tokens", "KV cache entries in all", capacity),
            (
                "corral_kv_cache_usage_ratio",
                "KV cache entries in use / capacity",
                stats.kv_used_tokens / capacity if capacity else 0.0,
            ),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(name, documentation, value=value)


class ServerMetrics:
    """The counters and histograms the routes update, and the text /metrics answers."""

    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "corral_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("corral_prompt_tokens", "prompt tokens", registry=r)
        self.completion_tokens = Counter("corral_completion_tokens", "generated tokens", registry=r)
        self.time_to_first_token = Histogram(
            "corral_time_to_first_token_seconds",
            "seconds from the request's arrival to its first generated token",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "corral_generation_tokens_per_second",
            "generated tokens per second of one choice, after its first token",
            buckets=RATE_BUCKETS,
            registry=r,
        )
        r.register(EngineCollector(stats))

    def observe_choice(self, tokens: int, first_token_at: float | None, now: float) -> None:
        """Record a finished choice: its tokens and, past one token, its decode rate."""
        self.completion_tokens.inc(tokens)
        if first_token_at is not None and tokens > 1 and now > first_token_at:
            self.tokens_per_second.observe((tokens - 1) / (now - first_token_at))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class RequestCounterMiddleware:
    """Counts answered requests by endpoint and status. `label` names the endpoint of a
    path; it should map every path that is no route to one label (so a client cannot grow
    the label set)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, label: Callable[[str], str]) -> None:
        self.app = app
        self.metrics = metrics
        self.label = label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self.label(scope["path"])
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
