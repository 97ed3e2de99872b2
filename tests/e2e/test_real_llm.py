"""The gateway against a real LLM server: llama.cpp's OpenAI-compatible server
with SmolLM2-135M-Instruct (tests/support/llama.py), the one ``make run`` starts.

The stand-in LLM (tests/fakes) stays for the faults only it can inject; these
tests check what only a real server shows: its chat template, its token
counts, its own context-overflow error, and a real restart. The server runs
with a small context (N_CTX) so that overflowing it is cheap. Requests are
few, short (max_tokens <= 16) and greedy (temperature 0): the machine's two
cores are shared.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.memory.prompt import MEMORY_PREAMBLE
from harness.process import Service, wait_until
from tests.support.llama import MODEL_ALIAS, start_llama_server
from tests.support.stack import start_gateway

pytestmark = pytest.mark.e2e

N_CTX = 512
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
FACTS = ["My dog is a beagle called Pepper.", "I live in Lisbon and I am allergic to peanuts."]
# Long memories about one topic, about 90 tokens each: all of them overflow N_CTX.
DAY = "on day {d} of my trip to {city} I walked the old town,"
TRIPS = [
    f"Trip {i}: " + " ".join(DAY.format(d=d, city=city) for d in range(6))
    for i, city in enumerate(["Porto", "Kyoto", "Quito", "Oslo", "Hanoi", "Lima"])
]
TRIP_QUESTION = "Remind me, where did I travel and what did I do on those trips? " * 6


class Llama:
    """The real server, which one test kills and starts again on the same port."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.server = start_llama_server(log_dir, n_ctx=N_CTX)

    @property
    def url(self) -> str:
        return self.server.url

    def restart(self) -> None:
        self.server = start_llama_server(self.log_dir, port=self.server.port, n_ctx=N_CTX)

    def tokens(self, text: str) -> int:
        reply = httpx.post(
            f"{self.server.base_url}/extras/tokenize",
            json={"input": text, "model": MODEL_ALIAS},
            timeout=30,
        )
        reply.raise_for_status()
        return len(reply.json()["tokens"])


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Llama]:
    holder = Llama(tmp_path_factory.mktemp("llama"))
    yield holder
    holder.server.terminate()


def _gateway(tmp: Path, llama: Llama, embedder: Service, config: str | None) -> Service:
    extra: dict[str, str] = {}
    if config is not None:
        (tmp / "gateway.yaml").write_text(config)
        extra["GATEWAY_CONFIG"] = str(tmp / "gateway.yaml")
    return start_gateway(tmp / "data", llama.url, embedder.url, **extra)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, llama: Llama, embedder: Service
) -> Iterator[Service]:
    """Told the model's context size in GATEWAY_CONFIG, as `make run` does."""
    config = f"context_windows:\n  {MODEL_ALIAS}: {N_CTX}\n"
    service = _gateway(tmp_path_factory.mktemp("gw-real"), llama, embedder, config)
    yield service
    service.terminate()


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)


