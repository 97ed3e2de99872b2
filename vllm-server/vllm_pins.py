"""The torch pins vLLM declares, checked against what is installed, from package metadata.

Nothing here imports torch or vllm: a mismatched pair fails at import (for example
"module 'torch._inductor' has no attribute 'config'"), so the check reads
``importlib.metadata`` only. ``packaging`` is not used either: the launcher runs before
anything in the image is trusted, so this is a small subset of PEP 440 (versions and
specifiers) and PEP 508 (requirements and simple markers), enough for vLLM's pins.
"""

from __future__ import annotations

import importlib.metadata
import operator
import os
import platform
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Packages vLLM pins exactly and that break vLLM at import when they differ.
# torch must be installed; the others are checked when they are.
PINNED_BY_VLLM = ("torch", "torchvision", "torchaudio")

MISMATCH_ADVICE = (
    "vLLM would fail at import (e.g. \"module 'torch._inductor' has no attribute 'config'\"): "
    "use the torch that vLLM pins, and do not install another torch into the vLLM image"
)

_VERSION_RE = re.compile(
    r"^\s*v?(?:(?P<epoch>\d+)!)?(?P<release>\d+(?:\.\d+)*)"
    r"(?:[-_.]?(?P<pre_l>alpha|beta|preview|pre|rc|a|b|c)[-_.]?(?P<pre_n>\d*))?"
    r"(?:-(?P<post_implicit>\d+)|[-_.]?(?:post|rev|r)[-_.]?(?P<post_n>\d*))?"
    r"(?:[-_.]?dev[-_.]?(?P<dev_n>\d*))?"
    r"(?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?\s*$",
    re.IGNORECASE,
)
_ORDERING: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_PRE_RANK = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}


@dataclass(frozen=True)
class Version:
    text: str
    release: tuple[int, ...]
    key: tuple[object, ...]  # orders public versions as PEP 440 does
    local: str | None


def parse_version(text: str) -> Version:
    m = _VERSION_RE.match(text)
    if not m:
        raise ValueError(f"not a version: {text!r}")
    release = tuple(int(part) for part in m["release"].split("."))
    trimmed = list(release)
    while len(trimmed) > 1 and trimmed[-1] == 0:
        trimmed.pop()
    pre = (_PRE_RANK[m["pre_l"].lower()], int(m["pre_n"] or 0)) if m["pre_l"] else None
    post_text = m["post_implicit"] or m["post_n"]
    has_post = m["post_implicit"] is not None or m["post_n"] is not None
    post = int(post_text or 0) if has_post else -1
    dev = int(m["dev_n"] or 0) if m["dev_n"] is not None else None
    if pre is None:
        # 1.0.dev0 < 1.0a1 < 1.0 ; a plain release sorts after all of its pre-releases.
        pre = (-1, 0) if dev is not None and not has_post else (3, 0)
    dev_key = (0, dev) if dev is not None else (1, 0)
    key = (int(m["epoch"] or 0), tuple(trimmed), pre, post, dev_key)
    local = m["local"].lower() if m["local"] else None
    return Version(text=text.strip(), release=release, key=key, local=local)


def _prefix_match(version: Version, prefix_text: str) -> bool:
    prefix = parse_version(prefix_text).release
    padded = version.release + (0,) * max(0, len(prefix) - len(version.release))
    return padded[: len(prefix)] == prefix


def specifier_allows(specifier: str, version_text: str) -> bool:
    """Whether ``version_text`` satisfies every clause of ``specifier`` (e.g. ">=2.1,<3")."""
    version = parse_version(version_text)
    for clause in filter(None, (c.strip() for c in specifier.split(","))):
        m = re.fullmatch(r"(===|==|!=|~=|<=|>=|<|>)\s*(\S+)", clause)
        if not m:
            raise ValueError(f"cannot read the version specifier {clause!r}")
        op, target = m.groups()
        if not _clause_allows(op, target, version):
            return False
    return True


def _clause_allows(op: str, target: str, version: Version) -> bool:
    if op == "===":
        return version.text == target
    if op in ("==", "!="):
        if target.endswith(".*"):
            equal = _prefix_match(version, target[:-2])
        else:
            wanted = parse_version(target)
            # A local label counts only when the pin names one: ==2.4.0 accepts 2.4.0+cu124.
            equal = wanted.key == version.key and (
                wanted.local is None or wanted.local == version.local
            )
        return equal if op == "==" else not equal
    wanted = parse_version(target)
    if op == "~=":
        prefix = ".".join(str(part) for part in wanted.release[:-1])
        return version.key >= wanted.key and _prefix_match(version, prefix)
    return _ORDERING[op](version.key, wanted.key)


