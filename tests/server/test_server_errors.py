"""Bad requests get OpenAI-shaped errors ({"error": {message, type, param, code}}) with the
right status, as the openai client raises them; none leaks a traceback or a server path, and
the server keeps answering well-formed requests afterwards."""

import httpx
import openai
import pytest
from server_refs import API_KEY, serve_in_thread

from corral.interfaces.server.app import create_app

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "Hello"}]


def error_of(response: httpx.Response, status: int) -> dict:
    """The error object of `response`, checked for OpenAI's shape and free of leaks."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    for leak in ("Traceback", 'File "', "/root", "site-packages", "/home/", "/usr/"):
        assert leak not in error["message"]
    return error


@pytest.fixture
def http(live_server):
    with live_server.http() as client:
        yield client


def test_malformed_json_is_400(http):
    error = error_of(http.post(CHAT, content=b'{"messages": [}'), 400)
    assert "JSON" in error["message"] and error["type"] == "invalid_request_error"
    error_of(http.post(CHAT, content=b"[1, 2]"), 400)  # JSON, but not an object
    # curl -d sends JSON with a form content type: still read as JSON
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = b'{"prompt": "Hi", "max_tokens": 2}'
    assert http.post(COMPLETIONS, content=body, headers=form).status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"messages": HELLO, "max_tokens": "10"}, "max_tokens"),
        ({"messages": "Hello"}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": HELLO, "stream": "yes"}, "stream"),
        ({"messages": HELLO, "n": 1000}, "n"),
        ({"messages": HELLO, "n": 0}, "n"),
        ({"messages": HELLO, "top_logprobs": 50, "logprobs": True}, "top_logprobs"),
        ({"messages": HELLO, "stop": ["x"] * 100}, "stop"),
        ({"messages": HELLO, "stop": ["y" * 10_000]}, "stop"),
        ({"messages": HELLO, "seed": 1 << 70}, "seed"),
        ({"messages": HELLO, "response_format": {"type": "xml"}}, "response_format"),
    ],
)
def test_wrong_types_and_absurd_sizes_are_422_naming_the_field(http, body, param):
    error = error_of(http.post(CHAT, json=body), 422)
    assert error["param"].startswith(param)


def test_absurd_completion_fields_are_422(http):
    error = error_of(http.post(COMPLETIONS, json={"prompt": "Hi", "logprobs": 99}), 422)
    assert error["param"] == "logprobs"
    error = error_of(http.post(COMPLETIONS, json={"prompt": ["a"] * 5, "n": 4}), 422)
    assert error["param"] == "n"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"messages": HELLO, "temperature": -1}, "temperature"),
        ({"messages": HELLO, "top_p": 0}, "top_p"),
        ({"messages": HELLO, "logit_bias": {"999999": 5}}, "999999"),
        ({"messages": HELLO, "stop": [999999]}, "999999"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [*HELLO, {"role": "system", "content": "late"}]}, "system"),
        ({"messages": HELLO, "grammar": "root ::= (("}, "grammar"),
        ({"messages": HELLO, "regex": "(unclosed"}, "regex"),
        (
            {"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {}}},
            "schema",
        ),
        (
            {
                "messages": HELLO,
                "response_format": {"type": "json_object"},
                "grammar": 'root ::= "a"',
            },
            "only one",
        ),
        ({"messages": HELLO, "tools": [{"type": "function"}]}, "tool"),
    ],
)
def test_semantic_errors_are_400_naming_the_problem(http, body, needle):
    error = error_of(http.post(CHAT, json=body), 400)
    assert needle in error["message"]


def test_context_overflow_is_400_with_the_token_counts(live_server):
    prompt = "word " * 600
    with pytest.raises(openai.BadRequestError) as raised:
        live_server.client().completions.create(
            model=live_server.model_id, prompt=prompt, max_tokens=8
        )
    error = raised.value.body
    assert raised.value.code == "context_length_exceeded"
    n_prompt = len(live_server.llm.tokenize(prompt, parse_special=True))
    assert f"{n_prompt} in the prompt" in error["message"] and "512" in error["message"]
    with pytest.raises(openai.BadRequestError, match="512"):  # fits alone, not with max_tokens
        live_server.client().completions.create(
            model=live_server.model_id, prompt="word " * 400, max_tokens=300
        )


def test_unknown_model_is_404(live_server):
    with pytest.raises(openai.NotFoundError) as raised:
        live_server.client().chat.completions.create(model="gpt-4o", messages=HELLO)
    assert raised.value.code == "model_not_found" and "gpt-4o" in raised.value.message
    with pytest.raises(openai.NotFoundError):
        live_server.client().models.retrieve("gpt-4o")


def test_unknown_route_and_method_are_openai_shaped(http):
    assert error_of(http.get("/v1/engines"), 404)["type"] == "not_found_error"
    error_of(http.get(CHAT), 405)


def test_oversized_body_is_413(http):
    big = b'{"prompt": "' + b"a" * (2 << 20) + b'"}'
    error_of(http.post(COMPLETIONS, content=big), 413)
    chunked = http.post(COMPLETIONS, content=iter([b'{"prompt": "', b"a" * (2 << 20), b'"}']))
    error_of(chunked, 413)


def test_api_key_is_required_except_for_health(live_server):
    bad = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with httpx.Client(base_url=live_server.url) as anonymous:
        for path in ("/v1/models", "/metrics"):
            error = error_of(anonymous.get(path), 401)
            assert error["type"] == "authentication_error"
        error_of(anonymous.post(CHAT, json={"messages": HELLO}), 401)
        error_of(anonymous.post("/tokenize", json={"content": "x"}), 401)
        wrong_scheme = {"Authorization": f"Basic {API_KEY}"}
        error_of(anonymous.get("/v1/models", headers=wrong_scheme), 401)
        assert anonymous.get("/health").json() == {"status": "ok"}
        assert anonymous.get("/").status_code == 200  # the page; its API calls need the key


def test_detokenize_refuses_ids_outside_the_vocabulary(http):
    error = error_of(http.post("/detokenize", json={"tokens": [1, 10**9]}), 400)
    assert "tokens[1]" in error["message"]
    error_of(http.post("/detokenize", json={"tokens": [-1]}), 422)


def test_server_still_serves_after_bad_requests(live_server):
    reply = live_server.client().chat.completions.create(
        model=live_server.model_id, messages=HELLO, max_tokens=4
    )
    assert reply.choices[0].message.content
    assert live_server.wait_idle().kv_used_tokens == 0


def test_loading_and_draining_are_503_with_retry_after():
    """Without a model the app reports "loading"; a draining engine makes it "draining".
    (DrainingEngineStub stands in for an engine that has begun shutdown: only its flag
    is read before any request is refused.)"""

    class DrainingEngineStub:
        draining = True

    app = create_app(api_key=None)
    server, thread, url = serve_in_thread(app)
    try:
        with httpx.Client(base_url=url) as client:
            health = client.get("/health")
            assert health.status_code == 503 and health.json() == {"status": "loading"}
            refused = client.post(CHAT, json={"messages": HELLO})
            assert error_of(refused, 503)["type"] == "unavailable_error"
            assert refused.headers["retry-after"] == "1"
            app.state.server.llm = object()
            app.state.server.engine = DrainingEngineStub()
            assert client.get("/health").json() == {"status": "draining"}
            refused = client.post(CHAT, json={"messages": HELLO})
            assert "shutting down" in error_of(refused, 503)["message"]
            assert refused.headers["retry-after"] == "1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
