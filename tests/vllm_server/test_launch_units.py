"""The launcher's pure parts: version pins, the ladder and its policy, its imports."""

from __future__ import annotations

import ast
import itertools
import sys
from types import ModuleType
from typing import Any

import pytest
from launcher_harness import LAUNCHER_DIR
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

LINUX = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "platform_python_implementation": "CPython",
    "platform_machine": "x86_64",
    "platform_system": "Linux",
    "sys_platform": "linux",
    "os_name": "posix",
    "extra": "",
}


# --------------------------------------------------------------------------- versions


def _pin(pins: ModuleType, line: str) -> Any:
    req, marker_read = pins.read_requirement(line)
    assert req is not None and marker_read, line
    return req


def test_versions_order_as_pep_440_says(pins: ModuleType) -> None:
    ordered = ["2.14.0.dev1", "2.14.0a1", "2.14.0b2", "2.14.0rc1", "2.14.0", "2.14.0.post1", "2.15"]
    for lower, higher in itertools.pairwise(ordered):
        assert pins.specifier_allows(_pin(pins, f"torch<={higher}"), lower), (lower, higher)
        assert not pins.specifier_allows(_pin(pins, f"torch>={higher}"), lower), (lower, higher)
    assert pins.specifier_allows(_pin(pins, "torch==2.14"), "2.14.0")
    notes, problems = pins.check_pins(
        "0.33.0", ["torch==2.14.0"], _installed({"torch": "latest"}), LINUX
    )
    assert problems == []
    assert notes[0].startswith("cannot compare torch latest with '==2.14.0'")


@pytest.mark.parametrize(
    ("specifier", "version", "allowed"),
    [
        ("==2.14.0", "2.14.0", True),
        ("==2.14.0", "2.14.0+cu129", True),  # a local build of the pinned release
        ("==2.14.0", "2.13.0", False),
        ("==2.14.0", "2.14.1", False),
        ("==2.14.0+cu129", "2.14.0+cpu", False),
        ("==2.14.*", "2.14.3", True),
        ("==2.14.*", "2.15.0", False),
        ("!=2.14.0", "2.14.0", False),
        (">=2.1,<3", "2.9.1", True),
        (">=2.1,<3", "3.0", False),
        (">=2.1,<3", "2.9.1rc1", True),  # installed is installed: pre-releases count
        ("<=2.14", "2.14.0", True),
        (">2.14", "2.14.0", False),
        ("~=2.4.1", "2.4.9", True),
        ("~=2.4.1", "2.5.0", False),
        ("===2.14.0", "2.14.0", True),
        ("", "1.0", True),
    ],
)
def test_specifiers(pins: ModuleType, specifier: str, version: str, allowed: bool) -> None:
    assert pins.specifier_allows(_pin(pins, f"torch{specifier}"), version) is allowed


def test_a_requirement_it_cannot_read_is_a_note(pins: ModuleType) -> None:
    notes, problems = pins.check_pins(
        "0.33.0", ["torch about 2.14", "torch==2.14.0"], _installed({"torch": "2.14.0"}), LINUX
    )
    assert problems == []
    assert notes[0] == "cannot read vLLM's requirement 'torch about 2.14'"
    assert "vllm 0.33.0 requires torch==2.14.0: 2.14.0 installed, ok" in notes


@pytest.mark.parametrize(
    ("line", "name", "specifier", "marker"),
    [
        ("torch==2.14.0", "torch", "==2.14.0", None),
        ("torch (==2.14.0)", "torch", "==2.14.0", None),  # the older metadata style
        ("TorchVision>=0.29, <0.30", "torchvision", ">=0.29,<0.30", None),
        ('zentorch==2.14.0.1; extra == "zen"', "zentorch", "==2.14.0.1", 'extra == "zen"'),
        ("torch[opt-einsum]==2.14.0", "torch", "==2.14.0", None),
        ("flashinfer @ https://example.invalid/f.whl", "flashinfer", "", None),
    ],
)
def test_requirements(
    pins: ModuleType, line: str, name: str, specifier: str, marker: str | None
) -> None:
    req = _pin(pins, line)
    assert canonicalize_name(req.name) == name
    assert req.specifier == SpecifierSet(specifier)
    assert (str(req.marker) if req.marker else None) == marker


