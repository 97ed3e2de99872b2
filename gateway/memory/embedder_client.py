"""Client of the embedding service (OpenAI ``/v1/embeddings``).

Vectors are asked for as base64 (OpenAI's ``encoding_format``, which the
official SDK uses by default too): the embedder skips printing 384 floats as
text and the gateway skips parsing them. A service that answers with float
lists anyway is understood as well.

A request whose pooled connection the embedder closed under it is sent once
more (``gateway.keepalive``): embedding is idempotent, and the alternative is
a degraded recall, or a probe marking a healthy embedder down.
"""

from __future__ import annotations

import array
import base64
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx

from gateway.keepalive import resend_if_dropped
from gateway.metrics import GatewayMetrics
from gateway.monitor import ProbeFailed
from gateway.urls import service_root

# Request priorities (lower first, as in vLLM's ``priority`` field): what a
# user waits for goes ahead of the background replay of queued memory writes.
INTERACTIVE = 0
BACKGROUND = 1


class EmbedderUnavailable(Exception):
    """The embedder cannot embed right now (down, loading, overloaded)."""


class EmbedderRejected(Exception):
    """The embedder refused the input itself (a 4xx): retrying will not help."""


class EmbedderClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        dimension: int,
        metrics: GatewayMetrics,
        api_key: str | None = None,
    ) -> None:
        self._http = http
        self._url = f"{base_url}/embeddings"
        self._health_url = f"{service_root(base_url)}/health"
        self._dimension = dimension
        self._metrics = metrics
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def embed(
        self, texts: Sequence[str], *, priority: int = INTERACTIVE
    ) -> list[list[float]]:
        body: dict[str, Any] = {"input": list(texts), "encoding_format": "base64"}
        if priority != INTERACTIVE:  # an embedder without priorities ignores the field
            body["priority"] = priority
        started = time.perf_counter()
        try:
            response = await resend_if_dropped(
                lambda: self._http.post(self._url, json=body, headers=self._headers)
            )
        except httpx.TransportError as exc:
            self._metrics.embedder_errors.labels("unreachable").inc()
            raise EmbedderUnavailable(f"embedder unreachable: {type(exc).__name__}") from exc
        finally:
            self._metrics.embedder_duration.observe(time.perf_counter() - started)
        if response.status_code >= 500 or response.status_code == 429:
            self._metrics.embedder_errors.labels(f"http_{response.status_code}").inc()
            raise EmbedderUnavailable(f"embedder answered {response.status_code}")
        if response.status_code != 200:
            self._metrics.embedder_errors.labels("rejected").inc()
            raise EmbedderRejected(_error_message(response))
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = [_vector(item["embedding"]) for item in data]
        except (ValueError, KeyError, TypeError) as exc:
            self._metrics.embedder_errors.labels("bad_response").inc()
            raise EmbedderUnavailable(f"embedder answered malformed JSON: {exc}") from exc
        if len(vectors) != len(texts) or any(len(v) != self._dimension for v in vectors):
            self._metrics.embedder_errors.labels("bad_response").inc()
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
