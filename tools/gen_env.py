#!/usr/bin/env python3
"""Write a ``.env`` for ``docker compose`` with fresh random secrets.

    python3 tools/gen_env.py                 # .env.example -> .env, secrets filled in
    python3 tools/gen_env.py --output prod.env --tenant acme

Every other line of ``.env.example`` is copied as it stands, so the result is
the documented file with its secrets set. An existing file is never
overwritten (``--force`` does). The file is created readable by its owner only
and the secrets are not printed. Standard library only: it runs before any
virtualenv exists.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# 32 random bytes: 43 URL-safe characters, far beyond the gateway's 16-character minimum.
TOKEN_BYTES = 32


def fresh_secrets(tenant: str) -> dict[str, str]:
    """The values compose requires (and the admin key), each one new."""

    def token() -> str:
        return secrets.token_urlsafe(TOKEN_BYTES)

    return {
        "GATEWAY_API_KEYS": f"{tenant}:{token()}",
        "GATEWAY_ADMIN_KEY": token(),
        "QDRANT_API_KEY": token(),
        "GRAFANA_ADMIN_PASSWORD": token(),
    }


def render(example: str, values: dict[str, str]) -> str:
    """``example`` with each ``NAME=`` line (commented out or not) of ``values`` set."""
    missing = set(values)
    lines = []
    for line in example.splitlines():
        m = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=.*", line.strip())
        if m and m[1] in values:
            line = f"{m[1]}={values[m[1]]}"
            missing.discard(m[1])
        lines.append(line)
    if missing:  # .env.example lost a secret's line: still write it, at the end
        lines += [f"{name}={values[name]}" for name in sorted(missing)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--example", type=Path, default=REPO / ".env.example")
    parser.add_argument("--output", type=Path, default=REPO / ".env")
    parser.add_argument("--tenant", default="default", help="tenant of the client key")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.tenant):
        parser.error("--tenant: letters, digits, '.', '_' and '-' only")
    if args.output.exists() and not args.force:
        print(f"{args.output} exists; not overwriting it (--force replaces it)", file=sys.stderr)
        return 1
    text = render(args.example.read_text(), fresh_secrets(args.tenant))
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    with os.fdopen(os.open(args.output, flags, 0o600), "w") as out:
        out.write(text)
    os.chmod(args.output, 0o600)  # O_CREAT's mode does not apply to an existing file
    print(
        f"wrote {args.output} with fresh GATEWAY_API_KEYS (tenant {args.tenant!r}), "
        "GATEWAY_ADMIN_KEY, QDRANT_API_KEY and GRAFANA_ADMIN_PASSWORD"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
