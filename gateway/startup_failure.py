"""A start-up the operator must mend fails with its one line, not a traceback.

When the lifespan raises, Starlette sends ``lifespan.startup.failed`` with the
whole traceback as its message, and uvicorn logs that message as one error
record: frames inside a JSON log line. For a ``CannotStart`` (a store holding
vectors of another size, ...) the message becomes the exception's own text,
which says what to do; anything else keeps its traceback, a bug to report.
"""

from __future__ import annotations

import sys

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.exceptions import CannotStart


class OneLineStartupFailure:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_plainly(message: Message) -> None:
            # Starlette sends the failure from inside its ``except`` block, so
            # the exception being handled is the one that stopped the start.
            problem = sys.exc_info()[1]
            if message["type"] == "lifespan.startup.failed" and isinstance(problem, CannotStart):
                message = {**message, "message": f"memgate cannot start: {problem}"}
            await send(message)

        await self.app(scope, receive, send_plainly)
