"""Request body size limit: 413 before the app reads more than `max_bytes`."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.interfaces.server.auth import send_json
from corral.interfaces.server.errors import APIError

DEFAULT_MAX_BODY_BYTES = 4 << 20  # a JSON schema may be up to 1 MiB; prompts are smaller


class BodySizeLimitMiddleware:
    """413 for a declared Content-Length over `max_bytes`, and for a body that turns out
    longer while it is read (chunked uploads). The body is read here, at most `max_bytes`
    of it, and replayed to the app; later receive() calls (disconnect) go to the server."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]

        async def replay() -> Message:
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        error = APIError(413, f"the request body is larger than {self.max_bytes} bytes")
        await send_json(send, error.status, error.body(), {"connection": "close"})
