"""`corral serve`: the OpenAI-compatible server and web chat page on one model.

The server listens at once, then loads the model (/health says "loading", then "ok"). On
SIGTERM or Ctrl-C it drains: /health says "draining", new requests get 503, running ones
finish until --drain-timeout, then the rest are cancelled and the process exits. A second
signal exits at once.
"""

import argparse
import signal
import sys
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

from corral.errors import CorralError

if TYPE_CHECKING:  # the server's modules load with `corral serve` only, not with every command
    import uvicorn
    from fastapi import FastAPI

    from corral.engine.scheduler import Engine

DEFAULT_PORT = 8000
DEFAULT_PARALLEL = 4
DEFAULT_MAX_QUEUE = 64
DEFAULT_DRAIN_SECONDS = 30.0


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `corral serve` among the CLI's subcommands."""
    from corral.interfaces.cli import add_chat_template_arg, add_model_args

    serve = commands.add_parser("serve", help="OpenAI-compatible HTTP server with a web chat page")
    add_model_args(serve)
    add_chat_template_arg(serve)
    add = serve.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    add("--api-key", help="require 'Authorization: Bearer KEY' (all routes but /health)")
    add(
        "-np",
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        help=f"sequences decoded together; -c is split among them (default {DEFAULT_PARALLEL})",
    )
    add(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help=f"requests waiting for a slot before 429 (default {DEFAULT_MAX_QUEUE})",
    )
    add("--alias", help="the model's name in the API (default: the file name without .gguf)")
    add(
        "--drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_SECONDS,
        help="seconds running requests get to finish on shutdown "
        f"(default {DEFAULT_DRAIN_SECONDS:g})",
    )
    return serve


def run(args: argparse.Namespace) -> None:
    """Serve until SIGTERM/SIGINT, then drain (see the module docstring).

    uvicorn runs in a thread while the main thread loads the model: a model loaded in a
    thread that then exits leaves that thread's OpenMP workers spinning, which slows every
    later forward pass several times over on a small machine.
    """
    import uvicorn

    from corral.interfaces.server.app import create_app

    for name in ("parallel", "max_queue"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.ctx_size is not None and args.ctx_size < 2 * args.parallel:
        raise ValueError("-c must give each of the --parallel slots at least 2 tokens")
    app = create_app(api_key=args.api_key, model_id=args.alias)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    serving = threading.Thread(target=server.run, name="corral-http", daemon=True)
    serving.start()
    while not server.started:
        if not serving.is_alive():  # uvicorn logged why (e.g. the port is taken)
            sys.exit(1)
        time.sleep(0.05)
    url = f"http://{_url_host(args.host)}:{args.port}/"
    print(f"corral: listening on {url} (web chat at /, API at {url}v1); loading the model...")
    shutdown = GracefulShutdown(server, args.drain_timeout)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, shutdown.on_signal)
    try:
        engine = load(args, app)
    except (CorralError, FileNotFoundError, ValueError, OSError):
        server.should_exit = True
        serving.join()
        raise
    except KeyboardInterrupt:  # a signal while loading
        server.should_exit = True
        serving.join()
        sys.exit(130)
    shutdown.engine = engine
    try:
        while serving.is_alive():
            serving.join(0.5)  # wakes up for signals
    finally:
        if not shutdown.draining:
            engine.shutdown(0.0)


def load(args: argparse.Namespace, app: "FastAPI") -> "Engine":
    """Load the model, start the engine and attach both to the app; the engine."""
    from corral.engine.scheduler import Engine
    from corral.interfaces.cli import load_llm

    llm = load_llm(args)
    engine = Engine(
        llm.model, n_slots=args.parallel, eos_ids=llm.tokenizer.eog_ids, max_queue=args.max_queue
    )
    engine.start()
    state = app.state.server
    state.attach(llm, engine, args.alias)
    print(
        f"corral: ready: {state.model_id} ({llm.n_ctx} tokens of context in {args.parallel} "
        f"slots of {engine.slot_context}) on {llm.device}"
    )
    return engine


class GracefulShutdown:
    """The signal handler: the first signal drains (the engine stops taking requests and
    gets `drain_seconds` to finish the running ones, then uvicorn stops); a second stops
    uvicorn at once, a third stops it without waiting for connections."""

    def __init__(self, server: "uvicorn.Server", drain_seconds: float) -> None:
        self.server = server
        self.drain_seconds = drain_seconds
        self.engine: Engine | None = None
        self.draining = False

    def on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.server.should_exit:
            self.server.force_exit = True
        elif self.engine is None:  # still loading: give up
            self.server.should_exit = True
            raise KeyboardInterrupt
        elif self.draining:
            self.server.should_exit = True
        else:
            self.draining = True
            print("corral: draining: finishing running requests...", file=sys.stderr)
            threading.Thread(target=self._drain, args=(self.engine,), daemon=True).start()

    def _drain(self, engine: "Engine") -> None:
        engine.shutdown(self.drain_seconds)  # blocks up to the deadline
        self.server.should_exit = True


def _url_host(host: str) -> str:
    """The host as it goes in a URL (0.0.0.0 -> 127.0.0.1 for a clickable link)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
