"""Errors in OpenAI's envelope: ``{"error": {"message", "type", "code"}}``.

Every failure the gateway reports is answered here, so clients written for
OpenAI parse ours unchanged, and this is where each one's status comes from:

- a :class:`gateway.exceptions.GatewayError` (a dependency that cannot
  serve, input that can never be stored, an unknown model, a full disk), as
  its class says: the hierarchy and each status are in ``gateway.exceptions``;
- an :class:`APIError`, raised where a request is found wrong, with its
  status written there; and an LLM's own error answer, relayed with its
  status (a 400, 404, 413 or 422 as it is, anything else as 502:
  ``gateway.api.relay.upstream_error``);
- validation failures: 400 (as OpenAI answers them), never FastAPI's 422;
- Starlette's own (404 for an unknown path, 405 with every method the path
  is served with in ``Allow``);
- anything else: a 500 envelope without a stack trace.

One exception to all of them: once a stream has started, its status is
sent, so a failure becomes an error event in the stream (gateway.api.relay).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from gateway.exceptions import GatewayError
from gateway.json_depth import TOO_DEEP

logger = logging.getLogger("gateway.errors")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


_CODE_BY_STATUS = {
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
}


class APIError(Exception):
    """An error answered to the client in OpenAI's envelope."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code
        self.type = type or _TYPE_BY_STATUS.get(status_code, "api_error")
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


def error_body(
    message: str, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


def translated(exc: GatewayError) -> APIError:
    """The answer to a gateway error, as its class declares it."""
    return APIError(
        exc.status_code, exc.client_message(), code=exc.code, param=exc.param,
        headers=exc.headers(),
    )  # fmt: skip


def validation_message(error: Mapping[str, Any]) -> str:
    """Pydantic's message for one error, unless it misstates it.

    A length limit on an optional annotated string (``Text | None =
    Field(max_length=...)``, Text being ``str`` with a validator) is checked on
    the union, not the string, and pydantic then counts "items":
    "Value should have at most 16000 items after validation". For a string
    that is characters, said as pydantic says it of a plain ``str``.
    """
    kind, ctx = error.get("type"), error.get("ctx") or {}
    if kind in ("too_long", "too_short") and isinstance(error.get("input"), str):
        bound = "most" if kind == "too_long" else "least"
        limit = ctx.get("max_length" if kind == "too_long" else "min_length")
        unit = "character" if limit == 1 else "characters"
        return f"String should have at {bound} {limit} {unit}"
    return str(error.get("msg", "invalid value"))


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    where = ".".join(loc)
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    if first.get("type") == "missing" and not where:  # no body at all, or an empty one
        return "a request body is required: a JSON object", None
    message = validation_message(first)
    return (f"{where}: {message}" if where else message), (where or None)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()


async def _gateway_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    return translated(exc).response()


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = _describe_validation(exc)
    errors = exc.errors()
    code = "invalid_json" if errors and errors[0].get("type") == "json_invalid" else None
    return APIError(400, message, code=code or "invalid_request", param=param).response()


# FastAPI's answer to a body its JSON parser gave up on (invalid UTF-8, nesting
# deeper than the recursion limit, an integer of more than 4300 digits).
FASTAPI_UNPARSABLE = "There was an error parsing the body"


def allowed_methods(request: Request) -> str:
    """The ``Allow`` header of a 405 for ``request``'s path: the methods of every
    route that serves the path. Starlette names those of the first route that
    matched it only, so ``OPTIONS /v1/memories`` was told ``POST`` though GET
    and DELETE are served there too. A route that takes the rest of the path
    (``{path:path}``: the pass-through) counts only where no other route matches.

    FastAPI keeps an included router as one route without methods, so the
    routes of the gateway's routers are read from ``app.state.routes``."""
    named: set[str] = set()
    rest: set[str] = set()
    for route in (*request.app.router.routes, *getattr(request.app.state, "routes", ())):
        methods = getattr(route, "methods", None)
        if not methods or route.matches(request.scope)[0] is Match.NONE:
            continue
        (rest if ":path}" in getattr(route, "path", "") else named).update(methods)
    return ", ".join(sorted(named or rest))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == FASTAPI_UNPARSABLE:
        # The same answer as chat's for the same input (gateway.api.chat). FastAPI
        # raises this one from the parser's error: a RecursionError is a body
        # nested deeper than the parser goes, so deeper than MAX_JSON_DEPTH too.
        if isinstance(exc.__cause__, RecursionError):
            return APIError(400, TOO_DEEP, code="invalid_json").response()
        return APIError(400, "request body is not valid JSON", code="invalid_json").response()
    code = _CODE_BY_STATUS.get(exc.status_code)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return APIError(exc.status_code, str(exc.detail), code=code, headers=headers).response()


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    # The server closes the connection after an unhandled error: say so, or a
    # pooling client sends its next request into a connection that is gone.
    headers = {"Connection": "close"}
    return APIError(500, "internal error", code="internal_error", headers=headers).response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
