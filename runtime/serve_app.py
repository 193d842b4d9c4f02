"""The ASGI app of `edgedelta serve` (Starlette): OpenAI's /v1/chat/completions,
/v1/completions and /v1/models, plus /health and Prometheus /metrics, over the batching
engine (serve_engine.py).

Life of the app: uvicorn starts listening at once and /health says "loading" while a thread
verifies the artifact's checksums and loads the session (then one warm-up step); /health says
"ready" after that. `begin_drain` (SIGTERM, from the CLI's uvicorn server) makes /health say
"draining" and every new request get 503, while the queued and running ones finish.

Every answer other than a success is OpenAI's JSON error object with a 4xx status naming the
bad field (400, 401, 404, 413, 429 + Retry-After, 503 + Retry-After); an unexpected exception
in a handler is caught, logged as one line and answered 500 without a traceback. Each request
gets one log line (the successful GET /health and /metrics polls excepted)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import anyio
import psutil
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .serve_engine import Draining, Engine, Failed, Job, Piece, QueueFull
from .serve_protocol import ApiError, CompletionRequest, chunk_body, completion_body, parse_request, sse, usage
from .serve_state import ServeState

log = logging.getLogger("edgedelta.serve")
MAX_BODY = 4 << 20  # bytes; a full 8k-token prompt is ~40 KB of text
_DISCONNECTED = object()  # put into a request's event queue when its client goes away


class _Record:
    """One request's log line and metrics, written once, when the answer ends."""

    def __init__(self, state: ServeState, request: Request, endpoint: str):
        self.state, self.endpoint = state, endpoint
        self.t0 = time.perf_counter()
        client = request.client
        self.who = f"{client.host}:{client.port}" if client else "-"
        self.line = f"{request.method} {request.url.path}"
        self.fields: dict[str, Any] = {}
        self.written = False

    def write(self, status: int, quiet: bool = False) -> None:
        if self.written:
            return
        self.written = True
        dt = time.perf_counter() - self.t0
        m = self.state.metrics
        m.request(self.endpoint, status)
        m.observe("edgedelta_request_duration_seconds", dt)
        if quiet and status == 200:
            return
        extra = " ".join(f"{k}={v}" for k, v in self.fields.items())
        log.info("%s %s %d %.0fms%s", self.who, self.line, status, dt * 1000, f" {extra}" if extra else "")


def _error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, f"the request body has {declared} bytes; at most {MAX_BODY} are accepted", code="request_too_large")
    chunks, size = [], 0
    async for c in request.stream():
        size += len(c)
        if size > MAX_BODY:
            raise ApiError(413, f"the request body exceeds {MAX_BODY} bytes", code="request_too_large")
        chunks.append(c)
    return b"".join(chunks)


async def _watch_disconnect(receive, q: asyncio.Queue) -> None:
    """Put _DISCONNECTED into `q` when the client goes away (ASGI http.disconnect)."""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            q.put_nowait(_DISCONNECTED)
            return


