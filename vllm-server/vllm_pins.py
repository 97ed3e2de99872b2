"""The torch pins vLLM declares, checked against what is installed, from package metadata.

Nothing here imports torch or vllm: a mismatched pair fails at import (for example
"module 'torch._inductor' has no attribute 'config'"), so the check reads
``importlib.metadata`` only. The requirements, their markers and the versions are read
by ``packaging`` (PEP 440 and 508 in full, parenthesised markers included), which is in
every Python that has vLLM: transformers and huggingface-hub, which vLLM needs, depend
on it. launch.py imports this module only when it checks versions, so that
VLLM_SKIP_VERSION_CHECK=true still starts vLLM in a Python whose ``packaging`` is broken.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable, Iterable, Mapping

from packaging.markers import (
    Marker,
    UndefinedComparison,
    UndefinedEnvironmentName,
    default_environment,
)
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

# Packages vLLM pins exactly and that break vLLM at import when they differ.
# torch must be installed; the others are checked when they are.
PINNED_BY_VLLM = ("torch", "torchvision", "torchaudio")

MISMATCH_ADVICE = (
    "vLLM would fail at import (e.g. \"module 'torch._inductor' has no attribute 'config'\"): "
    "use the torch that vLLM pins, and do not install another torch into the vLLM image"
)


def read_requirement(line: str) -> tuple[Requirement | None, bool]:
    """The requirement on ``line``, and whether its marker (if any) could be read.

    A line whose marker cannot be read is kept without it, so a pin behind an odd marker
    is still checked rather than skipped; None when even the rest cannot be read.
    """
    try:
        return Requirement(line), True
    except InvalidRequirement:
        pass
    try:
        return Requirement(line.partition(";")[0]), False
    except InvalidRequirement:
        return None, False


def specifier_allows(requirement: Requirement, version: str) -> bool:
    """Whether the installed ``version`` satisfies the requirement's specifier.

    Pre-releases count: what is installed is what vLLM will import, so a nightly torch
    inside the pinned range is accepted, not reported as a mismatch. A local label
    counts only when the pin names one: ==2.4.0 accepts 2.4.0+cu124 (PEP 440).
    """
    return requirement.specifier.contains(version, prereleases=True)


def marker_environment() -> dict[str, str]:
    # The launcher checks vLLM's base requirements, not its extras.
    return {**{key: str(value) for key, value in default_environment().items()}, "extra": ""}


def marker_applies(marker: Marker, env: Mapping[str, str]) -> bool | None:
    """Whether a requirement's marker holds here; None when it cannot be evaluated."""
    try:
        return marker.evaluate(dict(env))
    except (UndefinedComparison, UndefinedEnvironmentName, InvalidVersion):
        return None


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
        req, marker_read = read_requirement(line)
        if req is None:
            notes.append(f"cannot read vLLM's requirement {line!r}")
            continue
        name = canonicalize_name(req.name)
        if name not in PINNED_BY_VLLM:
            continue
        applies = marker_applies(req.marker, env) if req.marker else True
        if applies is False:
            continue
        if applies is None or not marker_read:
            notes.append(f"cannot evaluate the marker of {line!r}; checking it anyway")
        if name == "torch":
            declared = True
        pin = f"{name}{req.specifier}"
        version = installed(name)
        if version is None:
            if name == "torch":
                problems.append(f"vllm {vllm_version} requires {pin}, but torch is not installed")
            continue
        try:
            Version(version)
        except InvalidVersion as exc:
            notes.append(f"cannot compare {name} {version} with {str(req.specifier)!r}: {exc}")
            continue
        if specifier_allows(req, version):
            notes.append(f"vllm {vllm_version} requires {pin}: {version} installed, ok")
        else:
            problems.append(
                f"vllm {vllm_version} requires {pin}, but {name} {version} is installed"
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
