"""tools/pin_images.py: default images pinned by digest, with the tag beside it.

No registry is reachable from the machines these tests run on, so the resolving is
tested against a stand-in registry and the rewriting against the real files.
"""

from __future__ import annotations

import io
import json
import re
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from deploy_files import (
    COMPOSE,
    EMBEDDER_DOCKERFILE,
    REPO,
    load_compose,
    load_tool,
    read_dockerfile,
    read_env_example,
    stack_env,
)

pin = load_tool("pin_images")
IMAGES = {
    "python:3.11-slim",
    "qdrant/qdrant:v1.20.0",
    "prom/prometheus:v3.14.0",
    "grafana/grafana:12.4.1",
    "vllm/vllm-openai:v0.33.0",
}


def fake_digests() -> dict[str, str]:
    return {image: "sha256:" + f"{i:x}" * 64 for i, image in enumerate(sorted(IMAGES), 1)}


def pinned_copy(tmp_path: Path, digests: dict[str, str]) -> Path:
    for file, text in pin.read(REPO).items():
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_text(pin.rewrite(text, file, digests))
    return tmp_path


def test_every_default_image_is_found() -> None:
    found = pin.sites(pin.read(REPO))
    assert {site.image for site in found} == IMAGES
    # Each file that names an image default is covered, vLLM's split digest included.
    assert {site.file for site in found} == set(pin.FILES) - {"compose.cloud.yaml"}
    assert {s.file for s in found if s.split} == {
        "compose.yaml", ".env.example", "vllm-server/Dockerfile"
    }  # fmt: skip


def test_the_repository_is_pinned_all_or_nothing() -> None:
    # The repository's machines reach no registry, so it ships tags; once someone pins
    # (tools/pin_images.py), every default must be pinned, consistently.
    found = pin.sites(pin.read(REPO))
    digests = {site.image: site.digest for site in found}
    if any(digests.values()):
        assert not pin.unpinned(found), [(s.file, s.image) for s in pin.unpinned(found)]
        for site in found:
            assert site.digest == digests[site.image], (site.file, site.image)
    assert pin.main(["--check"]) == (0 if any(digests.values()) else 1)


def test_rewriting_pins_each_reference_beside_its_tag(tmp_path: Path) -> None:
    digests = fake_digests()
    root = pinned_copy(tmp_path, digests)
    assert pin.main(["--check", "--root", str(root)]) == 0
    assert not pin.unpinned(pin.sites(pin.read(root)))

    # What compose and Docker then see.
    env = {**stack_env()}
    model = load_compose(root / COMPOSE.name, env=env)["services"]
    qdrant = "qdrant/qdrant:v1.20.0@" + digests["qdrant/qdrant:v1.20.0"]
    assert model["qdrant"]["image"] == qdrant
    vllm = "@" + digests["vllm/vllm-openai:v0.33.0"]
    assert model["vllm"]["build"]["args"]["VLLM_DIGEST"] == vllm
    python = "python:3.11-slim@" + digests["python:3.11-slim"]
    assert model["embedder"]["build"]["args"]["PYTHON_IMAGE"] == python
    dockerfile = read_dockerfile(root / EMBEDDER_DOCKERFILE.name)
    assert dockerfile.global_args["PYTHON_IMAGE"] == python
    documented = read_env_example(root / ".env.example").documented_defaults
    assert documented["QDRANT_IMAGE"] == qdrant
    # Nothing else changed: removing the digests gives the files back.
    for file, text in pin.read(root).items():
        assert re.sub(r"@sha256:[0-9a-f]{64}", "", text) == ((REPO / file).read_text()), file


def test_rewriting_again_replaces_a_digest_and_is_idempotent(tmp_path: Path) -> None:
    root = pinned_copy(tmp_path, fake_digests())
    newer = {image: "sha256:" + "f" * 64 for image in IMAGES}
    for file, text in pin.read(root).items():
        once = pin.rewrite(text, file, newer)
        assert pin.rewrite(once, file, newer) == once
        assert once == pin.rewrite((REPO / file).read_text(), file, newer)
        assert "@@" not in once
    with pytest.raises(ValueError, match="not a sha256 digest"):
        pin.rewrite("ARG PYTHON_IMAGE=python:3.11-slim\n", "Dockerfile", {"python:3.11-slim": "v"})


def test_unpinned_lists_each_place() -> None:
    text = "ARG PYTHON_IMAGE=python:3.11-slim\n"
    (site,) = pin.unpinned(pin.sites({"Dockerfile": text}))
    assert (site.file, site.image, text[site.start : site.end]) == (
        "Dockerfile", "python:3.11-slim", "python:3.11-slim"
    )  # fmt: skip
    pinned = "ARG PYTHON_IMAGE=python:3.11-slim@sha256:" + "a" * 64
    assert not pin.unpinned(pin.sites({"Dockerfile": pinned}))


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("python:3.11-slim", ("https://registry-1.docker.io/v2", "library/python", "3.11-slim")),
        ("qdrant/qdrant:v1.20.0", ("https://registry-1.docker.io/v2", "qdrant/qdrant", "v1.20.0")),
        ("ghcr.io/org/img:1.2", ("https://ghcr.io/v2", "org/img", "1.2")),
        ("localhost:5000/x/y:t", ("https://localhost:5000/v2", "x/y", "t")),
    ],
)
def test_registry_urls_follow_docker_hub_rules(image: str, expected: tuple[str, str, str]) -> None:
    assert pin.registry_url(image) == expected


class StandInRegistry:
    """Docker Hub's flow: 401 with a Bearer challenge, a token, then the digest header."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.requests: list[urllib.request.Request] = []

    def __call__(self, request: urllib.request.Request) -> Any:
        self.requests.append(request)
        url = request.full_url
        if url.startswith("https://auth.example/token"):
            assert "scope=repository:library/python:pull" in url, url
            return io.BytesIO(json.dumps({"token": "t0k"}).encode())
        headers = Message()
        if request.get_header("Authorization") != "Bearer t0k":
            headers["WWW-Authenticate"] = (
                'Bearer realm="https://auth.example/token",service="registry.docker.io",'
                'scope="repository:library/python:pull"'
            )
            raise urllib.error.HTTPError(url, 401, "Unauthorized", headers, None)
        assert request.get_method() == "HEAD"
        assert "manifest.list.v2+json" in str(request.get_header("Accept"))
        headers["Docker-Content-Digest"] = self.digest
        response = io.BytesIO(b"")
        response.headers = headers  # type: ignore[attr-defined]
        return response


def test_resolve_asks_the_registry_for_the_tags_manifest_list_digest() -> None:
    digest = "sha256:" + "c" * 64
    registry = StandInRegistry(digest)
    assert pin.resolve("python:3.11-slim", opener=registry) == digest
    assert registry.requests[-1].full_url == (
        "https://registry-1.docker.io/v2/library/python/manifests/3.11-slim"
    )
    with pytest.raises(SystemExit, match="no digest"):
        pin.resolve("python:3.11-slim", opener=StandInRegistry("latest"))


def test_an_unreachable_registry_is_one_clear_line() -> None:
    def offline(request: urllib.request.Request) -> Any:
        raise urllib.error.URLError("no such host")

    with pytest.raises(
        SystemExit, match=re.escape("python:3.11-slim: cannot reach https://registry-1")
    ):
        pin.resolve("python:3.11-slim", opener=offline)
