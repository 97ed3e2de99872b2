"""Small URL rules shared by the clients of the gateway's dependencies."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# A URL inside free text (an error message, a log line): scheme://, up to a space or quote.
_URL_IN_TEXT = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>`]+""")


def check_http_url(url: str) -> str:
    """``url`` if it is an ``http://`` or ``https://`` URL naming a host; else
    ``ValueError``, said for the operator. Caught at start: an upstream at
    ``localhost:8000/v1`` (no scheme) or ``htp://...`` would otherwise only ever
    show as unreachable."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # a bad IPv6 literal
        raise ValueError(f"{redact_url(url)!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{redact_url(url)!r} is not an http:// or https:// URL with a host")
    return url


def check_origin(origin: str) -> str:
    """``origin`` if a browser could send it as an ``Origin`` header: ``*``, or
    ``scheme://host[:port]`` with nothing after it; else ``ValueError``, said for
    the operator. An origin with a path or a trailing slash
    (``https://app.example/``) never equals what a browser sends, so the pages it
    was meant for would silently get no CORS headers."""
    if origin == "*":
        return origin
    try:
        parts = urlsplit(origin)
        _ = parts.port  # a port that is no number raises ValueError
    except ValueError:
        parts = None
    if (
        parts is None
        or not parts.scheme
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
        or origin.endswith(("?", "#"))
    ):
        raise ValueError(
            f"{redact_url(origin)!r} is not an origin: scheme://host[:port], "
            "no path and no trailing slash (e.g. https://app.example.com)"
        )
    return origin


def service_root(base_url: str) -> str:
    """``http://host:8000/v1`` → ``http://host:8000``: where vLLM's and the embedder's
    ``/health`` live, beside their OpenAI API. A query string stays (it may be what
    the server, or a proxy in front of it, needs on every request)."""
    head, sep, query = base_url.partition("?")
    head = head.partition("#")[0].rstrip("/")
    root = head[: -len("/v1")] if head.endswith("/v1") else head
    return root + sep + query.partition("#")[0]


def join_url(base_url: str, path: str, query: str = "") -> str:
    """``path`` appended to ``base_url``'s path, its query string kept and ``query``
    added after it: ``http://h/v1?api-version=x`` + ``/chat/completions`` →
    ``http://h/v1/chat/completions?api-version=x``. Plain concatenation would put the
    path inside the query (``?api-version=x/chat/completions``). No fragment: it is
    never sent."""
    head, _, base_query = base_url.partition("#")[0].partition("?")
    url = head.rstrip("/") + path
    merged = "&".join(q for q in (base_query, query) if q)
    return f"{url}?{merged}" if merged else url


def _redact_query(query: str) -> str:
    """Each parameter's value replaced (``api-key=SECRET`` -> ``api-key=***``); the
    names stay, so an operator still sees which parameters a URL carries."""
    return "&".join(
        f"{name}=***" if sep else name
        for name, sep, _ in (part.partition("=") for part in query.split("&"))
    )


def redact_url(url: str) -> str:
    """The URL without credentials, for anything shown or logged: no ``user:password@``,
    no query-string values (``?api-key=SECRET``), no fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL urllib can split (a bad IPv6 literal): show none of it
        return "***"
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    fragment = "***" if parts.fragment else ""
    return urlunsplit(
        parts._replace(netloc=netloc, query=_redact_query(parts.query), fragment=fragment)
    )


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (error messages quote URLs)."""
    if "://" not in text:  # the common case, and every access log line: no regex
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group()), text)
