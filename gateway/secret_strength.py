"""Refusing placeholder and too-short secrets at start.

``cp .env.example .env && docker compose up`` must not serve memories behind a
key that is printed in this repository, and a two-letter key is guessed in
seconds. So the gateway checks the secrets it is given before it starts and
exits with one line naming every weak one (never its value), unless the
operator sets ``GATEWAY_ALLOW_WEAK_SECRETS=true`` (throwaway keys in tests,
a demo on a laptop). ``tools/gen_env.py`` writes a ``.env`` with strong ones.

The gateway's own secrets (client keys, the admin key, Qdrant's key) must be
at least ``MIN_SECRET_LENGTH`` characters and not a placeholder; the keys it
sends to LLM providers are theirs to judge, so only placeholders are refused
there. Keys given as ``tenant:sha256:<digest>`` cannot be judged and pass, as
do keys in ``GATEWAY_API_KEYS_FILE``: writing that file is a deliberate act.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.settings import Settings

# tools/gen_env.py makes 43-character keys; 16 characters of a random token is
# still beyond guessing, while the usual hand-made "test", "admin", "secret123" are not.
MIN_SECRET_LENGTH = 16

# Values copied from examples and docs, lower-cased; a secret starting with one is refused.
PLACEHOLDER_PREFIXES = (
    "change-me",
    "change_me",
    "changeme",
    "replace-me",
    "replace_me",
    "replaceme",
    "your-",
    "your_",
    "<",
    "placeholder",
    "example",
    "sk-...",
)
_SHA256_ENTRY = "sha256:"


def sendable_key(value: str) -> str:
    """A key the gateway sends in a header, without the whitespace around it (a
    key read from a secret file or a YAML block often ends in a line break).
    ValueError when what is left is empty or holds a character a header cannot
    carry (a control character, non-ASCII): sent as it was, every request failed
    and the upstream stayed unhealthy for good. The message never holds the key."""
    key = value.strip()
    if not key:
        raise ValueError("the key is empty")
    if not key.isascii() or not key.isprintable():
        raise ValueError("the key has characters an HTTP header cannot carry: use printable ASCII")
    return key


def weakness(value: str, *, min_length: int = MIN_SECRET_LENGTH) -> str | None:
    """Why ``value`` is not a usable secret, or None when it is."""
    lowered = value.strip().lower()
    if lowered.startswith(PLACEHOLDER_PREFIXES):
        return "a placeholder"
    if len(value.strip()) < min_length:
        return f"shorter than {min_length} characters"
    return None


def _client_keys(spec: str) -> list[tuple[str, str]]:
    """``tenant:key`` entries of GATEWAY_API_KEYS as (tenant, key); digests left out."""
    keys = []
    for item in spec.split(","):
        tenant, _, key = item.strip().partition(":")
        if key and not key.strip().startswith(_SHA256_ENTRY):
            keys.append((tenant.strip(), key.strip()))
    return keys


def weak_secrets(settings: Settings) -> list[str]:
    """One ``WHERE (why)`` entry per weak secret in ``settings``, in a stable order."""
    found = []
    for tenant, key in _client_keys(settings.api_keys or ""):
        if why := weakness(key):
            found.append(f"GATEWAY_API_KEYS (tenant {tenant!r}: {why})")
    own = {
        "GATEWAY_ADMIN_KEY": settings.admin_key,
        "GATEWAY_QDRANT_API_KEY": settings.qdrant_api_key,
    }
    for name, value in own.items():
        if value and (why := weakness(value)):
            found.append(f"{name} ({why})")
    theirs = {
        "GATEWAY_LLM_API_KEY": settings.llm_api_key,
        "GATEWAY_FALLBACK_LLM_API_KEY": settings.fallback_llm_api_key,
        "GATEWAY_EMBEDDER_API_KEY": settings.embedder_api_key,
    }
    for name, value in theirs.items():
        if value and weakness(value, min_length=0):
            found.append(f"{name} (a placeholder)")
    return found


def check_secrets(settings: Settings) -> None:
    """Raise ``ValueError`` with one line for the operator when a secret is weak."""
    if settings.allow_weak_secrets:
        return
    found = weak_secrets(settings)
    if found:
        raise ValueError(
            "refusing to start with weak secrets: "
            + "; ".join(found)
            + ". Write fresh ones with `python3 tools/gen_env.py` (or any random string of "
            f"{MIN_SECRET_LENGTH}+ characters), or set GATEWAY_ALLOW_WEAK_SECRETS=true"
        )
