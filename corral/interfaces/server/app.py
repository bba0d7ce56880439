"""The ASGI app of `corral serve`: OpenAI-compatible routes, llama.cpp's tokenizer routes,
health, Prometheus metrics and the web chat page.

    app = create_app(llm, engine, api_key="secret")   # engine started by the caller
    uvicorn.run(app, host="127.0.0.1", port=8000)

    GET  /v1/models, /v1/models/{id}      the served model (with corral's "meta")
    POST /v1/completions, /v1/chat/completions
    POST /tokenize, /detokenize
    GET  /health                          200 ok | 503 loading | 503 draining (no key)
    GET  /metrics                         Prometheus text
    GET  /                                the web chat page (static files, no key)

Middleware, outermost first: request counting, API key, body size limit.
"""

from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from corral.engine.scheduler import Engine
from corral.interfaces.api import LLM
from corral.interfaces.server import chat, completions, tokens
from corral.interfaces.server.auth import APIKeyMiddleware
from corral.interfaces.server.errors import install_error_handlers
from corral.interfaces.server.limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimitMiddleware
from corral.interfaces.server.metrics import CONTENT_TYPE, RequestCounterMiddleware
from corral.interfaces.server.state import ServerState

WEBUI_FILES = {"/": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
WEBUI_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
PUBLIC_PATHS = frozenset({"/health", *WEBUI_FILES})
API_PATHS = frozenset(
    {
        "/v1/models",
        "/v1/completions",
        "/v1/chat/completions",
        "/tokenize",
        "/detokenize",
        "/health",
        "/metrics",
    }
)


def create_app(
    llm: LLM | None = None,
    engine: Engine | None = None,
    *,
    api_key: str | None = None,
    model_id: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The server app for `llm` served by `engine` (started by the caller). Without them
    the app answers /health with "loading" until `app.state.server.attach(llm, engine)`.

    api_key: required as a Bearer token on every route but /health and the page's files.
    model_id: the model's name in /v1/models and in requests (default: the file's stem).
    max_body_bytes: larger request bodies get 413.
    """
    app = FastAPI(title="corral", docs_url=None, redoc_url=None, openapi_url=None)
    state = ServerState(model_id=model_id or "")
    if llm is not None and engine is not None:
        state.attach(llm, engine, model_id)
    app.state.server = state
    install_error_handlers(app)
    app.include_router(completions.router)
    app.include_router(chat.router)
    app.include_router(tokens.router)
    _add_service_routes(app)
    _add_webui_routes(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(APIKeyMiddleware, api_key=api_key, public=PUBLIC_PATHS)
    app.add_middleware(RequestCounterMiddleware, metrics=state.metrics, label=endpoint_label)
    return app


def _add_service_routes(app: FastAPI) -> None:
    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """{"status": "ok"} (200), or "loading" / "draining" (503)."""
        status = request.app.state.server.status
        return JSONResponse({"status": status}, status_code=200 if status == "ok" else 503)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        """OpenAI's model list: the one model this server serves."""
        state: ServerState = request.app.state.server
        state.require()
        return {"object": "list", "data": [model_card(state)]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> dict[str, Any]:
        """One model by id (404 for any other)."""
        state: ServerState = request.app.state.server
        state.check_model(model)
        state.require()
        return model_card(state)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this app."""
        state: ServerState = request.app.state.server
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)


def _add_webui_routes(app: FastAPI) -> None:
    folder = resources.files("corral.interfaces.webui")

    def serve(name: str):
        path = folder.joinpath(name)
        media_type = WEBUI_TYPES[name[name.rindex(".") :]]

        async def page() -> FileResponse:
            return FileResponse(str(path), media_type=media_type)

        return page

    for route, name in WEBUI_FILES.items():
        app.add_api_route(route, serve(name), methods=["GET"], include_in_schema=False)


def endpoint_label(path: str) -> str:
    """The endpoint label of a request path for the metrics ("other" for no route)."""
    if path in API_PATHS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    return "webui" if path in WEBUI_FILES else "other"


def model_card(state: ServerState) -> dict[str, Any]:
    """The /v1/models entry, with corral's facts about the model under "meta"."""
    llm, engine = state.llm, state.engine
    assert llm is not None and engine is not None
    stats = engine.stats()
    return {
        "id": state.model_id,
        "object": "model",
        "created": state.created,
        "owned_by": "corral",
        "meta": {
            "file": llm.path.name,
            "chat_format": llm.chat_format.name if llm.chat_format is not None else None,
            "n_ctx": llm.n_ctx,
            "slot_context": engine.slot_context,
            "n_slots": stats.n_slots,
            "n_vocab": llm.config.n_vocab,
            "device": str(llm.device),
            "dtype": str(llm.dtype).removeprefix("torch."),
        },
    }
