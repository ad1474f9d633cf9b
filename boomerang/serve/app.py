"""The HTTP application (Starlette): the playground page at ``/``, ``/health``, ``/v1/models``,
``/v1/completions`` and ``/v1/chat/completions``, with server-sent events (``text/event-stream``) when a request
asks to stream.

The event loop only moves bytes: a request body is read up to ``max_body_bytes`` (413 past it, before the rest is
read), then parsed, validated and tokenized on a small thread pool, so a large prompt never holds up ``/health``
or another request's stream. A client that disconnects cancels its request, streamed or not; once the server is
draining (shutting down), new generation requests get 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import protocol as P
from .engine import Event, Job

if TYPE_CHECKING:
    from starlette.types import Receive

    from .service import Kind, Prepared, Service

log = logging.getLogger("boomerang.serve")

TRIM_ABOVE = 1 << 16  # bodies this large give their memory back once refused (``_release_memory``)
PREPARE_THREADS = 2  # requests parsed and tokenized at once (a 1 MiB prompt takes about a second to tokenize)
STATIC = Path(__file__).parent / "static"
# the playground loads nothing from anywhere else (no CDN): it works with no network
PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}
GONE = 499  # the status logged for a request whose client went away (nginx's convention); nobody receives it


def create_app(
    server: Service,
    *,
    max_body_bytes: int = P.MAX_BODY_BYTES,
    draining: Callable[[], bool] = lambda: False,
) -> Starlette:
    """The ASGI application of ``server``; its lifespan starts and stops the engine.

    ``draining()`` says when the server is shutting down: new generation requests are then refused (503).
    """
    pool = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="boomerang-prepare")

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def health(request: Request) -> Response:
        return _json(server.health())

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(server.metrics(), media_type="text/plain; version=0.0.4")

    async def models(request: Request) -> Response:
        return _json({"object": "list", "data": server.model_list()})

    async def model(request: Request) -> Response:
        name = P.check_model_name(request.path_params["name"], param="name")
        return _json(server.model_info(name))

    async def generate(kind: Kind, request: Request) -> Response:
        if draining():
            raise P.APIError(
                503, "the server is shutting down: send the request again later", type="server_error"
            )
        raw = await _read_body(request, max_body_bytes)
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(pool, _prepare, server, kind, raw)
        call = _Call(server, kind, prepared, draining)
        headers = {"x-boomerang-member": call.model}
        if prepared.decision is not None:
            headers["x-boomerang-estimate-ms"] = f"{prepared.decision.estimate_ms:.1f}"
        if prepared.stream:  # Starlette cancels the stream when the client disconnects
            headers |= {"cache-control": "no-cache", "x-accel-buffering": "no"}
            return StreamingResponse(call.stream(), media_type="text/event-stream", headers=headers)
        body = await call.collect(request.receive)
        if body is None:
            return Response(status_code=GONE)
        return _json(body, headers=headers)

    async def completions(request: Request) -> Response:
        return await generate("completion", request)

    async def chat(request: Request) -> Response:
        return await generate("chat", request)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(server.start)
        try:
            yield
        finally:
            server.stop()
            pool.shutdown(wait=False, cancel_futures=True)

    routes = [
        Route("/", page),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/v1/models", models),
        Route("/v1/models/{name:path}", model),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]
    handlers: dict[Any, Any] = {
        P.APIError: _api_error,
        HTTPException: _http_error,
        ClientDisconnect: _client_gone,
        Exception: _server_error,
    }
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


def _json(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON with every non-ASCII character escaped: no text (not even a lone surrogate) can fail to encode."""
    body = json.dumps(content, separators=(",", ":"))
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


def _prepare(server: Service, kind: Kind, raw: bytes) -> Prepared:
    """Parse, validate and tokenize a request body (on the thread pool).

    After refusing a large body, the memory its parsing and tokenizing took goes back to the system."""
    try:
        return server.prepare(kind, P.parse(kind, raw))
    except P.APIError as e:
        refused = P.APIError(e.status, e.message, type=e.type, param=e.param, code=e.code)
    # out of the except block: the traceback, and the frames holding the parsed body and its tokens, are gone
    if len(raw) >= TRIM_ABOVE:
        _release_memory()
    raise refused


