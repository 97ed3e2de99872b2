"""``python -m embedder``'s entry: the start-up heap is frozen before serving."""

from __future__ import annotations

import gc

import pytest
import uvicorn

from embedder import __main__ as entry


def test_the_start_up_heap_is_out_of_the_collectors_sight_before_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frozen_when_serving: list[int] = []
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self: frozen_when_serving.append(gc.get_freeze_count())
    )
    try:
        assert gc.get_freeze_count() == 0
        entry.main()
        assert len(frozen_when_serving) == 1 and frozen_when_serving[0] > 1000
    finally:
        gc.unfreeze()


def test_a_bad_setting_is_one_line_naming_its_variable_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served: list[bool] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: served.append(True))
    monkeypatch.setenv("EMBEDDER_PORT", "eighty-eighty-one")
    monkeypatch.setenv("EMBEDDER_BACKEND", "tpu")
    assert entry.main() == 2
    assert capsys.readouterr().err.splitlines() == [
        "embedder: configuration error: EMBEDDER_PORT: Input should be a valid integer, "
        "unable to parse string as an integer; EMBEDDER_BACKEND: Input should be 'auto', "
        "'onnx' or 'torch'"
    ]
    assert not served


def test_help_or_an_argument_is_answered_without_serving(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--help` loaded the model and served on the default port.
    served: list[bool] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: served.append(True))
    assert entry.main(["--help"]) == 0
    assert "EMBEDDER_MODEL" in capsys.readouterr().out
    assert entry.main(["--model", "x"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "embedder: python -m embedder takes no arguments (got --model x): settings are "
        "environment variables, such as EMBEDDER_PORT (python -m embedder --help names them all)"
    ]
    assert not served


def test_a_misspelt_setting_is_named_with_the_one_meant(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ignored without a word, EMBEDDER_MODLE left the default model serving.
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)
    monkeypatch.setenv("EMBEDDER_MODLE", "intfloat/e5-base-v2")
    monkeypatch.setenv("EMBEDDER_HF_HUB_OFFLINE", "0")  # in .env, make run passes it on
    try:
        entry.main()
    finally:
        gc.unfreeze()
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "embedder: warning: EMBEDDER_HF_HUB_OFFLINE is read by docker compose only (as "
        "HF_HUB_OFFLINE in the embedder's container); here, set HF_HUB_OFFLINE",
        "embedder: warning: EMBEDDER_MODLE is not a setting (did you mean EMBEDDER_MODEL?); "
        "it is ignored",
    ]
