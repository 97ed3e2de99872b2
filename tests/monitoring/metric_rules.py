"""Prometheus naming rules for our metric families, shared by the gateway and embedder tests.

https://prometheus.io/docs/practices/naming/: base units in the name (``_seconds``,
``_bytes``), counters exposed as ``*_total``, no colons (those are for recording
rules), and here also: label names that could carry a user, tenant, key or message
are refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

# Words in a family's name or help that mean it measures time, or a size in bytes.
TIME_WORDS = re.compile(r"\b(latency|duration|time|seconds|wait|elapsed)\b|_time_|duration")
SIZE_WORDS = re.compile(r"\bbytes\b|_bytes")
# Non-base units Prometheus naming rules out (use seconds and bytes).
NON_BASE_UNITS = re.compile(
    r"_(ms|millis|milliseconds|us|micros|microseconds|ns|minutes|hours|days|kb|mb|gb|"
    r"kilobytes|megabytes|gigabytes|percent)(_|$)"
)
# Label names that would carry unbounded or private values.
FORBIDDEN_LABEL_WORDS = ("user", "tenant", "key", "message", "session", "content", "prompt_text")
NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def families(registry: CollectorRegistry) -> list[Metric]:
    return list(registry.collect())


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def check_family_names(registry: CollectorRegistry, prefix: str) -> list[str]:
    """Every naming problem of the registry's families, as readable lines."""
    problems: list[str] = []
    for family in families(registry):
        name, doc = family.name, family.documentation
        if ":" in name or not NAME.fullmatch(name):
            problems.append(f"{name}: not a plain [a-zA-Z0-9_] name (colons are for rules)")
        if not name.startswith(prefix):
            problems.append(f"{name}: not prefixed {prefix}")
        if NON_BASE_UNITS.search(name):
            problems.append(f"{name}: non-base unit (use _seconds / _bytes)")
        if TIME_WORDS.search(f"{name} {doc.lower()}") and not name.endswith("_seconds"):
            problems.append(f"{name}: measures time but does not end in _seconds")
        if SIZE_WORDS.search(f"{name} {doc.lower()}") and not name.endswith("_bytes"):
            problems.append(f"{name}: measures bytes but does not end in _bytes")
        if not doc.strip():
            problems.append(f"{name}: no help text")
        for sample in family.samples:
            for label in sample.labels:
                if label in ("le", "quantile"):
                    continue
                if not LABEL.fullmatch(label) or label.startswith("__"):
                    problems.append(f"{name}: bad label name {label!r}")
                if any(word in label.lower() for word in FORBIDDEN_LABEL_WORDS):
                    problems.append(f"{name}: label {label!r} would carry private values")
    return problems


def check_exposition(text: str) -> list[str]:
    """The raw text exposition: counters are typed and sampled as ``*_total``; no colons."""
    problems = []
    family, kind = "", ""
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            if kind == "counter" and not family.endswith("_total"):
                problems.append(f"{family}: counter not exposed as <name>_total")
        elif line and not line.startswith("#"):
            sample = re.split(r"[{ ]", line, maxsplit=1)[0]
            if ":" in sample:
                problems.append(f"{sample}: colon in exposed name")
            if kind == "counter" and sample != family:
                problems.append(f"{sample}: sample of counter {family} named differently")
    return problems


def check_label_names(collectors: Iterable[object]) -> list[str]:
    """Label names declared by metric objects (seen even before a child exists)."""
    problems = []
    for collector in collectors:
        if not isinstance(collector, MetricWrapperBase):
            continue
        name = collector._name
        for label in collector._labelnames:
            if not LABEL.fullmatch(label) or label.startswith("__"):
                problems.append(f"{name}: bad label name {label!r}")
            if any(word in label.lower() for word in FORBIDDEN_LABEL_WORDS):
                problems.append(f"{name}: label {label!r} would carry private values")
    return problems
