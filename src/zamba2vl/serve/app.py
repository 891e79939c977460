"""The HTTP side: an OpenAI-compatible Starlette app around one loaded model and its scheduler.

    POST /v1/chat/completions   chat with text and image_url parts (data: URLs), streamed as server-sent events
    GET  /v1/models             the one model served (and /v1/models/{id})
    GET  /health                liveness plus the scheduler's queue and batch
    GET  /metrics               Prometheus text format
    GET  /                      the chat web page (static/index.html; no build step, no network)

The event loop only parses, checks and streams: image decoding and tokenization run in a small thread pool, the
model in the scheduler's thread. A request whose client goes away is cancelled at once (a disconnect watcher per
request), so its slot and its model state are freed whether it was queued or running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from zamba2vl.serve import schemas
from zamba2vl.serve.inputs import check_image_urls, fetch_remote_images, image_urls, prepare, serving_processor
from zamba2vl.serve.logs import log, log_request
from zamba2vl.serve.metrics import CONTENT_TYPE, ServerMetrics
from zamba2vl.serve.scheduler import Event, Job, QueueFull, Scheduler
from zamba2vl.serve.schemas import APIError
from zamba2vl.serve.settings import ServeSettings

_INLINE_JSON_BYTES = 256 * 1024  # larger bodies are parsed in the thread pool, off the event loop
_DRAIN_LIMIT = 256 * 1024 * 1024  # an oversized body is read (and dropped) up to this, so the client sees the 413
CLIENT_GONE = 499  # the status logged when the client closed the connection first (nginx's convention)


def error_response(e: APIError, request_id: str | None = None) -> JSONResponse:
    headers = {**e.headers, "x-request-id": request_id} if request_id else e.headers
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def create_app(vlm, settings: ServeSettings) -> Starlette:
    """The ASGI app serving ``vlm`` (a ``zamba2vl.pipeline.VLM``); the scheduler starts with the app's lifespan."""
    server = _Server(vlm, settings)
    routes = [
        Route("/", server.index, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics_text, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", server.model, methods=["GET"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=server.lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _internal_error})
    app.state.server = server
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                   code="not_found" if exc.status_code == 404 else None))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(APIError(500, f"internal server error: {type(exc).__name__}", code="internal_error"))


