from __future__ import annotations

from gateway.urls import redact_url, service_root


def test_service_root_drops_the_api_prefix_only() -> None:
    assert service_root("http://vllm:8000/v1") == "http://vllm:8000"
    assert service_root("http://proxy/llm/v1") == "http://proxy/llm"
    assert service_root("http://vllm:8000") == "http://vllm:8000"


def test_credentials_never_survive_redaction() -> None:
    assert redact_url("http://user:s3cret@host:8000/v1") == "http://***@host:8000/v1"
    assert redact_url("http://a@b:c@host/v1") == "http://***@host/v1"
    assert redact_url("http://host:8000/v1") == "http://host:8000/v1"