@dataclass(frozen=True)
class Requirement:
    name: str  # normalised: lower case, runs of -_. as "-"
    specifier: str
    marker: str | None


_REQUIREMENT_RE = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*"
    r"(?P<spec>\(?[^;@()]*\)?)?\s*(?:@[^;]*)?(?:;\s*(?P<marker>.+))?$"
)


def normalise_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(line: str) -> Requirement | None:
    m = _REQUIREMENT_RE.match(line)
    if not m:
        return None
    spec = (m["spec"] or "").strip().strip("()").replace(" ", "")
    marker = m["marker"].strip() if m["marker"] else None
    return Requirement(normalise_name(m["name"]), spec, marker)


_MARKER_CLAUSE_RE = re.compile(
    r"""^\s*(?P<var>\w+)\s*(?P<op>===|==|!=|<=|>=|~=|<|>|not\s+in|in)\s*(?P<q>['"])(?P<value>.*?)(?P=q)\s*$"""
)
_VERSION_MARKERS = ("python_version", "python_full_version", "implementation_version")


class _UnknownMarker(Exception):
    """A marker clause outside the subset this launcher evaluates."""


def marker_environment() -> dict[str, str]:
    return {
        "python_version": "{}.{}".format(*sys.version_info[:2]),
        "python_full_version": platform.python_version(),
        "implementation_name": sys.implementation.name,
        "implementation_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "platform_machine": platform.machine(),
        "platform_system": platform.system(),
        "sys_platform": sys.platform,
        "os_name": os.name,
        "extra": "",  # the launcher checks vLLM's base requirements, not its extras
    }


def marker_applies(marker: str, env: Mapping[str, str]) -> bool | None:
    """Evaluate ``a == 'x' and b != 'y' or ...``; None when the marker is beyond this subset."""
    if "(" in marker:
        return None
    try:
        return any(
            all(_marker_clause(clause, env) for clause in re.split(r"\s+and\s+", alternative))
            for alternative in re.split(r"\s+or\s+", marker.strip())
        )
    except (_UnknownMarker, ValueError):
        return None


def _marker_clause(clause: str, env: Mapping[str, str]) -> bool:
    m = _MARKER_CLAUSE_RE.match(clause)
    if not m or m["var"] not in env:
        raise _UnknownMarker(clause)
    current, op, value = env[m["var"]], re.sub(r"\s+", " ", m["op"]), m["value"]
    if op == "in":
        return current in value
    if op == "not in":
        return current not in value
    if m["var"] in _VERSION_MARKERS:
        return specifier_allows(f"{op}{value}", current)
    if op == "==":
        return current == value
    if op == "!=":
        return current != value
    raise _UnknownMarker(clause)


def check_pins(
    vllm_version: str,
    vllm_requires: Iterable[str],
    installed: Callable[[str], str | None],
    env: Mapping[str, str],
) -> tuple[list[str], list[str]]:
    """Compare vLLM's declared pins with what is installed: (notes, problems)."""
    notes: list[str] = []
    problems: list[str] = []
    declared = False
    for line in vllm_requires:
        req = parse_requirement(line)
        if req is None or req.name not in PINNED_BY_VLLM:
            continue
        if req.marker:
            applies = marker_applies(req.marker, env)
            if applies is False:
                continue
            if applies is None:
                notes.append(f"cannot evaluate the marker of {line!r}; checking it anyway")
        if req.name == "torch":
            declared = True
        version = installed(req.name)
        if version is None:
            if req.name == "torch":
                problems.append(
                    f"vllm {vllm_version} requires torch{req.specifier}, but torch is not installed"
                )
            continue
        try:
            ok = specifier_allows(req.specifier, version) if req.specifier else True
        except ValueError as exc:
            notes.append(f"cannot compare {req.name} {version} with {req.specifier!r}: {exc}")
            continue
        if ok:
            notes.append(
                f"vllm {vllm_version} requires {req.name}{req.specifier}: {version} installed, ok"
            )
        else:
            problems.append(
                f"vllm {vllm_version} requires {req.name}{req.specifier}, "
                f"but {req.name} {version} is installed"
            )
    if not declared:
        notes.append(f"vllm {vllm_version} declares no torch requirement; nothing to compare")
    if problems:
        problems.append(MISMATCH_ADVICE)
    return notes, problems


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def verify_installed_versions() -> tuple[list[str], list[str]]:
    """Read the pins from package metadata: nothing is imported, so a mismatch cannot crash us."""
    try:
        dist = importlib.metadata.distribution("vllm")
    except importlib.metadata.PackageNotFoundError:
        return [], [
            f"vllm is not installed for this Python ({sys.executable}): run the launcher with "
            "the interpreter vLLM is installed in"
        ]
    return check_pins(dist.version, dist.requires or [], installed_version, marker_environment())
