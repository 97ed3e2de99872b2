"""What an upstream answers, as the client and the memory see it.

A real gateway process on the stand-in LLM (which records what it was sent
and can answer odd shapes) and the real embedder.
"""

from __future__ import annotations

import json

import httpx
import pytest

from harness.fake_llm import RunningServer
from harness.process import Service
from tests.conftest import GatewayFactory
from tests.e2e.conftest import memories_of

pytestmark = pytest.mark.e2e

MODEL = "fake-model"


def chat(user: str, text: str, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "user": user, "messages": [{"role": "user", "content": text}], **extra}


def metric_sum(gateway: Service, name: str, **labels: str) -> float:
    """The sum of ``name`` over the series whose labels include ``labels``."""
    total = 0.0
    for line in httpx.get(f"{gateway.base_url}/metrics", timeout=5).text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.startswith(name + "{") and all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def queued(gateway: Service) -> int:
    return int(httpx.get(f"{gateway.base_url}/admin/outbox", timeout=5).json()["depth"])


def sse_data(text: str) -> list[str]:
    return [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]


def test_a_stream_with_stream_options_null_still_counts_its_tokens(
    gateway: Service, llm: RunningServer
) -> None:
    # null is the client saying nothing: the gateway's include_usage must reach the
    # upstream (a splice before the client's null lost to it), and the client, who
    # did not ask for usage, still gets no usage event.
    body = chat("u-null", "count me", stream=True, stream_options=None)
    with httpx.stream("POST", f"{gateway.url}/chat/completions", json=body, timeout=30) as reply:
        assert reply.status_code == 200
        events = sse_data(reply.read().decode())
    assert events[-1] == "[DONE]"
    assert not any('"usage"' in e for e in events)
    assert llm.requests()[-1]["body"]["stream_options"] == {"include_usage": True}
    assert metric_sum(gateway, "memgate_upstream_tokens_total", kind="completion") > 0
    assert json.loads(events[0])["choices"]


