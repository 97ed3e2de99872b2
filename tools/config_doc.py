#!/usr/bin/env python3
"""Write the settings reference from the code: docs/configuration.md and .env.example.

    python tools/config_doc.py           # rewrite the generated parts of both files
    python tools/config_doc.py --check   # exit 1, naming the files, if either is stale

``gateway.settings.Settings`` and ``embedder.settings.EmbedderSettings`` are the one
source: each field's env name, type, constraints, default and ``description``. Only the
parts between the ``generated`` markers are rewritten; the prose around them is edited by
hand. In .env.example the generated part lists the settings compose passes from .env
(``${NAME...}`` in compose.yaml) that the file does not set elsewhere (the secrets at its
top), each with the default compose gives it. tests/deploy/test_settings.py runs the
check.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, NamedTuple

import annotated_types
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from embedder.settings import EmbedderSettings
from gateway.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOC = Path("docs/configuration.md")
ENV_EXAMPLE = Path(".env.example")
COMPOSE = Path("compose.yaml")


class Service(NamedTuple):
    name: str
    settings: type[BaseSettings]
    prefix: str
    source: str  # where the descriptions live, named in the markers


SERVICES = (
    Service("gateway", Settings, "GATEWAY_", "gateway/settings.py"),
    Service("embedder", EmbedderSettings, "EMBEDDER_", "embedder/settings.py"),
)


class Setting(NamedTuple):
    env: str
    type: str
    default: str  # as an environment variable would spell it; "" when unset
    description: str


def as_env(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path) and not value.is_absolute() and value.parts[0] not in ("~", ".."):
        return f"./{value}"  # Path("./data") prints as "data": say it is relative
    return str(value)


def type_of(field: FieldInfo) -> str:
    """``int, ≥ 0, ≤ 65535``: the type as a user sets it, with its bounds."""
    kind = field.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: unset is X's
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is typing.Literal:
        return "one of " + ", ".join(f"`{v}`" for v in typing.get_args(kind))
    name = {str: "string", int: "integer", float: "number", bool: "true/false", Path: "path"}
    parts = [name.get(kind, str(kind)) if isinstance(kind, type) else str(kind)]
    for bound in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if isinstance(bound, getattr(annotated_types, attr.capitalize())):
                parts.append(f"{sign} {getattr(bound, attr)}")
    return ", ".join(parts)


def settings_of(service: Service) -> list[Setting]:
    found = []
    for name, field in service.settings.model_fields.items():
        env = service.prefix + name.upper()
        if not field.description:
            raise ValueError(f"{service.source}: {name} has no description (Field(description=))")
        found.append(Setting(env, type_of(field), as_env(field.default), field.description))
    return found


def markdown_table(settings: list[Setting]) -> str:
    lines = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for s in settings:
        default = f"`{s.default}`" if s.default else "unset"
        meaning = s.description.replace("|", "\\|")
        lines.append(f"| `{s.env}` | {s.type} | {default} | {meaning} |")
    return "\n".join(lines)


def compose_defaults(compose: str) -> dict[str, str]:
    """Each variable compose reads from .env, with its ``${NAME:-default}`` default."""
    found: dict[str, str] = {}
    for m in re.finditer(r"\$\{([A-Z][A-Z0-9_]*)(?::?[-?]([^}]*))?\}", compose):
        if found.get(m[1]) in (None, ""):
            found[m[1]] = m[2] or ""
    return found


def env_block(settings: list[Setting], passed: dict[str, str], set_elsewhere: set[str]) -> str:
    lines = []
    for s in settings:
        if s.env not in passed or s.env in set_elsewhere:
            continue
        lines.append(
            textwrap.fill(
                s.description,
                88,
                initial_indent="# ",
                subsequent_indent="# ",
                break_on_hyphens=False,
            )
        )
        lines.append(f"# {s.env}={passed[s.env] or s.default}")
    return "\n".join(lines)


def markers(service: Service, comment: str) -> tuple[str, str]:
    begin = f"generated from {service.source} by tools/config_doc.py: edit the descriptions there"
    end = f"end of what {service.source} generates"
    if comment == "#":
        return f"# >>> {begin}", f"# <<< {end}"
    return f"<!-- >>> {begin} -->", f"<!-- <<< {end} -->"


def replace_between(text: str, begin: str, end: str, body: str, path: Path) -> str:
    try:
        start = text.index(begin + "\n") + len(begin) + 1
        stop = text.index(end, start)
    except ValueError:
        raise ValueError(f"{path}: the lines {begin!r} and {end!r} are missing") from None
    return text[:start] + body + "\n" + text[stop:]


def names_outside(text: str, begin: str, end: str) -> set[str]:
    """Variables the file sets (``NAME=`` or ``# NAME=``) outside one generated part."""
    start, stop = text.find(begin), text.find(end)
    outside = text[:start] + text[stop:] if 0 <= start < stop else text
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", outside, re.MULTILINE))


def render(repo: Path) -> dict[Path, str]:
    """What docs/configuration.md and .env.example should hold, by path under ``repo``."""
    doc = (repo / DOC).read_text()
    example = (repo / ENV_EXAMPLE).read_text()
    passed = compose_defaults((repo / COMPOSE).read_text())
    for service in SERVICES:
        settings = settings_of(service)
        begin, end = markers(service, "<!--")
        doc = replace_between(doc, begin, end, markdown_table(settings), DOC)
        begin, end = markers(service, "#")
        body = env_block(settings, passed, names_outside(example, begin, end))
        example = replace_between(example, begin, end, body, ENV_EXAMPLE)
    return {DOC: doc, ENV_EXAMPLE: example}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    parser.add_argument("--repo", type=Path, default=REPO)
    args = parser.parse_args(argv)
    stale = []
    for path, text in render(args.repo).items():
        if (args.repo / path).read_text() != text:
            stale.append(path)
            if not args.check:
                (args.repo / path).write_text(text)
    if args.check and stale:
        names = ", ".join(map(str, stale))
        print(f"stale: {names}; run python tools/config_doc.py", file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