def _release_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing). Without it, a
    refused 1 MiB prompt leaves tens of MB behind in the allocator's arenas, and RSS creeps up."""
    global _TRIM
    if _TRIM is None:
        library = ctypes.util.find_library("c")
        _TRIM = getattr(ctypes.CDLL(library), "malloc_trim", False) if library else False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 as soon as it is known to exceed ``limit`` bytes (the rest is never read)."""
    too_large = P.APIError(
        413,
        f"the request body is larger than this server's limit of {limit:,} bytes; send a shorter prompt or start "
        "the server with a larger --max-body-kb",
        code="request_too_large",
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, P.APIError)
    return _json(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = P.clip(request.url.path)
    if exc.status_code == 404:
        message = f"no route {path}: use /v1/models, /v1/completions, /v1/chat/completions, /health or / (the playground)"
    elif exc.status_code == 405:
        message = f"{P.clip(request.method, 16)} is not allowed on {path}"
    else:
        message = P.clip(str(exc.detail), 200)
    return _json(P.APIError(exc.status_code, message).body(), status_code=exc.status_code)


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=GONE)  # the client disconnected while sending its body


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s", P.clip(request.url.path), exc_info=exc)
    message = f"internal error: {type(exc).__name__}: {P.clip(str(exc), 200)}"
    return _json(P.APIError(500, message, type="server_error").body(), status_code=500)


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has gone (the body was read before, so only a disconnect can arrive)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class _Call:
    """One request in flight: the queue its events arrive on (from the engine's thread) and its ids."""

    def __init__(self, server: Service, kind: Kind, prepared: Prepared, draining: Callable[[], bool]) -> None:
        self.kind, self.prepared, self.draining = kind, prepared, draining
        self.model = server.members.name(prepared.k)
        self.id, self.created = P.new_id(kind), P.now()
        loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.job: Job = server.submit(
            prepared, lambda ev: loop.call_soon_threadsafe(self.events.put_nowait, ev)
        )

    def chunk(self, text: str, finish: str | None) -> dict[str, Any]:
        if self.kind == "completion":
            return P.completion_chunk(self.id, self.created, self.model, text, finish)
        delta = {"content": text} if finish is None else {}
        return P.chat_chunk(self.id, self.created, self.model, delta, finish)

    def response(self, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        build = P.completion if self.kind == "completion" else P.chat
        return build(self.id, self.created, self.model, text, finish, usage)

    def error(self, message: str) -> P.APIError:
        """The error a failed job is answered with: 503 when the server cut it to shut down, else 500."""
        if self.draining():
            return P.APIError(503, f"{message}: the request was cut short", type="server_error")
        return P.APIError(500, message, type="server_error")

    async def collect(self, receive: Receive) -> dict[str, Any] | None:
        """The whole response; None if the client disconnected first (the job is then cancelled)."""
        result = asyncio.ensure_future(self._collect())
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (result, gone):
                task.cancel()
            self.job.cancel()  # a no-op once it finished; stops the work if the client went away
        return result.result() if result.done() and not result.cancelled() else None

    async def _collect(self) -> dict[str, Any]:
        parts: list[str] = []
        while True:
            event = await self.events.get()
            if event[0] == "text":
                parts.append(event[1])
            elif event[0] == "done":
                return self.response("".join(parts), event[1], event[2])
            else:
                raise self.error(event[1])

    async def stream(self) -> AsyncIterator[bytes]:
        try:
            if self.kind == "chat":
                yield P.sse(
                    P.chat_chunk(
                        self.id, self.created, self.model, {"role": "assistant", "content": ""}, None
                    )
                )
            while True:
                event = await self.events.get()
                if event[0] == "text":
                    yield P.sse(self.chunk(event[1], None))
                    continue
                if event[0] == "done":
                    yield P.sse(self.chunk("", event[1]))
                    if self.prepared.include_usage:
                        yield P.sse(P.usage_chunk(self.kind, self.id, self.created, self.model, event[2]))
                else:
                    yield P.sse(self.error(event[1]).body())
                yield P.sse("[DONE]")
                return
        finally:
            self.job.cancel()
