from __future__ import annotations

import json

from gateway.upstream.client import Upstream
from gateway.upstream.context import context_overflow, listed_window, window_for
from gateway.upstream.pool import Target

# What the servers answer, verbatim in shape.
LLAMA_CPP_OVERFLOW = {
    "error": {
        "message": "This model's maximum context length is 512 tokens. However, you "
        "requested 700 tokens (690 in the messages, 10 in the completion). Please reduce "
        "the length of the messages or completion.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
VLLM_OVERFLOW = {
    "object": "error",
    "message": "This model's maximum context length is 4096 tokens. However, you requested "
    "5000 tokens (4900 in the messages, 100 in the completion).",
    "type": "BadRequestError",
    "param": None,
    "code": 400,
}


def upstream(models: list[dict[str, object]]) -> Upstream:
    # Nothing is sent: the HTTP client is never used here.
    replica = Upstream("primary", "http://127.0.0.1:1/v1", http=None)  # type: ignore[arg-type]
    replica.models = models
    return replica


def test_vllm_lists_max_model_len() -> None:
    replica = upstream([{"id": "qwen", "max_model_len": 32768}, {"id": "other"}])
    assert listed_window(replica, "qwen") == 32768
    assert listed_window(replica, "other") is None
    assert listed_window(replica, "absent") is None


def test_config_then_learned_then_listed_and_the_smallest_target_wins() -> None:
    a = upstream([{"id": "m", "max_model_len": 8192}])
    b = upstream([{"id": "small", "context_length": 2048}])
    targets = [Target(a), Target(b, "small")]
    assert window_for(targets, "m", {}) == 2048
    assert window_for(targets, "m", {"m": 100000}) == 100000
    assert window_for([Target(a)], "m", {}) == 8192
    a.learned_windows["m"] = 4096
    assert window_for([Target(a)], "m", {}) == 4096
    assert window_for([Target(upstream([]))], "m", {}) is None


def test_overflow_errors_are_recognised_with_their_window() -> None:
    assert context_overflow(400, json.dumps(LLAMA_CPP_OVERFLOW).encode()) == (True, 512)
    assert context_overflow(400, json.dumps(VLLM_OVERFLOW).encode()) == (True, 4096)
    coded = {"error": {"message": "too long", "code": "context_length_exceeded"}}
    assert context_overflow(400, json.dumps(coded).encode()) == (True, None)


def test_other_errors_are_not_overflows() -> None:
    other = {"error": {"message": "temperature must be >= 0", "code": "invalid_value"}}
    assert context_overflow(400, json.dumps(other).encode()) == (False, None)
    assert context_overflow(500, json.dumps(LLAMA_CPP_OVERFLOW).encode()) == (False, None)
    assert context_overflow(400, b"not json") == (False, None)
    assert context_overflow(400, b"[1, 2]") == (False, None)
