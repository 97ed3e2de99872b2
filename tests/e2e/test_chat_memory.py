"""A fact told in one conversation reaches the LLM in a later one, for that user only.

Real processes: the embedder with the real weights, the gateway on each store
adapter, and the stand-in LLM; the official openai SDK as the client.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

from harness.fake_llm import RunningServer
from harness.process import Service
from tests.e2e.conftest import memories_of, wait_for_memories

pytestmark = pytest.mark.e2e

FACT = "My sister Ingrid lives in Trondheim and she breeds Norwegian forest cats."
QUESTION = "Where does my sister live?"


def system_text(request: dict[str, Any]) -> str:
    first = request["body"]["messages"][0]
    return str(first["content"]) if first["role"] == "system" else ""


def sync_client(gateway: Service) -> OpenAI:
    return OpenAI(base_url=gateway.url, api_key="unused", max_retries=0)


def ask(client: OpenAI, user: str, text: str, stream: bool) -> str:
    messages: Any = [{"role": "user", "content": text}]
    if stream:
        chunks = client.chat.completions.create(
            model="fake-model", messages=messages, user=user, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reply = client.chat.completions.create(model="fake-model", messages=messages, user=user)
    return reply.choices[0].message.content or ""


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_fact_reaches_a_later_conversation_for_that_user_only(
    stack_gateway: Service, upstream: RunningServer, user: str, stream: bool
) -> None:
    client = sync_client(stack_gateway)
    assert ask(client, user, FACT, stream) == f"echo: {FACT}"
    stored = wait_for_memories(stack_gateway, user, 2)
    assert FACT in stored and f"echo: {FACT}" in stored

    ask(client, user, QUESTION, stream)
    later = upstream.requests()[-1]
    assert "Trondheim" in system_text(later)
    assert later["body"]["messages"][-1] == {"role": "user", "content": QUESTION}

    ask(client, f"{user}-other", QUESTION, stream)
    stranger = upstream.requests()[-1]
    assert "Trondheim" not in json.dumps(stranger["body"])


async def test_async_client_streaming_and_not(
    stack_gateway: Service, upstream: RunningServer, user: str
) -> None:
    client = AsyncOpenAI(base_url=stack_gateway.url, api_key="unused", max_retries=0)
    reply = await client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": FACT}], user=user
    )
    assert reply.choices[0].message.content == f"echo: {FACT}"
    wait_for_memories(stack_gateway, user, 2)
    stream = await client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        extra_body={"memory": {"user_id": user}},
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == f"echo: {QUESTION}"
    assert "Trondheim" in system_text(upstream.requests()[-1])
    await client.close()


def test_hits_header_and_existing_system_message(
    stack_gateway: Service, upstream: RunningServer, user: str
) -> None:
    client = sync_client(stack_gateway)
    ask(client, user, FACT, stream=False)
    wait_for_memories(stack_gateway, user, 2)
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model",
        user=user,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": QUESTION},
        ],
    )
    assert int(raw.headers["x-memory-hits"]) >= 1
    messages = upstream.requests()[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]  # still one system message
    assert messages[0]["content"].startswith("Answer briefly.\n\n")
    assert "Trondheim" in messages[0]["content"]


def test_a_turn_the_request_holds_already_is_not_recalled_into_it(
    stack_gateway: Service, upstream: RunningServer, user: str
) -> None:
    # The client sends the conversation so far with each turn: its earlier turns,
    # stored as memories, must not come back as "notes from earlier conversations".
    client = sync_client(stack_gateway)
    ask(client, user, "I keep bees on my roof in Lisbon.", stream=False)
    ask(client, user, FACT, stream=False)
    wait_for_memories(stack_gateway, user, 4)
    history: Any = [
        {"role": "user", "content": FACT},
        {"role": "assistant", "content": f"echo: {FACT}"},
        {"role": "user", "content": QUESTION},
    ]
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model", user=user, messages=history
    )
    block = system_text(upstream.requests()[-1])
    assert "Lisbon" in block  # the other conversation's turn is recalled
    assert "Trondheim" not in block  # this conversation's is in the request already
    assert raw.headers["x-memory-hits"] == "2"  # the bees turn; the top_k is filled on


def test_unknown_fields_are_forwarded_and_memory_object_is_not(
    stack_gateway: Service, upstream: RunningServer, user: str
) -> None:
    client = sync_client(stack_gateway)
    tools: Any = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "hello"}],
        temperature=0.3,
        top_p=0.9,
        max_tokens=17,
        tools=tools,
        response_format={"type": "json_object"},
        seed=7,
        extra_body={
            "memory": {"user_id": user, "store": False},
            "top_k": 5,
            "chat_template_kwargs": {"enable_thinking": False},
        },
    )
    body = upstream.requests()[-1]["body"]
    assert "memory" not in body
    assert body["temperature"] == 0.3 and body["top_p"] == 0.9 and body["max_tokens"] == 17
    assert body["tools"] == tools and body["response_format"] == {"type": "json_object"}
    assert body["seed"] == 7 and body["top_k"] == 5
    assert body["chat_template_kwargs"] == {"enable_thinking": False}


def test_without_a_user_the_body_goes_upstream_byte_for_byte(
    stack_gateway: Service, upstream: RunningServer
) -> None:
    raw = b'{"model":"fake-model","messages":[{"role":"user","content":"hi"}],"x_custom":[1,2]}'
    response = httpx.post(
        f"{stack_gateway.url}/chat/completions",
        content=raw,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200 and "x-memory-hits" not in response.headers
    assert upstream.requests()[-1]["body"] == json.loads(raw)


def test_memory_switches_are_honoured(
    stack_gateway: Service, upstream: RunningServer, user: str
) -> None:
    client = sync_client(stack_gateway)
    client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "secret plan: zebra"}],
        user=user,
        extra_body={"memory": {"store": False}},
    )
    ask(client, user, FACT, stream=False)
    wait_for_memories(stack_gateway, user, 2)
    assert not any("zebra" in m for m in memories_of(stack_gateway, user))

    client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": QUESTION}],
        user=user,
        extra_body={"memory": {"enabled": False}},
    )
    assert system_text(upstream.requests()[-1]) == ""


def test_models_come_from_the_upstream(stack_gateway: Service) -> None:
    models = sync_client(stack_gateway).models.list()
    assert [m.id for m in models.data] == ["fake-model"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"model": "m"}', 400, "messages"),
        (b'{"model": "m", "messages": []}', 400, "messages"),
        (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', 400, "role"),
        (b'{"model": "m", "messages": [{"role": "user"}], "memory": {"top_k": 999}}', 400, "top_k"),
        (b'{"model": "m", "messages": [{"role": "user"}], "memory": {"bogus": 1}}', 400, "bogus"),
    ],
)
def test_bad_chat_requests_get_openai_errors(
    stack_gateway: Service, body: bytes, status: int, fragment: str
) -> None:
    response = httpx.post(
        f"{stack_gateway.url}/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"
