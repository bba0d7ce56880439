"""Fixtures of the server tests: a live `corral serve` app on the embedded model (uvicorn in
a background thread on a free port) and llama.cpp's golden outputs for the same file."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from server_refs import (
    API_KEY,
    MAX_BODY_BYTES,
    MAX_QUEUE,
    N_CTX,
    N_SLOTS,
    LiveServer,
    serve_in_thread,
)

import corral
from corral.default_model import default_model_path
from corral.engine.scheduler import Engine
from corral.interfaces.server.app import create_app

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "smollm2-q4_1.npz"


@pytest.fixture(scope="session")
def live_server():
    llm = corral.load(n_ctx=N_CTX, device="cpu")
    engine = Engine(llm.model, n_slots=N_SLOTS, eos_ids=llm.tokenizer.eog_ids, max_queue=MAX_QUEUE)
    engine.start()
    app = create_app(llm, engine, api_key=API_KEY, max_body_bytes=MAX_BODY_BYTES)
    server, thread, url = serve_in_thread(app)
    yield LiveServer(url, llm, engine, app.state.server.model_id)
    server.should_exit = True
    thread.join(timeout=30)
    engine.shutdown(timeout=5)


@pytest.fixture(scope="session")
def golden():
    """llama.cpp's prompts, token ids and greedy continuations on the embedded model."""
    data = dict(np.load(GOLDEN, allow_pickle=False))
    model = default_model_path()
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert str(data["model_sha256"]) == digest, "the golden data is for another model file"
    return data
