"""The OpenAPI document as the API really answers.

FastAPI derives the document from the routes, with two things to put right:
it declares a 422 ``HTTPValidationError`` for every operation with inputs,
while the gateway answers invalid input with a 400 in OpenAI's error envelope
(gateway.errors); and the chat endpoint reads its body itself (to forward it
byte for byte), so its schema is declared by hand and the definitions that
schema refers to have to be added to the components.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

_REF = "#/components/schemas/{model}"
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None
    param: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope, which every gateway error uses."""

    error: ErrorDetail


def install_openapi(app: FastAPI, extra_schemas: dict[str, Any]) -> None:
    """Serve the corrected document (built once, on first request)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = corrected(build(), extra_schemas)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def corrected(document: dict[str, Any], extra_schemas: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(extra_schemas)
    error = ErrorResponse.model_json_schema(ref_template=_REF)
    schemas.update(error.pop("$defs", {}))
    schemas["ErrorResponse"] = error
    invalid = {
        "description": "Invalid input (OpenAI's error envelope)",
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}},
    }
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None or "requestBody" in operation:
                responses["400"] = invalid
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    return document
