from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.auth import PRINCIPAL_KEY, KeyCheck, KeyRing, Principal, parse_api_keys
from gateway.settings import Settings, is_loopback


def test_keys_map_to_tenants() -> None:
    ring = KeyRing("acme:k-acme, globex:k-globex", admin_key="k-admin")
    assert ring.tenants_enabled and ring.admin_enabled
    assert ring.tenant_of("k-acme") == "acme"
    assert ring.tenant_of("k-globex") == "globex"
    assert ring.tenant_of("k-admin") is None and ring.is_admin("k-admin")
    assert ring.tenant_of("k-acm") is None and not ring.is_admin("k-acme")
    assert ring.tenant_of("") is None


def test_keys_with_colons_keep_everything_after_the_first() -> None:
    assert KeyRing("acme:abc:def", None).tenant_of("abc:def") == "acme"


def test_keys_file_takes_plain_and_hashed_keys(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    path = tmp_path / "keys"
    path.write_text(f"# tenants\nacme:plain-key\n\nglobex:sha256:{digest}\n")
    ring = KeyRing(None, None, keys_file=path)
    assert ring.tenant_of("plain-key") == "acme"
    assert ring.tenant_of("s3cret") == "globex"
    assert ring.tenant_of(f"sha256:{digest}") is None  # the digest itself is no key
    path.write_text("broken-line\n")
    with pytest.raises(ValueError, match=":1"):
        KeyRing(None, None, keys_file=path)


@pytest.mark.parametrize("spec", ["acme", ":key", "acme:", "acme: "])
def test_malformed_key_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="tenant:key"):
        parse_api_keys(spec)


@pytest.mark.parametrize("tenant", ["team/eu", "tab\there"])
def test_a_tenant_the_admin_api_could_not_name_is_refused(tenant: str) -> None:
    # /admin/tenants/{tenant}/users: "team/eu" could never be listed or forgotten.
    with pytest.raises(ValueError, match="a tenant name has no '/'"):
        parse_api_keys(f"{tenant}:0123456789abcdef0123")


SHARED = "shared-key-0123456789abc"


def test_a_key_given_to_two_tenants_is_refused_naming_them_not_the_key(tmp_path: Path) -> None:
    """F4: the last entry won, and acme's clients read and wrote globex's memories."""
    with pytest.raises(ValueError, match="GATEWAY_API_KEYS: tenants 'acme' and 'globex'") as exc:
        KeyRing(f"acme:{SHARED}, globex:{SHARED}", None)
    assert SHARED not in str(exc.value)
    # Across the setting and the keys file, and as a digest of the same key, too.
    digest = hashlib.sha256(SHARED.encode()).hexdigest()
    path = tmp_path / "keys"
    for line in (f"globex:{SHARED}", f"globex:sha256:{digest}"):
        path.write_text(f"# tenants\n{line}\n")
        with pytest.raises(ValueError, match=f"{path}:2: tenants 'acme' and 'globex'") as exc:
            KeyRing(f"acme:{SHARED}", None, keys_file=path)
        assert SHARED not in str(exc.value) and digest not in str(exc.value)
    # The same key listed twice for one tenant is only a repetition.
    path.write_text(f"acme:sha256:{digest}\n")
    assert KeyRing(f"acme:{SHARED},acme:{SHARED}", None, keys_file=path).tenant_of(SHARED) == "acme"


def test_a_tenant_with_two_keys_is_one_tenant_for_a_rotation() -> None:
    # docs/deployment.md's rotation: both keys listed, then the old one removed;
    # memories belong to the tenant's name, so both keys reach the same ones.
    old, new = "old-key-0123456789abcdef", "new-key-0123456789abcdef"
    ring = KeyRing(f"acme:{old},acme:{new}", None, None)
    assert ring.tenant_of(old) == ring.tenant_of(new) == "acme" and ring.tenant_count == 1
    assert KeyRing(f"acme:{new}", None, None).tenant_of(old) is None


def test_an_admin_key_that_is_a_tenants_key_is_refused(tmp_path: Path) -> None:
    """F4: that tenant's key opened /admin."""
    with pytest.raises(
        ValueError, match="GATEWAY_ADMIN_KEY is also the key of tenant 'acme'"
    ) as exc:
        KeyRing(f"acme:{SHARED},globex:other-key-0123456789", admin_key=SHARED)
    assert SHARED not in str(exc.value)
    path = tmp_path / "keys"
    path.write_text(f"globex:sha256:{hashlib.sha256(SHARED.encode()).hexdigest()}\n")
    with pytest.raises(ValueError, match="tenant 'globex'"):
        KeyRing(None, admin_key=SHARED, keys_file=path)


