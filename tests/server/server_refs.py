"""Helpers of the server tests: a live server in a thread, the client settings, and the
reading of llama.cpp's golden outputs (tests/golden/smollm2-q4_1.npz, written by
scripts/golden/make_model_golden.py) for the embedded model."""

import socket
import threading
import time
from dataclasses import dataclass

import httpx
import numpy as np
import openai
import uvicorn

from corral.engine.scheduler import Engine
from corral.interfaces.api import LLM

API_KEY = "test-key-1234"
N_SLOTS = 4
N_CTX = N_SLOTS * 512  # 512 tokens per sequence
MAX_QUEUE = 16
MAX_BODY_BYTES = 1 << 20
# llama.cpp's logits differ from exact float32 arithmetic by up to ~1 on this model (see
# tests/model/test_llama_cpp_golden.py): greedy paths are compared up to the first step
# where llama.cpp's own top-1/top-2 margin is below this
NEAR_TIE = 0.5


@dataclass
class LiveServer:
    """A running server and what the tests need to talk to it."""

    url: str
    llm: LLM
    engine: Engine
    model_id: str

    def client(self, **kwargs) -> openai.OpenAI:
        """The official OpenAI client pointed at the server."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, **kwargs)

    def http(self, **kwargs) -> httpx.Client:
        """A plain HTTP client that sends the API key."""
        headers = {"Authorization": f"Bearer {API_KEY}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **kwargs)

    def wait_idle(self, limit_seconds: float = 60.0):
        """engine.stats() once nothing runs or waits (a hang guard, not a timing test)."""
        deadline = time.monotonic() + limit_seconds
        while True:
            stats = self.engine.stats()
            if (stats.running, stats.waiting, stats.kv_used_tokens) == (0, 0, 0):
                return stats
            if time.monotonic() > deadline:
                return stats
            time.sleep(0.05)


def serve_in_thread(app) -> tuple[uvicorn.Server, threading.Thread, str]:
    """Run `app` with uvicorn on a free localhost port; returns the server, its thread, URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def confident_steps(golden: dict, name: str) -> int:
    """How many of llama.cpp's greedy tokens for prompt `name` come before its first
    near-tie (where float rounding may pick the other token)."""
    top = np.sort(golden[f"{name}_greedy_top_logits"], axis=1)
    margins = top[:, -1] - top[:, -2]
    ties = np.flatnonzero(margins < NEAR_TIE)
    return int(ties[0]) if len(ties) else len(margins)