class _Server:
    def __init__(self, vlm, settings: ServeSettings):
        self.vlm, self.settings = vlm, settings
        self.processor = serving_processor(vlm.processor)
        self.scheduler: Scheduler | None = None
        self.metrics = ServerMetrics(running=lambda: self.scheduler.running if self.scheduler else 0,
                                     waiting=lambda: self.scheduler.waiting if self.scheduler else 0)
        self.created = int(time.time())
        self.executor: ThreadPoolExecutor | None = None
        self.http = None  # httpx.AsyncClient, only with remote images enabled
        self.page = (resources.files("zamba2vl.serve") / "static" / "index.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        s = self.settings
        self.scheduler = Scheduler(self.vlm.model, self.vlm.processor.tokenizer, max_batch_size=s.max_batch_size,
                                   max_queue=s.max_queue, prefill_tokens_per_step=s.prefill_tokens_per_step,
                                   torch_threads=s.torch_threads, metrics=self.metrics)
        self.scheduler.start()
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="zamba2vl-prepare")
        if s.allow_remote_images:
            import httpx

            self.http = httpx.AsyncClient(timeout=s.remote_image_timeout_s, follow_redirects=False, trust_env=False)
        try:
            yield
        finally:
            self.scheduler.stop()
            self.executor.shutdown(wait=False, cancel_futures=True)
            if self.http is not None:
                await self.http.aclose()

    # ------------------------------------------------------------------------------------------ small endpoints
    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.page)

    async def health(self, request: Request) -> Response:
        sched = self.scheduler
        return JSONResponse({"status": "ok", "model": self.settings.model_name,
                             "running": sched.running if sched else 0, "waiting": sched.waiting if sched else 0})

    async def metrics_text(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type=CONTENT_TYPE)

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [schemas.model_card(self.settings.model_name, self.created)]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model_id"]
        if name != self.settings.model_name:
            return error_response(self._unknown_model(name))
        return JSONResponse(schemas.model_card(name, self.created))

    def _unknown_model(self, name: str) -> APIError:
        return APIError(404, f"the model `{name}` does not exist; this server serves `{self.settings.model_name}` "
                             "(GET /v1/models)", param="model", code="model_not_found")

    # ------------------------------------------------------------------------------------------ chat
    async def chat_completions(self, request: Request) -> Response:
        rid = "chatcmpl-" + uuid.uuid4().hex[:24]
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.settings.request_timeout_s
        ctx: dict[str, Any] = {"id": rid, "stream": False, "t0": t0}
        try:
            req = await self._parse(request)
            ctx["stream"] = req.stream
            job, events = await self._enqueue(rid, req, deadline)
        except APIError as e:
            self._done(ctx, e.status, error=e.message)
            return error_response(e, rid)
        except Exception as e:  # noqa: BLE001 - a bug on one request: answer 500, log it, keep serving
            log.error("preparing request %s failed", rid, exc_info=e)
            err = APIError(500, f"internal server error: {type(e).__name__}", code="internal_error")
            self._done(ctx, 500, error=err.message)
            return error_response(err, rid)
        ctx["prompt_tokens"] = job.prompt_tokens
        watcher = asyncio.ensure_future(_wait_for_disconnect(request))
        first = await _next_event(events, watcher)
        if first is None:
            return self._client_gone(job, watcher, ctx)
        ctx["ttft_s"] = first.time - t0
        if first.kind == "error":
            watcher.cancel()
            self._done(ctx, first.error.status, error=first.error.message)
            return error_response(first.error, rid)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _EventStream(self, job, first, events, watcher, ctx, include_usage)
        text = [first.text]
        event = first
        while event.kind == "token":
            event = await _next_event(events, watcher)
            if event is None:
                return self._client_gone(job, watcher, ctx)
            text.append(event.text)
        watcher.cancel()
        if event.kind == "error":
            self._done(ctx, event.error.status, completion_tokens=event.completion_tokens, error=event.error.message)
            return error_response(event.error, rid)
        self._done(ctx, 200, completion_tokens=event.completion_tokens, finish_reason=event.finish_reason)
        body = schemas.completion(rid, self.settings.model_name, "".join(text), event.finish_reason,
                                  job.prompt_tokens, event.completion_tokens)
        return JSONResponse(body, headers={"x-request-id": rid})

    async def _parse(self, request: Request) -> schemas.ChatCompletionRequest:
        body = await _read_body(request, self.settings.max_body_bytes)
        if len(body) > _INLINE_JSON_BYTES:
            data = await asyncio.get_running_loop().run_in_executor(self.executor, _json, body)
        else:
            data = _json(body)
        req = schemas.parse_request(data)
        if req.model != self.settings.model_name:
            raise self._unknown_model(req.model)
        return req

    async def _enqueue(self, rid: str, req: schemas.ChatCompletionRequest,
                       deadline: float) -> tuple[Job, asyncio.Queue[Event]]:
        s = self.settings
        urls = image_urls(req)
        check_image_urls(urls, s)
        try:
            self.scheduler.reserve()
        except QueueFull:
            raise APIError(503, f"the server is busy ({s.max_queue} requests are waiting); retry in "
                                f"{s.retry_after_s} s", code="server_busy", type="server_error",
                           headers={"Retry-After": str(s.retry_after_s)}) from None
        submitted = False
        try:
            images = await fetch_remote_images(urls, s, self.http) if s.allow_remote_images else list(urls)
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(self.executor, prepare, self.vlm, self.processor, req, images, s)
            events: asyncio.Queue[Event] = asyncio.Queue()
            sink = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)  # noqa: E731
            job = Job(rid, prepared.input_ids, prepared.extras, prepared.config, sink, deadline)
            self.scheduler.submit(job)
            submitted = True
            return job, events
        finally:
            if not submitted:
                self.scheduler.release()

    def _client_gone(self, job: Job, watcher: asyncio.Future, ctx: dict[str, Any]) -> Response:
        self.scheduler.cancel(job)
        watcher.cancel()
        self._done(ctx, CLIENT_GONE, error="the client closed the connection")
        return Response(status_code=CLIENT_GONE)

    def _done(self, ctx: dict[str, Any], status: int, completion_tokens: int = 0, finish_reason: str | None = None,
              error: str | None = None) -> None:
        """Log the request's one line and count it in the metrics."""
        total = time.perf_counter() - ctx["t0"]
        fields = {"id": ctx["id"], "status": status, "stream": ctx["stream"],
                  "prompt_tokens": ctx.get("prompt_tokens", 0), "completion_tokens": completion_tokens,
                  "ttft_s": ctx.get("ttft_s"), "total_s": total}
        if finish_reason:
            fields["finish_reason"] = schemas.FINISH_REASONS[finish_reason]
        if error:
            fields["error"] = error[:300]
        log_request(**fields)
        self.metrics.observe_request(status, fields["prompt_tokens"], completion_tokens, total, ctx.get("ttft_s"))


