#!/usr/bin/env python3
"""``.env`` for ``make run``: the GATEWAY_* and EMBEDDER_* settings, as shell exports.

    eval "$(python3 tools/env_file.py .env)"

compose reads ``.env`` by itself; ``make run`` (tools/run_stack.sh) reads the same file
through this, so a setting written there means the same in both. As with compose, a
variable already set in the environment wins over the file. Reads compose's ``.env``
syntax: ``NAME=value``, optional single or double quotes around the value, ``#``
comments on their own lines and after an unquoted value, an optional ``export``. A
missing file prints nothing. Standard library only.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

PREFIXES = ("GATEWAY_", "EMBEDDER_")
_LINE = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")


def parse(text: str) -> dict[str, str]:
    """The ``NAME=value`` pairs of an env file, in order; later lines win."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.fullmatch(line)
        if not m:
            continue
        name, value = m[1], m[2]
        if value[:1] in ("'", '"') and value.count(value[0]) >= 2:
            value = value[1 : value.index(value[0], 1)]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        values[name] = value
    return values


def exports(text: str, environ: Mapping[str, str]) -> str:
    """Shell ``export`` lines for the file's settings the environment does not set."""
    lines = [
        f"export {name}={shlex.quote(value)}"
        for name, value in parse(text).items()
        if name.startswith(PREFIXES) and name not in environ
    ]
    return "".join(line + "\n" for line in lines)


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else ".env")
    if path.is_file():
        sys.stdout.write(exports(path.read_text(), os.environ))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
