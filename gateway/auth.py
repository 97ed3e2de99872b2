"""API keys: each ``tenant:key`` pair of ``GATEWAY_API_KEYS`` is one tenant.

Keys are compared as SHA-256 digests with ``hmac.compare_digest`` against
every configured key, so the time taken does not depend on how much of a
guess was right. With no keys configured there is no auth: one tenant,
``default``, and the gateway binds loopback only (see ``Settings``).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from gateway.errors import APIError

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Principal:
    tenant: str
    admin: bool = False


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_api_keys(spec: str) -> dict[bytes, str]:
    """``"acme:k1,globex:k2"`` → {sha256(key): tenant}. Raises ValueError when malformed."""
    keys: dict[bytes, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        tenant, sep, key = item.partition(":")
        if not sep or not tenant.strip() or not key.strip():
            raise ValueError("GATEWAY_API_KEYS must be comma-separated tenant:key pairs")
        keys[_digest(key.strip())] = tenant.strip()
    return keys


class KeyRing:
    def __init__(self, api_keys: str | None, admin_key: str | None) -> None:
        self._keys = parse_api_keys(api_keys) if api_keys else {}
        self._admin = _digest(admin_key) if admin_key else None

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, key: str) -> Principal | None:
        digest = _digest(key)
        tenant = None
        for known, owner in self._keys.items():  # no early exit: constant time
            if hmac.compare_digest(known, digest):
                tenant = owner
        if self._admin is not None and hmac.compare_digest(self._admin, digest):
            return Principal(tenant or DEFAULT_TENANT, admin=True)
        return Principal(tenant) if tenant else None


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def authenticate(request: Request) -> Principal:
    """FastAPI dependency for ``/v1/*``."""
    ring: KeyRing = request.app.state.keyring
    if not ring.enabled:
        return Principal(DEFAULT_TENANT, admin=True)
    token = bearer_token(request)
    if token is None:
        raise APIError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = ring.identify(token)
    if principal is None:
        raise APIError(
            401, "invalid API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]
