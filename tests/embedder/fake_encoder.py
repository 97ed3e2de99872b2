"""A deterministic stand-in for the model in the embedder's unit tests (the e2e
tests use the real weights)."""

from __future__ import annotations

import threading

import numpy as np

from embedder.model import Encoded


class FakeEncoder:
    name = "fake"
    dimension = 3

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()
        self._gate = gate
        self.waiting = threading.Event()  # an encode call is blocked on the gate

    def encode(self, texts: list[str]) -> Encoded:
        if self._gate is not None:
            self.waiting.set()
            self._gate.wait(5)
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(texts))
        vectors = np.array([[len(t), i, 1.0] for i, t in enumerate(texts)], dtype=np.float32)
        return Encoded(vectors, [len(t.split()) for t in texts])
