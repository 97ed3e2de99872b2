"""The OpenAPI document says what the API really answers."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.openapi import ErrorDetail, ErrorResponse
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


def test_the_declared_error_schema_fits_what_the_gateway_answers(tmp_path: Any) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    with TestClient(app) as client:
        response = client.post("/v1/memories/search", json={"query": 3})
    assert response.status_code == 400
    ErrorResponse.model_validate(response.json())  # raises if the envelope differs
    assert set(response.json()["error"]) == set(ErrorDetail.model_fields)
