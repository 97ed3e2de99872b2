"""The OpenAPI document says what the API really answers."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from gateway.app import create_app
from gateway.exceptions import MemoryUnavailable, OutboxFull, StoreUnavailable, UnknownModel
from gateway.openapi import ErrorDetail, ErrorResponse, errors, keyed_router
from gateway.settings import Settings


def document() -> dict[str, Any]:
    return create_app(Settings()).openapi()


def test_invalid_input_is_declared_as_a_400_envelope_never_a_422() -> None:
    doc = document()
    operations = {
        f"{method.upper()} {path}": op
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }
    assert not [name for name, op in operations.items() if "422" in op["responses"]]
    for name in ("POST /v1/chat/completions", "POST /v1/memories", "GET /v1/memories",
                 "POST /v1/memories/search", "DELETE /admin/models/{alias}"):  # fmt: skip
        schema = operations[name]["responses"]["400"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, name
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "202" in operations["POST /v1/memories"]["responses"]


def test_every_documented_answer_has_a_declared_schema() -> None:
    """The document describes every response from the code: each operation's
    every status (``default`` included) has a schema, and none is a 422."""
    doc = document()
    schemas = doc["components"]["schemas"]
    undeclared: list[str] = []
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, f"{method} {path}"
            assert "200" in responses or "201" in responses, f"{method} {path}"
            for status, answer in responses.items():
                content = answer.get("content", {})
                json_schema = content.get("application/json", {}).get("schema")
                if not json_schema:  # absent, or FastAPI's {} for "anything"
                    undeclared.append(f"{method.upper()} {path} {status}")
                elif "$ref" in json_schema:
                    assert json_schema["$ref"].removeprefix("#/components/schemas/") in schemas
    assert undeclared == []


def test_errors_are_the_envelope_and_bodies_read_raw_are_declared() -> None:
    doc = document()
    envelope = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if status == "default" or status.startswith(("4", "5")):
                    schema = answer["content"]["application/json"]["schema"]
                    # Not ready, or not live: the probe's own report.
                    if (path, status) not in {("/readyz", "503"), ("/livez", "503")}:
                        assert schema == envelope, f"{method} {path} {status}"
    for path in ("/v1/chat/completions", "/v1/responses", "/v1/messages"):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert "model" in body["schema"]["required"], path
        assert "$ref" not in json.dumps(body), path  # self-contained: nothing to resolve


def test_the_declared_error_schema_fits_what_the_gateway_answers(tmp_path: Any) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    with TestClient(app) as client:
        response = client.post("/v1/memories/search", json={"query": 3})
    assert response.status_code == 400
    ErrorResponse.model_validate(response.json())  # raises if the envelope differs
    assert set(response.json()["error"]) == set(ErrorDetail.model_fields)


def test_keyed_routers_write_floats_as_json_dumps_does() -> None:
    """Response models on the gateway's own routes change no byte: 1e-05 stays 1e-05
    (FastAPI's default for a response model, Pydantic's JSON writer, says 1e-5)."""

    class Scored(BaseModel):
        score: float
        metadata: dict[str, Any]

    router = keyed_router("/t", "t")

    @router.get("", response_model=Scored)
    async def scored() -> Scored:
        return Scored(score=1e-05, metadata={"big": 1e16, "text": "ü"})

    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        raw = client.get("/t").content
    assert raw == json.dumps(
        {"score": 1e-05, "metadata": {"big": 1e16, "text": "ü"}},
        ensure_ascii=False, separators=(",", ":"),
    ).encode()  # fmt: skip
    assert b"1e-05" in raw and b"1e+16" in raw


def test_an_exception_class_declares_its_own_status_and_meaning() -> None:
    declared = errors(OutboxFull, UnknownModel)
    assert set(declared) == {OutboxFull.status_code, UnknownModel.status_code} == {507, 404}
    assert declared[507]["model"] is ErrorResponse
    assert declared[507]["description"].startswith("The outbox cannot take the write")


def test_classes_sharing_a_status_are_described_together() -> None:
    declared = errors(StoreUnavailable, MemoryUnavailable)
    assert list(declared) == [503]
    assert "vector store cannot be reached" in declared[503]["description"]
    assert "Memory cannot be read right now" in declared[503]["description"]


def test_a_meaning_given_on_the_route_wins_over_the_docstring() -> None:
    assert errors((UnknownModel, "No model of that name here"))[404]["description"] == (
        "No model of that name here"
    )
    assert errors(400)[400]["description"] == "Invalid input"
