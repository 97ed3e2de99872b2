"""Schemathesis against the gateway's own OpenAPI schema, on a real gateway process.

The gateway runs as ``python -m gateway`` with the stand-in LLM and the real embedder, with
a tenant key and an admin key. Every operation of ``/openapi.json`` is fuzzed with positive
(schema-valid) and negative (schema-violating) cases, then a stateful run follows the memory
API's links (add -> get / delete by id, list, forget). Checks on every response:
- ``not_a_server_error``: no 5xx (a deliberate 503 with Retry-After while a dependency is
  down would be allowed; with everything up there are none),
- ``response_schema_conformance``: the body matches the schema where one is declared,
- errors (4xx) come in OpenAI's envelope ``{"error": {"message", ...}}``,
- no hang: every answer within ``ANSWER_BOUND_S``;
and after the run the gateway is alive and ``/livez`` answers.

``MEMGATE_FUZZ_EXAMPLES=N`` raises the number of cases per operation (see budget.py).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode, HookContext
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import response_schema_conformance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from harness.fake_llm import RunningServer, start_llm_server
from harness.process import Service, free_port
from tests.fuzz.budget import fuzz_settings, fuzz_timeout
from tests.support.stack import start_gateway

pytestmark = [pytest.mark.e2e, fuzz_timeout()]

TENANT_KEY = "fuzz-tenant-key-7f3a"
ADMIN_KEY = "fuzz-admin-key-91c2"
ANSWER_BOUND_S = 10.0
# Cases per operation and mode in the default run; operations that embed long texts on a
# shared 2-core CPU (add, search: up to ~1 s a case) get fewer, and a share of a long run.
DEFAULT_EXAMPLES = 12
COSTLY = {"POST /v1/memories": (6, 0.25), "POST /v1/memories/search": (4, 0.1)}


@pytest.fixture(scope="module")
def fuzz_llm() -> Iterator[RunningServer]:
    with start_llm_server() as server:
        yield server


@pytest.fixture(scope="module")
def fuzz_gateway(
    tmp_path_factory: pytest.TempPathFactory, fuzz_llm: RunningServer, embedder: Service
) -> Iterator[Service]:
    data_dir: Path = tmp_path_factory.mktemp("gw-schemathesis") / "data"
    service = start_gateway(
        data_dir, fuzz_llm.url, embedder.url,
        GATEWAY_API_KEYS=f"fuzz:{TENANT_KEY}", GATEWAY_ADMIN_KEY=ADMIN_KEY,
    )  # fmt: skip
    yield service
    service.terminate()


def dangling_refs(document: dict[str, Any]) -> list[str]:
    """Every ``$ref`` of the document that does not resolve from its root."""

    def resolves(ref: str) -> bool:
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/") and not resolves(ref):
                found.append(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return sorted(set(found))


MEMORY_LINKS = {
    "GetMemory": ("get_memory", {"memory_id": "$response.body#/results/0/id",
                                 "user_id": "$request.body#/user_id"}),
    "DeleteMemory": ("delete_memory", {"memory_id": "$response.body#/results/0/id"}),
    "ListMemories": ("list_memories", {"user_id": "$request.body#/user_id"}),
    "ForgetUser": ("forget_user", {"user_id": "$request.body#/user_id"}),
}  # fmt: skip


def add_memory_links(document: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI links from an added memory to the operations that take its id or user."""
    document = copy.deepcopy(document)
    ids = {
        op.get("operationId", ""): op
        for item in document.get("paths", {}).values()
        for op in item.values()
        if isinstance(op, dict)
    }
    add = document["paths"]["/v1/memories"]["post"]
    links: dict[str, Any] = {}
    for name, (prefix, parameters) in MEMORY_LINKS.items():
        target = next((i for i in ids if i.startswith(prefix)), None)
        if target is not None:
            links[name] = {"operationId": target, "parameters": parameters}
    add["responses"].setdefault("201", {"description": "Stored"})["links"] = links
    return document


@pytest.fixture(scope="module")
def raw_schema(fuzz_gateway: Service) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{fuzz_gateway.base_url}/openapi.json").json()
    return document


@pytest.fixture(scope="module")
def schema(raw_schema: dict[str, Any]) -> OpenApiSchema:
    return schemathesis.openapi.from_dict(add_memory_links(raw_schema))


def auth_for(path: str) -> dict[str, str]:
    key = ADMIN_KEY if path.startswith("/admin") else TENANT_KEY
    return {"Authorization": f"Bearer {key}"}


