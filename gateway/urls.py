"""Small URL rules shared by the clients of the gateway's dependencies."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def service_root(base_url: str) -> str:
    """``http://host:8000/v1`` → ``http://host:8000``: where vLLM's and the embedder's
    ``/health`` live, beside their OpenAI API."""
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


def redact_url(url: str) -> str:
    """The URL without credentials (``user:password@``) for anything shown or logged."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))
