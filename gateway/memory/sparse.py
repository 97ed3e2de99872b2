"""BM25 sparse vectors, computed in the gateway with Qdrant's own tokenizer
(English stopwords and stemming) from qdrant-edge-py: no torch, no model."""

from __future__ import annotations

from dataclasses import dataclass

import qdrant_edge as qe


@dataclass(frozen=True)
class Sparse:
    indices: list[int]
    values: list[float]


class Bm25Encoder:
    def __init__(self) -> None:
        self._bm25 = qe.Bm25()

    def document(self, text: str) -> Sparse:
        vector = self._bm25.embed_document(text)
        return Sparse(list(vector.indices), list(vector.values))

    def query(self, text: str) -> Sparse:
        vector = self._bm25.embed_query(text)
        return Sparse(list(vector.indices), list(vector.values))
