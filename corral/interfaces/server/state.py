"""What the server serves: the loaded model and its engine, or why there is none yet."""

import time
from dataclasses import dataclass, field
from typing import Literal

from corral.engine.scheduler import Engine, EngineStats
from corral.interfaces.api import LLM
from corral.interfaces.server.errors import RETRY_AFTER_SECONDS, APIError
from corral.interfaces.server.metrics import ServerMetrics

Status = Literal["loading", "ok", "draining"]


@dataclass
class ServerState:
    """The model, engine and metrics of one app. Starts "loading" without a model when the
    app is created before the model (so /health answers while `corral serve` loads);
    `attach` makes it "ok"; the engine's draining flag makes it "draining"."""

    llm: LLM | None = None
    engine: Engine | None = None
    model_id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    metrics: ServerMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.stats)

    def stats(self) -> EngineStats | None:
        """The engine's statistics, None while loading."""
        return self.engine.stats() if self.engine is not None else None

    def attach(self, llm: LLM, engine: Engine, model_id: str | None = None) -> None:
        """Serve `llm` through `engine` (already started); `model_id` defaults to the
        file name without its extension."""
        self.model_id = model_id or self.model_id or llm.path.stem
        self.llm, self.engine = llm, engine

    @property
    def status(self) -> Status:
        """The status /health reports: "loading" until attached, "draining" once the engine
        stops taking requests, else "ok"."""
        if self.engine is None or self.llm is None:
            return "loading"
        return "draining" if self.engine.draining else "ok"

    def require(self) -> tuple[LLM, Engine]:
        """The model and engine, or 503 while loading or draining."""
        if self.llm is None or self.engine is None:
            raise APIError(503, "the model is still loading", headers=_retry())
        if self.engine.draining:
            raise APIError(503, "the server is shutting down", headers=_retry())
        return self.llm, self.engine

    def check_model(self, requested: str | None) -> None:
        """404 when the request names a model other than the one served."""
        if requested is not None and requested != self.model_id:
            raise APIError(
                404,
                f"the model {requested!r} does not exist; this server serves {self.model_id!r}",
                param="model",
                code="model_not_found",
            )


def _retry() -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_SECONDS)}
