"""Fuzzing budget: short and repeatable in ``make test``, long with ``MEMGATE_FUZZ_EXAMPLES``.

``MEMGATE_FUZZ_EXAMPLES=2000 make fuzz`` runs every fuzz test with that many examples per
property (per API operation for schemathesis); the defaults keep this directory well under two
minutes on a 2-core machine. Every run is derandomized (hypothesis derives its seed from the
test), with no example database, so CI sees the same cases every time.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings


def examples(default: int, share: float = 1.0) -> int:
    """``default`` normally; with ``MEMGATE_FUZZ_EXAMPLES`` set, that count times ``share``
    (a costly property takes a share of the long run, not all of it)."""
    value = os.environ.get("MEMGATE_FUZZ_EXAMPLES")
    return max(1, int(int(value) * share)) if value else default


def fuzz_settings(default_examples: int, *, share: float = 1.0, shrink: bool = True) -> settings:
    """Deterministic hypothesis settings: fixed seed, no database, no deadline.

    ``shrink=False`` for examples that cost a real request: a failure is reported as found
    rather than after minutes of shrinking against a live process.
    """
    phases = [Phase.explicit, Phase.reuse, Phase.generate, *([Phase.shrink] if shrink else [])]
    return settings(
        phases=phases,
        max_examples=examples(default_examples, share),
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


def fuzz_timeout() -> pytest.MarkDecorator:
    """The suite's per-test timeout (180 s) for the default run; hours for a long one."""
    return pytest.mark.timeout(180 if not os.environ.get("MEMGATE_FUZZ_EXAMPLES") else 4 * 3600)
