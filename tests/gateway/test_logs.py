"""JSON log lines: their shape, the request id, and no message content or keys, ever.

The last test runs the real processes (gateway, stand-in LLM, embedder) at the
default level and reads everything the gateway wrote.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from typing import Any

import httpx
import pytest
from openai import AuthenticationError, BadRequestError, OpenAI

from gateway.logs import FIELDS, JsonFormatter
from gateway.observability import request_id_var
from harness.fake_llm import RunningServer
from harness.process import Service, wait_until
from tests.conftest import GatewayFactory


def record(msg: str, *args: object, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("gateway.chat", logging.INFO, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_a_line_is_one_json_object_with_the_fixed_keys() -> None:
    line = JsonFormatter().format(record("upstream %s: %s", "primary", "healthy"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry == {
        "ts": entry["ts"],
        "level": "info",
        "logger": "gateway.chat",
        "msg": "upstream primary: healthy",
    }
    assert entry["ts"].endswith("+00:00")


def test_the_request_id_of_the_current_context_is_added() -> None:
    token = request_id_var.set("rid-42")
    try:
        entry = json.loads(JsonFormatter().format(record("x")))
    finally:
        request_id_var.reset(token)
    assert entry["request_id"] == "rid-42"
    assert "request_id" not in json.loads(JsonFormatter().format(record("x")))


def test_only_known_extra_fields_are_written() -> None:
    known = {"method": "GET", "route": "/v1/models", "status": 200, "duration_ms": 1.5}
    entry = json.loads(
        JsonFormatter().format(record("x", **known, body="SECRET BODY", authorization="k"))
    )
    assert set(FIELDS) == set(known)
    assert {name: entry[name] for name in FIELDS} == known
    assert "SECRET" not in json.dumps(entry) and "authorization" not in entry


def test_tracebacks_are_one_field_of_the_same_line() -> None:
    try:
        raise KeyError("missing")
    except KeyError:
        rec = logging.LogRecord("gateway", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    assert "KeyError: 'missing'" in json.loads(line)["exc"]


# --- no content and no keys in the real gateway's logs --------------------------

SECRET_TEXT = "zebra-7f3c my bank PIN is 4921 and my password is hunter2-q8"
CLIENT_KEY = f"sk-client-{uuid.uuid4().hex}"
WRONG_KEY = f"sk-wrong-{uuid.uuid4().hex}"
UPSTREAM_KEY = f"sk-upstream-{uuid.uuid4().hex}"
SECRETS = {
    "message content": "zebra-7f3c",
    "message content (2)": "hunter2-q8",
    "client key": CLIENT_KEY,
    "wrong client key": WRONG_KEY,
    "upstream key": UPSTREAM_KEY,
}


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.e2e
def test_content_and_keys_never_reach_the_logs_at_info(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(
        llm.url,
        embedder.url,
        GATEWAY_API_KEYS=f"acme:{CLIENT_KEY}",
        GATEWAY_LLM_API_KEY=UPSTREAM_KEY,
        GATEWAY_LOG_LEVEL="info",
    )
    user = f"user-{uuid.uuid4().hex[:8]}"
    client = OpenAI(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": SECRET_TEXT}]

    reply = client.chat.completions.with_raw_response.create(
        model="fake-model", messages=messages, user=user, extra_headers={"x-request-id": "chat-1"}
    )
    assert reply.parse().choices[0].message.content == f"echo: {SECRET_TEXT}"
    chunks = client.chat.completions.create(
        model="fake-model", messages=messages, user=user, stream=True
    )
    assert "hunter2-q8" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    invalid: Any = [{"role": "nobody", "content": SECRET_TEXT}]
    with pytest.raises(BadRequestError):  # a 400 whose body holds the secret
        client.chat.completions.create(model="fake-model", messages=invalid)
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=gateway.url, api_key=WRONG_KEY, max_retries=0).models.list()
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    added = httpx.post(
        f"{gateway.url}/memories",
        json={"user_id": user, "text": f"note: {SECRET_TEXT}"},
        headers=headers,
    )
    assert added.status_code in (201, 202)
    found = httpx.post(
        f"{gateway.url}/memories/search",
        json={"user_id": user, "query": SECRET_TEXT},
        headers=headers,
    )
    assert found.status_code == 200
    # The chat turns are stored in the background: wait, so their logging is covered too.
    wait_until(
        lambda: (
            len(
                httpx.get(
                    f"{gateway.url}/memories", params={"user_id": user}, headers=headers
                ).json()["results"]
            )
            >= 3
        ),
        10,
        what="memories stored",
    )
    gateway.terminate()  # flushes everything, shutdown logs included

    log = gateway.log()
    leaked = {what: secret for what, secret in SECRETS.items() if secret in log}
    assert not leaked, f"secrets in the gateway log: {leaked}\n{log[-3000:]}"
    assert user not in log  # user ids are not logged either (query strings never are)

    lines = json_lines(log)
    assert lines, log[-2000:]
    not_json = [line for line in log.splitlines() if line.strip() and not line.startswith("{")]
    assert not not_json, not_json[:5]
    access = [line for line in lines if line["logger"] == "gateway.access"]
    chat = [line for line in access if line.get("request_id") == "chat-1"]
    assert [(line["method"], line["route"], line["status"]) for line in chat] == [
        ("POST", "/v1/chat/completions", 200)
    ]
    routes = {(line["route"], line["status"]) for line in access}
    assert {("/v1/chat/completions", 400), ("/v1/models", 401), ("/v1/memories", 200)} <= routes
