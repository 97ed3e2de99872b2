"""Read-your-writes within one gateway: a user's next request sees their last turn.

The README's headline example sends the second call right after the first
reply; these tests do exactly that, back to back, streamed and not, and
check what the LLM was given. And the memory API answers 201 (stored and
searchable) while other users' chat turns are being stored.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from harness.fake_llm import RunningServer
from harness.process import Service
from tests.support.stack import start_gateway

pytestmark = pytest.mark.e2e

PETS = ["Biscuit", "Pixel", "Mango", "Ziggy", "Nimbus", "Pepper", "Quartz", "Waffle"]


@pytest.fixture
def gateway(
    llm: RunningServer, embedder: Service, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    service = start_gateway(tmp_path_factory.mktemp("ryw") / "data", llm.url, embedder.url)
    yield service
    service.terminate()


def chat(gateway: Service, user: str, text: str, stream: bool) -> httpx.Response:
    body = {
        "model": "fake-model",
        "user": user,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    }
    response = httpx.post(f"{gateway.url}/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    if stream:
        assert response.text.rstrip().endswith("data: [DONE]")
    return response


def test_the_next_chat_recalls_the_turn_just_answered(gateway: Service, llm: RunningServer) -> None:
    recalled = 0
    for i, pet in enumerate(PETS):
        user, stream = f"ryw-{i}", i % 2 == 1
        chat(gateway, user, f"My cat is called {pet}.", stream)
        second = chat(gateway, user, "What is my cat called?", not stream)  # at once
        system = llm.requests()[-1]["body"]["messages"][0]
        hits = int(second.headers["x-memory-hits"])
        if hits >= 1 and system["role"] == "system" and pet in system["content"]:
            recalled += 1
    print(f"\nread-your-writes: {recalled} of {len(PETS)} next turns recalled the last one")
    assert recalled == len(PETS), f"only {recalled} of {len(PETS)} recalled the previous turn"


def test_an_api_write_is_stored_when_it_answers_while_others_chat(gateway: Service) -> None:
    stop = threading.Event()
    turns = [0]

    def others_chat() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                body = {
                    "model": "fake-model",
                    "user": f"busy-{turns[0] % 4}",
                    "messages": [{"role": "user", "content": f"busy turn {turns[0]}"}],
                }
                client.post(f"{gateway.url}/chat/completions", json=body)
                turns[0] += 1

    worker = threading.Thread(target=others_chat)
    worker.start()
    statuses: list[int] = []
    found = 0
    try:
        for i in range(12):
            text = f"zed's fact number {i}: the spare key is under pot {i}"
            r = httpx.post(f"{gateway.url}/memories", json={"user_id": "zed", "text": text})
            statuses.append(r.status_code)
            query = {"user_id": "zed", "query": text, "top_k": 1}
            hits = httpx.post(f"{gateway.url}/memories/search", json=query).json()["results"]
            found += bool(hits) and hits[0]["memory"] == text
    finally:
        stop.set()
        worker.join()
    print(
        f"\nAPI writes during {turns[0]} chat turns of others: {statuses.count(201)} x 201, "
        f"{statuses.count(202)} x 202, {found} of {len(statuses)} searchable at once"
    )
    assert turns[0] > 0
    assert statuses == [201] * len(statuses) and found == len(statuses)
