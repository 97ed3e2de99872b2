from __future__ import annotations

import pytest
from pydantic import ValidationError

from embedder.settings import EmbedderSettings


def test_the_batch_size_follows_the_device_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBEDDER_MAX_BATCH_SIZE", raising=False)
    assert EmbedderSettings(device="cpu").batch_size == 8
    assert EmbedderSettings(device="cuda").batch_size == 64
    monkeypatch.setenv("EMBEDDER_MAX_BATCH_SIZE", "32")
    assert EmbedderSettings(device="cpu").batch_size == 32


def test_a_batch_size_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        EmbedderSettings(max_batch_size=0)


def test_the_log_level_is_one_logging_knows_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDER_LOG_LEVEL", "DEBUG")
    assert EmbedderSettings().log_level == "debug"
    monkeypatch.setenv("EMBEDDER_LOG_LEVEL", "loud")
    with pytest.raises(ValidationError, match="Input should be 'debug', 'info'"):
        EmbedderSettings()


def test_the_backend_and_weights_are_taken_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDER_BACKEND", "ONNX")
    monkeypatch.setenv("EMBEDDER_ONNX_WEIGHTS", "FP32")
    settings = EmbedderSettings()
    assert (settings.backend, settings.onnx_weights) == ("onnx", "fp32")
