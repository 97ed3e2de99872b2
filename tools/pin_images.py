#!/usr/bin/env python3
"""Pin the base and third-party images by digest, with the tag beside it.

    python tools/pin_images.py            # resolve every tag, rewrite the files in place
    python tools/pin_images.py --dry-run  # show what would change
    python tools/pin_images.py --check    # exit 1 if a default image is not pinned

A tag can be moved by its publisher; a digest cannot. Each default image reference
(``${QDRANT_IMAGE:-qdrant/qdrant:v1.20.0}`` in compose files, ``ARG PYTHON_IMAGE=...`` in
Dockerfiles, ``# QDRANT_IMAGE=...`` in .env.example) becomes ``name:tag@sha256:...``:
Docker pulls by the digest and a reader still sees the version. vLLM's image is written
as ``${VLLM_IMAGE}:${VLLM_VERSION}${VLLM_DIGEST}`` (its tag is also the server image's
tag), so its digest goes into the ``VLLM_DIGEST`` defaults as ``@sha256:...``.

The digest is that of the tag's manifest list (all platforms), read from the registry's
HTTP API (``Docker-Content-Digest`` of a HEAD on the manifest, with an anonymous token
where the registry asks for one), or, with ``--docker``, from
``docker buildx imagetools inspect``. Run it where the registries are reachable, review
the diff, build and test, commit. Changing a tag: edit it (everywhere ``--check`` lists
it), then run this again; an existing digest is replaced.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FILES = (
    "compose.yaml",
    "compose.cloud.yaml",
    "compose.cpu.yaml",
    ".env.example",
    "Dockerfile",
    "embedder.Dockerfile",
    "llm-cpu/Dockerfile",
    "vllm-server/Dockerfile",
)
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# A default value of VAR in the three syntaxes: ${VAR:-value}, ARG VAR=value, # VAR=value.
_DEFAULT = r"(?:\$\{{(?P<v1>{var}):-|^ARG (?P<v2>{var})=|^# (?P<v3>{var})=)(?P<value>[^\s}}]*)"
IMAGE_DEFAULT = re.compile(_DEFAULT.format(var=r"\w+_IMAGE"), re.MULTILINE)
VERSION_DEFAULT = re.compile(_DEFAULT.format(var=r"\w+_VERSION"), re.MULTILINE)
DIGEST_DEFAULT = re.compile(_DEFAULT.format(var=r"\w+_DIGEST"), re.MULTILINE)
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


@dataclass(frozen=True)
class Site:
    """One place a default image is written: ``text[start:end]`` is its value there."""

    file: str
    start: int
    end: int
    image: str  # name:tag, without a digest
    digest: str | None  # sha256:..., when pinned
    split: bool  # the value is only the digest (@sha256:... or empty), as for VLLM_DIGEST


def _variable(m: re.Match[str]) -> str:
    return m["v1"] or m["v2"] or m["v3"]


def split_digest(value: str) -> tuple[str, str | None]:
    ref, _, digest = value.partition("@")
    return ref, digest or None


def has_tag(ref: str) -> bool:
    return ":" in ref.rsplit("/", 1)[-1]


def sites(texts: dict[str, str]) -> list[Site]:
    """Every default image reference in ``texts`` ({file: text})."""
    found: list[Site] = []
    defaults: dict[str, str] = {}
    for text in texts.values():
        for m in [*IMAGE_DEFAULT.finditer(text), *VERSION_DEFAULT.finditer(text)]:
            defaults.setdefault(_variable(m), m["value"])
    for file, text in texts.items():
        for m in IMAGE_DEFAULT.finditer(text):
            ref, digest = split_digest(m["value"])
            if has_tag(ref):
                found.append(Site(file, m.start("value"), m.end("value"), ref, digest, False))
        for m in DIGEST_DEFAULT.finditer(text):
            prefix = _variable(m).removesuffix("_DIGEST")
            name, tag = defaults.get(f"{prefix}_IMAGE"), defaults.get(f"{prefix}_VERSION")
            if not (name and tag):
                raise SystemExit(f"{file}: {prefix}_DIGEST without defaults of _IMAGE, _VERSION")
            digest = m["value"].removeprefix("@") or None
            image = f"{name}:{tag}"
            found.append(Site(file, m.start("value"), m.end("value"), image, digest, True))
    return found


def rewrite(text: str, file: str, digests: dict[str, str]) -> str:
    """``text`` with each default image of ``file`` pinned to ``digests[name:tag]``."""
    out, last = [], 0
    for site in sorted(sites({file: text}), key=lambda site: site.start):
        if site.image not in digests:
            continue
        digest = digests[site.image]
        if not DIGEST.fullmatch(digest):
            raise ValueError(f"not a sha256 digest for {site.image}: {digest!r}")
        out += [text[last : site.start], f"@{digest}" if site.split else f"{site.image}@{digest}"]
        last = site.end
    return "".join([*out, text[last:]])


def unpinned(all_sites: Iterable[Site]) -> list[Site]:
    return [site for site in all_sites if site.digest is None]


# --------------------------------------------------------------------------- resolving

Opener = Callable[[urllib.request.Request], Any]


def registry_url(image: str) -> tuple[str, str, str]:
    """(registry API base, repository, tag) of ``name:tag``, Docker Hub's rules included."""
    name, _, tag = image.rpartition(":")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = "registry-1.docker.io", name if rest else f"library/{name}"
    return f"https://{registry}/v2", repository, tag


