"""``python -m gateway``'s entry: the start-up heap is frozen before serving."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import uvicorn

from gateway import __main__ as entry
from gateway.datadir import hold_data_dir
from gateway.settings import Settings


def test_the_start_up_heap_is_out_of_the_collectors_sight_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen_when_serving: list[int] = []
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self: frozen_when_serving.append(gc.get_freeze_count())
    )
    try:
        assert gc.get_freeze_count() == 0
        entry.main()
        assert len(frozen_when_serving) == 1 and frozen_when_serving[0] > 1000
    finally:
        gc.unfreeze()


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the server was started: it must not be, after a configuration error."""
    runs: list[bool] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: runs.append(True))
    return runs


def test_a_bad_upstreams_file_is_one_line_before_the_data_dir_is_made(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    started: list[bool],
) -> None:
    config = tmp_path / "upstreams.yaml"
    config.write_text('upstreams: [{name: a, urls: ["localhost:8000/v1"]}]')
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GATEWAY_CONFIG", str(config))
    assert entry.main() == 2
    assert capsys.readouterr().err.splitlines() == [
        f"memgate: configuration error: GATEWAY_CONFIG {config}: upstreams.0.urls: "
        "'localhost:8000/v1' is not an http:// or https:// URL with a host"
    ]
    assert not (tmp_path / "data").exists() and not started


def test_a_bad_setting_is_named_by_its_variable_without_its_value(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    started: list[bool],
) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GATEWAY_LLM_URL", "htp://user:hunter2-password@vllm:8000/v1")
    monkeypatch.setenv("GATEWAY_PORT", "eighty")
    assert entry.main() == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("memgate: configuration error: GATEWAY_PORT: Input should be")
    assert "GATEWAY_LLM_URL: 'htp://***@vllm:8000/v1' is not an http:// or https://" in line
    assert "hunter2" not in line and not started


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"GATEWAY_API_KEYS_FILE": "/nonexistent/keys"},
         "memgate: configuration error: GATEWAY_API_KEYS_FILE /nonexistent/keys: [Errno 2]"),
        ({"GATEWAY_API_KEYS": "acme:same-key-0123456789,globex:same-key-0123456789"},
         "memgate: configuration error: GATEWAY_API_KEYS: tenants 'acme' and 'globex'"),
        ({"GATEWAY_LOG_LEVEL": "loud"},
         "memgate: configuration error: GATEWAY_LOG_LEVEL: Input should be 'debug', 'info'"),
        ({"GATEWAY_CORS_ORIGINS": "https://ok.example,https://app.example/"},
         "memgate: configuration error: GATEWAY_CORS_ORIGINS: 'https://app.example/' is "
         "not an origin"),
        # No key at all would check no request: every route open, on any address.
        ({"GATEWAY_API_KEYS": " , ", "GATEWAY_HOST": "0.0.0.0"},
         "memgate: configuration error: GATEWAY_API_KEYS holds no key (tenant:key)"),
        # Sent as it was, every request to the LLM failed (a header cannot carry it).
        ({"GATEWAY_LLM_API_KEY": "sk-abc\ndef"},
         "memgate: configuration error: GATEWAY_LLM_API_KEY: the key has characters"),
        # aiohttp raised OverflowError on every new connection, as a 500.
        ({"GATEWAY_CONNECT_TIMEOUT_S": "inf"},
         "memgate: configuration error: GATEWAY_CONNECT_TIMEOUT_S: Input should be a finite"),
        # uvicorn found it out after the whole start-up, naming no setting.
        ({"GATEWAY_HOST": "no-such-host.invalid"},
         "memgate: configuration error: GATEWAY_HOST 'no-such-host.invalid' is no address"),
    ],
    ids=["keys file missing", "key given twice", "log level", "origin with a slash",
         "keys that hold no key", "an unsendable upstream key", "an infinite timeout",
         "a host that is no address"],
)  # fmt: skip
def test_a_bad_key_setup_or_log_level_is_one_line_before_the_data_dir_is_made(
    env: dict[str, str],
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    started: list[bool],
) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert entry.main() == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(said), line
    assert not (tmp_path / "data").exists() and not started


def test_a_log_level_in_capitals_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "WARNING")
    assert Settings().log_level == "warning"


@pytest.mark.parametrize("text", ["", "# the keys go here\n", "\n  \n"])
def test_a_keys_file_without_a_key_stops_the_start(
    text: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    started: list[bool],
) -> None:
    # A secret mounted empty: with no key the gateway checked no request at all,
    # and the bind check (keys are "set") let it listen on every address.
    keys = tmp_path / "keys"
    keys.write_text(text)
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GATEWAY_API_KEYS_FILE", str(keys))
    monkeypatch.setenv("GATEWAY_HOST", "0.0.0.0")
    assert entry.main() == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"memgate: configuration error: GATEWAY_API_KEYS_FILE ({keys}) holds no key"
    )
    assert not started


def test_a_second_gateway_on_a_data_dir_in_use_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    started: list[bool],
) -> None:
    # With a Qdrant server nothing else stopped it: two gateways shared one
    # outbox, each replaying and deleting the other's rows.
    data = tmp_path / "data"
    data.mkdir()
    first = hold_data_dir(data)  # the gateway already serving there
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(data))
    monkeypatch.setenv("GATEWAY_QDRANT_URL", ":memory:")
    try:
        assert entry.main() == 3
    finally:
        first.close()
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        f"memgate: the data dir {data} is in use by another gateway process "
        f"(pid {os.getpid()}): give each gateway its own GATEWAY_DATA_DIR (several "
        "gateways share a Qdrant server, never a data dir)"
    )
    assert not started


def test_a_misspelt_setting_is_named_with_the_one_meant(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    started: list[bool],
) -> None:
    # Ignored without a word, GATEWAY_API_KEY (for GATEWAY_API_KEYS) left the
    # operator believing keys were checked.
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GATEWAY_API_KEY", "acme:0123456789abcdef0123")
    monkeypatch.setenv("GATEWAY_MEMORY_TOPK", "50")
    monkeypatch.setattr(gc, "freeze", lambda: None)  # nothing of this app outlives the test
    entry.main()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        "memgate: warning: GATEWAY_API_KEY is not a setting (did you mean GATEWAY_API_KEYS?); "
        "it is ignored",
        "memgate: warning: GATEWAY_MEMORY_TOPK is not a setting (did you mean "
        "GATEWAY_MEMORY_TOP_K?); it is ignored",
    ]
    assert started == [True]  # a warning, not a refusal


def test_a_key_read_with_its_line_break_is_sent_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LLM_API_KEY", "sk-from-a-secret-file\n")
    assert Settings().llm_api_key == "sk-from-a-secret-file"


def test_help_or_an_argument_is_answered_without_serving(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    started: list[bool],
) -> None:
    # `--help` started a gateway on the default port and data dir; `--port 9000` too,
    # on 8080, without a word that the argument was ignored.
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    assert entry.main(["--help"]) == 0
    assert "GATEWAY_PORT" in capsys.readouterr().out
    assert entry.main(["--port", "9000"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "memgate: python -m gateway takes no arguments (got --port 9000): settings are "
        "environment variables, such as GATEWAY_PORT (python -m gateway --help names them all)"
    ]
    assert not (tmp_path / "data").exists() and not started
