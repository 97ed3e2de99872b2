"""Hostile upstreams and hostile bytes: the gateway's parsing never fails the client.

Unit level (hypothesis, no processes):
- ``StreamAccumulator``, in each way ``_Relay.stream`` builds it (plain, dropping the usage
  event the gateway asked for, renaming the model for an alias): never raises on arbitrary
  bytes under any chunking; what it learns (text, [DONE], finish reason, usage, error) and
  the bytes it relays do not depend on chunk boundaries; without rewriting it relays the
  upstream's bytes exactly, and when rewriting it drops nothing but usage-only events.
- ``parse_json_object`` + ``validate_chat``: arbitrary bytes give a dict and a ChatRequest,
  or ``APIError(400)``; never anything else.

End to end (a real gateway process, the real embedder, ``tests/fakes/hostile_upstream.py``
as its LLM): each example is an upstream answer built from malformed SSE, truncated JSON,
huge lines, wrong content types and encodings, odd status codes and Retry-After values,
broken framing (Content-Length and chunked errors), early EOF, RST, silence and
slowloris-style trickle. For each, through the gateway:
- the client gets a well-formed HTTP answer within a bound: a 200 whose body is a JSON
  object, a 4xx/502/503/504 in OpenAI's error envelope, or (streaming) an SSE stream whose
  events, parsed as a browser would, end in [DONE], a finish reason, or an error event;
- never a 500 or another 5xx, and the gateway stays alive with ``/livez`` 200 and serves
  the next ordinary request.
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.api.chat import parse_json_object, validate_chat
from gateway.errors import APIError
from gateway.upstream.sse import StreamAccumulator
from harness.process import Service, wait_until
from tests.fakes.hostile_upstream import (
    MODEL,
    End,
    HostileUpstream,
    Script,
    Step,
    chunk_frame,
    completion,
    http_head,
    http_response,
    sse_body,
    sse_event,
    stream_chunk,
)
from tests.fuzz.budget import fuzz_settings, fuzz_timeout
from tests.support.stack import start_gateway

pytestmark = fuzz_timeout()

# -- strategies shared by both levels --------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
# Events shaped like chat chunks, with every part liable to be the wrong type.
choice_values = st.fixed_dictionaries(
    {},
    optional={
        "index": st.one_of(st.just(0), json_values),
        "delta": st.one_of(st.fixed_dictionaries({"content": st.text(max_size=6)}), json_values),
        "finish_reason": st.one_of(st.just("stop"), json_values),
    },
)
event_objects = st.one_of(
    st.fixed_dictionaries({"choices": st.lists(choice_values, max_size=2)}),
    st.fixed_dictionaries({"choices": json_values}),
    st.fixed_dictionaries({"usage": json_values}),
    st.fixed_dictionaries({"error": json_values}),
    st.dictionaries(st.sampled_from(["choices", "usage", "error", "id", "model"]), json_values),
    json_values,
)
sse_lines = st.one_of(
    event_objects.map(lambda e: b"data: " + json.dumps(e).encode()),
    event_objects.map(lambda e: b"data:" + json.dumps(e).encode()),
    st.just(b"data: [DONE]"),
    st.binary(max_size=40).map(lambda b: b"data: " + b),
    st.sampled_from([b": keep-alive", b"event: message", b"id: 7", b"retry: 10", b"data", b""]),
    st.binary(max_size=40),
)
line_ends = st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\r\n\r\n", b"\r", b""])
sse_streams = st.lists(st.tuples(sse_lines, line_ends), max_size=12).map(
    lambda parts: b"".join(line + end for line, end in parts)
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# -- unit: StreamAccumulator -----------------------------------------------------------------

# (rename_to, drop_usage): how _Relay.stream builds it. drop_usage is the common case: the
# gateway asks for usage whenever the client did not; rename_to: an alias or a fallback model.
MODES = [(None, False), (None, True), ("alias-model", False), ("alias-model", True)]
modes = st.sampled_from(MODES)


@dataclass
class Fed:
    acc: StreamAccumulator
    relayed: bytes  # what the client would get: every feed's answer, then flush()


def observed(fed: Fed) -> tuple[Any, ...]:
    acc = fed.acc
    return (acc.text, acc.done, acc.finish_reason, acc.usage, acc.error, acc.completed)


def feed_all(
    data: bytes,
    cuts: list[int],
    mode: tuple[str | None, bool] = (None, False),
    max_line_bytes: int = 1 << 20,
) -> Fed:
    rename_to, drop_usage = mode
    acc = StreamAccumulator(
        rename_to=rename_to, drop_usage=drop_usage, max_line_bytes=max_line_bytes
    )
    relayed = b"".join(acc.feed(piece) for piece in split_at(data, cuts)) + acc.flush()
    return Fed(acc, relayed)


@fuzz_settings(200)
@given(
    data=st.one_of(sse_streams, st.binary(max_size=300)),
    cuts=st.lists(st.integers(0, 400)),
    mode=modes,
)
@example(data=b'data: {"choices": 5}\n\n', cuts=[], mode=(None, True))
@example(data=b'data: {"model": "m", "x": "\\ud800"}\n\n', cuts=[], mode=("alias-model", False))
def test_accumulator_never_raises(
    data: bytes, cuts: list[int], mode: tuple[str | None, bool]
) -> None:
    fed = feed_all(data, cuts, mode, max_line_bytes=64)
    assert isinstance(fed.acc.text, str) and isinstance(fed.acc.completed, bool)


def test_accumulator_survives_deeply_nested_events() -> None:
    acc = StreamAccumulator(drop_usage=True)
    acc.feed(b"data: " + b"[" * 100_000 + b"\n\n")
    assert not acc.completed


def fed_or_none(data: bytes, cuts: list[int], mode: tuple[str | None, bool]) -> Fed | None:
    try:
        return feed_all(data, cuts, mode)
    except (TypeError, UnicodeEncodeError, RecursionError):  # were bugs; must not come back
        raise


@fuzz_settings(200)
@given(data=sse_streams, cuts=st.lists(st.integers(0, 400), max_size=20), mode=modes)
def test_accumulator_is_independent_of_chunking(
    data: bytes, cuts: list[int], mode: tuple[str | None, bool]
) -> None:
    """Lines shorter than max_line_bytes: one feed, many, or byte by byte, the same result:
    the same reply text, usage, end, and the same bytes relayed to the client."""
    whole = fed_or_none(data, [], mode)
    if whole is None:
        return
    for chunking in (cuts, list(range(len(data)))):
        pieces = feed_all(data, chunking, mode)
        assert observed(pieces) == observed(whole)
        assert pieces.relayed == whole.relayed


@fuzz_settings(200)
@given(data=sse_streams, cuts=st.lists(st.integers(0, 400), max_size=20))
def test_accumulator_relays_bytes_untouched_unless_it_must_rewrite(
    data: bytes, cuts: list[int]
) -> None:
    """No rewriting: the client gets exactly the upstream's bytes. Rewriting (drop_usage):
    every line that is not a usage-only event still passes byte for byte, in order."""
    plain = fed_or_none(data, cuts, (None, False))
    if plain is not None:
        assert plain.relayed == data
    rewritten = fed_or_none(data, cuts, (None, True))
    if rewritten is not None:
        dropped = [line for line in data.split(b"\n") if line not in rewritten.relayed.split(b"\n")]
        for line in dropped:
            event = as_json(line[5:]) if line.startswith(b"data:") else None
            assert isinstance(event, dict) and "usage" in event and not event.get("choices"), line


def test_a_runaway_line_is_ignored_however_it_is_chunked() -> None:
    hidden = b'data: {"choices": [{"index": 0, "delta": {"content": "INJECTED"}}]}\n\n'
    data = b"x" * 40 + hidden
    for mode in MODES:
        assert feed_all(data, [], mode, max_line_bytes=32).acc.text == ""
        assert feed_all(data, [40], mode, max_line_bytes=32).acc.text == ""


# -- unit: parse_json_object and validate_chat -----------------------------------------------

chat_like = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just(MODEL), json_values),
        "messages": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "role": st.one_of(st.sampled_from(["user", "system", "tool"]), json_values),
                        "content": json_values,
                    },
                ),
                max_size=3,
            ),
            json_values,
        ),
        "stream": json_values,
        "user": json_values,
        "memory": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "user_id": json_values,
                    "top_k": json_values,
                    "enabled": json_values,
                    "store": json_values,
                    "session_id": json_values,
                    "extra": json_values,
                },
            ),
            json_values,
        ),
    },
)
request_bodies = st.one_of(
    st.binary(max_size=200),
    chat_like.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=50).map(lambda t: t.encode("utf-16")),
    chat_like.map(lambda d: json.dumps(d).encode()[:-1]),  # truncated
)


@fuzz_settings(300)
@given(raw=request_bodies)
def test_request_parsing_gives_a_chat_request_or_a_400(raw: bytes) -> None:
    try:
        body = parse_json_object(raw)
        assert isinstance(body, dict)
        chat = validate_chat(body)
    except APIError as exc:
        assert exc.status_code == 400
        assert exc.body()["error"]["message"]
        return
    assert chat.messages and isinstance(chat.model, str)


def test_deeply_nested_request_json_is_a_400() -> None:
    with pytest.raises(APIError) as raised:
        parse_json_object(b"[" * 100_000)
    assert raised.value.status_code == 400


# -- end to end: a real gateway in front of a hostile upstream -------------------------------

ALIAS = "alias-model"  # routed to the same hostile server, renamed on the way back
READ_TIMEOUT_S = 1.0
TOTAL_TIMEOUT_S = 3.0
IDLE_TIMEOUT_S = 1.0
# The longest an answer may take: the slowest script below trickles for at most ~1.2 s and
# then lets a timeout (at most TOTAL_TIMEOUT_S) end it.
ANSWER_BOUND_S = TOTAL_TIMEOUT_S + 4.0

OUTCOMES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    with HostileUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def hostile_gateway(
    tmp_path_factory: pytest.TempPathFactory, hostile: HostileUpstream, embedder: Service
) -> Iterator[Service]:
    root: Path = tmp_path_factory.mktemp("gw-hostile")
    # An alias on a second upstream (the same server): the gateway renames the model in
    # what it relays, which is another parsing path (StreamAccumulator rename_to).
    config = root / "upstreams.yaml"
    config.write_text(
        f"upstreams:\n  - name: aliased\n    urls: [{hostile.url}]\n"
        f"    models:\n      - alias: {ALIAS}\n        model: {MODEL}\n"
    )
    service = start_gateway(
        root / "data",
        hostile.url,
        embedder.url,
        GATEWAY_CONFIG=str(config),
        GATEWAY_RETRY_ATTEMPTS="1",  # each example reaches the hostile upstream exactly once
        GATEWAY_CONNECT_TIMEOUT_S="1",
        GATEWAY_READ_TIMEOUT_S=str(READ_TIMEOUT_S),
        GATEWAY_TOTAL_TIMEOUT_S=str(TOTAL_TIMEOUT_S),
        GATEWAY_STREAM_IDLE_TIMEOUT_S=str(IDLE_TIMEOUT_S),
    )
    yield service
    print(f"\nhostile-upstream outcomes: {dict(sorted(OUTCOMES.items()))}")
    for kind, (count, _) in sorted(PROBLEMS.items(), key=lambda kv: -kv[1][0]):
        print(f"  {count:4d} x {kind}")
    assert service.proc.poll() is None, "the gateway died:\n" + service.log()[-4000:]
    service.terminate()


def chat_body(stream: bool, user: str | None, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "tell me something"}],
    }
    if user:
        body["user"] = user
    return body


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    elapsed: float
    broken: str | None = None  # the gateway's HTTP answer itself was malformed
    headers: dict[str, str] = field(default_factory=dict)


def ask(gateway: Service, stream: bool, user: str | None = None, model: str = MODEL) -> Answer:
    started = time.monotonic()
    try:
        with httpx.stream(
            "POST",
            f"{gateway.url}/chat/completions",
            json=chat_body(stream, user, model),
            timeout=ANSWER_BOUND_S + 5,
        ) as response:
            try:
                body = response.read()
                broken = None
            except httpx.HTTPError as exc:
                body, broken = b"", f"{type(exc).__name__}: {exc}"
            return Answer(
                response.status_code,
                response.headers.get("content-type", ""),
                body,
                time.monotonic() - started,
                broken,
                dict(response.headers),
            )
    except httpx.HTTPError as exc:
        return Answer(0, "", b"", time.monotonic() - started, f"{type(exc).__name__}: {exc}")


def sse_data(raw: bytes) -> list[bytes]:
    """Event data as an EventSource parser sees it: an unterminated last event is dropped."""
    events: list[bytes] = []
    data: list[bytes] = []
    for line in re.split(rb"\r\n|\r|\n", raw)[:-1]:
        if not line:
            if data:
                events.append(b"\n".join(data))
            data = []
            continue
        name, _, value = line.partition(b":")
        if name == b"data":
            data.append(value[1:] if value.startswith(b" ") else value)
    return events


def as_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def is_error_envelope(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("error"), dict)
        and isinstance(value["error"].get("message"), str)
    )


def finished(event: Any) -> bool:
    choices = event.get("choices") if isinstance(event, dict) else None
    return isinstance(choices, list) and any(
        isinstance(c, dict) and c.get("finish_reason") for c in choices
    )


def problems_with(answer: Answer, stream: bool) -> list[str]:
    """What is wrong with the gateway's answer, by the contract in the module docstring."""
    if answer.broken:
        return [f"malformed HTTP answer from the gateway ({answer.broken})"]
    problems = []
    if answer.elapsed > ANSWER_BOUND_S:
        problems.append(f"took {answer.elapsed:.1f} s")
    status = answer.status
    if status >= 500 and status not in (502, 503, 504):
        problems.append(f"status {status}")
    if status == 200 and stream and answer.content_type.startswith("text/event-stream"):
        events = sse_data(answer.body)
        decoded = [as_json(e) for e in events]
        done_at = events.index(b"[DONE]") if b"[DONE]" in events else None
        seen = decoded[:done_at]
        ended = done_at is not None or any(finished(e) for e in seen)
        if not ended and not (seen and is_error_envelope(seen[-1])):
            problems.append("SSE stream ends without [DONE], a finish_reason or an error event")
    elif status == 200:
        if not isinstance(as_json(answer.body), dict):
            problems.append("200 whose body is not a JSON object")
    elif status >= 400:
        if not is_error_envelope(as_json(answer.body)):
            problems.append(f"{status} without an OpenAI error envelope")
    else:
        problems.append(f"status {status} relayed")
    return problems