class EventStream(Response):
    """Server-sent events from an async iterator of bytes. Unlike Starlette's StreamingResponse
    under ASGI 2.4 it always listens for the client's disconnect, so a client that leaves while
    its request still waits for a batch is noticed at once, and a write to a closed socket
    ends the stream quietly (no traceback)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], on_end: Callable[[], None]):
        self.events, self.on_end = events, on_end  # on_end: runs last, however the stream ended
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as tg:
            async def stream() -> None:
                try:
                    await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                    async for chunk in self.events:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except OSError:  # the client closed the connection
                    pass
                finally:
                    tg.cancel_scope.cancel()

            async def listen() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            tg.start_soon(listen)
        await self.events.aclose()
        self.on_end()  # a generator cancelled before its first step never ran its `finally`


# ---- the app ----------------------------------------------------------------------------------------------
def create_app(state: ServeState) -> Starlette:
    """The Starlette app over `state` (its lifespan starts the loader and stops the engine)."""

    def endpoint(name: str, quiet: bool = False):
        def deco(fn):
            async def handler(request: Request) -> Response:
                rec = _Record(state, request, name)
                try:
                    resp = await fn(request, rec)
                except ApiError as e:
                    rec.fields["error"] = repr(e.message[:120])
                    rec.write(e.status)
                    return _error_response(e)
                except Exception as e:  # a bug: one log line and a JSON 500, never a traceback to the client
                    msg = f"{type(e).__name__}: {' '.join(str(e).split())}"
                    rec.fields["error"] = repr(msg[:200])
                    rec.write(500)
                    return _error_response(ApiError(500, f"internal error: {msg}", type="server_error"))
                if not isinstance(resp, EventStream):  # a stream writes its record when it ends
                    rec.write(resp.status_code, quiet)
                return resp
            return handler
        return deco

    @endpoint("health", quiet=True)
    async def health(request: Request, rec: _Record) -> Response:
        return JSONResponse({"status": state.status, "model": state.model_id},
                            status_code=200 if state.status == "ready" else 503)

    @endpoint("metrics", quiet=True)
    async def metrics(request: Request, rec: _Record) -> Response:
        eng = state.engine
        gauges = {
            "edgedelta_ready": (1.0 if state.status == "ready" else 0.0, "1 when the model is loaded and requests are taken"),
            "edgedelta_queue_depth": (eng.queue_depth if eng else 0, "requests waiting for a batch"),
            "edgedelta_running_requests": (eng.running if eng else 0, "requests in the batch being decoded"),
            "process_resident_memory_bytes": (psutil.Process().memory_info().rss, "resident set size of the server"),
        }
        return PlainTextResponse(state.metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @endpoint("models")
    async def models(request: Request, rec: _Record) -> Response:
        state.check_auth(request)
        return JSONResponse({"object": "list", "data": [_model_card(state)]})

    @endpoint("models")
    async def model(request: Request, rec: _Record) -> Response:
        state.check_auth(request)
        name = request.path_params["model"]
        if name != state.model_id:
            raise ApiError(404, f"model '{name}' does not exist; this server runs '{state.model_id}'",
                           param="model", code="model_not_found")
        return JSONResponse(_model_card(state))

    async def completion(request: Request, rec: _Record, kind: str) -> Response:
        state.check_auth(request)
        engine = state.check_ready()
        req = parse_request(await _read_body(request), kind)
        if req.model != state.model_id:
            raise ApiError(404, f"model '{req.model}' does not exist; this server runs '{state.model_id}'",
                           param="model", code="model_not_found")
        ids = state.encode(req)
        cfg = state.generation_config(req, len(ids))
        rec.fields.update(prompt=len(ids), max_tokens=cfg.max_new_tokens)
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        job = Job(ids, cfg, emit=lambda ev: loop.call_soon_threadsafe(q.put_nowait, ev))
        job.t_submit = rec.t0
        try:
            engine.submit(job)
        except QueueFull:
            raise ApiError(429, f"the server's queue is full ({state.cfg.max_queue} waiting); retry after "
                                f"{state.cfg.retry_after_s} s", code="queue_full", type="rate_limit_error",
                           headers={"Retry-After": str(state.cfg.retry_after_s)}) from None
        except Draining:
            raise ApiError(503, "the server is shutting down", code="shutting_down", type="server_error",
                           headers={"Retry-After": "5", "Connection": "close"}) from None
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if req.stream:
            return EventStream(_stream(state, engine, job, q, req, rid, created, rec),
                               on_end=lambda: _abandoned(state, engine, job, rec))
        watcher = asyncio.create_task(_watch_disconnect(request.receive, q))
        try:
            pieces = []
            while True:
                ev = await q.get()
                if ev is _DISCONNECTED:
                    _abandoned(state, engine, job, rec)
                    return Response(status_code=499)  # nobody reads it
                if isinstance(ev, Piece):
                    pieces.append(ev.text)
                elif isinstance(ev, Failed):
                    _finished(state, job, rec, "error")
                    raise ApiError(ev.status, ev.message, type="server_error")
                else:
                    _finished(state, job, rec, ev.finish_reason, ev.completion_tokens)
                    return JSONResponse(completion_body(req, rid, created, "".join(pieces), ev.finish_reason,
                                                        len(ids), ev.completion_tokens))
        finally:
            watcher.cancel()

    @endpoint("chat")
    async def chat(request: Request, rec: _Record) -> Response:
        return await completion(request, rec, "chat")

    @endpoint("completions")
    async def completions(request: Request, rec: _Record) -> Response:
        return await completion(request, rec, "completion")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        """Unknown path or method: OpenAI's error object instead of Starlette's plain text."""
        rec = _Record(state, request, "other")
        rec.fields["error"] = repr(exc.detail)
        rec.write(exc.status_code)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                        code=code, headers=dict(exc.headers or {})))

    @asynccontextmanager
    async def lifespan(app):
        state.start_loading()
        yield
        state.shutdown()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})


def _model_card(state: ServeState) -> dict[str, Any]:
    return {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "edgedelta"}


def _finished(state: ServeState, job: Job, rec: _Record, reason: str, completion_tokens: int = 0) -> None:
    """Metrics and log fields of a request that ran (or was queued) in the engine."""
    m = state.metrics
    m.tokens(len(job.ids) if job.t_start else 0, completion_tokens)
    if reason == "cancelled":
        m.cancel()
    if job.t_start:
        m.observe("edgedelta_queue_wait_seconds", job.t_start - job.t_submit)
    if job.t_first:
        m.observe("edgedelta_time_to_first_token_seconds", job.t_first - job.t_submit)
        rec.fields["ttft_ms"] = round((job.t_first - job.t_submit) * 1000)
        if completion_tokens > 1 and job.t_end > job.t_first:
            m.observe("edgedelta_time_per_output_token_seconds", (job.t_end - job.t_first) / (completion_tokens - 1))
    rec.fields.update(completion=completion_tokens, finish=reason, batch=job.batch_size)


async def _stream(state: ServeState, engine: Engine, job: Job, q: asyncio.Queue, req: CompletionRequest, rid: str,
                  created: int, rec: _Record) -> AsyncIterator[bytes]:
    """The SSE events of one streaming request; the record is written when the stream ends,
    however it ends (finished, failed, or the client gone: EventStream cancels this generator)."""
    status, ended = 200, False
    try:
        if req.kind == "chat":
            yield sse(chunk_body(req, rid, created, text="", role=True))
        while True:
            ev = await q.get()
            if isinstance(ev, Piece):
                yield sse(chunk_body(req, rid, created, text=ev.text))
                continue
            ended = True
            if isinstance(ev, Failed):
                status = ev.status
                _finished(state, job, rec, "error")
                yield sse(ApiError(ev.status, ev.message, type="server_error").body())
            else:
                _finished(state, job, rec, ev.finish_reason, ev.completion_tokens)
                yield sse(chunk_body(req, rid, created, finish=ev.finish_reason))
                if req.include_usage:
                    yield sse(chunk_body(req, rid, created, usage_obj=usage(len(job.ids), ev.completion_tokens)))
            yield sse("[DONE]")
            return
    finally:
        if ended:
            rec.write(status)
        else:  # the client went away (or the server cancelled the stream at its drain deadline)
            _abandoned(state, engine, job, rec)


def _abandoned(state: ServeState, engine: Engine, job: Job, rec: _Record) -> None:
    """A request whose client left before its answer ended: out of the engine, logged as 499 (once)."""
    if rec.written:
        return
    engine.cancel(job)
    _finished(state, job, rec, "cancelled", job.produced)
    rec.write(499)  # nginx's 'client closed request'
