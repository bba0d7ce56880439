"""OpenAI-shaped error bodies and the mapping from corral's exceptions to HTTP statuses.

Every error a client sees has the body ``{"error": {"message", "type", "param", "code"}}``:

    400 invalid_request_error  malformed JSON, bad messages/grammar/sampling values,
                               prompt + max_tokens beyond the slot context
                               (code "context_length_exceeded")
    401 authentication_error   missing or wrong API key
    404 not_found_error        unknown route or model (code "model_not_found")
    413 invalid_request_error  request body over the size limit
    422 invalid_request_error  well-formed JSON with a field of the wrong type or out of bounds
    429 rate_limit_error       the engine's waiting queue is full (with Retry-After)
    503 unavailable_error      loading, draining or shut down (with Retry-After)
    500 server_error           generation failed (the engine's reason), or anything unexpected
                               (a fixed message; never a traceback)

Messages never carry absolute paths (they are reduced to the file name).
"""

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.chat import ChatError
from corral.engine.generate import ContextOverflowError
from corral.engine.scheduler import EngineClosedError, QueueFullError
from corral.errors import CorralError

logger = logging.getLogger("corral.server")

RETRY_AFTER_SECONDS = 1
MAX_MESSAGE_CHARS = 2000
# /abs/dir/file.gguf or C:\dir\file -> file.gguf (paths name server files, not the client's)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:/|[A-Za-z]:\\)(?:[^\s'\"/\\]+[/\\])+[^\s'\",;)]*")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})
STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "unavailable_error",
}


class APIError(Exception):
    """An error answered to the client with an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = public_message(message)
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body: {"error": {"message", "type", "param", "code"}}."""
        kind = STATUS_TYPES.get(self.status, "invalid_request_error")
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }

    def response(self) -> JSONResponse:
        """The error as a JSON response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def public_message(message: str) -> str:
    """`message` fit for a client: absolute paths cut to their last part, bounded length."""

    def last_part(match: re.Match[str]) -> str:
        return re.split(r"[/\\]", match.group(0).rstrip("/\\"))[-1] or "/"

    text = _ABSOLUTE_PATH.sub(last_part, message)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


def to_api_error(error: Exception, param: str | None = None) -> APIError:
    """The APIError for an exception raised while preparing or submitting a request."""
    if isinstance(error, APIError):
        return error
    retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if isinstance(error, QueueFullError):
        return APIError(429, f"the server is busy: {error}", code="queue_full", headers=retry)
    if isinstance(error, EngineClosedError):
        return APIError(503, str(error), headers=retry)
    if isinstance(error, ContextOverflowError):
        return APIError(400, str(error), param=param, code="context_length_exceeded")
    if isinstance(error, ChatError):
        return APIError(400, str(error), param="messages")
    if isinstance(error, CorralError | ValueError):
        return APIError(400, str(error), param=param)
    logger.exception("unexpected error", exc_info=error)
    return APIError(500, "internal server error")


def validation_error(problems: Sequence[Mapping[str, Any]]) -> APIError:
    """The APIError for pydantic's validation `problems`: 400 for a body that is not JSON
    (or not an object), else 422 naming the first bad field as a dotted path
    ("messages.0.content")."""
    if not problems:
        return APIError(422, "invalid request")
    if problems[0].get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON")
    param = _field_path(problems[0].get("loc", ()))
    if param is None:
        return APIError(400, "the request body must be a JSON object")
    # a union field reports one problem per alternative: say them all
    messages = dict.fromkeys(
        str(p.get("msg", "invalid value"))
        for p in problems
        if _field_path(p.get("loc", ())) == param
    )
    return APIError(422, f"{param}: {'; or '.join(list(messages)[:4])}", param=param)


def _field_path(location: Any) -> str | None:
    """The dotted field path of a pydantic error location, without the "body" prefix and
    the names pydantic gives union alternatives ("prompt", "str" -> "prompt")."""
    parts: list[str] = []
    for part in location:
        if part == "body" and not parts:
            continue
        if isinstance(part, int) or (isinstance(part, str) and _FIELD_NAME.fullmatch(part)):
            if part in _TYPE_TAGS:
                break
            parts.append(str(part))
        else:
            break
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error the app can raise with an OpenAI-shaped body."""

    async def on_api_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, APIError)
        return error.response()

    async def on_validation(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return validation_error(error.errors()).response()

    async def on_http(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        message = {404: "no such route", 405: "method not allowed"}.get(
            error.status_code, str(error.detail)
        )
        return APIError(error.status_code, message).response()

    async def on_unexpected(_: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error", exc_info=error)
        return APIError(500, "internal server error").response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
