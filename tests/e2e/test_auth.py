"""With GATEWAY_API_KEYS set, each key is a tenant and tenants never meet."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AuthenticationError, OpenAI

from harness.fake_llm import RunningServer
from harness.process import Service
from tests.e2e.conftest import wait_for_memories
from tests.support.stack import start_gateway

pytestmark = pytest.mark.e2e

ACME, GLOBEX = "key-acme-123", "key-globex-456"


@pytest.fixture(scope="module")
def keyed_gateway(
    tmp_path_factory: pytest.TempPathFactory, shared_llm: RunningServer, embedder: Service
) -> Iterator[Service]:
    data_dir: Path = tmp_path_factory.mktemp("gw-auth") / "data"
    service = start_gateway(
        data_dir, shared_llm.url, embedder.url,
        GATEWAY_API_KEYS=f"acme:{ACME},globex:{GLOBEX}", GATEWAY_LLM_API_KEY="upstream-secret",
    )  # fmt: skip
    yield service
    service.terminate()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("headers", [{}, auth("wrong"), {"Authorization": ACME}])
def test_v1_needs_a_valid_key(keyed_gateway: Service, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/models"), ("GET", "/memories?user_id=u"),
                         ("POST", "/chat/completions"), ("POST", "/memories/search")]:  # fmt: skip
        response = httpx.request(method, f"{keyed_gateway.url}{path}", headers=headers, json={})
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["type"] == "authentication_error"
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=keyed_gateway.url, api_key="wrong", max_retries=0).models.list()


@pytest.mark.parametrize("path", ["/tokenize", "/v2/rerank", "/v1/chat/completions"])
def test_a_wrong_key_is_refused_before_the_body_and_the_connection_closed(
    keyed_gateway: Service, path: str
) -> None:
    # vLLM's root endpoints (passed through) were keyed only by the endpoint:
    # its 401 kept the connection open while the refused client went on
    # sending its chunked body, however slowly (a connection each, for ever).
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
            "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", keyed_gateway.port), timeout=5) as sock:
        sock.sendall(head.encode())  # and no body at all
        answer = b""
        while chunk := sock.recv(65536):  # to EOF: the gateway closes it
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status_line.split(b" ")[1] == b"401", answer
    assert b"connection: close" in headers.lower().split(b"\r\n")
    assert json.loads(body)["error"]["type"] == "authentication_error"


def test_probes_stay_open(keyed_gateway: Service) -> None:
    assert httpx.get(f"{keyed_gateway.base_url}/livez").status_code == 200
    assert httpx.get(f"{keyed_gateway.base_url}/readyz").status_code == 200


def test_same_user_id_in_two_tenants_never_meets(
    keyed_gateway: Service, upstream: RunningServer, user: str
) -> None:
    acme = OpenAI(base_url=keyed_gateway.url, api_key=ACME, max_retries=0)
    globex = OpenAI(base_url=keyed_gateway.url, api_key=GLOBEX, max_retries=0)
    acme.chat.completions.create(
        model="fake-model", user=user,
        messages=[{"role": "user", "content": "The vault code is 4417, remember it."}],
    )  # fmt: skip
    wait_for_memories(keyed_gateway, user, 2, auth(ACME))

    question: Any = [{"role": "user", "content": "What is the vault code?"}]
    globex.chat.completions.create(model="fake-model", user=user, messages=question)
    assert "4417" not in json.dumps(upstream.requests()[-1]["body"])
    acme.chat.completions.create(model="fake-model", user=user, messages=question)
    assert "4417" in upstream.requests()[-1]["body"]["messages"][0]["content"]

    # The upstream gets the gateway's own key, never the client's.
    assert upstream.requests()[-1]["headers"]["authorization"] == "Bearer upstream-secret"

    url = keyed_gateway.url
    wait_for_memories(keyed_gateway, user, 4, auth(ACME))  # both acme turns stored
    search = httpx.post(f"{url}/memories/search", headers=auth(GLOBEX),
                        json={"user_id": user, "query": "vault code 4417"})  # fmt: skip
    assert search.json()["results"]  # globex's own question is there...
    assert "4417" not in json.dumps(search.json())  # ...acme's secret is not
    listed = httpx.get(f"{url}/memories", params={"user_id": user}, headers=auth(GLOBEX))
    assert "4417" not in json.dumps(listed.json())

    acme_listing = httpx.get(f"{url}/memories", params={"user_id": user}, headers=auth(ACME))
    acme_ids = [m["id"] for m in acme_listing.json()["results"]]
    assert len(acme_ids) == 4
    for memory_id in acme_ids:  # guessing or replaying another tenant's ids gets nothing
        assert httpx.get(f"{url}/memories/{memory_id}", headers=auth(GLOBEX)).status_code == 404
        assert httpx.delete(f"{url}/memories/{memory_id}", headers=auth(GLOBEX)).status_code == 404
    forgot = httpx.delete(f"{url}/memories", params={"user_id": user}, headers=auth(GLOBEX))
    assert forgot.json()["deleted"] == 2  # globex's own two, nothing of acme's
    assert len(httpx.get(f"{url}/memories", params={"user_id": user},
                         headers=auth(ACME)).json()["results"]) == 4  # fmt: skip