def recover(gateway: Service, hostile: HostileUpstream, model: str = MODEL) -> None:
    """Back to an ordinary upstream; wait until the gateway serves ``model`` again (its
    route's breaker and health monitor may have reacted to the last hostile answer)."""
    hostile.script = None
    wait_until(
        lambda: ask(gateway, False, model=model).status == 200,
        15,
        interval=0.05,
        what=f"recovery of {model}",
    )
    assert gateway.proc.poll() is None, "the gateway died:\n" + gateway.log()[-4000:]
    assert httpx.get(f"{gateway.base_url}/livez", timeout=2).status_code == 200


def run_case(
    gateway: Service,
    hostile: HostileUpstream,
    script: Script,
    stream: bool,
    user: str | None = None,
    model: str = MODEL,
) -> tuple[Answer, list[str]]:
    recover(gateway, hostile, model)
    before = hostile.chat_requests
    hostile.script = script
    try:
        answer = ask(gateway, stream, user, model)
    finally:
        hostile.script = None
    assert hostile.chat_requests > before, "the hostile answer was never asked for"
    assert gateway.proc.poll() is None, "the gateway died:\n" + gateway.log()[-4000:]
    assert httpx.get(f"{gateway.base_url}/livez", timeout=2).status_code == 200
    return answer, problems_with(answer, stream)


