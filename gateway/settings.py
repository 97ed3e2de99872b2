"""Gateway configuration, read from ``GATEWAY_*`` environment variables.

Each field's ``description`` is the user documentation: tools/config_doc.py writes
docs/configuration.md and the gateway part of .env.example from it, and
tests/deploy/test_settings.py fails when either is stale.
"""

from __future__ import annotations

import difflib
import ipaddress
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.secret_strength import sendable_key
from gateway.urls import check_http_url, check_origin

ENV_PREFIX = "GATEWAY_"
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Settings(BaseSettings):
    """Every knob of the gateway. The env name is ``GATEWAY_`` + the field name."""

    # Empty values count as unset: compose passes optional variables as "".
    # allow_inf_nan=False: "inf" is a number to pydantic, and no timeout or size here
    # can be infinite (aiohttp raised OverflowError on every new connection).
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True, allow_inf_nan=False
    )

    host: str = Field(
        default="127.0.0.1",
        description="Address the gateway listens on. Without API keys only a loopback "
        "address is allowed (see GATEWAY_ALLOW_UNAUTHENTICATED).",
    )
    port: int = Field(default=8080, ge=0, le=65535, description="Port the gateway listens on.")
    log_level: LogLevel = Field(
        default="info",
        description="Level of the JSON logs; message content and keys are never logged.",
    )

    # The LLM upstream (vLLM or any OpenAI-compatible server) and an optional fallback.
    llm_url: str = Field(
        default="http://localhost:8000/v1",
        description="The LLM: vLLM or any OpenAI-compatible /v1 URL (the upstream named "
        "`primary`). Unset under `make run`: it starts a small local CPU LLM and points this "
        "at it (docs/local-llm.md).",
    )
    llm_api_key: str | None = Field(
        default=None, description="Key sent to the LLM (never the client's key)."
    )
    fallback_llm_url: str | None = Field(
        default=None,
        description="A second upstream used when the first one is down (an OpenAI-compatible "
        "/v1 URL such as https://api.openai.com/v1).",
    )
    fallback_llm_api_key: str | None = Field(default=None, description="The fallback's key.")
    fallback_llm_model: str | None = Field(
        default=None, description="The model to ask the fallback for."
    )
    connect_timeout_s: float = Field(
        default=2.0, gt=0, description="Upstream connect timeout, in seconds."
    )
    read_timeout_s: float = Field(
        default=120.0, gt=0, description="Upstream timeout between two reads, in seconds."
    )
    total_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Upper bound on one whole non-streamed upstream call, in seconds.",
    )
    stream_idle_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A stream silent this long, in seconds, is ended with an error event.",
    )
    max_upstream_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest non-streamed answer, in bytes (decoded), the gateway takes from "
        "an LLM upstream, pass-through endpoints included; a larger one is answered 502 "
        "`upstream_response_too_large`. Raise it for very large embedding batches or "
        "`logprobs` answers. Streams are relayed as they arrive, whatever their length.",
    )
    retry_attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Attempts per request, only where no generation can still be running "
        "upstream (connect errors, 429/502/503, a connection closed unanswered).",
    )
    llm_start_grace_s: float = Field(
        default=300.0,
        ge=0,
        description="How long, in seconds, an LLM never seen up may refuse connections and "
        "still count as starting (503 `llm_starting`) before it is unreachable (503 "
        "`llm_unreachable`).",
    )
    health_interval_s: float = Field(
        default=5.0, gt=0, description="Probe interval of a healthy dependency, in seconds."
    )

    # Embedding service and vector store.
    embedder_url: str = Field(
        default="http://localhost:8081/v1", description="The embedding service's /v1 URL."
    )
    embedder_api_key: str | None = Field(
        default=None,
        description="Bearer key sent to the embedder (e.g. behind an authenticating proxy).",
    )
    embedder_timeout_s: float = Field(
        default=10.0, gt=0, description="How long one embedding call may take, in seconds."
    )
    embedding_dim: int = Field(
        default=384,
        gt=0,
        description="The embedder model's vector size (384 for all-MiniLM-L6-v2); the "
        "collection is created with it.",
    )
    qdrant_url: str | None = Field(
        default=None,
        description="A Qdrant server; unset: Qdrant Edge in-process under the data dir.",
    )
    qdrant_api_key: str | None = Field(default=None, description="Qdrant's API key.")
    qdrant_collection: str = Field(
        default="memgate_memories", description="Collection name on a Qdrant server."
    )
    data_dir: Path = Field(
        default=Path("./data"), description="Where the Qdrant Edge shard and the outbox live."
    )
    # Qdrant Edge preallocates 32 MiB WAL segments; a full disk under them is a SIGBUS,
    # hence a reserve rather than waiting for ENOSPC.
    disk_reserve_mb: int = Field(
        default=64,
        ge=0,
        description="Free space (MiB) the data dir must keep: start-up fails below it, and "
        "memory writes wait in the outbox below it (docs/durability.md).",
    )
    registry_path: Path | None = Field(
        default=None,
        description="SQLite file of models registered at run time, shareable by gateways on "
        "one host; unset: models.sqlite3 in the data dir. Unused with GATEWAY_QDRANT_URL: "
        "the collection `<GATEWAY_QDRANT_COLLECTION>_models` holds them then "
        "(docs/models.md).",
    )
    registry_sync_s: float = Field(
        default=5.0,
        ge=0,
        description="How often, in seconds, each gateway re-reads registered models from "
        "the shared store; 0: only at start and after its own changes.",
    )

    # Memory behaviour.
    memory_top_k: int = Field(
        default=5, ge=0, le=100, description="Memories recalled into each chat request."
    )
    memory_min_score: float = Field(
        default=0.1,
        ge=-1.0,
        le=1.0,
        description="Cosine similarity to the query below which a memory is not found by "
        "meaning (the two dense lists); the keyword (BM25) lists have no threshold, so a "
        "memory sharing a rare word with the query is still recalled.",
    )
    memory_required: bool = Field(
        default=False,
        description="true: answer 503 when memory is unavailable; false: answer without it.",
    )

    # Auth.
    api_keys: str | None = Field(
        default=None,
        description="Comma-separated `tenant:key` pairs (keys of 16+ characters); each "
        "tenant's memories are kept apart. Unset (and no keys file): no auth, and only a "
        "loopback bind is allowed.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="A file of `tenant:key` or `tenant:sha256:<hex digest>` lines, in "
        "addition to or instead of GATEWAY_API_KEYS. Key settings that name no key at all "
        "(an empty file) stop the start.",
    )
    admin_key: str | None = Field(
        default=None,
        description="The key for /admin/* (registering models, forgetting any tenant's "
        "users, the outbox); refused on /v1/*. Unset: /admin is open only when no client "
        "keys are set either.",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="Allow a non-loopback bind without keys (you take responsibility).",
    )
    # gateway/secret_strength.py decides what is weak; this exists for tests and demos.
    allow_weak_secrets: bool = Field(
        default=False,
        description="Start even with placeholder (`change-me...`) or short (< 16 characters) "
        "keys; without it the gateway exits with one line naming them.",
    )
    config: Path | None = Field(
        default=None,
        description="YAML file of more upstreams, replicas and model aliases (docs/models.md).",
    )

    # Limits: what a single request may cost.
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, description="Larger request bodies get 413."
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A request body not fully arrived this long after the request began, "
        "in seconds, gets 408.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A request line and headers not fully arrived this long, in seconds, "
        "after the connection opened (or after a keep-alive request's first byte) get 408 "
        "and the connection is closed (a connection that sent nothing is just closed).",
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Larger request lines plus headers get 431 and the connection is closed.",
    )
    max_connections: int = Field(
        default=2048,
        ge=1,
        description="Open client connections; one more closes the one that has waited "
        "longest without a request in flight (docs/hardening.md). Keep it below the "
        "process's open-file limit.",
    )
    send_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A client that leaves its answer unread this long, in seconds, once the "
        "connection's buffers are full, has its connection dropped and its request's slot "
        "freed (a stream it asked for and does not read).",
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, how long, in seconds, the answers in flight may take to "
        "finish; then a stream still running ends with an error event and a request still "
        "waiting gets 503 gateway_shutting_down (docs/deployment.md). Give the "
        "orchestrator's stop timeout at least 10 s more.",
    )
    max_concurrency: int = Field(
        default=512,
        ge=1,
        description="Requests served at once; more get 429 with Retry-After.",
    )
    max_concurrency_per_tenant: int | None = Field(
        default=None,
        ge=1,
        description="Requests one tenant may have served at once, its share of "
        "GATEWAY_MAX_CONCURRENCY, so that one tenant's long streams (or a leaked key) "
        "cannot give every other tenant 429; more get 429 with Retry-After. Unset: half "
        "of GATEWAY_MAX_CONCURRENCY when the keys name two or more tenants, else all of it.",
    )
    max_metadata_bytes: int = Field(
        default=8192,
        ge=64,
        description="A memory's metadata as JSON, in bytes (and at most 5 levels deep).",
    )
    cors_origins: str | None = Field(
        default=None,
        description="Comma-separated browser origins (scheme://host[:port], or *) allowed "
        "to call the API (any request header, no cookies: the key is a header); unset: no "
        "CORS headers at all.",
    )
    access_log: bool = Field(
        default=True,
        description="One JSON line per request (method, route, status, ms, request id).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value  # INFO, as logging takes it

    @field_validator("llm_url", "fallback_llm_url", "embedder_url", "qdrant_url")
    @classmethod
    def _http_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value or (info.field_name == "qdrant_url" and value == ":memory:"):
            return value  # unset, or qdrant-client's in-process mode
        return check_http_url(value.rstrip("/"))

    @field_validator("llm_api_key", "fallback_llm_api_key", "embedder_api_key", "qdrant_api_key")
    @classmethod
    def _sendable(cls, value: str | None) -> str | None:
        return sendable_key(value) if value is not None else None

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str | None) -> str | None:
        if value is not None:
            for origin in value.split(","):
                if origin.strip():
                    check_origin(origin.strip())
        return value

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in (self.cors_origins or "").split(",") if o.strip()]

    @property
    def model_registry_path(self) -> Path:
        return self.registry_path or self.data_dir / "models.sqlite3"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys or self.api_keys_file)

    def check_bind_address(self) -> None:
        """Refuse to serve memories unauthenticated beyond this machine.

        Raises ``ValueError`` with a message meant for the operator, also for a
        host that is no address at all: uvicorn found that out only after the
        whole start-up, in a line that named no setting.
        """
        try:
            socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            problem = f"GATEWAY_HOST {self.host!r} is no address to listen on: {exc}"
            raise ValueError(problem) from None
        if self.auth_enabled or self.allow_unauthenticated or is_loopback(self.host):
            return
        raise ValueError(
            f"refusing to listen on {self.host} without API keys: set GATEWAY_API_KEYS "
            "(tenant:key,...) or GATEWAY_API_KEYS_FILE, bind 127.0.0.1, or set "
            "GATEWAY_ALLOW_UNAUTHENTICATED=true"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validation_problems(exc: ValidationError, env_prefix: str | None = None) -> str:
    """Each problem as ``where: what``, on one line, for the operator.

    Not pydantic's own text: it quotes the input beside each problem, and with
    it a secret (a key in GATEWAY_CONFIG, a password in a URL). With
    ``env_prefix`` the place is the environment variable (``GATEWAY_PORT``).
    """
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"]]
        if env_prefix and loc:
            loc = [env_prefix + loc[0].upper(), *loc[1:]]
        what = error["msg"].removeprefix("Value error, ")
        lines.append(f"{'.'.join(loc)}: {what}" if loc else what)
    return "; ".join(lines)


def unknown_variables(environ: Mapping[str, str], env_prefix: str = ENV_PREFIX) -> list[str]:
    """A warning for each variable named like a setting that no setting reads
    (``GATEWAY_API_KEY`` for ``GATEWAY_API_KEYS``): ignored, it would leave the
    operator believing a setting is on. The closest setting's name is offered."""
    known = {env_prefix + name.upper() for name in Settings.model_fields}
    warnings = []
    for name in sorted(environ):
        if not name.startswith(env_prefix) or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        warnings.append(f"{name} is not a setting{hint}; it is ignored")
    return warnings
