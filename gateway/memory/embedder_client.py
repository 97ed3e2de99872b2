"""Client of the embedding service (OpenAI ``/v1/embeddings``).

Vectors are asked for as base64 (OpenAI's ``encoding_format``, which the
official SDK uses by default too): the embedder skips printing 384 floats as
text and the gateway skips parsing them. A service that answers with float
lists anyway is understood as well.

A request whose pooled connection the embedder closed under it is sent once
more (``gateway.keepalive``): embedding is idempotent, and the alternative is
a degraded recall, or a probe marking a healthy embedder down.

Every chat turn with memory makes two calls (its query, then the replay of
its reply), and the query's is on the turn's critical path, so the app sends
them with aiohttp (``gateway.upstream.http.UpstreamHTTP``), as it does the
LLM requests: a fraction of httpx's CPU per call, measured against the real
embedder (``python -m bench.recall_stages``, bench/results/recall_stages.md),
and no pool scan that grows with the number of
calls in flight, which httpcore does on every request. An
``httpx.AsyncClient`` is accepted too (the unit tests' in-process fakes).

Many texts go in parts of at most ``PART_TEXTS`` texts and ``PART_CHARS``
characters, two at a time, and each part's timeout grows with its
size (``per_text_timeout_s`` per text on top of the base timeout): a large
memory write (256 messages of 4,000 characters) is many ordinary requests,
each given the time its size needs, instead of one that a fixed timeout
abandons every time while the embedder keeps working on it. (The embedder
stops work on a request whose client has gone.)
"""

from __future__ import annotations

import array
import asyncio
import base64
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx

from gateway.enums import EmbedderErrorKind
from gateway.exceptions import EmbedderRejected, EmbedderUnavailable
from gateway.keepalive import resend_if_dropped
from gateway.metrics import GatewayMetrics
from gateway.monitor import ProbeFailed
from gateway.upstream.http import ConnectFailed, TransportError, UpstreamHTTP, timeouts_for
from gateway.urls import join_url, service_root

# Request priorities (lower first, as in vLLM's ``priority`` field): what a
# user waits for goes ahead of the background replay of queued memory writes.
INTERACTIVE = 0
BACKGROUND = 1

# One request to the embedder carries at most this many texts / characters.
PART_TEXTS = 32
PART_CHARS = 64_000
# Requests of one call in flight at a time: the embedder encodes one while
# the next waits in its queue.
IN_FLIGHT = 2
# Time allowed per text of a request, on top of the client's base timeout. The
# model reads at most a few hundred tokens of a text, so its cost per text is
# bounded; this is generous even for a loaded CPU (what a text costs:
# bench/results/embedder.md).
PER_TEXT_TIMEOUT_S = 0.5


def parts(texts: Sequence[str]) -> list[list[str]]:
    """``texts`` in order, cut into requests of bounded count and size."""
    out: list[list[str]] = []
    current: list[str] = []
    chars = 0
    for text in texts:
        if current and (len(current) >= PART_TEXTS or chars + len(text) > PART_CHARS):
            out.append(current)
            current, chars = [], 0
        current.append(text)
        chars += len(text)
    if current:
        out.append(current)
    return out


