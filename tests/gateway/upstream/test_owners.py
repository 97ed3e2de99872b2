"""gateway.upstream.owners: which tenant's response is on which replica."""

from __future__ import annotations

from gateway.upstream.owners import ResponseOwners


def test_an_id_is_found_only_for_the_tenant_that_made_it() -> None:
    owners = ResponseOwners()
    owners.record("resp_1", "acme", "primary")
    assert owners.upstream_for("resp_1", "acme") == "primary"
    assert owners.upstream_for("resp_1", "globex") is None
    assert owners.upstream_for("resp_2", "acme") is None


def test_one_tenants_many_responses_never_push_out_anothers() -> None:
    owners = ResponseOwners(capacity=3)
    owners.record("resp_globex", "globex", "secondary")
    for n in range(10):
        owners.record(f"resp_{n}", "acme", "primary")
    assert owners.upstream_for("resp_globex", "globex") == "secondary"
    # acme keeps its newest three; an older one is unknown again
    assert [owners.upstream_for(f"resp_{n}", "acme") for n in (6, 7, 8, 9)] == [
        None, "primary", "primary", "primary"
    ]  # fmt: skip


def test_a_recorded_id_is_refreshed_and_kept() -> None:
    owners = ResponseOwners(capacity=2)
    owners.record("a", "acme", "primary")
    owners.record("b", "acme", "primary")
    owners.record("a", "acme", "other")  # seen again: newest, on the replica named last
    owners.record("c", "acme", "primary")
    assert owners.upstream_for("a", "acme") == "other"
    assert owners.upstream_for("b", "acme") is None