@pytest.mark.parametrize(
    ("marker", "applies"),
    [
        ('sys_platform == "linux"', True),
        ("platform_machine != 'x86_64'", False),
        ('platform_machine == "aarch64" or platform_system == "Linux"', True),
        ('python_version >= "3.10" and platform_system != "Darwin"', True),
        ('python_version < "3.10"', False),
        ('platform_machine in "x86_64 AMD64"', True),
        ('extra == "zen"', False),  # extras are not what vLLM needs to start
        ('(sys_platform == "linux")', True),
        ('(platform_machine == "aarch64" or sys_platform == "linux") and os_name == "nt"', False),
        ('no_such_variable == "x"', None),  # unreadable: the pin is checked anyway
    ],
)
def test_markers(pins: ModuleType, marker: str, applies: bool | None) -> None:
    req, marker_read = pins.read_requirement(f"torch==2.14.0; {marker}")
    assert req is not None
    assert (pins.marker_applies(req.marker, LINUX) if marker_read else None) is applies


def test_check_pins_reads_parenthesised_markers(pins: ModuleType) -> None:
    # What vLLM's metadata can say, and what the hand-written subset could not read:
    # it checked both lines "anyway" and reported the ppc64le pin as a mismatch.
    requires = [
        'torch==2.14.0; (platform_machine == "x86_64" or platform_machine == "aarch64")'
        ' and sys_platform == "linux"',
        'torch==2.13.0; (platform_machine == "ppc64le") and sys_platform == "linux"',
    ]
    notes, problems = pins.check_pins("0.33.0", requires, _installed({"torch": "2.14.0"}), LINUX)
    assert problems == []
    assert notes == ["vllm 0.33.0 requires torch==2.14.0: 2.14.0 installed, ok"]
    _, problems = pins.check_pins("0.33.0", requires, _installed({"torch": "2.13.0"}), LINUX)
    assert problems[0] == "vllm 0.33.0 requires torch==2.14.0, but torch 2.13.0 is installed"


def test_a_pin_behind_an_unreadable_marker_is_checked_anyway(pins: ModuleType) -> None:
    line = 'torch==2.14.0; no_such_variable == "x"'
    notes, problems = pins.check_pins("0.33.0", [line], _installed({"torch": "2.13.0"}), LINUX)
    assert notes == [f"cannot evaluate the marker of {line!r}; checking it anyway"]
    assert problems[0] == "vllm 0.33.0 requires torch==2.14.0, but torch 2.13.0 is installed"


def _installed(versions: dict[str, str]):  # type: ignore[no-untyped-def]
    return versions.get


def test_check_pins_accepts_what_vllm_pins(pins: ModuleType) -> None:
    notes, problems = pins.check_pins(
        "0.33.0",
        ["torch==2.14.0", "torchvision==0.29.0", 'zentorch==2.14.0.1; extra == "zen"', "numpy"],
        _installed({"torch": "2.14.0+cu129", "torchvision": "0.29.0"}),
        LINUX,
    )
    assert problems == []
    assert "vllm 0.33.0 requires torch==2.14.0: 2.14.0+cu129 installed, ok" in notes


def test_check_pins_reports_a_mismatch(pins: ModuleType) -> None:
    _, problems = pins.check_pins(
        "0.33.0",
        ["torch==2.14.0", "torchvision==0.29.0"],
        _installed({"torch": "2.13.0", "torchvision": "0.28.0"}),
        LINUX,
    )
    assert problems == [
        "vllm 0.33.0 requires torch==2.14.0, but torch 2.13.0 is installed",
        "vllm 0.33.0 requires torchvision==0.29.0, but torchvision 0.28.0 is installed",
        pins.MISMATCH_ADVICE,
    ]


def test_check_pins_needs_torch_but_not_its_siblings(pins: ModuleType) -> None:
    _, problems = pins.check_pins(
        "0.33.0", ["torch==2.14.0", "torchaudio==2.11.0"], _installed({}), LINUX
    )
    assert problems == [
        "vllm 0.33.0 requires torch==2.14.0, but torch is not installed",
        pins.MISMATCH_ADVICE,
    ]


