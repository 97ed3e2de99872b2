"""The ONNX backend against sentence-transformers itself, with the real weights."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from embedder import onnx_model
from embedder.model import Encoder, choose_backend, load_sentence_transformer
from embedder.onnx_model import cache_key, export_dir, load_onnx
from embedder.settings import DEFAULT_MODEL, EmbedderSettings


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def onnx_encoder(cache_dir: Path) -> Encoder:
    return load_onnx(DEFAULT_MODEL, cache_dir, batch_size=16)


@pytest.fixture(scope="module")
def torch_encoder() -> Encoder:
    return load_sentence_transformer(DEFAULT_MODEL, "cpu", 16)


def texts() -> list[str]:
    rng = random.Random(7)
    words = [
        "Alice",
        "is",
        "allergic",
        "to",
        "peanuts",
        "and",
        "moved",
        "to",
        "Lisbon",
        "in",
        "May",
        "2023",
        "!",
    ]
    varied = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 300))) for _ in range(40)]
    # unicode, a lone character, and one far past the 256-token truncation
    return [*varied, "Grüße aus Köln", "日本語のテキスト", "x", "word " * 2000]


def test_embeddings_and_token_counts_equal_sentence_transformers(
    onnx_encoder: Encoder, torch_encoder: Encoder
) -> None:
    sample = texts()
    ours, theirs = onnx_encoder.encode(sample), torch_encoder.encode(sample)
    assert ours.vectors.shape == theirs.vectors.shape == (len(sample), 384)
    assert np.abs(ours.vectors - theirs.vectors).max() < 1e-5
    assert ours.token_counts == theirs.token_counts
    assert max(ours.token_counts) == 256  # truncated like sentence-transformers


def test_batches_in_any_order_give_the_same_vectors(onnx_encoder: Encoder) -> None:
    sample = texts()
    whole = onnx_encoder.encode(sample).vectors
    one_by_one = np.stack([onnx_encoder.encode([t]).vectors[0] for t in sample[:8]])
    assert np.abs(whole[:8] - one_by_one).max() < 1e-5
    shuffled = list(reversed(sample))
    assert np.abs(onnx_encoder.encode(shuffled).vectors[::-1] - whole).max() < 1e-5


def test_a_second_start_reuses_the_export(
    cache_dir: Path, onnx_encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_export(model: str, target: Path) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_model, "export", no_export)
    again = load_onnx(DEFAULT_MODEL, cache_dir, batch_size=16)
    probe = ["the cache is keyed by the model's files"]
    assert np.array_equal(again.encode(probe).vectors, onnx_encoder.encode(probe).vectors)
    assert [p.name for p in cache_dir.iterdir()] == [export_dir(DEFAULT_MODEL, cache_dir).name]


def test_the_cache_key_follows_the_model_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    before = cache_key(tmp_path)
    assert cache_key(tmp_path) == before
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    assert cache_key(tmp_path) != before


def test_onnx_needs_a_local_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="EMBEDDER_BACKEND=torch"):
        export_dir("some-org/hub-model", tmp_path)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "onnx"),
        ({"device": "cuda"}, "torch"),
        ({"model": "some-org/hub-model"}, "torch"),
        ({"backend": "torch"}, "torch"),
        ({"backend": "onnx", "device": "cuda"}, "onnx"),
    ],
)
def test_auto_backend(env: dict[str, str], expected: str) -> None:
    assert choose_backend(EmbedderSettings(**env)) == expected  # type: ignore[arg-type]


def test_int8_weights_stay_close_to_fp32_and_are_quantised_once(
    cache_dir: Path, onnx_encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    int8 = load_onnx(DEFAULT_MODEL, cache_dir, batch_size=16, weights="int8")
    sample = texts()
    ours, fp32 = int8.encode(sample), onnx_encoder.encode(sample)
    cosine = (ours.vectors * fp32.vectors).sum(axis=1)
    assert cosine.min() > 0.97, cosine.min()  # measured 0.986 on 512 memory-like texts
    assert ours.token_counts == fp32.token_counts
    # activations are scaled per batch, so a text's vector moves a little with its
    # batch-mates; a lone text and the same text in a batch stay close
    alone = np.stack([int8.encode([t]).vectors[0] for t in sample[:8]])
    assert ((alone * ours.vectors[:8]).sum(axis=1)).min() > 0.99

    def no_quantize(folder: Path) -> None:
        raise AssertionError("quantised again although the int8 file is cached")

    monkeypatch.setattr(onnx_model, "quantize", no_quantize)
    load_onnx(DEFAULT_MODEL, cache_dir, batch_size=16, weights="int8")
