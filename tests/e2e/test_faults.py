"""Fault injection: every acknowledged memory is stored exactly once, whatever dies.

Real processes throughout: the embedder with the real model, the gateway as
``python -m gateway`` (SIGKILLed where the fault is a crash), Qdrant Edge in
the gateway. The stand-in LLM answers chat (the faults here are the
gateway's and the embedder's, and its echo makes every turn's text known).

Each test counts what the clients were told (acknowledged: a 201/202 from
the memory API, a chat reply read to its end) and what the store holds
afterwards, and its assertions print both.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from gateway.memory.outbox import Outbox
from gateway.memory.records import NewMemory, Scope
from harness.fake_llm import RunningServer
from harness.process import Service, free_port, wait_until
from tests.e2e.conftest import memories_of
from tests.support.stack import start_embedder, start_gateway

pytestmark = pytest.mark.e2e

MODEL = "fake-model"
TENANT = "default"  # no API keys configured: one tenant


def admin_outbox(gateway: Service) -> dict[str, object]:
    body: dict[str, object] = httpx.get(f"{gateway.base_url}/admin/outbox", timeout=5).json()
    return body


def depth(gateway: Service) -> int:
    return int(str(admin_outbox(gateway)["depth"]))


def metric(gateway: Service, name: str) -> float:
    for line in httpx.get(f"{gateway.base_url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def all_memories(gateway: Service, user: str) -> list[str]:
    response = httpx.get(
        f"{gateway.url}/memories", params={"user_id": user, "limit": 1000}, timeout=10
    )
    response.raise_for_status()
    return [m["memory"] for m in response.json()["results"]]


def exactly_once(stored: list[str], acknowledged: list[str], what: str) -> None:
    counts = Counter(stored)
    missing = [t for t in acknowledged if counts[t] == 0]
    doubled = [t for t, n in counts.items() if n > 1]
    summary = (
        f"{what}: {len(acknowledged)} acknowledged, {len(stored)} stored, "
        f"{len(missing)} missing, {len(doubled)} duplicated"
    )
    print(f"\n{summary}")
    short = [t[:60] for t in missing[:3]], [t[:60] for t in doubled[:3]]
    assert not missing and not doubled, f"{summary}; missing {short[0]}, doubled {short[1]}"


def chat_body(user: str, text: str, stream: bool) -> dict[str, object]:
    return {
        "model": MODEL,
        "user": user,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    }


def chat_then_kill(gateway: Service, user: str, text: str, stream: bool) -> bool:
    """One chat turn; SIGKILL the gateway the instant the client has read the
    reply's last byte. True when the reply was complete."""
    body = chat_body(user, text, stream)
    if not stream:
        response = httpx.post(f"{gateway.url}/chat/completions", json=body, timeout=30)
        gateway.proc.send_signal(signal.SIGKILL)
        return response.status_code == 200
    complete = False
    with httpx.stream("POST", f"{gateway.url}/chat/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line == "data: [DONE]":
                gateway.proc.send_signal(signal.SIGKILL)  # before anything else arrives
                complete = True
                break
    return complete


# -- gateway SIGKILL -----------------------------------------------------------


# A turn's text, and how to send it: True once its reply is complete and the
# gateway SIGKILLed right after.
Turn = tuple[str, Callable[[Service, str], bool]]


def kill_after_each_reply(
    llm: RunningServer,
    embedder: Service,
    data_dir: Path,
    user: str,
    turns: list[Turn],
) -> None:
    """Each turn's text through its ``send`` (which SIGKILLs the gateway the instant
    the reply is complete), on a gateway restarted after each kill; then every
    acknowledged message and echoed reply is stored exactly once."""
    gateway = start_gateway(data_dir, llm.url, embedder.url)
    acknowledged: list[str] = []
    try:
        for text, send in turns:
            assert send(gateway, text), text
            acknowledged += [text, f"echo: {text}"]
            gateway.proc.wait()
            gateway = start_gateway(data_dir, llm.url, embedder.url)
        wait_until(lambda: depth(gateway) == 0, 60, what="outbox drained")
        exactly_once(all_memories(gateway, user), acknowledged, "turns killed after the reply")
    finally:
        gateway.terminate()


def test_a_completed_turn_survives_sigkill_right_after_the_reply(
    llm: RunningServer, embedder: Service, tmp_path: Path
) -> None:
    turns: list[Turn] = []
    for i in range(10):
        stream = i % 2 == 0
        text = f"turn {i} ({'stream' if stream else 'plain'}): my locker code is {1000 + i}"
        turns.append((text, lambda g, t, s=stream: chat_then_kill(g, "kim", t, s)))
    kill_after_each_reply(llm, embedder, tmp_path / "data", "kim", turns)


# The other conversational APIs: their bodies, and the event that ends a stream.
FINAL_EVENT = {"responses": "response.completed", "messages": "message_stop"}


def api_body(api: str, user: str, text: str, stream: bool) -> dict[str, object]:
    if api == "responses":
        return {"model": MODEL, "input": text, "safety_identifier": user, "stream": stream}
    return {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
        "metadata": {"user_id": user},
        "stream": stream,
    }


def api_turn_then_kill(gateway: Service, api: str, user: str, text: str, stream: bool) -> bool:
    """One Responses or Messages turn; SIGKILL the gateway the instant the client
    has read the final event (or the whole plain answer). True when complete."""
    url, body = f"{gateway.url}/{api}", api_body(api, user, text, stream)
    if not stream:
        response = httpx.post(url, json=body, timeout=30)
        gateway.proc.send_signal(signal.SIGKILL)
        return response.status_code == 200
    final = FINAL_EVENT[api]
    with httpx.stream("POST", url, json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("type") == final:
                gateway.proc.send_signal(signal.SIGKILL)  # before anything else arrives
                return True
    return False


def test_a_completed_responses_or_messages_turn_survives_sigkill_right_after_the_reply(
    llm: RunningServer, embedder: Service, tmp_path: Path
) -> None:
    turns: list[Turn] = []
    for i, (api, stream) in enumerate(
        (api, stream) for api in FINAL_EVENT for stream in (True, False)
    ):
        text = f"{api} turn {i} ({'stream' if stream else 'plain'}): my pin is {2000 + i}"
        turns.append((text, lambda g, t, a=api, s=stream: api_turn_then_kill(g, a, "ivo", t, s)))
    kill_after_each_reply(llm, embedder, tmp_path / "data", "ivo", turns)


def test_sigkill_mid_writes_loses_and_duplicates_nothing_acknowledged(
    llm: RunningServer, embedder: Service, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    gateway = start_gateway(data_dir, llm.url, embedder.url)
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def api_writer() -> None:
        with httpx.Client(timeout=30) as client:
            i = 0
            while not stop.is_set():
                text = f"api fact {i} about lou"
                try:
                    r = client.post(
                        f"{gateway.url}/memories", json={"user_id": "lou", "text": text}
                    )
                except httpx.HTTPError:
                    return  # the gateway died under this request: not acknowledged
                if r.status_code in (201, 202):
                    with lock:
                        acknowledged.append(text)
                i += 1

    def chatter() -> None:
        with httpx.Client(timeout=30) as client:
            i = 0
            while not stop.is_set():
                text = f"chat fact {i} about lou"
                body = chat_body("lou", text, stream=i % 2 == 0)
                try:
                    r = client.post(f"{gateway.url}/chat/completions", json=body)
                except httpx.HTTPError:
                    return
                if r.status_code == 200 and (not body["stream"] or "[DONE]" in r.text):
                    with lock:
                        acknowledged.extend([text, f"echo: {text}"])
                i += 1

    workers = [threading.Thread(target=api_writer), threading.Thread(target=chatter)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: len(acknowledged) >= 30, 60, what="30 writes acknowledged")
        gateway.proc.send_signal(signal.SIGKILL)
        gateway.proc.wait()
        stop.set()
        for worker in workers:
            worker.join(30)
        gateway = start_gateway(data_dir, llm.url, embedder.url)
        wait_until(lambda: depth(gateway) == 0, 60, what="outbox drained")
        stored = all_memories(gateway, "lou")
        exactly_once([t for t in stored if t in set(acknowledged)], acknowledged, "mid-write kill")
        assert len(stored) == len(set(stored)), "a memory was stored twice"
    finally:
        stop.set()
        gateway.terminate()


# -- embedder SIGKILL, and large writes ----------------------------------------


# Embedding hundreds of long texts on a shared 2-core machine takes minutes
# (0.3 s per text at a load of 10; a few hundredths quiet): more than the
# suite's default limit per test.
HEAVY = pytest.mark.timeout(600)


@HEAVY
def test_embedder_sigkill_then_large_turns_queued_all_drain(
    llm: RunningServer, tmp_path: Path
) -> None:
    """The embedder dies; 20 chat turns of ~3.9k characters and API writes
    queue; it comes back; all of it drains, exactly once."""
    port = free_port()
    own = start_embedder(tmp_path / "emb", port=port)
    gateway = start_gateway(tmp_path / "data", llm.url, own.url)
    acknowledged: list[str] = []
    try:
        ok = httpx.post(f"{gateway.url}/memories", json={"user_id": "max", "text": "before"})
        assert ok.status_code == 201
        acknowledged.append("before")
        own.proc.send_signal(signal.SIGKILL)
        own.proc.wait()
        for i in range(20):
            text = f"long turn {i}: " + f"max writes a long message, part {i}. " * 105
            text = text[:3900].strip()
            r = httpx.post(
                f"{gateway.url}/chat/completions", json=chat_body("max", text, False), timeout=30
            )
            assert r.status_code == 200, r.text
            acknowledged += [text, f"echo: {text}"[:4000].strip()]
        queued = httpx.post(f"{gateway.url}/memories", json={"user_id": "max", "text": "during"})
        assert queued.status_code == 202, queued.text
        acknowledged.append("during")
        assert depth(gateway) == 21
        own = start_embedder(tmp_path / "emb", port=port)
        started = time.monotonic()
        wait_until(lambda: depth(gateway) == 0, 240, interval=0.5, what="outbox drained")
        print(f"\n41 queued entries (82 memories) drained in {time.monotonic() - started:.1f} s")
        exactly_once(all_memories(gateway, "max"), acknowledged, "embedder SIGKILL")
        assert admin_outbox(gateway)["dead"] == 0
    finally:
        gateway.terminate()
        own.terminate()


@HEAVY
def test_a_write_of_256_messages_of_4000_characters_is_stored(
    llm: RunningServer, embedder: Service, tmp_path: Path
) -> None:
    gateway = start_gateway(tmp_path / "data", llm.url, embedder.url)
    try:
        messages = [
            {"role": "user", "content": (f"message {i:03d} " + "lorem ipsum dolor " * 250)[:4000]}
            for i in range(256)
        ]
        started = time.monotonic()
        response = httpx.post(
            f"{gateway.url}/memories", json={"user_id": "nia", "messages": messages}, timeout=600
        )
        took = time.monotonic() - started
        assert response.status_code in (201, 202), response.text
        wait_until(lambda: depth(gateway) == 0, 300, interval=0.5, what="outbox drained")
        print(f"\n256 x 4,000 characters: {response.status_code} after {took:.1f} s")
        exactly_once(
            all_memories(gateway, "nia"), [m["content"] for m in messages], "256-message write"
        )
    finally:
        gateway.terminate()


def test_the_embedder_stops_encoding_for_a_client_that_left(embedder: Service) -> None:
    """A client gives up on 512 long texts; a request sent after it, at the
    same priority, would wait behind all of them if the embedder kept going."""

    def encoded() -> float:
        text = httpx.get(f"{embedder.base_url}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("embedder_batch_size_sum "):
                return float(line.split()[1])
        return 0.0

    before = encoded()
    texts = [f"text {i} " + "words to encode " * 200 for i in range(512)]
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{embedder.url}/embeddings", json={"input": texts}, timeout=1.0)
    started = time.monotonic()
    probe = httpx.post(f"{embedder.url}/embeddings", json={"input": "after"}, timeout=600)
    assert probe.status_code == 200
    spent = encoded() - before - 1
    print(
        f"\nabandoned request of 512 texts: {spent:.0f} encoded; the next request "
        f"answered in {time.monotonic() - started:.2f} s"
    )
    assert spent < 256, f"{spent:.0f} of 512 texts encoded for a client that had gone"


# -- poison --------------------------------------------------------------------


def seed_outbox(data_dir: Path, entries: list[tuple[Scope, NewMemory]]) -> None:
    """Write entries straight into the outbox file, as an older gateway that
    accepted them would have left it."""
    box = Outbox(data_dir / "outbox.sqlite3")
    box.open()
    for scope, memory in entries:
        box.put_sync(scope, [memory])
    box.close()


def test_poisoned_outbox_entries_are_set_aside_and_others_flow_across_restarts(
    llm: RunningServer, embedder: Service, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    now = datetime.now(UTC)
    poisoned = Scope(TENANT, "sur")
    good = [f"good memory {i} of pat" for i in range(4)]
    seed_outbox(
        data_dir,
        [
            (poisoned, NewMemory("poison \ud800 pill", now, {}, None, "user", "chat")),
            (Scope(TENANT, "pat"), NewMemory(good[0], now)),
            (poisoned, NewMemory("nan", now, {"n": float("nan")})),
            (Scope(TENANT, "pat"), NewMemory(good[1], now)),
            (poisoned, NewMemory("old", datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))))),
            (Scope(TENANT, "pat"), NewMemory(good[2], now)),
        ],
    )
    gateway = start_gateway(data_dir, llm.url, embedder.url)
    try:
        wait_until(lambda: depth(gateway) == 0, 30, what="outbox drained past the poison")
        state = admin_outbox(gateway)
        reasons = sorted(str(e["error"]).split(":")[0] for e in state["dead_entries"])  # type: ignore[attr-defined]
        print(f"\ndead entries: {state['dead']}, reasons {reasons}")
        assert state["dead"] == 3 and reasons == [
            "OverflowError",
            "TypeError",
            "UnicodeEncodeError",
        ]
        assert metric(gateway, "memgate_outbox_dead") == 3
        gateway.terminate()
        gateway = start_gateway(data_dir, llm.url, embedder.url)  # across a restart
        r = httpx.post(f"{gateway.url}/memories", json={"user_id": "pat", "text": good[3]})
        assert r.status_code == 201, r.text
        assert admin_outbox(gateway)["dead"] == 3 and metric(gateway, "memgate_outbox_dead") == 3
        exactly_once(all_memories(gateway, "pat"), good, "other user's writes past the poison")
    finally:
        gateway.terminate()


def test_a_wrong_embedder_url_sets_nothing_aside_and_keeps_it_until_mended(
    llm: RunningServer, embedder: Service, tmp_path: Path
) -> None:
    # GATEWAY_EMBEDDER_URL without its /v1: the embedder's /health (at its root)
    # answers, and every embedding request is a 404. That is the setup's fault, not
    # the texts': the writes must wait for the fix, not be refused or set aside, and
    # readiness must say which setting is wrong (not "healthy" from /health alone).
    data_dir = tmp_path / "data"
    texts = ["kept through a typo in the URL", "and this one too"]
    gateway = start_gateway(data_dir, llm.url, embedder.base_url, wait_ready=False)
    try:

        def embedder_check() -> dict[str, object]:
            ready = httpx.get(f"{gateway.base_url}/readyz", timeout=5).json()
            return dict(ready["checks"]["embedder"], readiness=ready["status"])

        wait_until(
            lambda: "GATEWAY_EMBEDDER_URL" in str(embedder_check().get("last_error")),
            30, what="readiness naming the wrong setting",
        )  # fmt: skip
        for text in texts:
            r = httpx.post(f"{gateway.url}/memories", json={"user_id": "pat", "text": text})
            assert r.status_code == 202, r.text  # queued: not a 400 blaming the text
        check = embedder_check()
        assert check["status"] == "unhealthy" and check["readiness"] == "degraded", check
        state = admin_outbox(gateway)
        print(f"\nwrong URL: depth {state['depth']}, dead {state['dead']}")
        assert state["dead"] == 0 and state["depth"] == 2
        assert "GATEWAY_EMBEDDER_URL" in gateway.log()
    finally:
        gateway.terminate()
    gateway = start_gateway(data_dir, llm.url, embedder.url)  # mended
    try:
        wait_until(lambda: depth(gateway) == 0, 30, what="the outbox drained once mended")
        exactly_once(all_memories(gateway, "pat"), texts, "writes made through the wrong URL")
        assert admin_outbox(gateway)["dead"] == 0
    finally:
        gateway.terminate()


def test_poison_at_the_door_gets_400_and_never_blocks_anyone(
    llm: RunningServer, embedder: Service, tmp_path: Path
) -> None:
    gateway = start_gateway(tmp_path / "data", llm.url, embedder.url)
    url = f"{gateway.url}/memories"
    try:
        refused = [
            httpx.post(url, json={"user_id": "sur", "text": "t", "timestamp": ts})
            for ts in ("0001-01-01T00:00:00+14:00",)
        ]
        raw = b'{"user_id": "sur", "text": "t", "metadata": {"n": NaN}}'
        refused.append(httpx.post(url, content=raw, headers={"content-type": "application/json"}))
        surrogate = b'{"user_id": "sur", "text": "poison \\ud800 pill"}'
        refused.append(
            httpx.post(url, content=surrogate, headers={"content-type": "application/json"})
        )
        statuses = [r.status_code for r in refused]
        assert statuses == [400, 400, 400], [r.text for r in refused]
        assert all(r.json()["error"]["message"] for r in refused)
        # A chat turn with a lone surrogate (no recall: top_k 0, as the finding
        # had it) is either refused or stored cleaned up; it never poisons the outbox.
        body = {**chat_body("sur", "poison \ud800 pill", False), "memory": {"top_k": 0}}
        chat = json.dumps(body)  # the surrogate travels as "\\ud800" in JSON
        turn = httpx.post(
            f"{gateway.url}/chat/completions",
            content=chat.encode(),
            headers={"content-type": "application/json"},
        )
        assert turn.status_code in (200, 400), turn.text
        wait_until(lambda: depth(gateway) == 0, 30, what="outbox empty")
        assert admin_outbox(gateway)["dead"] == 0
        other = httpx.post(url, json={"user_id": "pat", "text": "pat is fine"})
        assert other.status_code == 201, other.text
        assert memories_of(gateway, "pat") == ["pat is fine"]
    finally:
        gateway.terminate()