# What a hostile answer is made of.
STATUSES = [200] * 10 + [
    100,
    101,
    103,
    201,
    204,
    206,
    301,
    304,
    400,
    401,
    404,
    418,
    422,
    429,
    500,
    501,
    502,
    503,
    504,
    599,
    999,
]
CONTENT_TYPES: list[bytes | None] = [
    b"application/json",
    b"text/event-stream",
    b"text/event-stream; charset=utf-8",
    b"text/html; charset=utf-8",
    b"application/octet-stream",
    b"",
    None,
    "application/json; charset=\u20ac".encode(),  # not latin-1 once decoded as UTF-8
]
RETRY_AFTER = [None, "1", "0", "-3", "abc", "1e999", "inf", "nan", "99999999999"]
FRAMINGS = [
    "length",
    "length",
    "none",
    "chunked",
    "chunked",
    "length-short",
    "length-long",
    "length-bad",
    "chunked-bad",
    "both",
]
CLOSE: End = "close"
ENDS: list[End] = [*[CLOSE] * 8, "reset", "reset", "reset", "hold"]


def good_json() -> bytes:
    return json.dumps(completion("a fine answer")).encode()


@st.composite
def bodies(draw: st.DrawFn, stream: bool) -> bytes:
    kind = draw(
        st.sampled_from(
            ["good", "good", "other", "truncated", "noise", "sse", "json", "huge", "deep", "empty"]
        )
    )
    good = sse_body("a fine answer") if stream else good_json()
    if kind == "good":
        return good
    if kind == "other":  # the upstream ignored the stream flag
        return good_json() if stream else sse_body("a fine answer")
    if kind == "truncated":
        return good[: draw(st.integers(0, len(good) - 1))]
    if kind == "noise":
        return draw(st.binary(max_size=300))
    if kind == "sse":
        return draw(sse_streams)
    if kind == "json":
        return json.dumps(draw(event_objects)).encode()
    if kind == "huge":
        size = draw(st.sampled_from([70_000, 1_100_000]))
        line = b"data: " + b"x" * size if stream else b'{"x": "' + b"y" * size
        return line + draw(st.sampled_from([b"", b"\n\n", b'"}']))
    if kind == "deep":
        return (b"data: " if stream else b"") + b"[" * draw(st.sampled_from([2_000, 100_000]))
    return b""