@pytest.mark.parametrize(
    ("spec", "admin", "said"),
    [
        ("acme:cl\u00e9-0123456789abcdef", None, "GATEWAY_API_KEYS: tenant 'acme''s key"),
        ("acme:tab\there-0123456789", None, "GATEWAY_API_KEYS: tenant 'acme''s key"),
        ("acme:k-acme-0123456789", "adm\u00efn-0123456789abcdef", "GATEWAY_ADMIN_KEY"),
    ],
    ids=["non-ASCII tenant key", "control character", "non-ASCII admin key"],
)
def test_a_key_no_header_can_carry_is_refused_without_showing_it(
    spec: str, admin: str | None, said: str
) -> None:
    with pytest.raises(ValueError, match="characters an HTTP header cannot carry") as caught:
        KeyRing(spec, admin_key=admin)
    assert said in str(caught.value)
    assert "0123456789" not in str(caught.value)


def test_an_unreadable_keys_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"^GATEWAY_API_KEYS_FILE {tmp_path}/none: .*No such"):
        KeyRing(None, None, keys_file=tmp_path / "none")
    (tmp_path / "bin").write_bytes(b"\xff\xfeacme:k")
    with pytest.raises(ValueError, match=r"GATEWAY_API_KEYS_FILE .*can't decode"):
        KeyRing(None, None, keys_file=tmp_path / "bin")


def test_no_keys_means_auth_disabled() -> None:
    ring = KeyRing(None, None)
    assert not ring.tenants_enabled and not ring.admin_enabled


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    assert not is_loopback("example.com")


def test_refuses_public_bind_without_keys() -> None:
    with pytest.raises(ValueError, match="GATEWAY_API_KEYS"):
        Settings(host="0.0.0.0").check_bind_address()
    Settings(host="0.0.0.0", api_keys="t:k").check_bind_address()
    Settings(host="0.0.0.0", allow_unauthenticated=True).check_bind_address()
    Settings(host="127.0.0.1").check_bind_address()


def test_settings_read_the_contract_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LLM_URL", "http://vllm:8000/v1/")
    monkeypatch.setenv("GATEWAY_QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("GATEWAY_DATA_DIR", "/var/lib/memgate")
    settings = Settings()
    assert settings.llm_url == "http://vllm:8000/v1"  # trailing slash dropped
    assert settings.qdrant_url == "http://qdrant:6333"
    assert str(settings.data_dir) == "/var/lib/memgate"
    assert Settings.model_config["env_prefix"] == "GATEWAY_"


def _http_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, object]:
    return {"type": "http", "method": "POST", "path": path, "headers": headers}


@pytest.mark.parametrize(
    ("path", "key", "status"),
    [("/v1/memories/search", b"bogus", 401), ("/v1/chat/completions", None, 401),
     ("/admin/models", b"k-acme", 403), ("/v1/memories", b"k-admin", 403),
     ("/tokenize", b"bogus", 401), ("/v2/rerank", None, 401)],
)  # fmt: skip
async def test_key_check_refuses_before_the_body_or_the_app(
    path: str, key: bytes | None, status: int
) -> None:
    """A refused request is answered from its headers: the body is never read and
    the wrapped app (the limits, and their slots) never runs."""
    ring = KeyRing("acme:k-acme", admin_key="k-admin")

    async def app(*_: object) -> None:
        raise AssertionError("the app must not run")

    async def receive() -> dict[str, object]:
        raise AssertionError("the body must not be read")

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    headers = [(b"content-length", b"100000")]
    if key is not None:
        headers.append((b"authorization", b"Bearer " + key))
    check = KeyCheck(app, keyring=ring, tenant_paths=("/tokenize", "/v2/rerank"))
    await check(_http_scope(path, headers), receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == status
    assert (b"connection", b"close") in sent[0]["headers"]  # type: ignore[operator]


async def test_key_check_passes_the_principal_on() -> None:
    ring = KeyRing("acme:k-acme", admin_key="k-admin")
    seen: list[object] = []

    async def app(scope: dict[str, object], *_: object) -> None:
        seen.append(scope["state"][PRINCIPAL_KEY])  # type: ignore[index]

    scope = _http_scope("/v1/models", [(b"authorization", b"Bearer k-acme")])
    await KeyCheck(app, keyring=ring)(scope, None, None)  # type: ignore[arg-type]
    assert seen == [Principal("acme")]


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer k-acme"), (b"authorization", b"Bearer k-globex")],
        [(b"x-api-key", b"k-globex"), (b"x-api-key", b"k-acme")],
    ],
)
async def test_two_keys_in_one_request_are_refused_not_one_of_them_picked(
    headers: list[tuple[bytes, bytes]],
) -> None:
    ring = KeyRing("acme:k-acme,globex:k-globex", admin_key=None)
    ran: list[object] = []
    sent: list[dict[str, object]] = []

    async def app(scope: dict[str, object], *_: object) -> None:
        ran.append(scope)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = _http_scope("/v1/models", headers)
    await KeyCheck(app, keyring=ring)(scope, None, send)  # type: ignore[arg-type]
    assert ran == []
    assert sent[0]["status"] == 400
    assert b"duplicate_credentials" in sent[1]["body"]  # type: ignore[operator]