def error_envelope(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """4xx answers are in OpenAI's error envelope."""
    if 400 <= response.status_code < 500:
        try:
            body = json.loads(response.content)
        except (ValueError, RecursionError):
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        assert isinstance(error, dict) and isinstance(error.get("message"), str), (
            f"{response.status_code} without an OpenAI error envelope: {response.content[:200]!r}"
        )
    return None


def answered_in_time(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    assert response.elapsed < ANSWER_BOUND_S, f"answered after {response.elapsed:.1f} s"
    return None


def no_server_error(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """No 5xx, but for the deliberate 503 with Retry-After of an LLM that cannot serve: the
    fuzzed admin API registers models at a closed port, and a model name nobody lists goes
    to such still-"starting" upstreams (gateway.upstream.router), on every model-routed API."""
    if response.status_code == 503 and "retry-after" in response.headers:
        body = json.loads(response.content)
        if body["error"]["code"] in ("llm_starting", "llm_unavailable"):
            return None
    return not_a_server_error(ctx, response, case)


CHECKS = [no_server_error, response_schema_conformance, error_envelope, answered_in_time]


def tame(case: Case[Any], dead_url: str, served_model: bool) -> Case[Any]:
    """Model registrations point at a closed local port, never at a generated host; half the
    chat requests name the model the stand-in LLM serves, so they get past routing."""
    if isinstance(case.body, dict):
        if isinstance(case.body.get("upstream_url"), str):
            case.body["upstream_url"] = dead_url
        if served_model and isinstance(case.body.get("model"), str):
            case.body["model"] = "fake-model"
    return case


def test_openapi_schema_loads_and_covers_the_api(raw_schema: dict[str, Any]) -> None:
    paths = raw_schema["paths"]
    for path in ("/v1/chat/completions", "/v1/memories", "/v1/memories/search",
                 "/v1/memories/{memory_id}", "/v1/models"):  # fmt: skip
        assert path in paths, path


def test_openapi_schema_references_resolve(raw_schema: dict[str, Any]) -> None:
    assert dangling_refs(raw_schema) == []


def fuzz_operation(
    gateway: Service,
    operation: APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    counts: Counter[str],
) -> None:
    """Run ``operation``'s cases of one generation mode; raise on the first failed check."""
    label = operation.label
    dead_url = f"http://127.0.0.1:{free_port()}/v1"
    positive = mode == GenerationMode.POSITIVE

    default, share = COSTLY.get(label, (DEFAULT_EXAMPLES, 1.0))

    @fuzz_settings(default, share=share, shrink=False)
    @given(case=operation.as_strategy(generation_mode=mode), served_model=st.booleans())
    def run(case: Case[Any], served_model: bool) -> None:
        tame(case, dead_url, served_model and positive)
        response = case.call(
            base_url=gateway.base_url,
            headers=auth_for(operation.path),
            timeout=ANSWER_BOUND_S + 5,
        )
        counts[f"{label} {mode.value} {response.status_code}"] += 1
        case.validate_response(response, checks=CHECKS)

    run()


def test_fuzz_every_operation(fuzz_gateway: Service, schema: OpenApiSchema) -> None:
    """Positive and negative cases for every operation; all failures reported together."""
    counts: Counter[str] = Counter()
    failures: dict[str, str] = {}
    results = list(schema.get_all_operations())
    assert [r.err() for r in results if not isinstance(r, Ok)] == []
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) >= 8
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz_operation(fuzz_gateway, operation, mode, counts)
            except Unsatisfiable:  # nothing to violate: an operation without inputs
                pass
            except Exception as exc:  # collected: one operation's failure hides no other
                failures[f"{operation.label} [{mode.value}]"] = f"{type(exc).__name__}: {exc}"[
                    :1500
                ]
    total = sum(counts.values())
    print(f"\nschemathesis: {total} cases over {len(operations)} operations")
    for key, count in sorted(counts.items()):
        print(f"  {count:4d}  {key}")
    assert fuzz_gateway.proc.poll() is None, "the gateway died:\n" + fuzz_gateway.log()[-4000:]
    assert httpx.get(f"{fuzz_gateway.base_url}/livez").status_code == 200
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def one_of_messages_or_text(context: HookContext, body: Any) -> Any:
    """The add body needs exactly one of ``messages`` and ``text`` (a rule the schema does not
    state); without this nudge most generated adds are 400s and no link is ever followed."""
    operation = context.operation
    if operation is None or operation.label != "POST /v1/memories" or not isinstance(body, dict):
        return body
    if "messages" in body and "text" in body:
        body = {k: v for k, v in body.items() if k != "text"}
    elif "messages" not in body and "text" not in body:
        body = {**body, "text": "a memory to follow through the links"}
    return body


def test_stateful_memory_lifecycle(fuzz_gateway: Service, raw_schema: dict[str, Any]) -> None:
    """Schemathesis' state machine over the links: add, then get / delete / list / forget."""
    stateful = schemathesis.openapi.from_dict(add_memory_links(raw_schema))
    stateful.hook("map_body")(one_of_messages_or_text)
    memory_ops = stateful.include(path_regex=r"^/v1/memories")
    calls: Counter[str] = Counter()

    class MemoryLifecycle(memory_ops.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Case[Any]) -> dict[str, Any]:
            return {
                "base_url": fuzz_gateway.base_url,
                "headers": auth_for(case.operation.path),
                "timeout": ANSWER_BOUND_S + 5,
            }

        def validate_response(
            self, response: Response, case: Case[Any], additional_checks: Any = None, **kwargs: Any
        ) -> None:
            calls[f"{case.operation.label} {response.status_code}"] += 1
            case.validate_response(response, checks=CHECKS)

    MemoryLifecycle.run(settings=fuzz_settings(5, share=0.1, shrink=False))
    print(f"\nstateful: {sum(calls.values())} calls: {dict(sorted(calls.items()))}")
    # The links were followed: ids from an add reached get/delete by id and were found.
    assert (
        calls["GET /v1/memories/{memory_id} 200"] + calls["DELETE /v1/memories/{memory_id} 200"] > 0
    ), calls
    assert fuzz_gateway.proc.poll() is None


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/v1/memories",
        "/v1/memories/search",
    ],
)
def test_deeply_nested_json_bodies_are_a_400(fuzz_gateway: Service, path: str) -> None:
    """100 kB of '[' (well under the body limit): nesting no parser's stack can take."""
    response = httpx.post(
        f"{fuzz_gateway.base_url}{path}",
        content=b"[" * 100_000,
        headers={**auth_for(path), "content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]
