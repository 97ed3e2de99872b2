from __future__ import annotations

import json

from gateway.upstream.context import (
    Overflow,
    context_overflow,
    listed_window,
    ratio_for,
    window_for,
)
from gateway.upstream.pool import Target
from gateway.upstream.replica import Upstream

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
    assert context_overflow(400, json.dumps(LLAMA_CPP_OVERFLOW).encode()) == Overflow(512, 690)
    assert context_overflow(400, json.dumps(VLLM_OVERFLOW).encode()) == Overflow(4096, 4900)
    newer = {"error": {"message": "This model's maximum context length is 2048 tokens. "
                       "However, your request has 3000 input tokens."}}  # fmt: skip
    assert context_overflow(400, json.dumps(newer).encode()) == Overflow(2048, 3000)
    coded = {"error": {"message": "too long", "code": "context_length_exceeded"}}
    assert context_overflow(400, json.dumps(coded).encode()) == Overflow(None, None)


def test_other_errors_are_not_overflows() -> None:
    other = {"error": {"message": "temperature must be >= 0", "code": "invalid_value"}}
    assert context_overflow(400, json.dumps(other).encode()) is None
    assert context_overflow(500, json.dumps(LLAMA_CPP_OVERFLOW).encode()) is None
    assert context_overflow(400, b"not json") is None
    assert context_overflow(400, b"[1, 2]") is None


def test_learned_ratios_scale_the_estimate_for_the_slowest_target() -> None:
    a, b = upstream([]), upstream([])
    assert ratio_for([Target(a), Target(b, "x")], "m") == 1.0
    a.token_ratios["m"] = 1.5
    b.token_ratios["x"] = 2.0
    assert ratio_for([Target(a), Target(b, "x")], "m") == 2.0
    assert ratio_for([Target(a)], "m") == 1.5