class EmbedderClient:
    def __init__(
        self,
        http: UpstreamHTTP | httpx.AsyncClient,
        base_url: str,
        dimension: int,
        metrics: GatewayMetrics,
        api_key: str | None = None,
        *,
        base_timeout_s: float = 10.0,
        per_text_timeout_s: float = PER_TEXT_TIMEOUT_S,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self._http = http
        self._url = join_url(base_url, "/embeddings")
        self._health_url = join_url(service_root(base_url), "/health")
        self._dimension = dimension
        self._metrics = metrics
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        self._base_timeout_s = base_timeout_s
        self._per_text_timeout_s = per_text_timeout_s
        self._connect_timeout_s = connect_timeout_s
        # A real call failed as an outage: /health alone cannot clear it (an
        # embedder can answer /health and fail every embedding), so the probe
        # embeds a text too until a call succeeds.
        self._verify = False
        # The route check's empty input shows in the embedder's request metrics as a
        # 400, so it runs until it passes once: the URL cannot change after that, and
        # a key revoked later fails a real call, which sets ``_verify``.
        self._route_served = False

    def timeout_for(self, count: int) -> float:
        """The read timeout of a request of ``count`` texts."""
        return self._base_timeout_s + self._per_text_timeout_s * count

    async def embed(
        self, texts: Sequence[str], *, priority: int = INTERACTIVE
    ) -> list[list[float]]:
        """The vectors of ``texts``, in their order.

        Many texts go shortest first, so that each of the embedder's batches
        holds texts of about one length and pads little (the model runs every
        text of a batch to the batch's longest): on texts of 8-30 words that
        is a quarter less encoder CPU per text than in the order given
        (bench/results/recall_stages.md). And ``IN_FLIGHT`` parts at a time,
        so the embedder has the next part queued while it encodes one, instead
        of idling while the gateway reads an answer and sends the next.
        """
        try:
            vectors = await self._embed_all(texts, priority)
        except EmbedderUnavailable:
            self._verify = True
            raise
        self._verify, self._route_served = False, True
        return vectors

    async def _embed_all(self, texts: Sequence[str], priority: int) -> list[list[float]]:
        if len(texts) == 1:
            return await self._embed_part(list(texts), priority)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        cut = parts([texts[i] for i in order])
        done: list[list[list[float]]] = [[] for _ in cut]
        queue = iter(range(len(cut)))

        async def send() -> None:
            for k in queue:
                done[k] = await self._embed_part(cut[k], priority)

        senders = [asyncio.ensure_future(send()) for _ in range(min(IN_FLIGHT, len(cut)))]
        try:
            await asyncio.gather(*senders)
        finally:  # one failed: the others stop too
            for sender in senders:
                sender.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
        vectors: list[list[float]] = [[] for _ in texts]
        for i, vector in zip(order, (v for part in done for v in part), strict=True):
            vectors[i] = vector
        return vectors

    async def _embed_part(self, texts: list[str], priority: int) -> list[list[float]]:
        body: dict[str, Any] = {"input": texts, "encoding_format": "base64"}
        if priority != INTERACTIVE:  # an embedder without priorities ignores the field
            body["priority"] = priority
        started = time.perf_counter()
        try:
            status, raw = await self._post(body, self.timeout_for(len(texts)))
        except (httpx.TransportError, TransportError) as exc:
            self._metrics.embedder_errors.labels(EmbedderErrorKind.UNREACHABLE).inc()
            raise EmbedderUnavailable(f"embedder unreachable: {type(exc).__name__}") from exc
        finally:
            self._metrics.embedder_duration.observe(time.perf_counter() - started)
        if status in _ABOUT_THE_TEXTS:
            self._metrics.embedder_errors.labels(EmbedderErrorKind.REJECTED).inc()
            raise EmbedderRejected(_error_message(status, raw))
        if status != 200:
            # Any other answer is the embedder's state or the gateway's setup, never
            # the texts': retried, not set aside (a wrong key or URL would otherwise
            # send every queued memory to the dead entries).
            self._metrics.embedder_errors.labels(f"http_{status}").inc()
            raise EmbedderUnavailable(self._not_served(status))
        try:
            data = sorted(json.loads(raw)["data"], key=lambda item: item["index"])
            vectors = [_vector(item["embedding"]) for item in data]
        except (ValueError, KeyError, TypeError) as exc:
            self._metrics.embedder_errors.labels(EmbedderErrorKind.BAD_RESPONSE).inc()
            raise EmbedderUnavailable(f"embedder answered malformed JSON: {exc}") from exc
        if len(vectors) != len(texts) or any(len(v) != self._dimension for v in vectors):
            self._metrics.embedder_errors.labels(EmbedderErrorKind.BAD_RESPONSE).inc()
            raise EmbedderUnavailable(
                f"embedder returned vectors that do not match GATEWAY_EMBEDDING_DIM="
                f"{self._dimension}"
            )
        return vectors

    def _not_served(self, status: int) -> str:
        if status in (401, 403):
            return f"embedder refused the gateway's key ({status}): check GATEWAY_EMBEDDER_API_KEY"
        if status in (404, 405):
            return (
                f"embedder has no POST {self._url} ({status}): check GATEWAY_EMBEDDER_URL "
                "(the embedder's /v1 URL)"
            )
        return f"embedder answered {status}"

    async def _post(self, body: dict[str, Any], read_timeout_s: float) -> tuple[int, bytes]:
        """The status and body of the embedder's answer to ``body``; a dropped
        pooled connection is sent once more."""
        if isinstance(self._http, UpstreamHTTP):  # resends a dropped connection itself
            reply = await self._http.request(
                "POST", self._url, headers=self._json_headers,
                timeouts=timeouts_for(read_timeout_s, self._connect_timeout_s),
                body=json.dumps(body).encode(),
            )  # fmt: skip
            try:
                return reply.status_code, await reply.aread()
            finally:
                await reply.aclose()
        http = self._http
        timeout = http.timeout.as_dict()
        timeout.update(read=read_timeout_s, write=read_timeout_s)
        response = await resend_if_dropped(
            lambda: http.post(
                self._url, json=body, headers=self._headers, timeout=httpx.Timeout(**timeout)
            )
        )
        return response.status_code, response.content

    async def _get_health(self) -> tuple[int, bytes]:
        if isinstance(self._http, UpstreamHTTP):
            timeouts = timeouts_for(self._base_timeout_s, self._connect_timeout_s)
            reply = await self._http.request(
                "GET", self._health_url, headers=self._headers, timeouts=timeouts
            )
            try:
                return reply.status_code, await reply.aread()
            finally:
                await reply.aclose()
        http = self._http
        response = await resend_if_dropped(lambda: http.get(self._health_url))
        return response.status_code, response.content

    async def probe(self) -> None:
        """Health probe for the monitor: ready means the model is loaded and the
        embeddings endpoint takes the gateway's requests.

        ``/health`` sits at the service's root, so a URL without its ``/v1`` or a
        key a proxy refuses would pass it while every embedding fails. An empty
        ``input`` reaches the route and costs the encoder nothing; only the answers
        that say the route or the key is wrong fail the probe (any verdict on the
        empty input means it was routed), until it has passed once. After a real
        call failed as an outage (a 500, vectors of another size), the probe embeds
        a text instead, until one succeeds: an embedder can answer both and still
        fail every text."""
        try:
            status, raw = await self._get_health()
        except (httpx.ConnectError, ConnectFailed) as exc:
            raise ProbeFailed(f"connection refused: {exc}", starting=True) from exc
        except (httpx.TransportError, TransportError) as exc:
            raise ProbeFailed(f"{type(exc).__name__}: {exc}") from exc
        if status == 503:
            raise ProbeFailed("embedder is loading its model", starting=True)
        if status != 200:
            raise ProbeFailed(f"health answered {status}")
        try:
            dimension = json.loads(raw).get("dimension")
        except (ValueError, AttributeError) as exc:
            raise ProbeFailed(f"health answered malformed JSON: {exc}") from exc
        if dimension is not None and dimension != self._dimension:
            raise ProbeFailed(
                f"embedder produces {dimension}-dimensional vectors but "
                f"GATEWAY_EMBEDDING_DIM is {self._dimension}"
            )
        if self._verify:  # a real call failed: only a real embedding clears it
            try:
                await self._embed_part(["health check"], INTERACTIVE)
            except (EmbedderUnavailable, EmbedderRejected) as exc:
                raise ProbeFailed(f"health answered, but embedding failed: {exc}") from exc
            self._verify = False
            return
        if self._route_served:
            return
        try:
            status, _ = await self._post({"input": []}, self._base_timeout_s)
        except (httpx.TransportError, TransportError) as exc:
            raise ProbeFailed(f"{type(exc).__name__}: {exc}") from exc
        if status in _NOT_SERVED:
            raise ProbeFailed(self._not_served(status))
        self._route_served = True


# The embedder's verdicts on a request's texts (malformed, too large, unprocessable).
_ABOUT_THE_TEXTS = frozenset({400, 413, 422})
# The answers of a server without the gateway's route, or refusing its key.
_NOT_SERVED = frozenset({401, 403, 404, 405})


def _vector(embedding: str | list[float]) -> list[float]:
    if isinstance(embedding, list):
        return embedding
    floats = array.array("f", base64.b64decode(embedding, validate=True))  # little-endian float32
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tolist()


def _error_message(status: int, raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"embedder answered {status}"
