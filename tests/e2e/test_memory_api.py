"""The memory REST API against real processes, on both store adapters."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from harness.process import Service

pytestmark = pytest.mark.e2e


def add(gateway: Service, **body: object) -> httpx.Response:
    return httpx.post(f"{gateway.url}/memories", json=body, timeout=10)


def search(gateway: Service, **body: object) -> list[dict[str, object]]:
    response = httpx.post(f"{gateway.url}/memories/search", json=body, timeout=10)
    assert response.status_code == 200, response.text
    results: list[dict[str, object]] = response.json()["results"]
    return results


def test_text_with_metadata_and_timestamp(stack_gateway: Service, user: str) -> None:
    metadata = {"dia_id": "D3:7", "tags": ["pets", 1, None], "deep": {"a": {"b": True}}}
    created = add(stack_gateway, user_id=user, text="Caroline adopted a beagle named Pepper",
                  metadata=metadata, timestamp="2023-05-08T13:56:00", session_id="s1")  # fmt: skip
    assert created.status_code == 201
    [result] = created.json()["results"]
    assert result["event"] == "ADD" and result["memory"].startswith("Caroline")

    [hit] = search(stack_gateway, user_id=user, query="what dog does Caroline have?", top_k=3)
    assert hit["id"] == result["id"]
    assert hit["metadata"] == metadata  # unchanged, nested values and all
    assert hit["created_at"] == "2023-05-08T13:56:00+00:00"  # no zone given: UTC
    assert hit["session_id"] == "s1" and isinstance(hit["score"], float)


def test_messages_become_one_memory_each_and_repeats_are_not_stored(
    stack_gateway: Service, user: str
) -> None:
    messages = [{"role": "user", "content": "I play the cello"},
                {"role": "assistant", "content": "Lovely, how long have you played?"},
                {"role": "user", "content": "I play the cello"}]  # fmt: skip
    first = add(stack_gateway, user_id=user, messages=messages)
    assert first.status_code == 201
    results = first.json()["results"]
    # one result per message, in order: the repeat is NONE and names the first one's id
    assert [r["event"] for r in results] == ["ADD", "ADD", "NONE"]
    assert results[2]["id"] == results[0]["id"] != results[1]["id"]
    again = add(stack_gateway, user_id=user, text="I play the cello")
    [repeat] = again.json()["results"]
    assert repeat["event"] == "NONE" and repeat["id"] == first.json()["results"][0]["id"]
    listed = httpx.get(f"{stack_gateway.url}/memories", params={"user_id": user}).json()
    assert sorted(m["memory"] for m in listed["results"]) == sorted(
        ["I play the cello", "Lovely, how long have you played?"]
    )


def test_identical_adds_at_once_store_one_memory(stack_gateway: Service, user: str) -> None:
    # docs/decisions.md: each of them may report ADD; one memory is stored.
    n = 8
    body = {"user_id": user, "text": "I collect vintage typewriters"}

    async def at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as client:
            url = f"{stack_gateway.url}/memories"
            return await asyncio.gather(*(client.post(url, json=body) for _ in range(n)))

    answers = asyncio.run(at_once())
    assert [a.status_code for a in answers] == [201] * n, [a.text for a in answers]
    results = [a.json()["results"][0] for a in answers]
    assert len({r["id"] for r in results}) == 1
    assert "ADD" in {r["event"] for r in results} <= {"ADD", "NONE"}
    listed = httpx.get(f"{stack_gateway.url}/memories", params={"user_id": user}).json()
    assert [(m["id"], m["memory"]) for m in listed["results"]] == [(results[0]["id"], body["text"])]


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", None], ids=str
)
def test_a_json_body_is_read_as_json_whatever_its_declared_type(
    stack_gateway: Service, user: str, content_type: str | None
) -> None:
    # curl -d declares a form; FastAPI read such a body as bytes and answered a
    # misleading "Input should be a valid dictionary" (chat always read it as JSON).
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"user_id": user, "text": "I keep bees"}).encode()
    added = httpx.post(f"{stack_gateway.url}/memories", content=body, headers=headers)
    assert added.status_code == 201, added.text
    query = json.dumps({"user_id": user, "query": "bees"}).encode()
    found = httpx.post(f"{stack_gateway.url}/memories/search", content=query, headers=headers)
    assert [h["memory"] for h in found.json()["results"]] == ["I keep bees"]
    broken = httpx.post(f"{stack_gateway.url}/memories", content=b"user_id=u", headers=headers)
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"


def test_search_filters_by_metadata(stack_gateway: Service, user: str) -> None:
    for i, text in enumerate(["Berlin trip in May", "Paris trip in June", "Rome trip in July"]):
        assert add(stack_gateway, user_id=user, text=text, metadata={"n": i}).status_code == 201
    hits = search(stack_gateway, user_id=user, query="trip", filters={"n": [0, 2]})
    assert sorted(str(h["memory"]) for h in hits) == ["Berlin trip in May", "Rome trip in July"]
    bad = httpx.post(f"{stack_gateway.url}/memories/search",
                     json={"user_id": user, "query": "x", "filters": {"a.b": 1}})  # fmt: skip
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "filters"


def test_list_pages_get_delete_and_forget(stack_gateway: Service, user: str) -> None:
    texts = [f"note number {i}" for i in range(5)]
    add(stack_gateway, user_id=user, messages=[{"role": "user", "content": t} for t in texts])
    add(stack_gateway, user_id=f"{user}-neighbour", text="not yours")

    seen: list[str] = []
    cursor = None
    while True:
        params = {"user_id": user, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{stack_gateway.url}/memories", params=params).json()
        assert len(page["results"]) <= 2
        seen += [m["memory"] for m in page["results"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(texts)

    one = httpx.get(f"{stack_gateway.url}/memories", params={"user_id": user}).json()["results"][0]
    got = httpx.get(f"{stack_gateway.url}/memories/{one['id']}")
    assert got.status_code == 200 and got.json()["memory"] == one["memory"]
    wrong_user = httpx.get(f"{stack_gateway.url}/memories/{one['id']}",
                           params={"user_id": f"{user}-neighbour"})  # fmt: skip
    assert wrong_user.status_code == 404

    deleted = httpx.delete(f"{stack_gateway.url}/memories/{one['id']}")
    assert deleted.status_code == 200
    assert httpx.get(f"{stack_gateway.url}/memories/{one['id']}").status_code == 404
    assert httpx.delete(f"{stack_gateway.url}/memories/{one['id']}").status_code == 404

    forgot = httpx.delete(f"{stack_gateway.url}/memories", params={"user_id": user})
    assert forgot.json() == {"user_id": user, "deleted": 4}
    assert (
        httpx.get(f"{stack_gateway.url}/memories", params={"user_id": user}).json()["results"] == []
    )
    neighbour = httpx.get(f"{stack_gateway.url}/memories", params={"user_id": f"{user}-neighbour"})
    assert [m["memory"] for m in neighbour.json()["results"]] == ["not yours"]


@pytest.mark.parametrize(
    ("method", "path", "body", "fragment"),
    [
        ("POST", "/memories", {"user_id": "u"}, "exactly one"),
        ("POST", "/memories", {"user_id": "u", "text": "a", "messages": [
            {"role": "user", "content": "b"}]}, "exactly one"),
        ("POST", "/memories", {"text": "a"}, "user_id"),
        ("POST", "/memories", {"user_id": "u", "text": "a", "timestamp": "yesterday"}, "ISO 8601"),
        ("POST", "/memories", {"user_id": "", "text": "a"}, "user_id"),
        ("POST", "/memories/search", {"user_id": "u", "query": "q", "top_k": 0}, "top_k"),
        ("POST", "/memories/search", {"user_id": "u"}, "query"),
        ("GET", "/memories/not-a-uuid", None, "UUID"),
        ("GET", "/memories", None, "user_id"),
    ],
)  # fmt: skip
def test_bad_requests_are_4xx_in_the_envelope(
    stack_gateway: Service, method: str, path: str, body: object, fragment: str
) -> None:
    response = httpx.request(method, f"{stack_gateway.url}{path}", json=body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]["message"]


def test_unknown_id_is_404(stack_gateway: Service) -> None:
    response = httpx.get(f"{stack_gateway.url}/memories/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "memory_not_found"