def test_check_pins_skips_requirements_for_other_platforms(pins: ModuleType) -> None:
    _, problems = pins.check_pins(
        "0.33.0",
        [
            'torch==2.14.0; platform_machine == "x86_64"',
            'torch==2.9.0; platform_machine != "x86_64"',
        ],
        _installed({"torch": "2.14.0"}),
        LINUX,
    )
    assert problems == []


def test_check_pins_says_when_vllm_declares_no_torch(pins: ModuleType) -> None:
    notes, problems = pins.check_pins("0.0.1", ["numpy"], _installed({}), LINUX)
    assert problems == []
    assert notes == ["vllm 0.0.1 declares no torch requirement; nothing to compare"]


# --------------------------------------------------------------------------- ladder


def test_the_ladder_steps_down_in_the_documented_order(launch: ModuleType) -> None:
    kv = "4294967296"
    lower = ("--gpu-memory-utilization", "0.80")
    assert [(r.name, r.args) for r in launch.build_ladder(0.9, 4 * 1024**3)] == [
        ("as configured", ("--gpu-memory-utilization", "0.90")),
        ("lower GPU memory utilization", ("--gpu-memory-utilization", "0.80")),
        (
            "explicit KV cache size",
            ("--gpu-memory-utilization", "0.80", "--kv-cache-memory-bytes", kv),
        ),
        (
            "explicit KV cache size, eager mode",
            (*lower, "--kv-cache-memory-bytes", kv, "--enforce-eager"),
        ),
    ]


def test_a_utilization_too_low_to_lower_skips_that_rung(launch: ModuleType) -> None:
    ladder = launch.build_ladder(0.1, 1024)
    assert [r.name for r in ladder] == [
        "as configured",
        "explicit KV cache size",
        "explicit KV cache size, eager mode",
    ]
    assert ladder[1].args[:2] == ("--gpu-memory-utilization", "0.10")


@pytest.mark.parametrize(
    ("line", "failure"),
    [
        (
            "AssertionError: Error in memory profiling. Initial free memory 40 GiB",
            "memory profiling assertion",
        ),
        (
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB",
            "CUDA out of memory",
        ),
        ("RuntimeError: CUDA error: out of memory", "CUDA out of memory"),
        (
            "ValueError: Free memory on device (1.0/79.2 GiB) on startup is less than desired "
            "GPU memory utilization (0.9, 71.3 GiB).",
            "less free GPU memory than requested",
        ),
        ("ValueError: No available memory for the cache blocks.", None),
        ("INFO 05-01 12:00:00 loading weights", None),
    ],
)
def test_known_start_up_failures(launch: ModuleType, line: str, failure: str | None) -> None:
    assert launch.classify_failure(line) == failure


@pytest.mark.parametrize(
    ("returncode", "started", "failure", "stopping", "retry"),
    [
        (1, False, "CUDA out of memory", False, True),
        (1, False, "CUDA out of memory", True, False),  # being stopped: never start again
        (1, True, "CUDA out of memory", False, False),  # crashed while serving
        (1, False, None, False, False),  # unknown failure: its own exit code
        (0, False, None, False, False),
        (-9, False, "memory profiling assertion", False, True),
    ],
)
def test_retry_policy(
    launch: ModuleType,
    returncode: int,
    started: bool,
    failure: str | None,
    stopping: bool,
    retry: bool,
) -> None:
    attempt = launch.Attempt(returncode, started, failure)
    assert launch.should_retry(attempt, stopping) is retry


def test_exit_code_reports_signals_as_a_shell_does(launch: ModuleType) -> None:
    assert launch.exit_code(-15) == 143
    assert launch.exit_code(3) == 3


@pytest.mark.parametrize("module", ["launch.py", "launch_config.py", "vllm_pins.py"])
def test_the_launcher_imports_only_the_standard_library_and_packaging(module: str) -> None:
    # It must start before anything in the image is trusted, and must never load torch.
    tree = ast.parse((LAUNCHER_DIR / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    allowed = {"launch_config", "vllm_pins", "packaging"}  # packaging: every vLLM has it
    assert imported - sys.stdlib_module_names - allowed == set()
