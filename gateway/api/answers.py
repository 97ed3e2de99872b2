"""What the gateway's own endpoints answer: the response models.

The routes name these as ``response_model``, so the OpenAPI document's
schemas come from here. Field order is the order of the JSON keys on the wire.
Times are ISO 8601 strings as the gateway has always written them
(``datetime.isoformat()``, with ``+00:00``), not re-formatted by Pydantic.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.enums import (
    Availability,
    BreakerState,
    DiskStatus,
    Health,
    MemoryEvent,
    Readiness,
    RouteSource,
)
from gateway.memory.records import MemoryRecord

IsoTime = str  # datetime.isoformat() of a UTC time, e.g. 2024-01-02T03:04:05+00:00


# -- memories ----------------------------------------------------------------


class Memory(BaseModel):
    id: str = Field(description="The memory's id (a UUID)")
    memory: str = Field(description="The remembered text")
    user_id: str
    metadata: dict[str, Any] = Field(description="As given at write time, unchanged")
    created_at: IsoTime
    session_id: str | None
    role: str | None = Field(description="The role of the message it came from, if any")

    @classmethod
    def of(cls, record: MemoryRecord) -> Memory:
        return cls(**_memory_fields(record))


class ScoredMemory(Memory):
    score: float = Field(description="Relevance to the query: higher is closer")

    @classmethod
    def of(cls, record: MemoryRecord) -> ScoredMemory:
        score = record.score if record.score is not None else 0.0  # a search has scores
        return cls(**_memory_fields(record), score=score)


def _memory_fields(record: MemoryRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "memory": record.text,
        "user_id": record.user_id,
        "metadata": dict(record.metadata),
        "created_at": record.created_at.isoformat(),
        "session_id": record.session_id,
        "role": record.role,
    }


class AddedMemory(BaseModel):
    id: str
    memory: str
    event: MemoryEvent


class AddedMemories(BaseModel):
    results: list[AddedMemory]
    queued: bool = Field(
        default=False,
        description="Present (true) when the write waits in the durable outbox (a 202)",
    )


class SearchResults(BaseModel):
    results: list[ScoredMemory] = Field(description="Best first")


class MemoryPage(BaseModel):
    results: list[Memory]
    next_cursor: str | None = Field(description="Pass as ``cursor`` for the next page; null: last")


class DeletedMemory(BaseModel):
    id: str
    deleted: bool


class ForgottenUser(BaseModel):
    user_id: str
    deleted: int = Field(description="How many memories were deleted")


# -- models ------------------------------------------------------------------


class ModelCard(BaseModel):
    """OpenAI's model object; a model an upstream lists keeps its own extra fields."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: str
    created: int
    owned_by: str
    upstream: str = Field(description="The upstream (group of replicas) that serves it")
    upstream_model: str | None = Field(
        default=None, description="An alias's name for the model upstream (aliases only)"
    )
    state: Availability
    source: RouteSource


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


# -- health ------------------------------------------------------------------


class Liveness(BaseModel):
    # failed: the outbox's file was removed under the running gateway, and only
    # a restart opens it again (what the orchestrator does on a failed probe).
    status: Literal["ok", "failed"]


class MonitorState(BaseModel):
    """A dependency's monitor state; all but ``status`` for the operator only."""

    status: Health
    since: IsoTime | None = None
    last_error: str | None = None
    last_success: IsoTime | None = None


class ReplicaState(MonitorState):
    upstream: str
    url: str = Field(description="Its base URL, any credentials redacted")
    breaker: BreakerState
    models: list[str]


class LlmCheck(BaseModel):
    status: Availability
    upstreams: dict[str, ReplicaState] | None = Field(default=None, description="Operator only")


class StoreCheck(MonitorState):
    backend: str


class OutboxCheck(BaseModel):
    depth: int


class DiskCheck(BaseModel):
    status: DiskStatus
    error: str | None = Field(default=None, description="Operator only: what is short")


class Checks(BaseModel):
    llm: LlmCheck
    embedder: MonitorState
    vector_store: StoreCheck
    outbox: OutboxCheck | None = Field(default=None, description="Operator only")
    data_dir: DiskCheck | None = Field(default=None, description="With an embedded store only")


class ReadinessReport(BaseModel):
    status: Readiness
    checks: Checks


# -- admin -------------------------------------------------------------------


class TenantUsers(BaseModel):
    tenant: str
    users: list[str]


class ForgottenTenantUser(BaseModel):
    tenant: str
    user_id: str
    deleted: int


class DeadWrite(BaseModel):
    """An outbox entry set aside because it can never be stored."""

    seq: int
    tenant: str
    user_id: str
    memories: int = Field(description="How many memories the write held")
    enqueued_at: float = Field(description="Unix time the request behind the write began")
    failed_at: float = Field(description="Unix time")
    error: str


class OutboxStatus(BaseModel):
    depth: int = Field(description="Writes waiting")
    dead: int = Field(description="Writes set aside")
    dead_entries: list[DeadWrite] = Field(description="The latest of those, newest first")


class UpstreamsStatus(BaseModel):
    status: Availability
    upstreams: dict[str, ReplicaState]


class RegisteredModel(BaseModel):
    alias: str
    model: str | None = Field(description="The upstream's name for it; null: the alias itself")
    upstream: str
    upstream_url: str | None
    state: Availability
    source: RouteSource


class RegisteredModels(BaseModel):
    data: list[RegisteredModel]


class DeletedAlias(BaseModel):
    alias: str
    deleted: bool


# -- relayed from the LLM (declared; the bytes go back as the LLM sent them) --


class _Relayed(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatCompletion(_Relayed):
    """OpenAI's chat completion object (the fields the gateway itself relies on)."""

    id: str
    object: Literal["chat.completion"]
    model: str
    choices: list[dict[str, Any]]


class ModelResponse(_Relayed):
    """OpenAI's Responses API object."""

    id: str
    object: Literal["response"]
    status: str
    output: list[dict[str, Any]]


class MessageReply(_Relayed):
    """Anthropic's Messages API message."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    content: list[dict[str, Any]]
