"""API keys: each key belongs to one tenant; one admin key for ``/admin``.

Keys come from ``GATEWAY_API_KEYS`` (``tenant:key`` pairs) and/or
``GATEWAY_API_KEYS_FILE`` (one per line: ``tenant:key``, or
``tenant:sha256:<hex>`` so the file need not hold the key itself). They are
kept only as SHA-256 digests and compared with ``hmac.compare_digest``
against every configured key, so the time taken does not depend on how much
of a guess was right. With no keys configured there is no auth: one tenant,
``default``, and the gateway binds loopback only (see ``Settings``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import APIError
from gateway.secret_strength import sendable_key

DEFAULT_TENANT = "default"
PRINCIPAL_KEY = "memgate.principal"  # where KeyCheck leaves its decision in scope["state"]
_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class Principal:
    tenant: str
    admin: bool = False


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _parse_entry(item: str, where: str) -> tuple[bytes, str]:
    tenant, sep, key = item.partition(":")
    tenant, key = tenant.strip(), key.strip()
    if not sep or not tenant or not key:
        raise ValueError(f"{where}: expected tenant:key, got an entry without both")
    if "/" in tenant or not tenant.isprintable():
        # It is a path segment of the admin API (/admin/tenants/{tenant}/users): a
        # tenant named "team/eu" could never be listed or forgotten there.
        raise ValueError(
            f"{where}: tenant {tenant!r}: a tenant name has no '/' or control characters"
        )
    _check_sendable(key, f"{where}: tenant {tenant!r}'s key")
    algo, sep, digest = key.partition(":")
    if sep and algo == "sha256" and _HEX_DIGEST.match(digest):
        return bytes.fromhex(digest), tenant
    return _digest(key), tenant


def _check_sendable(key: str, whose: str) -> None:
    """A key a client can send: printable ASCII. HTTP carries header values as
    bytes that servers read as Latin-1, so a key with ``é`` or a control
    character could never match, and every client would get 401. The message
    never holds the key."""
    try:
        sendable_key(key)
    except ValueError:
        raise ValueError(
            f"{whose} has characters an HTTP header cannot carry: use printable ASCII"
        ) from None


def _add_key(keys: dict[bytes, str], digest: bytes, tenant: str, where: str) -> None:
    """Add one entry; a key already given to another tenant is an error. Left alone, the
    last entry won and the first tenant's clients silently read and wrote the other's
    memories. The message names the tenants, never the key."""
    known = keys.setdefault(digest, tenant)
    if known != tenant:
        raise ValueError(
            f"{where}: tenants {known!r} and {tenant!r} have the same key; "
            "each key must belong to one tenant"
        )


def parse_api_keys(spec: str, keys: dict[bytes, str] | None = None) -> dict[bytes, str]:
    """``"acme:k1,globex:k2"`` → {sha256(key): tenant}, added to ``keys`` when given.
    Raises ValueError when malformed, or when a key is another tenant's."""
    keys = {} if keys is None else keys
    for item in (part.strip() for part in spec.split(",")):
        if item:
            _add_key(keys, *_parse_entry(item, "GATEWAY_API_KEYS"), "GATEWAY_API_KEYS")
    return keys


def read_api_keys_file(path: Path, keys: dict[bytes, str] | None = None) -> dict[bytes, str]:
    """The ``tenant:key`` lines of ``path``, added to ``keys`` as ``parse_api_keys`` does."""
    keys = {} if keys is None else keys
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"GATEWAY_API_KEYS_FILE {path}: {exc}") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            where = f"{path}:{number}"
            _add_key(keys, *_parse_entry(line, where), where)
    return keys


class KeyRing:
    """Raises ValueError for a malformed entry, a key given to two tenants (across
    GATEWAY_API_KEYS and the keys file too), key settings that hold no key at
    all, or an admin key that is a tenant's key."""

    def __init__(
        self,
        api_keys: str | None,
        admin_key: str | None,
        keys_file: Path | None = None,
    ) -> None:
        self._keys = parse_api_keys(api_keys) if api_keys else {}
        if keys_file is not None:
            read_api_keys_file(keys_file, self._keys)
        if (api_keys or keys_file is not None) and not self._keys:
            # No tenant key means no key check at all: a secret mounted empty, or
            # GATEWAY_API_KEYS=",", must not leave every route open.
            named = " and ".join(
                name
                for name, given in (
                    ("GATEWAY_API_KEYS", api_keys),
                    (f"GATEWAY_API_KEYS_FILE ({keys_file})", keys_file),
                )
                if given
            )
            raise ValueError(
                f"{named} holds no key (tenant:key), so no request would be checked: "
                "give at least one key, or unset it to run without keys on 127.0.0.1"
            )
        if admin_key:
            _check_sendable(admin_key, "GATEWAY_ADMIN_KEY")
        self._admin = _digest(admin_key) if admin_key else None
        # Otherwise that tenant's clients could open /admin (and every tenant's users) with
        # their own key. A lookup, not compare_digest: this runs once, on the operator's
        # configuration, never on a client's guess.
        if self._admin is not None and (owner := self._keys.get(self._admin)) is not None:
            raise ValueError(
                f"GATEWAY_ADMIN_KEY is also the key of tenant {owner!r}; "
                "the admin key must be a key of its own"
            )

    @property
    def tenants_enabled(self) -> bool:
        return bool(self._keys)

    @property
    def tenant_count(self) -> int:
        return len(set(self._keys.values()))

    @property
    def admin_enabled(self) -> bool:
        return self._admin is not None

    @property
    def any_keys(self) -> bool:
        return self.tenants_enabled or self.admin_enabled

    def tenant_of(self, key: str) -> str | None:
        digest = _digest(key)
        tenant = None
        for known, owner in self._keys.items():  # no early exit: constant time
            if hmac.compare_digest(known, digest):
                tenant = owner
        return tenant

    def is_admin(self, key: str) -> bool:
        return self._admin is not None and hmac.compare_digest(self._admin, _digest(key))


