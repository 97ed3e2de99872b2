"""Client of the embedding service (OpenAI ``/v1/embeddings``).

Vectors are asked for as base64 (OpenAI's ``encoding_format``, which the
official SDK uses by default too): the embedder skips printing 384 floats as
text and the gateway skips parsing them. A service that answers with float
lists anyway is understood as well.

A request whose pooled connection the embedder closed under it is sent once
more (``gateway.keepalive``): embedding is idempotent, and the alternative is
a degraded recall, or a probe marking a healthy embedder down.

Many texts go in parts of at most ``PART_TEXTS`` texts and ``PART_CHARS``
characters, one after the other, and each part's timeout grows with its
size (``per_text_timeout_s`` per text on top of the base timeout): a large
memory write (256 messages of 4,000 characters) is many ordinary requests,
each given the time its size needs, instead of one that a fixed timeout
abandons every time while the embedder keeps working on it. (The embedder
stops work on a request whose client has gone.)
"""

from __future__ import annotations

import array
import base64
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
from gateway.urls import service_root

# Request priorities (lower first, as in vLLM's ``priority`` field): what a
# user waits for goes ahead of the background replay of queued memory writes.
INTERACTIVE = 0
BACKGROUND = 1

# One request to the embedder carries at most this many texts / characters.
PART_TEXTS = 32
PART_CHARS = 64_000
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
        http: httpx.AsyncClient,
        base_url: str,
        dimension: int,
        metrics: GatewayMetrics,
        api_key: str | None = None,
        *,
        base_timeout_s: float = 10.0,
        per_text_timeout_s: float = PER_TEXT_TIMEOUT_S,
    ) -> None:
        self._http = http
        self._url = f"{base_url}/embeddings"
        self._health_url = f"{service_root(base_url)}/health"
        self._dimension = dimension
        self._metrics = metrics
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._base_timeout_s = base_timeout_s
        self._per_text_timeout_s = per_text_timeout_s

    def timeout_for(self, count: int) -> float:
        """The read timeout of a request of ``count`` texts."""
        return self._base_timeout_s + self._per_text_timeout_s * count

    async def embed(
        self, texts: Sequence[str], *, priority: int = INTERACTIVE
    ) -> list[list[float]]:
        vectors: list[list[float]] = []
        for part in parts(texts):
            vectors += await self._embed_part(part, priority)
        return vectors

    async def _embed_part(self, texts: list[str], priority: int) -> list[list[float]]:
        body: dict[str, Any] = {"input": texts, "encoding_format": "base64"}
        if priority != INTERACTIVE:  # an embedder without priorities ignores the field
            body["priority"] = priority
        started = time.perf_counter()
        timeout = self._http.timeout.as_dict()
        timeout.update(read=self.timeout_for(len(texts)), write=self.timeout_for(len(texts)))
        try:
            response = await resend_if_dropped(
                lambda: self._http.post(
                    self._url, json=body, headers=self._headers, timeout=httpx.Timeout(**timeout)
                )
            )
        except httpx.TransportError as exc:
            self._metrics.embedder_errors.labels(EmbedderErrorKind.UNREACHABLE).inc()
            raise EmbedderUnavailable(f"embedder unreachable: {type(exc).__name__}") from exc
        finally:
            self._metrics.embedder_duration.observe(time.perf_counter() - started)
        if response.status_code >= 500 or response.status_code == 429:
            self._metrics.embedder_errors.labels(f"http_{response.status_code}").inc()
            raise EmbedderUnavailable(f"embedder answered {response.status_code}")
        if response.status_code != 200:
            self._metrics.embedder_errors.labels(EmbedderErrorKind.REJECTED).inc()
            raise EmbedderRejected(_error_message(response))
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
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

    async def probe(self) -> None:
        """Health probe for the monitor: ready means the model is loaded."""
        try:
            response = await resend_if_dropped(lambda: self._http.get(self._health_url))
        except httpx.ConnectError as exc:
            raise ProbeFailed(f"connection refused: {exc}", starting=True) from exc
        except httpx.TransportError as exc:
            raise ProbeFailed(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 503:
            raise ProbeFailed("embedder is loading its model", starting=True)
        if response.status_code != 200:
            raise ProbeFailed(f"health answered {response.status_code}")
        dimension = response.json().get("dimension")
        if dimension is not None and dimension != self._dimension:
            raise ProbeFailed(
                f"embedder produces {dimension}-dimensional vectors but "
                f"GATEWAY_EMBEDDING_DIM is {self._dimension}"
            )


def _vector(embedding: str | list[float]) -> list[float]:
    if isinstance(embedding, list):
        return embedding
    floats = array.array("f", base64.b64decode(embedding, validate=True))  # little-endian float32
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tolist()


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"embedder answered {response.status_code}"
