from __future__ import annotations

import pytest

from gateway.urls import (
    check_http_url,
    check_origin,
    join_url,
    redact_text,
    redact_url,
    service_root,
)


def test_service_root_drops_the_api_prefix_only() -> None:
    assert service_root("http://vllm:8000/v1") == "http://vllm:8000"
    assert service_root("http://proxy/llm/v1") == "http://proxy/llm"
    assert service_root("http://vllm:8000") == "http://vllm:8000"


def test_service_root_keeps_the_query_string() -> None:
    assert service_root("http://h:8000/v1?api-version=x") == "http://h:8000?api-version=x"
    assert service_root("http://h:8000/v1/?a=1#frag") == "http://h:8000?a=1"


def test_a_path_goes_onto_the_path_and_the_query_string_stays_a_query_string() -> None:
    base = "http://host:8000/v1?api-version=x"
    assert (
        join_url(base, "/chat/completions") == "http://host:8000/v1/chat/completions?api-version=x"
    )
    assert (
        join_url(base, "/models", "limit=5") == "http://host:8000/v1/models?api-version=x&limit=5"
    )
    assert join_url("http://host/v1", "/models") == "http://host/v1/models"
    assert join_url("http://host/v1/", "/models", "a=1") == "http://host/v1/models?a=1"
    assert join_url("http://host/v1?", "/models") == "http://host/v1/models"
    assert join_url("http://host/v1#x", "/models") == "http://host/v1/models"  # never sent


def test_credentials_never_survive_redaction() -> None:
    assert redact_url("http://user:s3cret@host:8000/v1") == "http://***@host:8000/v1"
    assert redact_url("http://a@b:c@host/v1") == "http://***@host/v1"
    assert redact_url("http://host:8000/v1") == "http://host:8000/v1"


def test_query_string_values_never_survive_redaction() -> None:
    assert redact_url("http://h/v1?api-key=SECRET") == "http://h/v1?api-key=***"
    assert (
        redact_url("https://u:p@h/v1?a=1&flag&key=S#frag")
        == "https://***@h/v1?a=***&flag&key=***#***"
    )
    assert redact_url("http://[::1/v1") == "***"  # unsplittable: nothing of it shown


def test_urls_inside_text_are_redacted() -> None:
    text = "Cannot connect to url='http://h:8000/v1?api-key=SECRET/health' [refused]"
    assert redact_text(text) == "Cannot connect to url='http://h:8000/v1?api-key=***' [refused]"
    assert redact_text("no url here") == "no url here"
    assert "SECRET" not in redact_text("GET https://user:SECRET@host/x failed")


@pytest.mark.parametrize(
    "url", ["http://vllm:8000/v1", "https://api.openai.com/v1", "http://[::1]:8000/v1?k=v"]
)
def test_an_http_url_with_a_host_is_accepted(url: str) -> None:
    assert check_http_url(url) == url


@pytest.mark.parametrize(
    "url", ["vllm:8000/v1", "localhost:8000", "ftp://host/v1", "http://", "http:///v1", "/v1"]
)
def test_anything_else_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="is not an http:// or https:// URL with a host"):
        check_http_url(url)


def test_a_refused_url_is_shown_without_its_password() -> None:
    with pytest.raises(ValueError) as caught:
        check_http_url("htp://user:s3cret@host/v1")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "origin",
    ["*", "https://app.example.com", "http://localhost:3000", "http://[::1]:5173",
     "chrome-extension://abcdefghijklmnop"],
)  # fmt: skip
def test_what_a_browser_sends_as_origin_is_accepted(origin: str) -> None:
    assert check_origin(origin) == origin


@pytest.mark.parametrize(
    "origin",
    ["https://app.example.com/", "https://app.example.com/app", "app.example.com",
     "https://app.example.com?x=1", "https://app.example.com#top", "https://",
     "https://u:p@app.example.com", "http://localhost:port", "https://app.example.com?"],
)  # fmt: skip
def test_an_origin_no_browser_sends_is_refused(origin: str) -> None:
    with pytest.raises(ValueError, match="is not an origin: scheme://host"):
        check_origin(origin)