@st.composite
def hostile_scripts(draw: st.DrawFn, stream: bool) -> Script:
    status = draw(st.sampled_from(STATUSES))
    body = draw(bodies(stream))
    encoding = draw(st.sampled_from([None, None, None, "gzip", "gzip-lie", "deflate-lie"]))
    if encoding == "gzip":
        body = gzip.compress(body)
    headers: list[tuple[str, bytes]] = []
    ctype = draw(st.sampled_from(CONTENT_TYPES))
    if ctype is not None:
        headers.append(("content-type", ctype))
    if encoding is not None:
        headers.append(("content-encoding", encoding.removesuffix("-lie").encode()))
    retry_after = draw(st.sampled_from(RETRY_AFTER))
    if retry_after is not None:
        headers.append(("retry-after", retry_after.encode()))
    framing = draw(st.sampled_from(FRAMINGS))
    if framing.startswith("length") or framing == "both":
        length = {"length-short": max(0, len(body) - 5), "length-long": len(body) + 50}
        value = str(length.get(framing, len(body))).encode()
        if framing == "length-bad":
            value = draw(st.sampled_from([b"abc", b"-1", b"1, 2", b"99999999999999999999"]))
        headers.append(("content-length", value))
    if framing.startswith("chunked") or framing == "both":
        headers.append(("transfer-encoding", b"chunked"))
        pieces = split_at(body, draw(st.lists(st.integers(0, len(body)), max_size=4)))
        framed = b"".join(chunk_frame(p) for p in pieces if p) + b"0\r\n\r\n"
        if framing == "chunked-bad":
            framed = draw(
                st.sampled_from(
                    [
                        b"zz\r\n" + body,
                        chunk_frame(body)[:-2] + b"0\r\n\r\n",
                        b"%x\r\n" % (len(body) + 10) + body,
                        framed[:-5],
                    ]
                )
            )
        body = framed
    head = b"HTTP/1.1 %d Something\r\n" % status
    head_kind = draw(st.sampled_from(["ok"] * 8 + ["garbage", "http10", "lf", "none", "huge"]))
    if head_kind == "garbage":
        head = draw(st.binary(min_size=1, max_size=40)) + b"\r\n"
    elif head_kind == "http10":
        head = b"HTTP/1.0 %d OK\r\n" % status
    elif head_kind == "huge":
        headers.append(("x-huge", b"h" * 200_000))
    sep = b"\n" if head_kind == "lf" else b"\r\n"
    raw = head.replace(b"\r\n", sep) + b"".join(k.encode() + b": " + v + sep for k, v in headers)
    raw = body if head_kind == "none" else raw + sep + body
    cuts = draw(st.lists(st.integers(0, len(raw)), max_size=5))
    delays = st.sampled_from([0.0, 0.0, 0.0, 0.0, 0.02, 0.2])
    steps = tuple(Step(piece, draw(delays)) for piece in split_at(raw, cuts))
    return Script(steps, draw(st.sampled_from(ENDS)))