def _bearer_token(challenge: str, opener: Opener) -> str:
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = params.pop("realm")
    query = "&".join(f"{k}={v}" for k, v in params.items())
    with opener(urllib.request.Request(f"{realm}?{query}")) as response:
        body = json.loads(response.read())
    return str(body.get("token") or body["access_token"])


def resolve(image: str, opener: Opener = urllib.request.urlopen) -> str:
    """The digest the registry gives ``name:tag`` now (its manifest list, if it has one)."""
    base, repository, tag = registry_url(image)
    url = f"{base}/{repository}/manifests/{tag}"
    headers = {"Accept": MANIFEST_TYPES}
    for _ in range(2):
        request = urllib.request.Request(url, headers=headers, method="HEAD")
        try:
            with opener(request) as response:
                digest = str(response.headers.get("Docker-Content-Digest", ""))
                if not DIGEST.fullmatch(digest):
                    raise SystemExit(f"{image}: the registry sent no digest ({digest!r})")
                return digest
        except urllib.error.HTTPError as exc:
            challenge = exc.headers.get("WWW-Authenticate", "")
            if exc.code != 401 or not challenge.startswith("Bearer ") or "Authorization" in headers:
                raise SystemExit(f"{image}: {url} answered {exc.code}") from exc
            headers["Authorization"] = f"Bearer {_bearer_token(challenge[7:], opener)}"
        except urllib.error.URLError as exc:
            raise SystemExit(f"{image}: cannot reach {url}: {exc.reason}") from exc
    raise AssertionError("unreachable")


def resolve_with_docker(image: str) -> str:
    out = subprocess.run(
        ["docker", "buildx", "imagetools", "inspect", image],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    m = re.search(r"^Digest:\s+(sha256:[0-9a-f]{64})", out, re.MULTILINE)
    if not m:
        raise SystemExit(f"{image}: no digest in `docker buildx imagetools inspect`:\n{out}")
    return m[1]


# --------------------------------------------------------------------------- command line


def read(root: Path) -> dict[str, str]:
    return {f: (root / f).read_text() for f in FILES if (root / f).exists()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if an image is unpinned")
    parser.add_argument("--dry-run", action="store_true", help="print the changes only")
    parser.add_argument("--docker", action="store_true", help="ask `docker buildx imagetools`")
    parser.add_argument("--root", type=Path, default=REPO)
    args = parser.parse_args(argv)
    texts = read(args.root)
    found = sites(texts)
    if args.check:
        missing = unpinned(found)
        for site in missing:
            print(f"{site.file}: {site.image} is not pinned by digest", file=sys.stderr)
        return 1 if missing else 0
    lookup = resolve_with_docker if args.docker else resolve
    digests = {image: lookup(image) for image in sorted({s.image for s in found})}
    for image, digest in digests.items():
        print(f"{image}@{digest}")
    for file, text in texts.items():
        new = rewrite(text, file, digests)
        if new != text:
            print(f"{'would rewrite' if args.dry_run else 'rewrote'} {file}")
            if not args.dry_run:
                (args.root / file).write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
