"""A model's context window: where the gateway learns it, and how it reads an overflow.

In order of precedence, for the model name a target is sent:

1. ``context_windows`` in ``GATEWAY_CONFIG``, by the name the client sends or
   the name the upstream is sent (the operator's word wins);
2. what the server's own context-overflow error said (learned at run time:
   the server's real limit, whatever it lists);
3. the model's entry in the server's ``/v1/models``: vLLM lists
   ``max_model_len``; OpenRouter-style and LiteLLM-style lists use
   ``context_length`` / ``max_input_tokens``.

llama.cpp's Python server (``python -m llama_cpp.server``, the local default)
reports its ``n_ctx`` nowhere: its ``/v1/models`` lists only ids, and it has no
``/props``. Its overflow error does name it ("This model's maximum context
length is N tokens"), as vLLM's and OpenAI's do, so the gateway learns it from
the first overflow; ``make run`` also writes it into a ``GATEWAY_CONFIG`` so
memories are budgeted from the first request.

When no target's window is known, memories are not budgeted (and the chat
endpoint's retry without memories is the only guard).
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.upstream.pool import Target
from gateway.upstream.replica import Upstream

LISTED_WINDOW_KEYS = ("max_model_len", "context_length", "context_window", "max_input_tokens")
# vLLM and llama.cpp's Python server ("This model's maximum context length is
# 512 tokens. However, you requested ..."), OpenAI ("maximum context length is
# 8192 tokens"), vLLM's prompt check ("... longer than the maximum model length of 512").
_WINDOW_IN_MESSAGE = re.compile(
    r"maximum context length is (\d+)|maximum model length of (\d+)", re.IGNORECASE
)
_OVERFLOW_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
# The prompt's real size: llama.cpp's and older vLLM's "(690 in the messages, 10 in
# the completion)", newer vLLM's "your request has 690 input tokens".
_PROMPT_IN_MESSAGE = re.compile(
    r"\((\d+) in the messages|request has (\d+) input tokens|"
    r"requested tokens \((\d+)\) exceed",
    re.IGNORECASE,
)
# How far the estimate may be corrected upwards: one token per byte is the most
# a byte-level tokenizer spends, three bytes per token what the estimate assumes.
MAX_TOKEN_RATIO = 3.0
# Memory owners whose learned ratio an upstream keeps (a small dict entry each).
MAX_LEARNED_RATIOS = 10_000


@dataclass(frozen=True)
class Overflow:
    """A context-overflow error: the window and the prompt's tokens, where it names them."""

    window: int | None = None
    prompt_tokens: int | None = None


def listed_window(upstream: Upstream, model: str) -> int | None:
    for entry in upstream.models:
        if entry.get("id") != model:
            continue
        for key in LISTED_WINDOW_KEYS:
            value = entry.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def window_for(
    targets: Sequence[Target], client_model: str, configured: dict[str, int]
) -> int | None:
    """The smallest known window among the targets (a fallback may be smaller)."""
    if client_model in configured:
        return configured[client_model]
    windows = []
    for target in targets:
        name = target.model or client_model
        window = (
            configured.get(name)
            or target.upstream.learned_windows.get(name)
            or listed_window(target.upstream, name)
        )
        if window:
            windows.append(window)
    return min(windows) if windows else None


def _error_of(content: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return error
    # vLLM's older shape: {"object": "error", "message": ..., "code": 400}
    return body if isinstance(body, dict) and isinstance(body.get("message"), str) else None


def ratio_for(targets: Sequence[Target], client_model: str, owner: Hashable) -> float:
    """How much to scale the size estimate of ``owner``'s requests for these targets
    (learned from the overflows of that owner's requests)."""
    ratios = [
        target.upstream.token_ratios.get((target.model or client_model, owner), 1.0)
        for target in targets
    ]
    return max(ratios, default=1.0)


def learn_ratio(upstream: Upstream, model: str, owner: Hashable, ratio: float) -> None:
    """Keep ``ratio`` for ``owner``'s requests to ``model`` when it is the largest seen.

    By owner (a memory user), not for the model as a whole: how far the estimate
    falls short depends on the text (digits, code, some scripts), and one user's
    memories of account numbers must not cut every other user's, every tenant's,
    to a third until the gateway restarts. The newest ``MAX_LEARNED_RATIOS`` are kept.
    """
    key = (model, owner)
    if ratio <= upstream.token_ratios.get(key, 1.0):
        return
    upstream.token_ratios.pop(key, None)  # re-inserted last: the newest
    upstream.token_ratios[key] = ratio
    while len(upstream.token_ratios) > MAX_LEARNED_RATIOS:
        del upstream.token_ratios[next(iter(upstream.token_ratios))]


def context_overflow(status: int, content: bytes) -> Overflow | None:
    """The upstream's answer as a context overflow, or None when it is something else."""
    if status not in (400, 413, 422):
        return None
    error = _error_of(content)
    if error is None:
        return None
    message = str(error.get("message")) if isinstance(error.get("message"), str) else ""
    window = _WINDOW_IN_MESSAGE.search(message)
    if error.get("code") not in _OVERFLOW_CODES and window is None:
        return None
    prompt = _PROMPT_IN_MESSAGE.search(message)
    return Overflow(
        int(window.group(1) or window.group(2)) if window else None,
        int(next(g for g in prompt.groups() if g)) if prompt else None,
    )
