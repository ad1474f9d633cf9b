"""``FamilyServer``: a family served over an OpenAI-compatible HTTP API (Starlette on uvicorn).

fam = boomerang.Family("teacher/", "student/")
server = FamilyServer(fam, order="last")
server.run(port=8000)                      # blocking; or
with server.background() as base_url:      # in a thread, e.g. for tests: OpenAI(base_url=base_url)
    ...
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import BoomerangError
from .service import Service

if TYPE_CHECKING:
    from starlette.applications import Starlette


class FamilyServer(Service):
    """A ``Service`` (every member of a family, see ``boomerang.serve.service``) with its HTTP application.

    ``max_latency_ms`` enables model ``auto`` (``boomerang.serve.router``); ``chat_template`` (Jinja text)
    replaces the tokenizer's own.
    """

    def app(self) -> Starlette:
        from .app import create_app

        return create_app(self)

    def run(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        sock: socket.socket | None = None,
        log_level: str = "info",
    ) -> None:
        """Serve until interrupted (uvicorn). ``sock``: an already bound socket (as ``bind`` returns)."""
        import uvicorn

        sock = sock or bind(host, port)
        self.start()
        config = uvicorn.Config(self.app(), log_level=log_level, timeout_graceful_shutdown=5)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            self.stop()
            sock.close()

    @contextlib.contextmanager
    def background(self, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
        """Serve from a background thread; yields the base URL (``http://HOST:PORT/v1``). ``port=0``: any free one."""
        import uvicorn

        sock = bind(host, port)
        self.start()
        server = uvicorn.Server(uvicorn.Config(self.app(), log_level=log_level, timeout_graceful_shutdown=5))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            while not server.started:
                if not thread.is_alive():
                    raise BoomerangError("the server thread stopped while starting; see its log")
                time.sleep(0.01)
            yield f"http://{host}:{sock.getsockname()[1]}/v1"
        finally:
            server.should_exit = True
            thread.join(30)
            self.stop()
            sock.close()


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or a ``BoomerangError`` naming the problem (e.g. the port is in use)."""
    if not 0 <= port <= 65535:
        raise BoomerangError(f"--port must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise BoomerangError(
            f"cannot use host {host!r}: {e.strerror}; pass --host 127.0.0.1 or an address"
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
