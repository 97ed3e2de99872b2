"""The embedding service's ASGI app: ``POST /v1/embeddings``, ``/health``, ``/metrics``.

The model loads after the server is listening, on the service's single
inference thread (the same thread every encode call later runs on), so
``/health`` can answer 503 while it loads and all torch work stays on one
thread. A model that fails to load marks the service failed; ``__main__``
then exits non-zero so the orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from embedder.batcher import INPUT_ERRORS, MicroBatcher, QueueFull
from embedder.body_limit import EmbedderBodyLimit
from embedder.fastpath import EmbeddingsFastPath
from embedder.metrics import EmbedderMetrics
from embedder.model import Encoder
from embedder.model import load_encoder as load_model
from embedder.schemas import EmbeddingRequest
from embedder.settings import EmbedderSettings

logger = logging.getLogger("embedder")

LoadEncoder = Callable[[EmbedderSettings], Encoder]


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    if status < 500:
        kind = "invalid_request_error"
    else:
        kind = "server_error" if status == 500 else "service_unavailable"
    body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(body, status_code=status, headers=headers)


class _State:
    def __init__(self) -> None:
        self.status = "loading"
        self.error: str | None = None
        self.encoder: Encoder | None = None
        self.batcher: MicroBatcher | None = None


def create_app(
    settings: EmbedderSettings,
    *,
    registry: CollectorRegistry | None = None,
    load_encoder: LoadEncoder | None = None,
    on_load_failure: Callable[[], None] | None = None,
) -> FastAPI:
    registry = registry if registry is not None else CollectorRegistry()
    metrics = EmbedderMetrics(registry)
    load = load_encoder or load_model
    state = _State()

    async def _load(executor: ThreadPoolExecutor) -> None:
        started = time.perf_counter()
        logger.info("loading model %s on %s", settings.model, settings.device)
        try:
            encoder = await asyncio.get_running_loop().run_in_executor(executor, load, settings)
        except Exception as exc:
            state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
            logger.error("model %s failed to load: %s", settings.model, state.error)
            if on_load_failure is not None:
                on_load_failure()
            return
        batcher = MicroBatcher(
            encoder, executor,
            max_batch_size=settings.batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000,
            max_queued_texts=settings.max_queue * settings.batch_size,
            on_batch=metrics.observe_batch,
        )  # fmt: skip
        batcher.start()
        state.encoder, state.batcher, state.status = encoder, batcher, "ready"
        metrics.model_info.labels(encoder.name, str(encoder.dimension)).set(1)
        logger.info(
            "model %s ready (dimension %d) in %.1fs",
            encoder.name, encoder.dimension, time.perf_counter() - started,
        )  # fmt: skip

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        loader = asyncio.create_task(_load(executor), name="embedder-load")
        try:
            yield
        finally:
            loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)
            if state.batcher is not None:
                await state.batcher.stop()
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="memgate embedder", lifespan=lifespan)
    app.state.embedder = state

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return _error(400, "request body is not valid JSON", "invalid_json")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if not where:  # the body as a whole: a form (curl -d), a list, a string
            return _error(
                400,
                "the request body must be a JSON object, sent as application/json",
                "invalid_request",
            )
        message = f"{where}: {first.get('msg', 'invalid value')}"
        return _error(400, message, "invalid_request", param=where)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.encoder is None:
            body: dict[str, Any] = {"status": state.status, "model": settings.model}
            if state.error:
                body["error"] = state.error
            return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
        enc = state.encoder
        return JSONResponse({"status": "ok", "model": enc.name, "dimension": enc.dimension})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def serve(request: EmbeddingRequest, raw: Request) -> JSONResponse:
        started = time.perf_counter()
        response = await _unless_client_left(raw, _embed(request))
        metrics.requests.labels(str(response.status_code)).inc()
        metrics.request_duration.observe(time.perf_counter() - started)
        return response

    @app.post("/v1/embeddings")
    async def embeddings(request: EmbeddingRequest, raw: Request) -> JSONResponse:
        return await serve(request, raw)

    # Well-formed requests skip the routing above (embedder.fastpath); the
    # route serves the rest, with FastAPI's validation errors.
    app.add_middleware(EmbeddingsFastPath, serve=serve)
    # Added last, so it runs first: no route reads more than the cap.
    app.add_middleware(EmbedderBodyLimit, max_bytes=settings.max_body_bytes)

    async def _embed(request: EmbeddingRequest) -> JSONResponse:
        texts = [request.input] if isinstance(request.input, str) else request.input
        problem = _check_inputs(texts, settings, one=isinstance(request.input, str))
        if problem:
            return _error(400, problem.message, "invalid_input", problem.param)
        if state.encoder is None or state.batcher is None:
            return _error(503, f"model is {state.status}", "model_not_ready")
        if request.dimensions is not None and request.dimensions != state.encoder.dimension:
            return _error(
                400,
                f"dimensions={request.dimensions} is not supported; "
                f"this model produces {state.encoder.dimension}",
                "unsupported_dimensions",
            )
        try:
            encoded = await state.batcher.encode(texts, request.priority)
        except QueueFull:
            return _error(429, "too many texts queued; retry shortly", "queue_full")
        except Exception as exc:
            # Its batch's other requests were encoded without it (embedder.batcher).
            kind = "input" if isinstance(exc, INPUT_ERRORS) else "batch"
            logger.error("encoding failed (%s): %s: %s", kind, type(exc).__name__, exc)
            return _error(500, "the model failed to encode this input", "encode_failed")
        metrics.inputs.inc(len(texts))
        as_base64 = request.encoding_format == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(vec.astype("<f4").tobytes()).decode()
                if as_base64
                else vec.tolist(),
            }
            for i, vec in enumerate(encoded.vectors)
        ]
        tokens = sum(encoded.token_counts)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": state.encoder.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    return app


async def _client_left(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_left(request: Request, work: Awaitable[JSONResponse]) -> JSONResponse:
    """``work``'s answer; if the client goes first (it timed out, it was killed),
    ``work`` is cancelled, and with it the request's texts not encoded yet (the
    batcher drops them), so abandoned requests stop costing inference."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_client_left(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    if not task.done():
        await asyncio.wait((task,))
    if task.cancelled():
        # Nobody reads this; 499 ("client closed request") keeps the metrics honest.
        return _error(499, "the client closed the request", "client_closed_request")
    return task.result()


# A UTF-16 surrogate code point: JSON's "\ud800" without its pair (a pair is
# read as the one character it encodes), which is not Unicode text.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class _Problem:
    message: str
    param: str


def _check_inputs(texts: list[str], settings: EmbedderSettings, *, one: bool) -> _Problem | None:
    """What is wrong with ``texts``, before any is queued (``one``: the request's
    ``input`` was a string, not a list)."""
    if not texts:
        return _Problem("input must not be empty", "input")
    if len(texts) > settings.max_inputs:
        return _Problem(
            f"input has {len(texts)} items; at most {settings.max_inputs} are allowed", "input"
        )
    for i, text in enumerate(texts):
        where = "input" if one else f"input[{i}]"
        if not text:
            return _Problem(f"{where} is empty", where)
        if len(text) > settings.max_input_chars:
            return _Problem(
                f"{where} has {len(text)} characters; "
                f"at most {settings.max_input_chars} are allowed",
                where,
            )
        if not text.isascii() and (lone := _SURROGATE.search(text)):
            return _Problem(
                f"{where} holds a lone surrogate (U+{ord(lone.group()):04X} at character "
                f"{lone.start()}), which is not Unicode text",
                where,
            )
    return None