users = st.sampled_from([None, "fuzz-user"])
models = st.sampled_from([MODEL, ALIAS])
# Contract problems (the answer's shape), by kind, with the smallest script that showed each.
PROBLEMS: dict[str, tuple[int, Script]] = {}
HARD = ("took",)  # a hang fails at once (as does a dead gateway); the rest is tallied


def fuzz_case(
    gateway: Service,
    hostile: HostileUpstream,
    script: Script,
    stream: bool,
    user: str | None,
    model: str,
) -> None:
    """Hard invariants fail the example; contract problems are tallied for the test below."""
    answer, problems = run_case(gateway, hostile, script, stream, user, model)
    verdict = "problem" if problems else "ok"
    OUTCOMES[f"{'stream' if stream else 'plain'} {answer.status} {verdict}"] += 1
    assert not [p for p in problems if p.startswith(HARD)]
    for problem in problems:
        key = re.sub(r"\(.*\)", "(...)", problem)  # one kind per message, not per detail
        count, smallest = PROBLEMS.get(key, (0, script))
        size = sum(len(s.data) for s in script.steps)
        if size < sum(len(s.data) for s in smallest.steps):
            smallest = script
        PROBLEMS[key] = (count + 1, smallest)


@pytest.mark.e2e
@fuzz_settings(20, share=0.25, shrink=False)
@given(script=hostile_scripts(stream=False), user=users, model=models)
def test_hostile_upstream_plain(
    hostile_gateway: Service,
    hostile: HostileUpstream,
    script: Script,
    user: str | None,
    model: str,
) -> None:
    fuzz_case(hostile_gateway, hostile, script, False, user, model)