def ask(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": MODEL_ALIAS, "messages": messages, "temperature": 0, "seed": 7, **extra}


def user_id() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def remember(gateway: Service, user: str, texts: list[str]) -> None:
    body = {"user_id": user, "messages": [{"role": "user", "content": t} for t in texts]}
    stored = httpx.post(f"{gateway.url}/memories", json=body, timeout=60)
    assert stored.status_code == 201, stored.text  # stored and searchable now


def token_counter(gateway: Service, kind: str) -> float:
    text = httpx.get(f"{gateway.base_url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "memgate_upstream_tokens_total" and sample.labels == {
                "upstream": "primary",
                "kind": kind,
            }:
                return float(sample.value)
    return 0.0


def test_recalled_memories_go_through_the_models_chat_template(
    gateway: Service, llama: Llama
) -> None:
    user = user_id()
    remember(gateway, user, FACTS)
    question = [SYSTEM, {"role": "user", "content": "What is my dog called?"}]
    client = sdk(gateway.url)

    # store=False: these turns are not remembered, so each call recalls the same two.
    keep = {"memory": {"store": False}}
    recalled = client.chat.completions.with_raw_response.create(
        **ask(question, max_tokens=8), user=user, extra_body=keep
    )
    without = client.chat.completions.create(
        **ask(question, max_tokens=8), user=user, extra_body={"memory": {"enabled": False}}
    )
    assert recalled.headers["x-memory-hits"] == "2"
    with_memory = recalled.parse()
    assert with_memory.usage is not None and without.usage is not None
    # The model was given the memory block inside the client's system message:
    # the prompt grew by about the block's own tokens, as the template counts them.
    block_tokens = llama.tokens(MEMORY_PREAMBLE + "\n".join(FACTS))
    grown = with_memory.usage.prompt_tokens - without.usage.prompt_tokens
    assert block_tokens <= grown <= block_tokens + 60, (grown, block_tokens)

    # Without a system message of its own, the memory block becomes the first
    # message, and the template (which puts a default one first otherwise) takes it.
    only_user = client.chat.completions.with_raw_response.create(
        **ask([question[1]], max_tokens=4), user=user, extra_body=keep
    )
    assert only_user.headers["x-memory-hits"] == "2"
    assert only_user.parse().choices[0].finish_reason in ("stop", "length")


def test_plain_and_streamed_replies_are_relayed_unchanged_and_their_usage_counted(
    gateway: Service, llama: Llama
) -> None:
    messages = [SYSTEM, {"role": "user", "content": "Name a colour."}]
    direct, through = sdk(llama.url), sdk(gateway.url)

    # Greedy decoding repeats itself only along the same path: llama.cpp reuses the
    # cached prefix of the previous prompt, and a fresh prompt is evaluated in one
    # batch, which can round differently. So the reference is the second direct
    # call, which (like the relayed one after it) finds its prompt cached.
    direct.chat.completions.create(**ask(messages, max_tokens=12))
    expected = direct.chat.completions.create(**ask(messages, max_tokens=12))
    prompt_before = token_counter(gateway, "prompt")
    completion_before = token_counter(gateway, "completion")
    relayed = through.chat.completions.create(**ask(messages, max_tokens=12))
    assert relayed.choices[0].message.content == expected.choices[0].message.content
    assert relayed.choices[0].message.content  # a real answer, not an empty one
    assert relayed.usage == expected.usage and relayed.usage is not None
    assert token_counter(gateway, "prompt") - prompt_before == relayed.usage.prompt_tokens
    assert (
        token_counter(gateway, "completion") - completion_before == relayed.usage.completion_tokens
    )

    # Streamed: the same text, event by event. The gateway asks the server for
    # usage (stream_options.include_usage) and counts what it reports; the client,
    # which did not ask, gets no usage event. llama-cpp-python 0.3.36 ignores
    # stream_options and reports no usage in streams: then nothing is counted
    # (the gateway never invents a count); a server that reports it is counted.
    stream_options = {"include_usage": True}
    direct_chunks = list(
        direct.chat.completions.create(
            **ask(messages, max_tokens=12), stream=True, stream_options=stream_options
        )
    )
    reported = [c.usage for c in direct_chunks if c.usage is not None]
    prompt_before = token_counter(gateway, "prompt")
    chunks = list(through.chat.completions.create(**ask(messages, max_tokens=12), stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    direct_text = "".join(c.choices[0].delta.content or "" for c in direct_chunks if c.choices)
    assert text == direct_text and text
    assert len(chunks) == len([c for c in direct_chunks if c.choices])
    assert all(c.usage is None for c in chunks)
    counted = token_counter(gateway, "prompt") - prompt_before
    assert counted == (reported[-1].prompt_tokens if reported else 0)


def test_the_servers_context_overflow_reaches_the_client_as_an_openai_error(
    gateway: Service,
) -> None:
    too_long = [{"role": "user", "content": "Count the words: " + "apple " * N_CTX}]
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(gateway.url).chat.completions.create(**ask(too_long, max_tokens=4))
    assert raised.value.status_code == 400
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["code"] == "context_length_exceeded"
    assert f"maximum context length is {N_CTX} tokens" in error["message"]


def overflows(gateway: Service, reply: httpx.Response) -> list[str]:
    """What the gateway logged about overflows while serving ``reply``."""
    request_id = reply.headers["x-request-id"]
    lines = [line for line in gateway.log().splitlines() if request_id in line]
    found = [line.split("; ", 1)[1] for line in lines if "memories overflowed" in line]
    return [text[: text.index(" of ") + 3] for text in found]


def trips_request(user: str) -> dict[str, Any]:
    messages = [SYSTEM, {"role": "user", "content": TRIP_QUESTION}]
    memory = {"top_k": len(TRIPS), "store": False}
    return {**ask(messages, max_tokens=16), "user": user, "memory": memory}


def test_memories_are_cut_to_what_fits_in_the_context(gateway: Service, llama: Llama) -> None:
    user = user_id()
    remember(gateway, user, TRIPS)
    body = trips_request(user)
    # The request fits on its own; with every trip it would not.
    alone = llama.tokens(TRIP_QUESTION)
    assert alone + 16 < N_CTX / 2
    assert alone + sum(llama.tokens(t) for t in TRIPS) > N_CTX

    reply = httpx.post(f"{gateway.url}/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    hits = int(reply.headers["x-memory-hits"])
    assert 0 < hits < len(TRIPS)
    assert reply.json()["usage"]["prompt_tokens"] + 16 <= N_CTX


def test_without_a_known_window_an_overflow_is_sent_again_with_what_fits_and_learned(
    tmp_path: Path, llama: Llama, embedder: Service
) -> None:
    gateway = _gateway(tmp_path, llama, embedder, config=None)  # llama.cpp reports no n_ctx
    try:
        user = user_id()
        remember(gateway, user, TRIPS)
        # Every trip went in, and overflowed; the server's error named its window,
        # so the request went again with the trips that fit in it.
        first = httpx.post(f"{gateway.url}/chat/completions", json=trips_request(user), timeout=120)
        assert first.status_code == 200, first.text
        assert 0 < int(first.headers["x-memory-hits"]) < len(TRIPS)
        assert first.json()["usage"]["prompt_tokens"] + 16 <= N_CTX
        # From now on memories are cut to that window before they are sent.
        second = httpx.post(
            f"{gateway.url}/chat/completions", json=trips_request(user), timeout=120
        )
        assert second.status_code == 200, second.text
        assert second.headers["x-memory-hits"] == first.headers["x-memory-hits"]
        assert not overflows(gateway, second)
    finally:
        gateway.terminate()


# Text this model's tokenizer splits finely: about two tokens per character, where
# the gateway's estimate assumes one per three bytes (one per character here).
HARD = [
    "我的狗叫胡椒,它是一只小猎犬,喜欢在里斯本的海边散步。" * 6,
    "我对花生过敏,住在里斯本,每天早上喝咖啡。" * 6,
]


def test_an_estimate_that_fell_short_is_learned_and_the_memories_cut_again(
    gateway: Service, llama: Llama
) -> None:
    user = user_id()
    remember(gateway, user, HARD)
    assert sum(llama.tokens(t) for t in HARD) > 1.5 * sum(len(t) for t in HARD)  # the premise
    messages = [SYSTEM, {"role": "user", "content": "我的狗叫什么名字?"}]
    body = {**ask(messages, max_tokens=16), "user": user, "memory": {"store": False}}

    reply = httpx.post(f"{gateway.url}/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["prompt_tokens"] + 16 <= N_CTX
    hits = int(reply.headers["x-memory-hits"])
    # Sent with both, refused; the estimate corrected by what the error said,
    # one still fits (not none: the correction, not a give-up, cut them).
    assert 0 < hits < len(HARD)
    assert overflows(gateway, reply) == [f"sent again with {hits} of"]


def test_completions_pass_through_to_the_real_server_unchanged(
    gateway: Service, llama: Llama
) -> None:
    """The completions API (which llama.cpp serves) through the gateway and straight
    to the server give the same greedy text; usage is counted from plain and streams."""
    asked: dict[str, Any] = {
        "model": MODEL_ALIAS, "prompt": "The capital of France is", "max_tokens": 6,
        "temperature": 0, "seed": 7,
    }  # fmt: skip
    direct = sdk(llama.url).completions.create(**asked)
    before = token_counter(gateway, "prompt")
    via = sdk(gateway.url).completions.create(**asked)
    assert via.choices[0].text == direct.choices[0].text and via.choices[0].text
    streamed = sdk(gateway.url).completions.create(**asked, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == via.choices[0].text
    assert via.usage is not None
    assert token_counter(gateway, "prompt") - before >= via.usage.prompt_tokens


def test_apis_the_real_server_lacks_answer_its_own_404(gateway: Service, llama: Llama) -> None:
    """llama.cpp's server has no Responses or Messages API: its 404 reaches the client."""
    with pytest.raises(openai.NotFoundError):
        sdk(gateway.url).responses.create(model=MODEL_ALIAS, input="Hi", safety_identifier="u")
    hello = {"model": MODEL_ALIAS, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    messages = httpx.post(f"{gateway.url}/messages", json=hello, timeout=60)
    assert messages.status_code == 404 and messages.json()["error"]["message"]


def test_the_server_killed_and_restarted_without_restarting_the_gateway(
    gateway: Service, llama: Llama
) -> None:
    """Last in this module: it restarts the shared server."""
    body = ask([{"role": "user", "content": "Hi"}], max_tokens=1)

    def chat() -> httpx.Response:
        return httpx.post(f"{gateway.url}/chat/completions", json=body, timeout=60)

    assert chat().status_code == 200
    llama.server.kill()
    down = chat()
    assert down.status_code == 503 and down.headers["retry-after"].isdigit(), down.text
    # It was up: nobody answers now.
    assert down.json()["error"]["code"] == "llm_unreachable", down.text

    llama.restart()  # returns once the server lists its model again
    serving = time.monotonic()
    answers: list[tuple[float, int]] = []  # (sent, seconds after serving; status)

    def answered() -> bool:
        sent = time.monotonic() - serving
        reply = chat()
        answers.append((round(sent, 2), reply.status_code))
        if reply.status_code != 200:
            assert reply.status_code == 503 and reply.headers["retry-after"].isdigit()
        return reply.status_code == 200

    wait_until(answered, 30, interval=0.05, what="a chat answered after the restart")
    # The first request that succeeded was sent within 2 s of the server serving
    # (how long the model then takes to answer it is the CPU's business).
    assert answers[-1][0] < 2.0, answers


def test_a_lone_surrogate_in_the_history_is_forwarded_with_memories_not_a_500(
    gateway: Service, llama: Llama
) -> None:
    # Only the latest user message is checked; the rest goes as sent (JSON's
    # "\ud83d" without its pair: an emoji a client cut in half). The gateway's
    # estimate of the prompt, made only when the window is known, raised on it:
    # a 500 for every later turn of the conversation. llama.cpp refuses such
    # text in a message's content itself (a 500 of its own, relayed as 502, as
    # it is without memory); in a field its template does not render, as here,
    # the turn is answered.
    user = user_id()
    remember(gateway, user, FACTS)
    body = {
        **ask([
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "hello", "name": "me \udc00"},
            {"role": "assistant", "content": "Hello!", "name": "bot \ud83d"},
            {"role": "user", "content": "What is my dog called?"},
        ], max_tokens=8),
        "user": user, "memory": {"store": False},
    }  # fmt: skip
    raw = json.dumps(body).encode()  # ASCII: the surrogates as JSON escapes
    reply = httpx.post(
        f"{gateway.url}/chat/completions",
        content=raw,
        headers={"content-type": "application/json"},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-memory-hits"] == "2"
    assert reply.json()["choices"][0]["message"]["content"]
