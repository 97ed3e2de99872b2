"""Relaying one upstream answer to the client, and the bookkeeping after it.

Whatever the upstream sends, the client gets something an OpenAI client can
read: a chat completion, an SSE stream that ends in ``[DONE]`` or in an
error event, or an error in OpenAI's envelope. An upstream's own client
errors (400, 404, 413, 422) keep their status; anything else that is not a
200 is a 502, since it is the gateway's dependency that failed, not the
client's request. A reply that completed is remembered and its token usage
counted.

Remembering writes the turn to the durable outbox *before* the client can
have the reply's end: a completion is returned only after the outbox write
committed, and a stream's ``[DONE]`` (or, without one, its last bytes) is
held back until then. A gateway killed the instant the client read the
last byte therefore still has the turn. A turn whose user was forgotten
after it began stores nothing (the outbox refuses a write stamped with a
start before the forget: gateway.memory.forgets). The write is a local SQLite commit
(milliseconds); embedding and storing it happen afterwards, in the
background (gateway.memory.service).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi.responses import Response

from gateway.api.wire import CHAT_WIRE, Wire
from gateway.drain import Drain
from gateway.enums import TokenKind, UpstreamOutcome, WriteSource
from gateway.errors import APIError, error_body
from gateway.exceptions import (
    OutboxRefused,
    UpstreamBroke,
    UpstreamInvalid,
    UpstreamNoReply,
    UpstreamNotStream,
    UpstreamTimedOut,
    UpstreamTooLarge,
)
from gateway.memory.records import NewMemory, Scope, is_blank
from gateway.memory.service import MemoryService
from gateway.metrics import GatewayMetrics
from gateway.upstream.http import BodyTooLarge, TimedOut, TransportError
from gateway.upstream.pool import OpenedReply, UpstreamPool
from gateway.upstream.sse import MAX_REPLY_CHARS, StreamAccumulator

logger = logging.getLogger("gateway.chat")

# Memories from chat are clipped: a pasted document is not a memory (and a
# stream's reader keeps no more than that of the reply).
MAX_CHAT_MEMORY_CHARS = MAX_REPLY_CHARS
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# The upstream's verdicts on the request itself, which the client should see as such.
RELAYED_CLIENT_ERRORS = frozenset({400, 404, 413, 422})
# The upstream's verdicts on the gateway's own credentials (gateway.upstream.config's keys).
UPSTREAM_REFUSED_CREDENTIALS = frozenset({401, 403})


@dataclass
class MemoryPlan:
    scope: Scope | None = None
    top_k: int = 0
    store: bool = False
    session_id: str | None = None
    query: str = ""


def _json_object(content: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(content)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def upstream_error(status: int, content: bytes) -> tuple[int, dict[str, Any]]:
    """The client's status and OpenAI error body for an upstream's non-200 answer."""
    return _error_of(status, _json_object(content))


def _error_of(status: int, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
    client_status = status if status in RELAYED_CLIENT_ERRORS else 502
    if status in UPSTREAM_REFUSED_CREDENTIALS:
        # The operator's key, not the client's: the upstream's own words
        # ("Incorrect API key provided: sk-...abcd") would show every client
        # part of it, and its code ("invalid_api_key") would tell an SDK that
        # the client's key is wrong. The operator finds them in the log.
        return 502, error_body(
            f"the LLM upstream refused the gateway's credentials ({status}); "
            "the gateway's operator must check its upstream key",
            "upstream_error",
            "upstream_auth_failed",
        )
    if client_status >= 500:
        # The upstream's own failure. Its words are for the operator, who finds
        # them in the log: they can name its host's files and internals (llama.cpp's
        # server answers a request it cannot serve with the last line of a Python
        # traceback, the file's path in it).
        return 502, error_body(
            f"the LLM upstream failed ({status}); the gateway's log has its answer",
            "upstream_error",
            "upstream_error",
        )
    if body is not None and isinstance(body.get("error"), dict):
        error = body["error"]
        message = error.get("message")
        return client_status, error_body(
            message if isinstance(message, str) else f"the LLM upstream answered {status}",
            "invalid_request_error",
            error.get("code") if isinstance(error.get("code"), str) else None,
        )
    return client_status, error_body(
        f"the LLM upstream answered {status}", "upstream_error", "upstream_error"
    )


class Relay:
    """One reply on its way to the client. It is handed what it uses: the
    metrics, the pool (each reply's outcome feeds its replica's breaker), the
    memory (a finished turn goes into its outbox) and the two deadlines."""

    def __init__(
        self,
        opened: OpenedReply,
        plan: MemoryPlan,
        started: float,
        client_model: str,
        *,
        model_label: str,
        metrics: GatewayMetrics,
        pool: UpstreamPool,
        memory: MemoryService,
        total_timeout_s: float,
        stream_idle_timeout_s: float,
        drain: Drain,
        drop_usage: bool = False,
        wire: Wire = CHAT_WIRE,
    ) -> None:
        self.metrics = metrics
        self.pool = pool
        self.memory = memory
        self.total_timeout_s = total_timeout_s
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self.drain = drain
        self.cut_by_shutdown = False
        self.wire = wire
        sent_model = opened.target.model
        # The upstream knew the model by another name: give the client's back.
        self.rename_to = client_model if sent_model and sent_model != client_model else None
        self.model_label = model_label
        self.drop_usage = drop_usage
        self.opened = opened
        self.plan = plan
        self.started = started
        self.name = opened.upstream.name

    async def complete(self, headers: dict[str, str], *, stream_asked: bool = False) -> Response:
        """Relay a whole answer. ``stream_asked``: the client asked for a stream and
        the upstream's 200 is none (HTML, JSON): never relayed as if it were."""
        response = self.opened.response
        try:
            async with asyncio.timeout(self.total_timeout_s):
                content = await response.aread()
        except (TimeoutError, TimedOut) as exc:
            self._finish(UpstreamOutcome.TIMEOUT)
            raise UpstreamTimedOut(str(exc)) from None
        except BodyTooLarge as exc:
            # The upstream's fault, but a client can ask for a huge honest answer (n,
            # logprobs), so it must not trip the breaker all tenants share: neutral.
            self._finish(UpstreamOutcome.HTTP_ERROR)
            raise UpstreamTooLarge(str(exc)) from None
        except TransportError as exc:  # cut-off bodies, undecodable content-encoding, ...
            self._finish(UpstreamOutcome.STREAM_ERROR)
            raise UpstreamBroke(f"{type(exc).__name__}: {exc}") from None
        except asyncio.CancelledError:
            self._finish(UpstreamOutcome.CLIENT_DISCONNECT)
            raise
        finally:
            await response.aclose()
        if response.status_code != 200:
            rejected = response.status_code in RELAYED_CLIENT_ERRORS  # the client's, not its
            self._finish(UpstreamOutcome.REJECTED if rejected else UpstreamOutcome.HTTP_ERROR)
            status, body = upstream_error(response.status_code, content)
            if status >= 500:  # its words are not relayed (``upstream_error``)
                logger.warning(
                    "upstream %s answered %d: %s",
                    self.name, response.status_code, content[:300].decode("utf-8", "replace"),
                )  # fmt: skip
            raise APIError(
                status,
                body["error"]["message"],
                code=body["error"]["code"],
                type=body["error"]["type"],
            )
        completion = _json_object(content)
        kind = response.headers.get("content-type", "no content type")
        if stream_asked:
            self._finish(UpstreamOutcome.HTTP_ERROR)
            raise _not_a_reply(completion, UpstreamNotStream(kind))
        if completion is None and not self.wire.json_only:
            # Another kind of body (a transcription as text, say): relayed as it came.
            self._finish(UpstreamOutcome.SUCCESS)
            kind = response.headers.get("content-type", "application/octet-stream")
            return Response(content, 200, headers={**headers, "content-type": kind})
        if completion is None:
            self._finish(UpstreamOutcome.HTTP_ERROR)
            raise UpstreamInvalid(kind)
        if not self.wire.is_reply(completion):
            # Relayed, it would read as a finished turn (and be remembered) and
            # break the client's code that reads its reply; it is the upstream failing.
            self._finish(UpstreamOutcome.HTTP_ERROR)
            raise _not_a_reply(completion, UpstreamNoReply(f"keys {sorted(completion)[:8]}"))
        self._finish(UpstreamOutcome.SUCCESS)
        self._count_tokens(completion.get("usage"))
        reply = self.wire.reply_text(completion)  # None: not a finished turn
        if reply is not None and not await self._remember(reply):
            headers = {**headers, "x-memory-status": "not_stored"}
        if self.rename_to is not None and "model" in completion:
            content = json.dumps({**completion, "model": self.rename_to}).encode()
        return Response(content, 200, headers=headers, media_type="application/json")

    async def stream(self) -> AsyncIterator[bytes]:
        response = self.opened.response
        acc = self.wire.accumulator(rename_to=self.rename_to, drop_usage=self.drop_usage)
        outcome = UpstreamOutcome.STREAM_ERROR
        first = True
        cut_mid_line = False
        failure: bytes | None = None
        remembered = False
        # At the end of the shutdown grace the upstream's connection is closed,
        # and the stream ends with an error event saying why (gateway.drain).
        self.drain.hold(self._cut_short)
        try:
            async for chunk in response.aiter_bytes():  # decoded, if the upstream compressed
                if first:
                    first = False
                    self.metrics.upstream_ttft.labels(self.name).observe(
                        time.perf_counter() - self.opened.sent_at
                    )
                relayed = acc.feed(chunk)
                if acc.done and not remembered and acc.completed:
                    # The turn goes into the outbox before the client sees [DONE]
                    # (or, in streams without one, the chunk with the final event).
                    cut = _done_at(relayed, acc.END_EVENT)
                    if cut:
                        yield relayed[:cut]
                    remembered = True
                    await self._remember(acc.text)
                    relayed = relayed[cut:]
                if relayed:
                    yield relayed
            cut_mid_line = acc.mid_line
            if tail := acc.flush():
                yield tail
            if acc.completed:
                outcome = UpstreamOutcome.SUCCESS
            elif self.cut_by_shutdown:
                outcome, failure = UpstreamOutcome.SHUTDOWN, self._shutdown_event(acc)
            elif acc.error is not None:
                # The upstream ended the stream with its own error event, relayed:
                # its answer (as a non-streamed error is), neither a broken stream
                # to blame on its breaker (one client's request can cause it) nor
                # one to end with a second, untrue event.
                outcome = UpstreamOutcome.HTTP_ERROR
            elif first:
                # Ended cleanly before a single byte: the server is up and refused this
                # request in its way (llama.cpp's, for a prompt past its context window,
                # raises inside the stream it has opened). Not the breaker's business,
                # as a 200 without a reply is not: one client's requests would open it.
                outcome = UpstreamOutcome.HTTP_ERROR
                failure = acc.error_event(
                    "the LLM upstream ended the stream without sending anything (llama.cpp's "
                    "server does so when the prompt does not fit in its context window)",
                    "upstream_stream_empty",
                )
            else:
                failure = acc.error_event(
                    "the LLM upstream closed the stream before finishing",
                    "upstream_stream_incomplete",
                )
        except TimedOut:
            outcome = UpstreamOutcome.TIMEOUT
            idle = self.stream_idle_timeout_s
            failure = acc.error_event(
                f"the LLM upstream sent nothing for {idle:g}s", "upstream_stream_idle_timeout"
            )
        except TransportError as exc:
            if self.cut_by_shutdown and acc.completed:  # cut after its end: finished
                outcome = UpstreamOutcome.SUCCESS
            elif self.cut_by_shutdown:
                outcome, failure = UpstreamOutcome.SHUTDOWN, self._shutdown_event(acc)
            else:
                logger.warning("stream from %s broke: %s", self.name, exc)
                failure = acc.error_event(
                    "the LLM upstream failed mid-stream", "upstream_stream_error"
                )
        except asyncio.CancelledError:
            outcome = UpstreamOutcome.CLIENT_DISCONNECT
            raise
        finally:
            self.drain.release(self._cut_short)
            await response.aclose()
            self._finish(outcome)
        if failure is not None:
            # After a cut-off line, a blank line first, so the error is an event of its own.
            yield (b"\n\n" + failure) if cut_mid_line or acc.mid_line else failure
        if outcome == UpstreamOutcome.SUCCESS:
            self._count_tokens(acc.usage)
            if not remembered:  # finished without [DONE]: before the stream's last bytes
                await self._remember(acc.text)

    def _cut_short(self) -> None:
        self.cut_by_shutdown = True
        self.opened.response.abort()

    def _shutdown_event(self, acc: StreamAccumulator) -> bytes:
        grace = self.drain.grace_s
        return acc.error_event(
            f"the gateway is shutting down and its shutdown grace of {grace:g}s ran out "
            "before the reply ended; send the request again",
            "gateway_shutting_down",
        )

    def _finish(self, outcome: UpstreamOutcome) -> None:
        now = time.perf_counter()
        upstream_s = now - self.opened.sent_at
        metrics = self.metrics
        self.pool.record_outcome(self.opened.upstream, outcome)
        metrics.model_requests.labels(self.model_label, self.name, outcome).inc()
        metrics.upstream_duration.labels(self.name).observe(upstream_s)
        metrics.overhead.labels(self.wire.route).observe(
            max(0.0, (now - self.started) - upstream_s)
        )

    def _count_tokens(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        # Chat and completions say prompt/completion; Responses and Messages, input/output.
        for kind, other in ((TokenKind.PROMPT, "input"), (TokenKind.COMPLETION, "output")):
            value = usage.get(f"{kind}_tokens", usage.get(f"{other}_tokens"))
            if isinstance(value, int) and value >= 0:
                self.metrics.upstream_tokens.labels(self.name, kind).inc(value)

    async def _remember(self, reply: str) -> bool:
        """Put the turn in the durable outbox; False if it could not be (disk full).

        Shielded: a client that leaves while the commit runs does not undo it.
        """
        plan = self.plan
        if plan.scope is None or not plan.store or not plan.query:
            return True
        now = datetime.now(UTC)
        memories = [
            NewMemory(
                _clean(text[:MAX_CHAT_MEMORY_CHARS]),
                now,
                {},
                plan.session_id,
                role,
                WriteSource.CHAT,
            )
            for role, text in (("user", plan.query), ("assistant", reply.strip()))
            if not is_blank(text)
        ]
        try:
            # Stamped with the turn's start: if its user was forgotten since, the
            # outbox refuses it, and the turn stores nothing (not an error).
            await asyncio.shield(self.memory.enqueue(plan.scope, memories, since=self.started))
        except OutboxRefused:  # logged where it happened (MemoryService.enqueue)
            return False
        return True


def _not_a_reply(body: dict[str, Any] | None, otherwise: Exception) -> Exception:
    """What a 200 that carries no reply is answered with: the upstream's own
    error when it sent one in OpenAI's envelope (some proxies answer errors
    with 200), as a 502; else ``otherwise``."""
    if body is None or not isinstance(body.get("error"), dict):
        return otherwise
    # Relayed as it came: a proxy's verdict ("quota exceeded"), in the 200 of a
    # proxy that answers so, not an upstream's own failure.
    inner = _error_of(400, body)[1]["error"]
    return APIError(502, inner["message"], code=inner["code"], type="upstream_error")


def _done_at(relayed: bytes, end_event: bytes) -> int:
    """Where the stream's final event (``[DONE]`` in chat) starts in ``relayed``
    (0 when it began in an earlier chunk, or is not in these bytes)."""
    at = relayed.rfind(end_event)
    return max(at, 0)


def _clean(text: str) -> str:
    """The text as valid Unicode: a lone surrogate (which JSON allows and
    UTF-8 cannot carry) becomes U+FFFD, so the memory can be stored."""
    return LONE_SURROGATE.sub("\ufffd", text)