def test_an_answer_over_the_body_cap_is_a_502_and_leaves_the_breaker_closed(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    # 200 MB from an upstream used to cost the gateway 3x that in memory. Past the
    # cap the read stops: 502, nothing stored; the failure is counted but, since a
    # client can ask for a huge honest answer, the breaker all tenants share stays closed.
    gateway = gateway_factory(llm.url, embedder.url, GATEWAY_MAX_UPSTREAM_BODY_BYTES="100000")
    llm.set_behavior(reply="x" * 200_000, times=6)
    for _ in range(6):  # more than the breaker's 5 consecutive failures
        reply = httpx.post(
            f"{gateway.url}/chat/completions", json=chat("u-big", "a lot please"), timeout=30
        )
        assert reply.status_code == 502, reply.text[:200]
        assert reply.json()["error"]["code"] == "upstream_response_too_large"
    assert memories_of(gateway, "u-big") == [] and queued(gateway) == 0
    requests = "memgate_upstream_requests_total"
    assert metric_sum(gateway, requests, upstream="primary", outcome="http_error") == 6
    breaker = "memgate_upstream_breaker_state"
    assert metric_sum(gateway, breaker, upstream="primary", state="closed") == 1
    ok = httpx.post(f"{gateway.url}/chat/completions", json=chat("u-big", "a little"), timeout=30)
    assert ok.status_code == 200


def test_a_200_without_choices_is_a_502_and_stores_no_turn(
    gateway: Service, llm: RunningServer
) -> None:
    # It used to be relayed as a 200 and counted as a finished turn: the user's
    # message was remembered though no reply ever came.
    llm.set_behavior(mode="raw", body=json.dumps({"id": "x", "model": MODEL}), times=1)
    reply = httpx.post(
        f"{gateway.url}/chat/completions", json=chat("u-nochoices", "remember me"), timeout=30
    )
    assert reply.status_code == 502
    assert reply.json()["error"]["code"] == "upstream_invalid"
    assert memories_of(gateway, "u-nochoices") == [] and queued(gateway) == 0


@pytest.mark.parametrize(
    ("path", "asked"),
    [
        ("/responses", {"input": "remember me", "safety_identifier": "u-empty-responses"}),
        ("/messages", {"max_tokens": 16, "metadata": {"user_id": "u-empty-messages"},
                       "messages": [{"role": "user", "content": "remember me"}]}),
    ],
)  # fmt: skip
def test_a_200_that_is_not_the_apis_answer_is_a_502_and_stores_no_turn(
    gateway: Service, llm: RunningServer, path: str, asked: dict[str, object]
) -> None:
    llm.set_behavior(mode="raw", body=json.dumps({"id": "x", "model": MODEL}), times=1)
    reply = httpx.post(f"{gateway.url}{path}", json={"model": MODEL, **asked}, timeout=30)
    assert reply.status_code == 502
    assert reply.json()["error"]["code"] == "upstream_invalid"
    user = str(asked.get("safety_identifier") or asked["metadata"]["user_id"])  # type: ignore[index]
    assert memories_of(gateway, user) == [] and queued(gateway) == 0


def test_a_200_carrying_an_error_is_relayed_as_that_error(
    gateway: Service, llm: RunningServer
) -> None:
    error = {"error": {"message": "quota exceeded", "type": "insufficient_quota", "code": "quota"}}
    for stream in (False, True):
        llm.set_behavior(mode="raw", body=json.dumps(error), times=1)
        body = chat("u-200-error", "hello", stream=stream)
        reply = httpx.post(f"{gateway.url}/chat/completions", json=body, timeout=30)
        assert reply.status_code == 502
        assert reply.headers["content-type"] == "application/json"
        assert reply.json()["error"]["message"] == "quota exceeded"
        assert reply.json()["error"]["code"] == "quota"
    assert memories_of(gateway, "u-200-error") == [] and queued(gateway) == 0


def test_a_stream_answered_with_a_page_is_a_502_not_an_event_stream(
    gateway: Service, llm: RunningServer
) -> None:
    # It used to reach the client as 200 text/event-stream holding the raw HTML.
    page = "<html><body>502 Bad Gateway</body></html>"
    llm.set_behavior(mode="raw", body=page, content_type="text/html", times=1)
    body = chat("u-html", "stream me", stream=True)
    reply = httpx.post(f"{gateway.url}/chat/completions", json=body, timeout=30)
    assert reply.status_code == 502
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["error"]["code"] == "upstream_invalid"
    assert "<html>" not in reply.text
    assert memories_of(gateway, "u-html") == [] and queued(gateway) == 0
    ok = httpx.post(f"{gateway.url}/chat/completions", json=body, timeout=30)  # the next is fine
    assert ok.status_code == 200 and sse_data(ok.text)[-1] == "[DONE]"


@pytest.mark.parametrize("status", [401, 403])
def test_an_upstream_refusing_the_gateways_key_shows_clients_none_of_it(
    gateway: Service, llm: RunningServer, status: int
) -> None:
    # A hosted upstream's words on a wrong key hold part of it, and its code
    # (invalid_api_key) would tell the client's SDK that the client's key is wrong.
    words = "Incorrect API key provided: sk-proj-****************wxyz."
    error = {"error": {"message": words, "type": "invalid_request_error",
                       "code": "invalid_api_key"}}  # fmt: skip
    for stream in (False, True):
        llm.set_behavior(mode="raw", status=status, body=json.dumps(error), times=1)
        body = chat("u-upstream-key", "hello", stream=stream)
        reply = httpx.post(f"{gateway.url}/chat/completions", json=body, timeout=30)
        assert reply.status_code == 502
        assert reply.json()["error"]["code"] == "upstream_auth_failed"
        assert "sk-proj" not in reply.text and "wxyz" not in reply.text
    assert memories_of(gateway, "u-upstream-key") == [] and queued(gateway) == 0


def test_an_upstream_failure_shows_clients_none_of_its_words(
    gateway: Service, llm: RunningServer
) -> None:
    # llama.cpp's server answers a request it cannot serve with a 500 whose
    # message ends a Python traceback, the path of a file on its host in it.
    words = 'File "/srv/models/llama_cpp/llama_chat_format.py", line 301: KeyError'
    error = {"error": {"message": words, "type": "internal_server_error", "code": "k"}}
    for stream in (False, True):
        llm.set_behavior(mode="raw", status=500, body=json.dumps(error), times=1)
        body = chat("u-upstream-500", "hello", stream=stream)
        reply = httpx.post(f"{gateway.url}/chat/completions", json=body, timeout=30)
        assert reply.status_code == 502
        assert reply.json()["error"]["code"] == "upstream_error"
        assert "/srv/models" not in reply.text and "KeyError" not in reply.text
    assert memories_of(gateway, "u-upstream-500") == [] and queued(gateway) == 0
