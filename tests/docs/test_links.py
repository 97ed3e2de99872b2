"""Every local link in the repository's Markdown resolves, anchors included, and every
results file named in the docs or the code exists: moving a section or pruning
bench/results cannot leave a reader at a dead end.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
RESULTS = re.compile(r"bench/results/[A-Za-z0-9_.-]+\.(?:md|json|png)\b")
# A file of the repository named in prose or code spans, e.g. `gateway/upstream/http.py`.
REPO_PATH = re.compile(
    r"(?<![\w/.-])(?:gateway|embedder|tools|tests|bench|docs|vllm-server|monitoring|llm-cpu)"
    r"/[A-Za-z0-9_./-]+\.(?:py|sh|md|yaml|yml|json|toml|txt)\b"
)


def tracked(*patterns: str) -> list[Path]:
    """Files git tracks (or would: untracked but not ignored), so a local scratch file
    never fails the suite."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *patterns],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return sorted({REPO / line for line in out.stdout.splitlines() if (REPO / line).is_file()})


def prose(text: str) -> str:
    """The Markdown without fenced code blocks and inline code, where brackets are code."""
    text = re.sub(r"(?ms)^(```|~~~).*?^\1", "", text)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"(?ms)^(```|~~~).*?^\1", "", path.read_text())
    return {slug(m[1]) for m in re.finditer(r"(?m)^#{1,6}\s+(.+?)\s*#*$", text)}


def broken_links(path: Path) -> list[str]:
    found = []
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            found.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            found.append(f"{target} (no heading #{anchor})")
    return found


MARKDOWN = tracked("*.md")


def test_the_markdown_is_found() -> None:
    names = {p.relative_to(REPO).as_posix() for p in MARKDOWN}
    assert {"README.md", "docs/configuration.md", "bench/README.md"} <= names


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_local_link_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_every_results_file_named_in_docs_or_code_exists() -> None:
    # bench's own scripts are left out: they name the files they will write.
    missing = {}
    for path in tracked("*.md", "*.py", "*.sh", "Makefile", "*.toml", "*.yaml", "*.yml"):
        if path.suffix != ".md" and path.relative_to(REPO).parts[0] == "bench":
            continue
        for name in RESULTS.findall(path.read_text(errors="replace")):
            if not (REPO / name).exists():
                missing.setdefault(name, []).append(path.relative_to(REPO).as_posix())
    assert missing == {}


def test_every_repository_file_the_user_docs_name_exists() -> None:
    # A moved module or doc must take its mentions along, not only its links.
    missing = {}
    for path in [REPO / "README.md", *tracked("docs/*.md")]:
        for name in REPO_PATH.findall(path.read_text()):
            if not (REPO / name).exists():
                missing.setdefault(name, []).append(path.relative_to(REPO).as_posix())
    assert missing == {}


def test_a_dead_link_and_a_missing_heading_are_found(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(
        "# Title\n\n## The LLM's states: the 503 codes\n\n"
        "[ok](a.md#the-llms-states-the-503-codes) [self](#title) [web](https://x.y/z)\n"
        "[gone](b.md) [nohead](a.md#nowhere) `[code](c.md)`\n\n```\n[fenced](d.md)\n```\n"
    )
    assert broken_links(tmp_path / "a.md") == [
        "b.md (no such file)",
        "a.md#nowhere (no heading #nowhere)",
    ]
