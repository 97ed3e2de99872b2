"""The torch backend on a GPU: the model's forward pass replayed from CUDA graphs.

On a GPU, a sentence-transformers ``encode`` call costs milliseconds whatever its
size (bench/results/gpu.md): it moves the module to its device and sets eval mode on
every call, and launches ~90 small kernels one by one from Python, while
the GPU's own work for a short text is a fraction of a millisecond. Recall embeds one
short query per chat turn, so that fixed cost is the recall's latency and caps the
service's requests per second.

:class:`GraphEncoder` captures the model's own forward (its transformer, pooling and
normalisation, as its ``modules.json`` says) once per padded shape, for batch sizes and
sequence lengths in powers of two up to the batch size and the model's
``max_seq_length``, and then each call tokenises as ``encode`` does, copies the ids into
the smallest shape that holds them, replays that graph and copies the vectors back.

Padding changes nothing a text sees: padded positions are masked out of attention and
pooling, and padded rows (one pad token each, so no row is all mask) are dropped.
``capture=False`` runs the same padded shapes eagerly: what the tests check on the CPU
against ``encode``, and the GPU bench checks with the graphs (bench/gpu/).
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from embedder.model import Encoded

log = logging.getLogger("embedder")

MIN_SEQ_BUCKET = 16  # shorter texts share one shape: below it a graph costs the same


def bucket_sizes(limit: int, start: int = 1) -> list[int]:
    """``start``, twice that, ... while below ``limit``, then ``limit``: the padded sizes."""
    sizes: list[int] = []
    size = start
    while size < limit:
        sizes.append(size)
        size *= 2
    sizes.append(limit)
    return sizes


def bucket_for(n: int, sizes: list[int]) -> int:
    """The smallest size that holds ``n`` (sizes ascending, ``n`` at most the last)."""
    return sizes[bisect_left(sizes, n)]


@dataclass
class _Shape:
    inputs: dict[str, torch.Tensor]  # static (batch, seq) int64 inputs on the model's device
    output: torch.Tensor | None = None  # (batch, dim) float32, written by each replay
    graph: torch.cuda.CUDAGraph | None = None


class GraphEncoder:
    """A sentence-transformers model on CUDA, run at padded shapes from CUDA graphs."""

    def __init__(self, model: Any, name: str, batch_size: int, *, capture: bool = True) -> None:
        self._model = model.eval()
        self._device = model.device
        self._max_len = int(model.max_seq_length)
        self._batch_sizes = bucket_sizes(batch_size)
        self._seq_lens = bucket_sizes(self._max_len, min(MIN_SEQ_BUCKET, self._max_len))
        self._pad_id = int(getattr(model.tokenizer, "pad_token_id", None) or 0)
        self._input_names = sorted(self._tensors(model.preprocess(["a"])))
        if "input_ids" not in self._input_names or "attention_mask" not in self._input_names:
            raise ValueError(f"model {name!r} does not take input_ids and attention_mask")
        self.name = name
        dimension = model.get_embedding_dimension()
        if not dimension:
            raise RuntimeError(f"model {name!r} does not report its embedding dimension")
        self.dimension = int(dimension)
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self._shapes: dict[tuple[int, int], _Shape] = {}
        started = time.perf_counter()
        # The largest first: the smaller captures then reuse its blocks of the shared pool.
        for batch in reversed(self._batch_sizes):
            for seq in reversed(self._seq_lens):
                self._shapes[batch, seq] = self._prepare(batch, seq)
        if capture:
            log.info(
                "captured %d CUDA graphs (batch %s x sequence %s) in %.1f s",
                len(self._shapes),
                self._batch_sizes,
                self._seq_lens,
                time.perf_counter() - started,
            )

    @staticmethod
    def _tensors(features: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in features.items() if isinstance(v, torch.Tensor) and v.dim() == 2}

    def _forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        # A copy: the model's modules add their outputs to the dict they are given.
        embeddings: torch.Tensor = self._model(dict(inputs))["sentence_embedding"]
        return torch.nn.functional.normalize(embeddings.float(), dim=-1)

    def _prepare(self, batch: int, seq: int) -> _Shape:
        inputs = {
            name: torch.zeros((batch, seq), dtype=torch.long, device=self._device)
            for name in self._input_names
        }
        inputs["attention_mask"][:, 0] = 1
        shape = _Shape(inputs)
        if self._pool is None:
            return shape
        with torch.inference_mode():
            # Warm-up on a side stream, outside the graph: lazy initialisation (cuBLAS
            # handles, kernel choice) must not be captured.
            side = torch.cuda.Stream(self._device)  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._forward(inputs)
            torch.cuda.current_stream(self._device).wait_stream(side)
            shape.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(shape.graph, pool=self._pool):
                shape.output = self._forward(inputs)
        return shape

    def encode(self, texts: list[str]) -> Encoded:
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        counts: list[int] = []
        step = self._batch_sizes[-1]
        for start in range(0, len(texts), step):
            chunk = texts[start : start + step]
            features = self._tensors(self._model.preprocess(chunk))
            counts.extend(int(n) for n in features["attention_mask"].sum(dim=1))
            vectors[start : start + len(chunk)] = self._run(features, len(chunk))
        return Encoded(vectors, counts)

    def _run(self, features: dict[str, torch.Tensor], n: int) -> npt.NDArray[np.float32]:
        length = int(features["input_ids"].shape[1])
        shape = self._shapes[bucket_for(n, self._batch_sizes), bucket_for(length, self._seq_lens)]
        for name, static in shape.inputs.items():
            padded = torch.zeros(static.shape, dtype=torch.long)
            if name == "input_ids":
                padded.fill_(self._pad_id)
            elif name == "attention_mask":
                padded[n:, 0] = 1  # padding rows: one token each, never an all-masked row
            padded[:n, :length] = features[name]
            static.copy_(padded)
        if shape.graph is None:
            with torch.inference_mode():
                output = self._forward(shape.inputs)
        else:
            shape.graph.replay()
            assert shape.output is not None
            output = shape.output
        return output[:n].cpu().numpy()