@pytest.mark.e2e
@fuzz_settings(20, share=0.25, shrink=False)
@given(script=hostile_scripts(stream=True), user=users, model=models)
def test_hostile_upstream_streaming(
    hostile_gateway: Service,
    hostile: HostileUpstream,
    script: Script,
    user: str | None,
    model: str,
) -> None:
    fuzz_case(hostile_gateway, hostile, script, True, user, model)


@pytest.mark.e2e
def test_hostile_upstream_answers_kept_the_contract() -> None:
    """Every answer of the two fuzz tests above was well-formed (they tally, this judges)."""
    if not OUTCOMES:
        pytest.skip("runs after test_hostile_upstream_plain/_streaming, in the same session")
    report = "\n".join(
        f"{count:4d} x {kind}\n       e.g. {b''.join(s.data for s in script.steps)[:200]!r}"
        f" then {script.end}"
        for kind, (count, script) in sorted(PROBLEMS.items(), key=lambda kv: -kv[1][0])
    )
    assert not PROBLEMS, f"contract problems in {sum(OUTCOMES.values())} answers:\n{report}"


# -- the behaviours the fuzzing found, one by one --------------------------------------------


@pytest.mark.e2e
def test_slowloris_headers_are_bounded_by_the_total_timeout(
    hostile_gateway: Service, hostile: HostileUpstream
) -> None:
    """Each byte comes within the read timeout; the whole call must still end in time."""
    raw = http_response(200, good_json())
    steps = (*(Step(raw[i : i + 4], 0.25) for i in range(0, 80, 4)), Step(raw[80:]))
    recover(hostile_gateway, hostile)
    hostile.script = Script(steps)
    answer = ask(hostile_gateway, False)
    assert sum(s.delay_s for s in steps) > TOTAL_TIMEOUT_S + 1.5  # the script is that slow
    assert answer.elapsed < TOTAL_TIMEOUT_S + 1.5
    assert answer.status == 504 and is_error_envelope(as_json(answer.body))


