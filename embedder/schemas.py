"""The embedder's request body (OpenAI's ``/v1/embeddings`` plus vLLM's ``priority``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    # Lower goes first, as in vLLM's request field; the gateway sends 1 for the
    # background replay of memory writes so that queries overtake it.
    priority: int = Field(default=0, ge=-1000, le=1000)
