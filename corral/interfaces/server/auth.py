"""Bearer API key on every route but /health and the web page's static files."""

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from corral.interfaces.server.errors import APIError


class APIKeyMiddleware:
    """Refuse requests without ``Authorization: Bearer <key>`` (compared in constant time)
    with 401. `public` paths pass without a key: the health check, and the web chat page's
    files, which hold no data (the page asks for the key and sends it with each call)."""

    def __init__(self, app: ASGIApp, api_key: str | None, public: frozenset[str]) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.key is None or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        if self._authorized(scope):
            await self.app(scope, receive, send)
            return
        error = APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')")
        await send_json(send, error.status, error.body(), {"www-authenticate": "Bearer"})

    def _authorized(self, scope: Scope) -> bool:
        assert self.key is not None
        values = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, token = values[0].partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)


async def send_json(send: Send, status: int, body: dict, headers: dict[str, str]) -> None:
    """Send a complete JSON response from ASGI middleware."""
    data = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        *((name.encode(), value.encode()) for name, value in headers.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": data})