class _EventStream:
    """The server-sent events of one streamed completion, in OpenAI's chunk format, ending with ``data: [DONE]``.
    A plain ASGI response, so that the disconnect watcher (not a send failure) decides when the client left."""

    def __init__(self, server: _Server, job: Job, first: Event, events: asyncio.Queue, watcher: asyncio.Future,
                 ctx: dict[str, Any], include_usage: bool):
        self.server, self.job, self.first, self.events, self.watcher = server, job, first, events, watcher
        self.ctx, self.include_usage = ctx, include_usage
        self.created = int(time.time())

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None, usage: dict | None = None) -> bytes:
        body = schemas.chunk(self.ctx["id"], self.server.settings.model_name, self.created, delta, finish, usage)
        return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

    async def __call__(self, scope, receive, send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                   (b"x-accel-buffering", b"no"), (b"x-request-id", self.ctx["id"].encode())]
        status, event, tokens, finish, error = CLIENT_GONE, self.first, 0, None, None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            out = [self._chunk({"role": "assistant", "content": ""})]
            while event is not None:
                text = []
                while event.kind == "token":  # coalesce the deltas already waiting into one chunk
                    text.append(event.text)
                    tokens = event.completion_tokens
                    if self.events.empty():
                        break
                    event = self.events.get_nowait()
                if text and "".join(text):
                    out.append(self._chunk({"content": "".join(text)}))
                if event.kind == "done":
                    tokens, finish = event.completion_tokens, event.finish_reason
                    out.append(self._chunk({}, finish))
                    if self.include_usage:
                        out.append(self._chunk(None, usage=schemas.usage(self.job.prompt_tokens, tokens)))
                elif event.kind == "error":
                    tokens, error = event.completion_tokens, event.error
                    out.append(b"data: " + json.dumps(error.body()).encode() + b"\n\n")
                if event.kind != "token":
                    out.append(b"data: [DONE]\n\n")
                await send({"type": "http.response.body", "body": b"".join(out), "more_body": event.kind == "token"})
                out = []
                if event.kind != "token":
                    status = 200 if error is None else error.status
                    break
                event = await _next_event(self.events, self.watcher)
        except OSError:  # ASGI 2.4 servers raise on send once the client is gone
            pass
        finally:
            self.watcher.cancel()
            if status == CLIENT_GONE:
                self.server.scheduler.cancel(self.job)
            self.server._done(self.ctx, status, completion_tokens=tokens, finish_reason=finish,
                              error=(error.message if error else "the client closed the connection"
                                     if status == CLIENT_GONE else None))


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or a 413 once it passes ``limit`` bytes (the rest is read and dropped, so the client gets the
    answer instead of a reset connection)."""
    declared = request.headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > limit
    chunks, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            too_big = True
        if too_big:
            if size > _DRAIN_LIMIT:
                break
            continue
        chunks.append(piece)
    if too_big:
        size = declared or f"over {limit}"
        raise APIError(413, f"the request body is {size} bytes; this server accepts at most {limit} bytes (send "
                            "smaller or fewer images)", code="request_too_large")
    return b"".join(chunks)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client has gone (the body is already read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _next_event(events: asyncio.Queue, watcher: asyncio.Future) -> Event | None:
    """The next event of a job, or None when the client went away first."""
    if not events.empty():
        return events.get_nowait()
    if watcher.done():
        return None
    getter = asyncio.ensure_future(events.get())
    await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    return None
