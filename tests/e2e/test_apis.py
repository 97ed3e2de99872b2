"""Memory on the Responses and Anthropic Messages APIs, and the rest passed through.

Real processes: the embedder with the real weights, the gateway (two
tenants), and the stand-in LLM speaking each API as vLLM does; the official
``openai`` and ``anthropic`` SDKs as the clients.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import struct
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic import Anthropic
from openai import OpenAI

from harness.fake_llm import RunningServer
from harness.process import Service
from tests.e2e.conftest import wait_for_memories
from tests.support.stack import start_gateway

pytestmark = pytest.mark.e2e

A, B = "acme", "globex"
KEYS = {A: "key-acme-apis", B: "key-globex-apis"}
MODEL = "fake-model"
FACT = "My sister Ingrid lives in Trondheim and she breeds Norwegian forest cats."
QUESTION = "Where does my sister live?"


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, shared_llm: RunningServer, embedder: Service
) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("gw-apis")
    service = start_gateway(
        root / "data",
        shared_llm.url,
        embedder.url,
        GATEWAY_API_KEYS=",".join(f"{t}:{k}" for t, k in KEYS.items()),
        GATEWAY_STREAM_IDLE_TIMEOUT_S="2",  # a stalled stream ends soon
    )
    yield service
    service.terminate()


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def oai(gateway: Service, tenant: str = A) -> OpenAI:
    return OpenAI(base_url=gateway.url, api_key=KEYS[tenant], max_retries=0)


def claude(gateway: Service, tenant: str = A) -> Anthropic:
    # The Anthropic SDK appends /v1/messages itself and sends its key as x-api-key.
    return Anthropic(base_url=gateway.base_url, api_key=KEYS[tenant], max_retries=0)


def last(upstream: RunningServer, path: str) -> dict[str, Any]:
    found = [r for r in upstream.requests() if r.get("path") == path]
    assert found, f"no request to {path} reached the upstream"
    return found[-1]


# -- one turn on each API, as a client writes it -----------------------------


def respond(client: OpenAI, user: str, text: str, stream: bool) -> str:
    if not stream:
        reply = client.responses.create(model=MODEL, input=text, safety_identifier=user)
        assert reply.status == "completed"
        return reply.output_text
    events = list(
        client.responses.create(model=MODEL, input=text, safety_identifier=user, stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def message(client: Anthropic, user: str, text: str, stream: bool) -> str:
    asked: Any = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
        "metadata": {"user_id": user},
    }
    if not stream:
        reply = client.messages.create(**asked)
        assert reply.stop_reason == "end_turn"
        return "".join(b.text for b in reply.content if b.type == "text")
    events = list(client.messages.create(**asked, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    return "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )


def told(gateway: Service, user: str, reply: str) -> None:
    """The reply to FACT came back, and the turn (both sides) was remembered."""
    assert reply == f"echo: {FACT}"
    stored = wait_for_memories(gateway, user, 2, auth(A))
    assert FACT in stored and reply in stored


def chat(client: OpenAI, user: str, text: str) -> str:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], safety_identifier=user
    )
    return reply.choices[0].message.content or ""


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_responses_remember_and_recall(
    gateway: Service, upstream: RunningServer, user: str, stream: bool
) -> None:
    client = oai(gateway)
    told(gateway, user, respond(client, user, FACT, stream))
    respond(client, user, QUESTION, stream)
    sent = last(upstream, "/v1/responses")["body"]
    assert "Trondheim" in sent["instructions"]  # the memory block, as instructions
    assert sent["input"] == QUESTION and "memory" not in sent

    respond(client, f"{user}-other", QUESTION, stream)
    assert "Trondheim" not in json.dumps(last(upstream, "/v1/responses")["body"])


def test_responses_memory_joins_the_clients_instructions_or_system_item(
    gateway: Service, upstream: RunningServer, user: str
) -> None:
    client = oai(gateway)
    told(gateway, user, respond(client, user, FACT, stream=False))

    client.responses.create(
        model=MODEL, input=QUESTION, instructions="Answer in French.", safety_identifier=user
    )
    sent = last(upstream, "/v1/responses")["body"]
    assert sent["instructions"].startswith("Answer in French.\n\n")
    assert "Trondheim" in sent["instructions"]

    items: Any = [
        {"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
    ]
    client.responses.create(model=MODEL, input=items, safety_identifier=user)
    sent = last(upstream, "/v1/responses")["body"]
    assert "instructions" not in sent  # a second system message would break templates
    parts = sent["input"][0]["content"]
    assert parts[0] == items[0]["content"][0] and parts[1]["type"] == "input_text"
    assert "Trondheim" in parts[1]["text"] and sent["input"][1] == items[1]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_messages_remember_and_recall(
    gateway: Service, upstream: RunningServer, user: str, stream: bool
) -> None:
    client = claude(gateway)
    told(gateway, user, message(client, user, FACT, stream))

    client.messages.create(
        model=MODEL,
        max_tokens=64,
        system=[{"type": "text", "text": "You are terse."}],
        messages=[{"role": "user", "content": QUESTION}],
        metadata={"user_id": user},
        stream=stream,
    )
    sent = last(upstream, "/v1/messages")["body"]
    assert sent["system"][0] == {"type": "text", "text": "You are terse."}
    assert "Trondheim" in sent["system"][1]["text"]
    assert sent["messages"] == [{"role": "user", "content": QUESTION}]


def test_an_agents_call_after_a_tool_result_recalls_and_remembers(
    gateway: Service, upstream: RunningServer, user: str
) -> None:
    # An Anthropic agent loop: the call after the tool ran ends in a user message of
    # only tool_result blocks. Memory was off for it (no text), and the loop's final
    # answer was never remembered.
    client = claude(gateway)
    told(gateway, user, message(client, user, FACT, stream=False))
    tool_use = {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "sister"}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "no record"}
    reply = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=64,
        messages=[
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": [tool_use]},
            {"role": "user", "content": [result]},
        ],
        metadata={"user_id": user},
    )
    assert int(reply.headers["x-memory-hits"]) >= 1
    assert "Trondheim" in last(upstream, "/v1/messages")["body"]["system"]
    answer = "".join(b.text for b in reply.parse().content if b.type == "text")
    stored = wait_for_memories(gateway, user, 4, auth(A))
    assert QUESTION in stored and answer.strip() in stored  # stored as stripped


def test_a_memory_written_through_one_api_is_recalled_through_the_others_in_its_tenant_only(
    gateway: Service, upstream: RunningServer, user: str
) -> None:
    told(gateway, user, message(claude(gateway), user, FACT, stream=False))

    respond(oai(gateway), user, QUESTION, stream=True)
    assert "Trondheim" in last(upstream, "/v1/responses")["body"]["instructions"]
    chat(oai(gateway), user, QUESTION)
    assert "Trondheim" in last(upstream, "/v1/chat/completions")["body"]["messages"][0]["content"]
    message(claude(gateway), user, QUESTION, stream=True)
    assert "Trondheim" in last(upstream, "/v1/messages")["body"]["system"]

    # The same user id under another tenant is another user: nothing recalled, on any API.
    upstream.clear_requests()
    respond(oai(gateway, B), user, QUESTION, stream=False)
    chat(oai(gateway, B), user, QUESTION)
    message(claude(gateway, B), user, QUESTION, stream=False)
    seen = upstream.requests()
    assert len(seen) == 3 and "Trondheim" not in json.dumps(seen)


def test_a_stalled_stream_ends_in_each_apis_own_error_event_and_is_not_remembered(
    gateway: Service, upstream: RunningServer, user: str
) -> None:
    upstream.set_behavior(mode="stall")  # the first event, then nothing
    events = list(
        oai(gateway).responses.create(model=MODEL, input=FACT, safety_identifier=user, stream=True)
    )
    assert events[0].type == "response.created"
    assert events[-1].type == "error" and events[-1].code == "upstream_stream_idle_timeout"
    # The gateway's error event continues the stream's numbering.
    assert events[-1].sequence_number == events[-2].sequence_number + 1

    with pytest.raises(anthropic.APIStatusError, match="sent nothing for 2s"):
        list(claude(gateway).messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": FACT}],
            metadata={"user_id": user}, stream=True,
        ))  # fmt: skip
    upstream.set_behavior()
    assert message(claude(gateway), user, "now it works", stream=True) == "echo: now it works"
    stored = wait_for_memories(gateway, user, 2, auth(A))
    assert FACT not in stored  # the broken turns stored nothing


def test_an_upstreams_client_error_reaches_the_client_as_such(
    gateway: Service, upstream: RunningServer
) -> None:
    upstream.set_behavior(mode="fail", status=400, times=2)
    with pytest.raises(openai.BadRequestError, match="injected failure"):
        oai(gateway).responses.create(model=MODEL, input="x")
    with pytest.raises(anthropic.BadRequestError, match="injected failure"):
        message(claude(gateway), "someone", "x", stream=False)


def test_usage_of_every_api_is_counted(gateway: Service, upstream: RunningServer) -> None:
    def tokens() -> float:
        text = httpx.get(f"{gateway.base_url}/metrics").text
        found = re.findall(r'^memgate_upstream_tokens_total\{[^}]*kind="prompt"[^}]*\} (\S+)$',
                           text, re.M)  # fmt: skip
        return sum(map(float, found))

    before = tokens()
    respond(oai(gateway), "counted", "one two three", stream=True)
    message(claude(gateway), "counted", "four five six", stream=True)
    # The stand-in counts words: the prompts have at least 3 each (plus any memories).
    assert tokens() - before >= 6


# -- the Responses API's stored responses ------------------------------------


def test_a_response_is_fetched_and_cancelled_by_its_own_tenant_only(
    gateway: Service, upstream: RunningServer
) -> None:
    made = oai(gateway).responses.create(model=MODEL, input="keep this")
    fetched = oai(gateway).responses.retrieve(made.id)
    assert (fetched.id, fetched.output_text) == (made.id, "echo: keep this")
    cancelled = oai(gateway).responses.cancel(made.id)
    assert cancelled.status == "cancelled"

    upstream.clear_requests()
    for call in (oai(gateway, B).responses.retrieve, oai(gateway, B).responses.cancel):
        with pytest.raises(openai.NotFoundError):
            call(made.id)
    with pytest.raises(openai.NotFoundError):
        oai(gateway, B).responses.create(model=MODEL, input="go on", previous_response_id=made.id)
    assert upstream.requests() == []  # refused by the gateway: nothing reached the LLM

    follow = oai(gateway).responses.create(model=MODEL, input="go on", previous_response_id=made.id)
    assert follow.previous_response_id == made.id


def test_an_empty_previous_response_id_is_a_bad_request_not_an_unknown_id(
    gateway: Service, upstream: RunningServer
) -> None:
    upstream.clear_requests()
    with pytest.raises(openai.BadRequestError) as refused:
        oai(gateway).responses.create(model=MODEL, input="go on", previous_response_id="")
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert upstream.requests() == []


# -- everything else, passed through -----------------------------------------


def test_completions_pass_through_plain_and_streamed(
    gateway: Service, upstream: RunningServer
) -> None:
    client = oai(gateway)
    done = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8)
    assert done.choices[0].text == "echo: Once upon a time"
    streamed = client.completions.create(model=MODEL, prompt="Once more", stream=True)
    assert "".join(c.choices[0].text for c in streamed) == "echo: Once more"
    assert last(upstream, "/v1/completions")["body"]["prompt"] == "Once more"


def test_embeddings_pass_through_unchanged(gateway: Service, upstream: RunningServer) -> None:
    result = oai(gateway).embeddings.create(model=MODEL, input=["hello", "hi there"])
    assert [round(v) for v in result.data[1].embedding] == [8, 1, 0, 1]  # 0.5 rounds to 0
    sent = last(upstream, "/v1/embeddings")["body"]
    assert sent["encoding_format"] == "base64"  # the SDK's own choice, forwarded as is
    raw = httpx.post(
        f"{gateway.url}/embeddings", headers=auth(A),
        json={"model": MODEL, "input": "abc", "encoding_format": "base64"},
    ).json()  # fmt: skip
    assert struct.unpack("<4f", base64.b64decode(raw["data"][0]["embedding"]))[0] == 3.0


@pytest.mark.parametrize(
    "path", ["/v1/../_control/stats", "/v1/%2e%2e/_control/stats", "/v1/a/%2E/b"]
)
def test_a_path_with_dot_segments_is_refused_and_never_forwarded(
    gateway: Service, upstream: RunningServer, path: str
) -> None:
    # http.client sends the path as written (httpx would resolve the dots first).
    url = httpx.URL(gateway.url)
    connection = http.client.HTTPConnection(url.host, url.port, timeout=10)
    upstream.clear_requests()
    connection.request("GET", path, headers=auth(A))
    answer = connection.getresponse()
    body = json.loads(answer.read())
    connection.close()
    assert answer.status == 400 and body["error"]["code"] == "invalid_path"
    assert upstream.requests() == []


def test_multipart_tokenize_count_tokens_and_unknown_endpoints(
    gateway: Service, upstream: RunningServer
) -> None:
    client = oai(gateway)
    audio = b"RIFF" + bytes(range(256)) * 40
    text = client.audio.transcriptions.create(
        model=MODEL, file=("a.wav", audio), response_format="text"
    )
    assert str(text).strip() == f"transcript of {len(audio)} bytes"
    as_json = client.audio.transcriptions.create(model=MODEL, file=("a.wav", audio))
    assert as_json.text == f"transcript of {len(audio)} bytes"
    assert last(upstream, "/v1/audio/transcriptions")["body"]["model"] == MODEL

    tokens = httpx.post(f"{gateway.base_url}/tokenize", headers=auth(A), json={"prompt": "a bb"})
    assert tokens.json()["tokens"] == [1, 2]
    counted = claude(gateway).messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "one two three"}]
    )
    assert counted.input_tokens == 3

    # An endpoint this upstream lacks: its own 404, in the error envelope.
    missing = httpx.post(f"{gateway.url}/no/such/thing", headers=auth(A), json={})
    assert missing.status_code == 404 and "error" in missing.json()
    # The gateway's own paths are not forwarded with another method.
    assert httpx.put(f"{gateway.url}/memories", headers=auth(A)).status_code == 405
    # Pass-through needs the tenant's key like everything else.
    assert httpx.post(f"{gateway.url}/completions", json={"model": MODEL}).status_code == 401
    with pytest.raises(anthropic.AuthenticationError):
        Anthropic(base_url=gateway.base_url, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    unknown = httpx.post(f"{gateway.url}/completions", headers=auth(A), json={"model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages"])
def test_streams_are_relayed_unchanged(
    gateway: Service, upstream: RunningServer, path: str
) -> None:
    """Byte for byte, but for the ids and times that differ between two requests."""
    body = {"model": MODEL, "input": "same words", "stream": True}
    if path == "/v1/messages":
        body = {"model": MODEL, "max_tokens": 8, "stream": True,
                "messages": [{"role": "user", "content": "same words"}]}  # fmt: skip
    via = httpx.post(gateway.base_url + path, headers=auth(A), json=body).text
    direct = httpx.post(upstream.base_url + path, json=body).text

    def masked(text: str) -> str:
        return re.sub(r'(fake)\d+|"created(_at)?":\d+', r"\1", text)

    assert masked(via) == masked(direct)
    assert via.count("event: ") > 5
