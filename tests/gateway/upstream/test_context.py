from __future__ import annotations

import json

from gateway.memory.records import Scope
from gateway.upstream.context import (
    MAX_LEARNED_RATIOS,
    Overflow,
    context_overflow,
    learn_ratio,
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
    assert ratio_for([Target(a), Target(b, "x")], "m", "alice") == 1.0
    learn_ratio(a, "m", "alice", 1.5)
    learn_ratio(b, "x", "alice", 2.0)
    assert ratio_for([Target(a), Target(b, "x")], "m", "alice") == 2.0
    assert ratio_for([Target(a)], "m", "alice") == 1.5
    learn_ratio(a, "m", "alice", 1.2)  # the largest seen is kept
    assert ratio_for([Target(a)], "m", "alice") == 1.5


def test_a_ratio_learned_from_one_users_text_leaves_the_others_estimates_alone() -> None:
    # One user's memories of account numbers (a token per digit, where the estimate
    # counts one per three bytes) cut every user's memories, in every tenant, to a
    # third until a restart, when the ratio was kept for the model as a whole.
    a = upstream([])
    mallory, ivy = Scope("globex", "mallory"), Scope("acme", "ivy")
    learn_ratio(a, "m", mallory, 3.0)
    assert ratio_for([Target(a)], "m", mallory) == 3.0
    assert ratio_for([Target(a)], "m", ivy) == 1.0


def test_learned_ratios_keep_the_newest_owners() -> None:
    a = upstream([])
    for i in range(MAX_LEARNED_RATIOS + 5):
        learn_ratio(a, "m", i, 2.0)
    assert len(a.token_ratios) == MAX_LEARNED_RATIOS
    assert ratio_for([Target(a)], "m", 0) == 1.0
    assert ratio_for([Target(a)], "m", MAX_LEARNED_RATIOS + 4) == 2.0
