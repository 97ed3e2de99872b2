"""Request bodies of the gateway's own API (and the parts of chat it reads)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
)

from gateway.memory.records import is_blank, lone_surrogate


def _unicode(value: str) -> str:
    """JSON lets a client send a lone surrogate (``"\\ud800"``), which is not
    Unicode text and cannot be stored: refused here, with the rest of the body."""
    at = lone_surrogate(value)
    if at is not None:
        raise ValueError(f"holds a lone surrogate at index {at} (not valid Unicode)")
    return value


def _not_blank(value: str) -> str:
    """A memory of only whitespace (or invisible characters: zero-width spaces,
    direction marks) would be stored, recalled and shown to the model as an
    empty quote: refused instead, so an import finds its bad rows."""
    if is_blank(value):
        raise ValueError("is blank: a memory needs some visible text, not only whitespace")
    return value


def _not_blank_query(value: str) -> str:
    """A query of only whitespace embeds to no meaning: it would rank memories
    at random. Refused, as a blank memory is."""
    if is_blank(value):
        raise ValueError("is blank: a search needs some visible text, not only whitespace")
    return value


# A string the gateway stores or searches with: valid Unicode.
Text = Annotated[str, AfterValidator(_unicode)]
# The text of a memory to store: valid Unicode, not only whitespace.
MemoryText = Annotated[Text, AfterValidator(_not_blank)]
UserId = Field(min_length=1, max_length=256)


class MemoryOptions(BaseModel):
    """The optional ``memory`` object of a chat request (``extra_body`` in the SDK)."""

    model_config = ConfigDict(extra="forbid")

    user_id: Text | None = Field(default=None, min_length=1, max_length=256)
    session_id: Text | None = Field(default=None, min_length=1, max_length=256)
    # Strict, as the JSON number it must be: lax, `"top_k": true` was 1 and "5" was 5.
    top_k: StrictInt | None = Field(default=None, ge=0, le=50)
    # Strict: lax, `"store": "no"` was False and `"enabled": 0` switched memory off.
    enabled: StrictBool = True
    store: StrictBool = True


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """What the gateway checks; every other field goes to the upstream unchanged."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=2048)
    # Strict: the body goes upstream as sent, so a lax `"stream": 1` would be a
    # stream here and, to an upstream that reads it strictly, a plain answer.
    stream: StrictBool | None = False
    user: Text | None = Field(default=None, max_length=256)
    memory: MemoryOptions | None = None


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"] = "user"
    content: MemoryText = Field(min_length=1, max_length=16_000)


class AddMemoriesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Text = UserId
    messages: list[MessageIn] | None = Field(default=None, min_length=1, max_length=256)
    text: MemoryText | None = Field(default=None, min_length=1, max_length=16_000)
    metadata: dict[str, Any] | None = None
    session_id: Text | None = Field(default=None, min_length=1, max_length=256)
    timestamp: str | None = Field(default=None, max_length=64)


class SearchMemoriesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Text = UserId
    query: Annotated[Text, AfterValidator(_not_blank_query)] = Field(
        min_length=1, max_length=16_000
    )
    top_k: StrictInt = Field(default=10, ge=1, le=100)
    filters: dict[str, Any] | None = None
    # Strict like top_k: lax, `"min_score": true` was 1.0 and "0.5" was 0.5 (ints still count).
    min_score: StrictFloat | None = Field(default=None, ge=-1.0, le=1.0)