def bearer_token(request: HTTPConnection) -> str | None:
    """The key from ``Authorization: Bearer``, else from ``x-api-key`` (how
    Anthropic's SDKs send it, so they work with their usual ``api_key``).

    Two of either header are refused (400): which one wins would be a guess,
    and a proxy that adds its own key beside a client's must not be overruled
    by whichever comes first."""
    for name in ("authorization", "x-api-key"):
        if len(request.headers.getlist(name)) > 1:
            raise APIError(400, f"more than one {name} header", code="duplicate_credentials")
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer":
        return token.strip() or None
    return request.headers.get("x-api-key", "").strip() or None


def _require_token(token: str | None) -> str:
    if token is None:
        raise APIError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token


def _invalid_key() -> APIError:
    return APIError(
        401, "invalid API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
    )


def tenant_principal(ring: KeyRing, token: str | None) -> Principal:
    """Who a ``/v1/*`` request is: a tenant's key; none needed when no keys are configured.
    Raises APIError (401, or 403 for the admin key)."""
    if not ring.tenants_enabled:
        return Principal(DEFAULT_TENANT)  # loopback-only mode: one tenant
    token = _require_token(token)
    tenant = ring.tenant_of(token)
    if tenant is not None:
        return Principal(tenant)
    if ring.is_admin(token):
        raise APIError(403, "the admin key is for /admin endpoints", code="admin_key_on_v1")
    raise _invalid_key()


def admin_principal(ring: KeyRing, token: str | None) -> Principal:
    """Who an ``/admin/*`` request is: the admin key when one is set; open only when no
    keys at all are configured (loopback-only mode). Raises APIError (401 or 403)."""
    if not ring.admin_enabled:
        if not ring.tenants_enabled:
            return Principal(DEFAULT_TENANT, admin=True)
        raise APIError(403, "admin endpoints are off: set GATEWAY_ADMIN_KEY", code="admin_off")
    token = _require_token(token)
    if ring.is_admin(token):
        return Principal(DEFAULT_TENANT, admin=True)
    if ring.tenant_of(token) is not None:
        raise APIError(403, "this endpoint needs the admin key", code="admin_only")
    raise _invalid_key()


def is_admin_request(request: Request) -> bool:
    """Whether ``request`` carries what ``/admin/*`` would accept (for endpoints that
    show more to the operator, like ``/readyz``)."""
    try:
        return admin_principal(request.app.state.keyring, bearer_token(request)).admin
    except APIError:
        return False


def _checked(request: Request) -> Principal | None:
    principal = request.scope.get("state", {}).get(PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else None


async def authenticate(request: Request) -> Principal:
    """Dependency for ``/v1/*``. The KeyCheck middleware has normally decided already."""
    principal = _checked(request)
    if principal is not None and not principal.admin:
        return principal
    return tenant_principal(request.app.state.keyring, bearer_token(request))


async def authenticate_admin(request: Request) -> Principal:
    """Dependency for ``/admin/*``. The KeyCheck middleware has normally decided already."""
    principal = _checked(request)
    if principal is not None and principal.admin:
        return principal
    return admin_principal(request.app.state.keyring, bearer_token(request))


class KeyCheck:
    """Checks the key from the headers alone, before anything reads the body or
    takes a concurrency slot (it wraps ``RequestLimits``): a client without a valid
    key is answered at once, however large a body it announces or however slowly
    it sends it, so it can never hold a slot a tenant needs. The decision is left
    in the request's state for the endpoint's dependency.

    ``/v1/*`` and the ``tenant_paths`` outside it (vLLM's root endpoints the
    gateway passes through) need a tenant's key, ``/admin/*`` the admin key;
    other paths (probes, metrics, the API docs) are open, as before.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        keyring: KeyRing,
        routes: Sequence[BaseRoute] = (),
        tenant_paths: Collection[str] = (),
    ) -> None:
        self.app = app
        self.keyring = keyring
        self.routes = routes  # to name the route of a refused request in logs and metrics
        self.tenant_paths = frozenset(tenant_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keyring.any_keys:
            path: str = scope["path"]
            check = (
                tenant_principal
                if path.startswith("/v1/") or path == "/v1" or path in self.tenant_paths
                else admin_principal
                if path.startswith("/admin/") or path == "/admin"
                else None
            )
            if check is not None:
                try:
                    principal = check(self.keyring, bearer_token(HTTPConnection(scope)))
                except APIError as refused:
                    _name_route(scope, self.routes)
                    if _announces_body(scope):
                        # The body stays unread: close, rather than read it to reuse the connection.
                        refused.headers["Connection"] = "close"
                    await refused.response()(scope, receive, send)
                    return
                scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)


def _name_route(scope: Scope, routes: Sequence[BaseRoute]) -> None:
    """Leave the matched route in the scope, as routing would have, so the access
    log and the metrics count a refused request under its route."""
    for route in routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            scope["route"] = route
            return


def _announces_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


PrincipalDep = Annotated[Principal, Depends(authenticate)]
AdminDep = Annotated[Principal, Depends(authenticate_admin)]
