"""Query parameters given once: a repeated one is refused, not half read.

Starlette keeps every value of a repeated query parameter and FastAPI hands a
route the last one, so ``?user_id=a&user_id=b`` listed, read or forgot the
memories of ``b`` while the caller may have meant ``a``, and nothing said so.
A route of this class answers a query parameter it declares given more than
once with 400 ``repeated_parameter`` naming it, before any of its parameters
is read. Parameters it does not declare are ignored, once or repeated, as ever.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant

from gateway.errors import APIError
from gateway.openapi import JSONBodyRoute


def _query_names(dependant: Dependant) -> Iterator[str]:
    """The query parameters of ``dependant`` and of everything it depends on."""
    pending = [dependant]
    while pending:
        current = pending.pop()
        yield from (param.alias for param in current.query_params)
        pending.extend(current.dependencies)


def repeated(query: list[tuple[str, str]], declared: frozenset[str]) -> tuple[str, int] | None:
    """The first of ``declared`` that ``query`` gives more than once, and how often."""
    counts = Counter(name for name, _ in query if name in declared)
    for name, _ in query:
        if counts[name] > 1:
            return name, counts[name]
    return None


class SingleQueryRoute(JSONBodyRoute):
    """A route of the gateway's own API whose query parameters are given once each."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        declared = frozenset(_query_names(self.dependant))
        if not declared:
            return handler  # no query parameters: nothing to do per request

        async def given_once(request: Request) -> Response:
            found = repeated(request.query_params.multi_items(), declared)
            if found is not None:
                name, times = found
                raise APIError(
                    400,
                    f"query parameter '{name}' is given {times} times; give it once",
                    code="repeated_parameter",
                    param=name,
                )
            return await handler(request)

        return given_once
