"""gateway.connections' pure parts: the answer it writes, its classes, the open-file limit.

The protocol's behaviour on real sockets is tested against a real gateway
process in tests/e2e/test_slow_clients.py.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
import uvicorn

from gateway import __main__ as entry
from gateway import connections
from gateway.connections import GuardedHttpToolsProtocol, error_response, guarded_protocol


def test_the_error_answer_is_a_whole_closing_response_in_openais_envelope() -> None:
    raw = error_response(408, "late", "request_timeout")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 408 Request Timeout"
    assert b"connection: close" in lines and b"content-type: application/json" in lines
    assert f"content-length: {len(body)}".encode() in lines
    assert json.loads(body) == {  # every key of the envelope, as the app's own errors
        "error": {
            "message": "late",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_timeout",
        }
    }


def test_each_configuration_gets_its_own_class() -> None:
    a = guarded_protocol(header_timeout_s=1.5, max_header_bytes=2048, max_connections=3)
    b = guarded_protocol(header_timeout_s=9.0, max_header_bytes=4096, max_connections=7)
    assert issubclass(a, GuardedHttpToolsProtocol) and a is not b
    assert (a.header_timeout_s, a.max_header_bytes, a.max_connections) == (1.5, 2048, 3)
    assert GuardedHttpToolsProtocol.header_timeout_s == 10.0  # the base is untouched
    assert a.waiting is not b.waiting and not a.waiting  # each server its own waiting list


def test_the_soft_open_file_limit_is_raised_to_fit_the_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits = {"now": (1024, 65536)}
    monkeypatch.setattr(resource, "getrlimit", lambda _kind: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda _kind, value: limits.update(now=value))
    assert connections.make_fd_room(2048) == 2048 + connections.FD_HEADROOM
    assert limits["now"] == (2048 + connections.FD_HEADROOM, 65536)


def test_a_hard_limit_too_low_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _kind: (256, 1024))
    monkeypatch.setattr(resource, "setrlimit", lambda _kind, _value: None)
    assert connections.make_fd_room(2048) == 1024
    assert "GATEWAY_MAX_CONNECTIONS=2048" in caplog.text


def test_the_gateway_serves_with_the_guarded_protocol_and_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs: list[uvicorn.Config] = []
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GATEWAY_HEADER_TIMEOUT_S", "3.5")
    monkeypatch.setenv("GATEWAY_MAX_CONNECTIONS", "99")
    monkeypatch.setenv("GATEWAY_SEND_TIMEOUT_S", "7")
    monkeypatch.setattr(entry, "make_fd_room", lambda n: n)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: configs.append(self.config))
    monkeypatch.setattr(entry, "freeze_startup_heap", lambda: 0)
    entry.main()
    protocol = configs[0].http
    assert isinstance(protocol, type) and issubclass(protocol, GuardedHttpToolsProtocol)
    assert (protocol.header_timeout_s, protocol.max_connections) == (3.5, 99)
    assert protocol.send_timeout_s == 7.0
