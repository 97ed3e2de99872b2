"""The gateway lets idle connections go before the servers it talks to do."""

from __future__ import annotations

import uvicorn

from gateway.keepalive import KEEPALIVE_EXPIRY_S


def test_idle_connections_expire_before_uvicorns_keepalive_timeout() -> None:
    # vLLM and our embedder serve with uvicorn's default keep-alive timeout;
    # at equal timeouts a request can land on a connection as it is closed.
    server_timeout_s = uvicorn.Config(app=None).timeout_keep_alive
    assert server_timeout_s > KEEPALIVE_EXPIRY_S
