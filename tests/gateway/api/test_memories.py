"""The memory REST API in process: a query parameter given twice is refused on
every route that takes one, before anything is read or deleted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from gateway.app import create_app
from gateway.settings import Settings

DEAD = "http://127.0.0.1:9/v1"  # no embedder: writes wait in the outbox, readable by id


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data", llm_url=DEAD, embedder_url=DEAD, health_interval_s=60
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def bobs(client: TestClient) -> str:
    """The id of a memory of the user ``bob``."""
    added = client.post("/v1/memories", json={"user_id": "bob", "text": "likes tea"})
    assert added.status_code in (201, 202), added.text
    memory_id: str = added.json()["results"][0]["id"]
    assert client.get(f"/v1/memories/{memory_id}?user_id=bob").status_code in (200, 202)
    return memory_id


def assert_repeated(answer: Response, param: str, times: int = 2) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.json() == {
        "error": {
            "message": f"query parameter '{param}' is given {times} times; give it once",
            "type": "invalid_request_error",
            "code": "repeated_parameter",
            "param": param,
        }
    }


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("user_id=alice&user_id=bob", "user_id"),
        ("user_id=bob&user_id=bob", "user_id"),  # the same value twice too
        ("user%5Fid=alice&user_id=bob", "user_id"),  # the name as the server decodes it
        ("user_id=bob&limit=1&limit=5", "limit"),
        ("user_id=bob&limit=5&limit=abc", "limit"),  # not the last value's error
        ("user_id=bob&cursor=a&cursor=b", "cursor"),
    ],
)
def test_listing_with_a_repeated_parameter_is_refused(
    client: TestClient, query: str, param: str
) -> None:
    assert_repeated(client.get(f"/v1/memories?{query}"), param)


def test_a_parameter_given_three_times_says_so(client: TestClient) -> None:
    assert_repeated(client.get("/v1/memories?user_id=a&user_id=b&user_id=c"), "user_id", 3)


def test_reading_one_memory_with_a_repeated_user_is_refused(client: TestClient, bobs: str) -> None:
    # The last value (bob) would have been read: bob's memory, though alice was named first.
    assert_repeated(client.get(f"/v1/memories/{bobs}?user_id=alice&user_id=bob"), "user_id")
    assert client.get(f"/v1/memories/{bobs}?user_id=alice").status_code == 404


def test_deleting_one_memory_with_a_repeated_user_is_refused(client: TestClient, bobs: str) -> None:
    assert_repeated(client.delete(f"/v1/memories/{bobs}?user_id=alice&user_id=bob"), "user_id")
    assert client.get(f"/v1/memories/{bobs}").status_code in (200, 202)  # still there


def test_forgetting_a_repeated_user_is_refused(client: TestClient, bobs: str) -> None:
    assert_repeated(client.delete("/v1/memories?user_id=alice&user_id=bob"), "user_id")
    assert client.get(f"/v1/memories/{bobs}").status_code in (200, 202)  # bob not forgotten


def test_parameters_given_once_and_ones_not_declared_are_served(
    client: TestClient, bobs: str
) -> None:
    assert client.get("/v1/memories?user_id=bob&limit=5").status_code == 200
    # A parameter no route declares is ignored, once or repeated, as ever.
    assert client.get(f"/v1/memories/{bobs}?user_id=bob&x=1&x=2").status_code in (200, 202)
    # Routes without query parameters take none to check.
    found = client.post("/v1/memories/search?x=1&x=2", json={"user_id": "bob", "query": "tea"})
    assert found.json()["error"]["code"] == "memory_unavailable"  # got as far as embedding
    assert client.delete(f"/v1/memories/{bobs}?user_id=bob").json()["deleted"] is True
