"""The embedder's HTTP surface, with a fake model (the e2e tests use the real one)."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response

from embedder.app import create_app
from embedder.model import Encoded, Encoder
from embedder.settings import EmbedderSettings
from harness.process import wait_until
from tests.embedder.fake_encoder import FakeEncoder


def client_for(load: object, **settings: object) -> TestClient:
    app = create_app(EmbedderSettings(**settings), load_encoder=load)  # type: ignore[arg-type]
    return TestClient(app)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with client_for(lambda s: FakeEncoder(), max_inputs=4, max_input_chars=10) as c:
        wait_until(lambda: c.get("/health").status_code == 200, 5)
        yield c


def test_health_is_503_until_the_model_is_loaded() -> None:
    gate = threading.Event()

    def slow_load(_: EmbedderSettings) -> Encoder:
        gate.wait(5)
        return FakeEncoder()

    with client_for(slow_load) as c:
        loading = c.get("/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        assert c.post("/v1/embeddings", json={"input": "x"}).status_code == 503
        gate.set()
        wait_until(lambda: c.get("/health").status_code == 200, 5)
        assert c.get("/health").json() == {"status": "ok", "model": "fake", "dimension": 3}


def test_a_failed_load_is_reported_and_stops_the_service() -> None:
    stopped = threading.Event()

    def broken(_: EmbedderSettings) -> Encoder:
        raise OSError("weights not found")

    app = create_app(EmbedderSettings(), load_encoder=broken, on_load_failure=stopped.set)
    with TestClient(app) as c:
        assert stopped.wait(5)
        body = c.get("/health").json()
        assert body["status"] == "failed" and "weights not found" in body["error"]


def test_embeddings_in_openai_shape(client: TestClient) -> None:
    body = client.post("/v1/embeddings", json={"input": ["a b", "ccc"], "model": "x"}).json()
    assert body["object"] == "list" and body["model"] == "fake"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][1]["embedding"] == [3.0, 1.0, 1.0]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    single = client.post("/v1/embeddings", json={"input": "solo"}).json()
    assert len(single["data"]) == 1


def test_base64_encoding_matches_floats(client: TestClient) -> None:
    body = client.post("/v1/embeddings", json={"input": "ab", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert decoded.tolist() == [2.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"input": []}, "must not be empty"),
        ({"input": ["ok", ""]}, "input[1] is empty"),
        ({"input": ["a"] * 5}, "at most 4"),
        ({"input": "x" * 11}, "11 characters; at most 10"),
        ({"input": [1, 2]}, "input"),
        ({"input": "x", "dimensions": 7}, "dimensions=7"),
        ({"input": "x", "priority": 5000}, "priority"),
        ({"input": "x", "priority": "high"}, "priority"),
        ({}, "input"),
    ],
)
def test_bad_input_is_a_clear_400(client: TestClient, payload: object, fragment: str) -> None:
    response = client.post("/v1/embeddings", json=payload)
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]


def test_a_request_may_name_its_priority(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"input": ["ab", "c"], "priority": 1})
    assert response.status_code == 200
    assert [item["embedding"][0] for item in response.json()["data"]] == [2.0, 1.0]


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/v1/embeddings", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"input=hello", "application/x-www-form-urlencoded"),  # curl -d without a type
     (b'["hello"]', "application/json")],
)  # fmt: skip
def test_a_body_that_is_no_json_object_is_said_to_be_so(
    client: TestClient, body: bytes, kind: str
) -> None:
    # It read ": Input should be a valid dictionary ...", naming no place.
    response = client.post("/v1/embeddings", content=body, headers={"content-type": kind})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == "the request body must be a JSON object, sent as application/json"
    assert error["param"] is None


def test_a_bad_field_is_its_param(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"input": "x", "priority": "high"})
    assert response.json()["error"]["param"] == "priority"


def test_metrics_count_batches_and_inputs(client: TestClient) -> None:
    client.post("/v1/embeddings", json={"input": ["a", "b"]})
    text = client.get("/metrics").text
    assert "embedder_inputs_total 2.0" in text
    assert 'embedder_requests_total{status="200"} 1.0' in text
    assert 'embedder_model_info{dimension="3",model="fake"} 1.0' in text


class PickyEncoder(FakeEncoder):
    """Fails a whole encode call as the real tokenizer does on a lone surrogate
    (TypeError), on ``poison`` (ValueError) and on ``crash`` (RuntimeError)."""

    def encode(self, texts: list[str]) -> Encoded:
        result = super().encode(texts)
        if any(not t.isascii() and any(0xD800 <= ord(c) <= 0xDFFF for c in t) for t in texts):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]")
        if "poison" in texts:
            raise ValueError("cannot encode poison")
        if "crash" in texts:
            raise RuntimeError("model crashed")
        return result


def _post_json(client: TestClient, body: bytes) -> Response:
    return client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})


def _concurrently(
    client: TestClient,
    encoder: FakeEncoder,
    gate: threading.Event,
    bodies: list[bytes],
    queued: int,
) -> list[Response]:
    """``bodies`` posted at once while the model is busy with another request;
    the model is let go once ``queued`` texts wait, so they share one batch."""
    batcher = client.app.state.embedder.batcher  # type: ignore[attr-defined]
    with ThreadPoolExecutor(len(bodies) + 1) as pool:
        busy = pool.submit(_post_json, client, b'{"input": "busy"}')
        assert encoder.waiting.wait(5)
        futures = [pool.submit(_post_json, client, body) for body in bodies]
        wait_until(lambda: batcher.queued_texts == queued, 5, what=f"{queued} texts queued")
        gate.set()
        assert busy.result(10).status_code == 200
        return [f.result(10) for f in futures]


@pytest.fixture
def picky() -> Iterator[tuple[TestClient, PickyEncoder, threading.Event]]:
    gate = threading.Event()
    encoder = PickyEncoder(gate)
    with client_for(lambda s: encoder, max_batch_size=16) as c:
        wait_until(lambda: c.get("/health").status_code == 200, 5)
        yield c, encoder, gate


def test_a_lone_surrogate_is_refused_before_it_is_queued(
    picky: tuple[TestClient, PickyEncoder, threading.Event],
) -> None:
    client, encoder, gate = picky
    bodies = [b'{"input": ["one"]}', b'{"input": ["ok", "a\\ud800b"]}', b'{"input": "three"}']
    good_one, bad, good_three = _concurrently(client, encoder, gate, bodies, queued=2)
    # Refused while the model was still busy: it was never queued.
    assert bad.status_code == 400
    assert bad.json() == {
        "error": {
            "message": "input[1] holds a lone surrogate (U+D800 at character 1), "
            "which is not Unicode text",
            "type": "invalid_request_error",
            "code": "invalid_input",
            "param": "input[1]",
        }
    }
    assert [good_one.status_code, good_three.status_code] == [200, 200]
    assert good_three.json()["data"][0]["embedding"][0] == 5.0  # len("three")
    assert [sorted(b) for b in encoder.batches] == [["busy"], ["one", "three"]]
    # A string input is named as such; a low surrogate alone is refused too.
    single = _post_json(client, b'{"input": "\\udfff"}')
    assert single.status_code == 400 and single.json()["error"]["param"] == "input"
    # A surrogate pair is one character, and fine.
    assert _post_json(client, b'{"input": "\\ud83d\\ude00"}').status_code == 200


def test_a_batch_that_fails_on_one_request_is_retried_request_by_request(
    picky: tuple[TestClient, PickyEncoder, threading.Event],
) -> None:
    client, encoder, gate = picky
    bodies = [b'{"input": ["a"]}', b'{"input": ["ok", "poison"]}', b'{"input": ["bb", "ccc"]}']
    first, poisoned, last = _concurrently(client, encoder, gate, bodies, queued=5)
    assert len(encoder.batches[1]) == 5  # they did share one batch, which failed
    assert sorted(map(tuple, encoder.batches[2:])) == [("a",), ("bb", "ccc"), ("ok", "poison")]
    assert first.status_code == 200 and last.status_code == 200
    assert [d["embedding"][0] for d in first.json()["data"]] == [1.0]
    assert [d["embedding"][0] for d in last.json()["data"]] == [2.0, 3.0]
    assert poisoned.status_code == 500
    assert poisoned.json()["error"] == {
        "message": "the model failed to encode this input",
        "type": "server_error",
        "code": "encode_failed",
        "param": None,
    }


def test_a_batch_that_fails_for_another_reason_is_not_retried(
    picky: tuple[TestClient, PickyEncoder, threading.Event],
) -> None:
    client, encoder, gate = picky
    bodies = [b'{"input": ["a"]}', b'{"input": "crash"}']
    answers = _concurrently(client, encoder, gate, bodies, queued=2)
    assert [a.status_code for a in answers] == [500, 500]
    assert all(a.json()["error"]["code"] == "encode_failed" for a in answers)
    assert [sorted(b) for b in encoder.batches] == [["busy"], ["a", "crash"]]
