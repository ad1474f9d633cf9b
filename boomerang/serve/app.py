"""The HTTP application (Starlette): ``/health``, ``/v1/models``, ``/v1/completions`` and
``/v1/chat/completions``, with server-sent events (``text/event-stream``) when a request asks to stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from . import protocol as P
from .engine import Event, Job

if TYPE_CHECKING:
    from .service import Kind, Prepared, Service

log = logging.getLogger("boomerang.serve")


def create_app(server: Service) -> Starlette:
    """The ASGI application of ``server``; its lifespan starts and stops the engine."""

    async def health(request: Request) -> Response:
        return JSONResponse(server.health())

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(server.metrics(), media_type="text/plain; version=0.0.4")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": server.model_list()})

    async def model(request: Request) -> Response:
        return JSONResponse(server.model_info(request.path_params["name"]))

    async def completions(request: Request) -> Response:
        return await _generate(server, "completion", request)

    async def chat(request: Request) -> Response:
        return await _generate(server, "chat", request)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(server.start)
        yield
        server.stop()

    routes = [
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/v1/models", models),
        Route("/v1/models/{name:path}", model),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]
    handlers: dict[Any, Any] = {P.APIError: _api_error, HTTPException: _http_error, Exception: _server_error}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, P.APIError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = (
            f"no route {request.url.path}: use /v1/models, /v1/completions, /v1/chat/completions or /health"
        )
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return JSONResponse(P.APIError(exc.status_code, message).body(), status_code=exc.status_code)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s", request.url.path, exc_info=exc)
    body = P.APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").body()
    return JSONResponse(body, status_code=500)


class _Call:
    """One request in flight: the queue its events arrive on (from the engine's thread) and its ids."""

    def __init__(self, server: Service, kind: Kind, prepared: Prepared) -> None:
        self.kind, self.prepared = kind, prepared
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

    async def collect(self) -> dict[str, Any]:
        parts: list[str] = []
        try:
            while True:
                event = await self.events.get()
                if event[0] == "text":
                    parts.append(event[1])
                elif event[0] == "done":
                    return self.response("".join(parts), event[1], event[2])
                else:
                    raise P.APIError(500, event[1], type="server_error")
        finally:
            self.job.cancel()  # a no-op once it finished; stops the work if the client went away

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
                    yield P.sse(P.APIError(500, event[1], type="server_error").body())
                yield P.sse("[DONE]")
                return
        finally:
            self.job.cancel()


async def _generate(server: Service, kind: Kind, request: Request) -> Response:
    parsed = P.parse(kind, await request.body())
    prepared = server.prepare(kind, parsed)
    call = _Call(server, kind, prepared)
    headers = {"x-boomerang-member": call.model}
    if prepared.decision is not None:
        headers["x-boomerang-estimate-ms"] = f"{prepared.decision.estimate_ms:.1f}"
    if prepared.stream:
        headers |= {"cache-control": "no-cache", "x-accel-buffering": "no"}
        return StreamingResponse(call.stream(), media_type="text/event-stream", headers=headers)
    return JSONResponse(await call.collect(), headers=headers)
