"""GraphEncoder's padded shapes against sentence-transformers' own ``encode``, with the
real weights on the CPU (``capture=False``: the same padding and bucketing, run eagerly;
the CUDA graphs themselves are checked on a GPU by bench/gpu/embedder_gpu.py)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from embedder.cuda_graphs import GraphEncoder, bucket_for, bucket_sizes
from embedder.model import SentenceTransformerEncoder, resolve_model_path
from embedder.settings import DEFAULT_MODEL


def test_bucket_sizes_double_up_to_the_limit_which_is_always_the_last() -> None:
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert bucket_sizes(256, 16) == [16, 32, 64, 128, 256]
    assert bucket_sizes(384, 16) == [16, 32, 64, 128, 256, 384]
    assert bucket_sizes(1) == [1]


def test_a_size_goes_to_the_smallest_bucket_that_holds_it() -> None:
    sizes = bucket_sizes(384, 16)
    assert [bucket_for(n, sizes) for n in (1, 16, 17, 256, 257, 384)] == [
        16, 16, 32, 256, 384, 384,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def model() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_model_path(DEFAULT_MODEL), device="cpu")


def sample() -> list[str]:
    rng = random.Random(11)
    sentence = "my sister Ana moved to Porto last May and adopted a grey cat called Miso"
    words = sentence.split(" ")
    varied = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 220))) for _ in range(21)]
    # Surrounding whitespace (encode strips it), unicode, one character, one past truncation.
    return [*varied, "  padded with spaces \n", "Zoë parle français 🙂", "x", "word " * 600]


def test_padded_shapes_give_encodes_vectors_and_token_counts(model: Any) -> None:
    texts = sample()
    reference = SentenceTransformerEncoder(model, DEFAULT_MODEL, batch_size=8).encode(texts)
    padded = GraphEncoder(model, DEFAULT_MODEL, batch_size=8, capture=False)
    # 25 texts in batches of up to 8: full batches and a padded one of 1, lengths
    # from one token to the 256-token limit.
    got = padded.encode(texts)
    assert got.vectors.shape == reference.vectors.shape == (len(texts), 384)
    cosines = np.sum(got.vectors * reference.vectors, axis=1)
    assert cosines.min() > 0.9999, cosines
    assert np.allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)
    assert got.token_counts == reference.token_counts
    assert max(got.token_counts) == 256 and min(got.token_counts) == 3


def test_a_text_gets_the_same_vector_alone_and_in_any_batch(model: Any) -> None:
    padded = GraphEncoder(model, DEFAULT_MODEL, batch_size=8, capture=False)
    texts = sample()[:7]
    together = padded.encode(texts).vectors
    alone = np.vstack([padded.encode([text]).vectors for text in texts])
    assert np.allclose(together, alone, atol=1e-5)
