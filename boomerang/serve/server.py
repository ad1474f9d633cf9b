"""``FamilyServer``: a family served over an OpenAI-compatible HTTP API (Starlette on uvicorn), with the
playground page at ``/``.

family = boomerang.Family("teacher/", "student/")
server = FamilyServer(family, order="last")
server.run(port=8000)                      # blocking, until SIGINT or SIGTERM; or
with server.background() as base_url:      # in a thread, e.g. for tests: OpenAI(base_url=base_url)
    ...

Shutting down (a signal, or leaving ``background``) is graceful: the server stops accepting connections and
refuses new requests (503), lets the requests in flight finish for up to ``grace_s`` seconds, then ends the rest
(streams with an error event and ``[DONE]``).
"""

from __future__ import annotations

import contextlib
import math
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import BoomerangError
from .app import create_app
from .protocol import MAX_BODY_BYTES
from .service import Service

if TYPE_CHECKING:
    from types import FrameType

    from starlette.applications import Starlette

    from ..family import Family
    from .text import Tokens

GRACE_S = 5.0  # how long requests in flight may finish once a shutdown begins
MAX_BODY_RANGE = (1024, 1 << 30)  # bytes: 1 KiB .. 1 GiB
MAX_GRACE_S = 600.0


class FamilyServer(Service):
    """A ``Service`` (every member of a family, see ``boomerang.serve.service``) with its HTTP application.

    ``max_latency_ms`` enables model ``auto`` (``boomerang.serve.router``); ``chat_template`` (Jinja text)
    replaces the tokenizer's own, and is tried once here: a template that cannot render a one-message
    conversation is refused now rather than on every request. ``max_body_bytes``: the largest request body
    (413 past it); ``grace_s``: how long requests in flight may finish when the server shuts down.
    """

    def __init__(
        self,
        family: Family,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        grace_s: float = GRACE_S,
        **options: Any,
    ) -> None:
        check_http_options(max_body_bytes, grace_s)
        super().__init__(family, **options)
        check_chat_template(self.tokens)
        self.max_body_bytes, self.grace_s = max_body_bytes, grace_s
        self._draining = threading.Event()
        self._cut: threading.Timer | None = None

    def app(self) -> Starlette:
        return create_app(self, max_body_bytes=self.max_body_bytes, draining=self._draining.is_set)

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def start(self, calibrate: bool = True) -> None:
        if not self.engine.running:
            self._draining.clear()
        super().start(calibrate)

    def drain(self) -> None:
        """Begin a graceful shutdown: refuse new requests, and end those still in flight after ``grace_s``."""
        if self._draining.is_set():
            return
        self._draining.set()
        self._cut = threading.Timer(self.grace_s, self.stop)
        self._cut.daemon = True
        self._cut.start()

    def stop(self) -> None:
        """Stop the engine now: requests still in flight end with an error event."""
        if self._cut is not None:
            self._cut.cancel()
        super().stop()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def health(self) -> dict[str, Any]:
        health = super().health()
        if self.draining and health["status"] == "ok":
            health["status"] = "draining"
        return health

    # ---- serving -------------------------------------------------------------------------------------------
    def run(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        sock: socket.socket | None = None,
        log_level: str = "info",
    ) -> None:
        """Serve until SIGINT or SIGTERM, then shut down gracefully and return (a second SIGINT: at once).

        ``sock``: an already bound socket (as ``bind`` returns)."""
        sock = sock or bind(host, port)
        self.start()
        try:
            self._uvicorn(log_level).run(sockets=[sock])
        finally:
            self.stop()
            sock.close()

    @contextlib.contextmanager
    def background(self, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
        """Serve from a background thread; yields the base URL (``http://HOST:PORT/v1``). ``port=0``: any free one.

        Leaving the block shuts the server down gracefully (``drain``)."""
        sock = bind(host, port)
        self.start()
        server = self._uvicorn(log_level)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            while not server.started:
                if not thread.is_alive():
                    raise BoomerangError("the server thread stopped while starting; see its log")
                time.sleep(0.01)
            yield f"http://{host}:{sock.getsockname()[1]}/v1"
        finally:
            self.drain()
            server.should_exit = True
            thread.join(self.grace_s + 30)
            self.stop()
            sock.close()

    def _uvicorn(self, log_level: str) -> Any:
        """A uvicorn server whose SIGINT and SIGTERM begin ``drain`` and are not raised again once it stops."""
        import uvicorn

        owner = self

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                handled = (signal.SIGINT, signal.SIGTERM)
                original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
                try:
                    yield
                finally:
                    for sig, handler in original.items():
                        signal.signal(sig, handler)

            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                super().handle_exit(sig, frame)  # the first stops accepting; a second SIGINT exits at once
                owner.drain()

        # uvicorn's own deadline comes after ours, which ends every stream properly first
        config = uvicorn.Config(self.app(), log_level=log_level, timeout_graceful_shutdown=self.grace_s + 5)
        return _Server(config)


def check_http_options(max_body_bytes: int, grace_s: float) -> None:
    """The server's HTTP settings are in range, or a ``BoomerangError`` naming the fix."""
    low, high = MAX_BODY_RANGE
    if (
        isinstance(max_body_bytes, bool)
        or not isinstance(max_body_bytes, int)
        or not low <= max_body_bytes <= high
    ):
        raise BoomerangError(
            f"the request body limit must be {low // 1024} KiB to {high // 1024:,} KiB, "
            f"got {max_body_bytes!r} bytes"
        )
    if not (isinstance(grace_s, (int, float)) and math.isfinite(grace_s) and 0 <= grace_s <= MAX_GRACE_S):
        raise BoomerangError(
            f"the shutdown grace period must be 0 to {MAX_GRACE_S:g} seconds, got {grace_s!r}"
        )


def check_chat_template(tokens: Tokens) -> None:
    """Render a one-message conversation with the chat template (if any) now, so a broken one fails at start."""
    if not tokens.chat_template:
        return
    try:
        tokens.chat([{"role": "user", "content": "Hello"}])
    except Exception as e:
        raise BoomerangError(
            f"the chat template cannot render a one-message conversation ({type(e).__name__}: {str(e)[:200]}); "
            "fix the template, or pass another with --chat-template FILE"
        ) from None


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or a ``BoomerangError`` naming the problem (e.g. the port is in use)."""
    if not 0 <= port <= 65535:
        raise BoomerangError(f"--port must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        why = e.strerror if isinstance(e, socket.gaierror) else "not a valid host name"
        raise BoomerangError(
            f"cannot use host {host!r}: {why}; pass --host 127.0.0.1 or an address"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise BoomerangError(
            f"cannot listen on {host}:{port}: {e.strerror}; pass another --port (or stop the server using it)"
        ) from None
    return sock
