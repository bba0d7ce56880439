"""`corral serve` as a process: it prints its URL, reports loading then ok on /health, and
on SIGTERM drains: /health says draining, new requests get 503, the running stream
finishes normally, and the process exits cleanly."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

KEY = "cli-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, limit_seconds: float = 180.0) -> None:
    """Poll until `predicate()` (a hang guard, not a timing test)."""
    deadline = time.monotonic() + limit_seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the server did not get there")
        time.sleep(0.1)


@pytest.fixture
def server_process():
    port = free_port()
    command = [
        *(sys.executable, "-m", "corral.interfaces.cli", "serve"),
        *("--port", str(port), "-c", "512", "--parallel", "2", "--api-key", KEY),
        *("--device", "cpu", "--drain-timeout", "60"),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    yield process, f"http://127.0.0.1:{port}", lines
    if process.poll() is None:
        process.kill()
        process.wait()


def health(url: str) -> tuple[int, dict] | None:
    try:
        response = httpx.get(f"{url}/health", timeout=5)
    except httpx.TransportError:
        return None
    return response.status_code, response.json()


def test_serve_prints_its_url_and_drains_on_sigterm(server_process):
    process, url, lines = server_process
    wait_for(lambda: any(f"listening on {url}/" in line for line in lines))
    wait_for(lambda: health(url) == (200, {"status": "ok"}))
    assert any(line.startswith("corral: ready:") for line in lines)

    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "Once upon a time", "max_tokens": 24, "ignore_eos": True, "stream": True}
    events: list[dict] = []
    started = threading.Event()

    def stream() -> None:
        with httpx.stream(
            "POST", f"{url}/v1/completions", json=body, headers=headers, timeout=120
        ) as response:
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    events.append({"done": True})
                elif line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    started.set()

    client = threading.Thread(target=stream)
    client.start()
    assert started.wait(120)
    process.send_signal(signal.SIGTERM)
    wait_for(lambda: health(url) in ((503, {"status": "draining"}), None))
    refused = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi"}, headers=headers)
    assert refused.status_code == 503 and "retry-after" in refused.headers
    client.join(120)
    assert events[-1] == {"done": True}
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    text = "".join(event["choices"][0]["text"] for event in events[:-1])
    assert text
    assert process.wait(timeout=120) == 0
