"""Gateway configuration, read from ``GATEWAY_*`` environment variables."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the gateway. The env name is ``GATEWAY_`` + the field name."""

    # Empty values count as unset: compose passes optional variables as "".
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", env_ignore_empty=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    log_level: str = "info"

    # The LLM upstream (vLLM or any OpenAI-compatible server) and an optional fallback.
    llm_url: str = "http://localhost:8000/v1"
    llm_api_key: str | None = None
    fallback_llm_url: str | None = None
    fallback_llm_api_key: str | None = None
    fallback_llm_model: str | None = None
    connect_timeout_s: float = Field(default=2.0, gt=0)
    read_timeout_s: float = Field(default=120.0, gt=0)
    # Upper bound on one whole non-streaming upstream call.
    total_timeout_s: float = Field(default=600.0, gt=0)
    # A stream that sends nothing for this long is ended with an error event.
    stream_idle_timeout_s: float = Field(default=60.0, gt=0)
    retry_attempts: int = Field(default=3, ge=1, le=10)
    # An LLM never seen up that refuses connections counts as starting (503
    # llm_starting) this long, then as unreachable (503 llm_unreachable).
    llm_start_grace_s: float = Field(default=300.0, ge=0)
    health_interval_s: float = Field(default=5.0, gt=0)

    # Embedding service and vector store.
    embedder_url: str = "http://localhost:8081/v1"
    embedder_api_key: str | None = None
    embedder_timeout_s: float = Field(default=10.0, gt=0)
    embedding_dim: int = Field(default=384, gt=0)
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_collection: str = "memgate_memories"
    data_dir: Path = Path("./data")
    # Free space the data dir must keep: start-up fails below it, and memory
    # writes to the in-process store wait in the outbox below it (Qdrant Edge
    # preallocates 32 MiB WAL segments; a full disk under them is a SIGBUS).
    disk_reserve_mb: int = Field(default=64, ge=0)
    # Models registered at run time: this SQLite file (unset: models.sqlite3 in the
    # data dir; gateways on one host may share it), or, with a Qdrant server, the
    # collection ``<qdrant_collection>_models`` there. Every gateway re-reads its
    # store this often (0: only at start and after its own changes).
    registry_path: Path | None = None
    registry_sync_s: float = Field(default=5.0, ge=0)

    # Memory behaviour.
    memory_top_k: int = Field(default=5, ge=0, le=100)
    memory_min_score: float = Field(default=0.1, ge=-1.0, le=1.0)
    memory_required: bool = False

    # Auth: comma-separated ``tenant:key`` pairs, and/or a file of them (one per
    # line, ``tenant:key`` or ``tenant:sha256:<hex digest>``). None = no auth, loopback only.
    api_keys: str | None = None
    api_keys_file: Path | None = None
    admin_key: str | None = None
    allow_unauthenticated: bool = False
    # Start even with placeholder or short keys (gateway/secret_strength.py): tests, demos.
    allow_weak_secrets: bool = False
    config: Path | None = None

    # Limits: what a single request may cost.
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    # A request body must have fully arrived this long after the request began (else 408).
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_concurrency: int = Field(default=512, ge=1)
    max_metadata_bytes: int = Field(default=8192, ge=64)
    cors_origins: str | None = None  # comma-separated; unset = no CORS headers at all
    access_log: bool = True

    @field_validator("llm_url", "fallback_llm_url", "embedder_url", "qdrant_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @property
    def model_registry_path(self) -> Path:
        return self.registry_path or self.data_dir / "models.sqlite3"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys or self.api_keys_file)

    def check_bind_address(self) -> None:
        """Refuse to serve memories unauthenticated beyond this machine.

        Raises ``ValueError`` with a message meant for the operator.
        """
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
