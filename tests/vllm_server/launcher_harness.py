"""Run vllm-server/launch.py against fake ``vllm`` and ``nvidia-smi`` executables.

Fixtures live in conftest.py; this module holds the harness they hand out.

The launcher runs as a real process (``python -S``: only the standard library, the fake
package metadata below and ``packaging``, as in a vLLM image, are importable), with a PATH
that holds the fakes only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import packaging

HERE = Path(__file__).parent
LAUNCHER_DIR = HERE.parents[1] / "vllm-server"
LAUNCH = LAUNCHER_DIR / "launch.py"
MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
# The real packaging (every vLLM image has it), linked into the fake site-packages alone.
PACKAGING = Path(packaging.__file__).parent


def _executable(path: Path, script: Path) -> None:
    # exec: the fake becomes the process the launcher started, so it gets the signals.
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{script}" "$@"\n')
    path.chmod(0o755)


def write_dist_info(site: Path, name: str, version: str, requires: list[str]) -> None:
    """Package metadata as pip leaves it, so importlib.metadata finds the package."""
    dist = site / f"{name}-{version}.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {req}" for req in requires]
    (dist / "METADATA").write_text("\n".join(lines) + "\n")


@dataclass
class Harness:
    root: Path
    bin: Path
    site: Path
    state: Path
    env: dict[str, str] = field(default_factory=dict)

    def add_nvidia_smi(self, output: str, rc: int = 0) -> None:
        _executable(self.bin / "nvidia-smi", HERE / "fake_nvidia_smi.py")
        self.env["FAKE_NVIDIA_SMI_OUTPUT"] = output
        self.env["FAKE_NVIDIA_SMI_RC"] = str(rc)

    def installed(
        self, vllm: str | None = "0.33.0", torch: str | None = "2.14.0", packaging: bool = True
    ) -> None:
        """Replace the fake site-packages: vllm pinning torch==2.14.0, this torch, packaging."""
        for dist in self.site.glob("*.dist-info"):
            for f in dist.iterdir():
                f.unlink()
            dist.rmdir()
        link = self.site / "packaging"
        link.unlink(missing_ok=True)
        if packaging:
            link.symlink_to(PACKAGING, target_is_directory=True)
        if vllm is not None:
            write_dist_info(
                self.site,
                "vllm",
                vllm,
                ["torch==2.14.0", "torchvision==0.29.0", 'zentorch==2.14.0.1; extra == "zen"'],
            )
        if torch is not None:
            write_dist_info(self.site, "torch", torch, [])

    def start(self, *argv: str, plan: str, **env: str) -> subprocess.Popen[str]:
        full_env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "PYTHONPATH": str(self.site),
            "FAKE_VLLM_STATE": str(self.state),
            "FAKE_VLLM_PLAN": plan,
            "VLLM_MODEL": MODEL,
            **self.env,
            **env,
        }
        return subprocess.Popen(
            [sys.executable, "-S", str(LAUNCH), *argv],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *argv: str, plan: str, **env: str) -> subprocess.CompletedProcess[str]:
        proc = self.start(*argv, plan=plan, **env)
        out, err = proc.communicate(timeout=30)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def calls(self) -> list[dict[str, Any]]:
        path = self.state / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def argvs(self) -> list[list[str]]:
        return [call["argv"] for call in self.calls()]

    def signals(self) -> list[str]:
        path = self.state / "signals.txt"
        return path.read_text().split() if path.exists() else []

    def nvidia_smi_calls(self) -> list[list[str]]:
        path = self.state / "nvidia-smi.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]


def make_harness(root: Path) -> Harness:
    h = Harness(root, root / "bin", root / "site", root / "state")
    for d in (h.bin, h.site, h.state):
        d.mkdir()
    _executable(h.bin / "vllm", HERE / "fake_vllm.py")
    h.installed()
    return h


def read_until(proc: subprocess.Popen[str], marker: str) -> list[str]:
    """Read the launcher's stdout until a line holds ``marker`` (the condition to wait on)."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"stdout ended before {marker!r}: {''.join(seen)}")


def stop(proc: subprocess.Popen[str], signum: int) -> tuple[str, str]:
    os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=15)
    return out, err
