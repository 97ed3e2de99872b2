"""Request bodies of the gateway's own API (and the parts of chat it reads)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

UserId = Field(min_length=1, max_length=256)


class MemoryOptions(BaseModel):
    """The optional ``memory`` object of a chat request (``extra_body`` in the SDK)."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(default=None, min_length=1, max_length=256)
    session_id: str | None = Field(default=None, min_length=1, max_length=256)
    top_k: int | None = Field(default=None, ge=0, le=50)
    enabled: bool = True
    store: bool = True


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """What the gateway checks; every other field goes to the upstream unchanged."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=2048)
    stream: bool | None = False
    user: str | None = Field(default=None, max_length=256)
    memory: MemoryOptions | None = None


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"] = "user"
    content: str = Field(min_length=1, max_length=16_000)


class AddMemoriesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = UserId
    messages: list[MessageIn] | None = Field(default=None, min_length=1, max_length=256)
    text: str | None = Field(default=None, min_length=1, max_length=16_000)
    metadata: dict[str, Any] | None = None
    session_id: str | None = Field(default=None, min_length=1, max_length=256)
    timestamp: str | None = Field(default=None, max_length=64)


class SearchMemoriesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = UserId
    query: str = Field(min_length=1, max_length=16_000)
    top_k: int = Field(default=10, ge=1, le=100)
    filters: dict[str, Any] | None = None
    min_score: float | None = Field(default=None, ge=-1.0, le=1.0)