@pytest.mark.e2e
def test_a_good_stream_delivered_byte_by_byte_relays_intact(
    hostile_gateway: Service, hostile: HostileUpstream
) -> None:
    raw = http_head(200, [SSE]) + sse_body("trickled words")
    steps = tuple(Step(raw[i : i + 1], 0.002) for i in range(len(raw)))
    recover(hostile_gateway, hostile)
    hostile.script = Script(steps)
    answer = ask(hostile_gateway, True)
    assert problems_with(answer, True) == []
    assert answer.body == sse_body("trickled words")


def bug(raw: bytes, stream: bool, reason: str, model: str = MODEL) -> Any:
    """A bug the fuzzing found (``reason`` says where it was); fixed, it stays as a test."""
    return pytest.param(raw, stream, model)


SSE = ("content-type", "text/event-stream")
JSON_CT = ("content-type", "application/json")
# One minimal upstream answer per problem the fuzzing found (all fixed): regression tests.
KNOWN_BUGS = {
    "upstream_500_relayed": bug(
        http_response(500, b'{"error": {"message": "boom", "type": "server_error"}}'),
        False,
        "gateway/api/chat.py _Relay.complete relays any non-200 upstream status as it is: an "
        "upstream 500 reaches the client as a 500 (expected 502)",
    ),
    "html_error_page_relayed": bug(
        http_response(404, b"<html>nginx</html>", "text/html"),
        False,
        "_Relay.complete relays a non-JSON upstream error body (an HTML page) with its content "
        "type: not an OpenAI error envelope",
    ),
    "garbage_200_relayed": bug(
        http_response(200, b"\x00\xffnot json"),
        False,
        "_Relay.complete relays a 200 whose body is not JSON, which the SDK cannot parse "
        "(expected: 502 in the error envelope)",
    ),
    "status_204_relayed": bug(
        http_response(204, b"{}"),
        False,
        "_Relay.complete relays a 204 (no body) as the answer to a chat completion",
    ),
    "status_999_drops_connection": bug(
        http_response(999, json.dumps(completion()).encode()),
        False,
        "_Relay.complete relays status 999; sending it raises KeyError: 999 in the server and "
        "the client's connection is dropped without any answer",
    ),
    "content_type_not_latin1": bug(
        http_head(200, [("content-length", "2")]).replace(
            b"\r\n\r\n", "\r\ncontent-type: application/json; charset=\u20ac\r\n\r\n".encode()
        )
        + b"{}",
        False,
        "_Relay.complete passes the upstream content-type (which httpx decodes as UTF-8) to "
        "Response(media_type=...), which encodes headers as latin-1: UnicodeEncodeError, 500",
    ),
    "deep_json_200": bug(
        http_response(200, b"[" * 100_000),
        False,
        "_Relay._after_completion: json.loads raises RecursionError (only ValueError is "
        "caught): 500",
    ),
    "lying_gzip": bug(
        http_head(200, [JSON_CT, ("content-encoding", "gzip"), ("content-length", "9")])
        + b"not gzip!",
        False,
        "_Relay.complete: response.aread() raises httpx.DecodingError, which is not an "
        "httpx.TransportError, so it escapes: 500",
    ),
    "truncated_503_body": bug(
        http_head(503, [JSON_CT, ("content-length", "100")]) + b'{"error":',
        False,
        "gateway/upstream/pool.py _attempt reads the body of a retryable status "
        "(429/502/503/504) with `await response.aread()` outside its try: an error while "
        "reading it (httpx.RemoteProtocolError / ReadError here; DecodingError with a lying "
        "content-encoding) escapes open_chat and _open: 500",
    ),
    "retry_after_infinite": bug(
        http_head(503, [JSON_CT, ("retry-after", "1e999"), ("content-length", "2")]) + b"{}",
        False,
        "gateway/api/chat.py _open: str(int(exc.retry_after or 1)) raises OverflowError for "
        "Retry-After 'inf' or '1e999' (pool._retry_after accepts any float): 500",
    ),
    "stream_cut_mid_line": bug(
        http_head(200, [SSE]) + sse_event(stream_chunk("partial")) + b'data: {"choices": [',
        True,
        "_Relay.stream appends its error event right after the relayed bytes; when the "
        "upstream stopped mid-line, 'data: {error}' is glued onto that line and the client's "
        "SSE parser never sees an error event (prefix it with a blank line)",
    ),
    "stream_choices_not_a_list": bug(
        http_head(200, [SSE]) + sse_event({"choices": 5}) + sse_event(b"[DONE]"),
        True,
        "StreamAccumulator raises TypeError on {'choices': 5}; _Relay.stream does not catch "
        "it, so the client's stream is cut (incomplete chunked body), no error event",
    ),
    "stream_gzip": bug(
        http_head(200, [SSE, ("content-encoding", "gzip")]) + gzip.compress(sse_body("zipped")),
        True,
        "_Relay.stream relays response.aiter_raw(), still gzip-compressed, without the "
        "content-encoding header: the client gets compressed bytes as its SSE stream "
        "(use aiter_bytes())",
    ),
    "alias_reply_with_lone_surrogate": bug(
        http_response(200, b'{"model": "hostile-model", "choices": [], "x": "\\ud800"}'),
        False,
        "gateway/upstream/sse.py rename_model (an alias's reply gets the client's model name "
        "back): json.dumps(event, ensure_ascii=False).encode() raises UnicodeEncodeError for "
        "an escaped lone surrogate in the upstream's JSON: 500",
        model=ALIAS,
    ),
    "alias_stream_with_lone_surrogate": bug(
        http_head(200, [SSE])
        + b'data: {"model": "hostile-model", "x": "\\ud800"}\n\n'
        + sse_event(b"[DONE]"),
        True,
        "StreamAccumulator._line with rename_to: the same UnicodeEncodeError escapes "
        "_Relay.stream and cuts the client's stream",
        model=ALIAS,
    ),
}


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("raw", "stream", "model"), list(KNOWN_BUGS.values()), ids=list(KNOWN_BUGS)
)
def test_known_hostile_answers(
    hostile_gateway: Service, hostile: HostileUpstream, raw: bytes, stream: bool, model: str
) -> None:
    _, problems = run_case(hostile_gateway, hostile, Script.of(raw), stream, None, model)
    assert problems == []
