"""The upstreams file (``GATEWAY_CONFIG``, YAML): several LLM servers and their models.

```yaml
upstreams:
  - name: qwen                       # a bounded label in metrics and /readyz
    urls: ["http://vllm-a:8000/v1", "http://vllm-b:8000/v1"]   # replicas
    api_key_env: QWEN_API_KEY        # or api_key: "..." (the env form keeps secrets out)
    models:                          # optional: a plain vLLM's own /v1/models is discovered
      - alias: qwen                  # what clients send as "model"
        model: Qwen/Qwen2.5-7B-Instruct   # what the upstream is sent instead
        fallback: cloud              # optional: another upstream for this alias...
        fallback_model: gpt-4o-mini  # ...and the model name to use there
  - name: cloud
    urls: ["https://api.openai.com/v1"]
    api_key_env: OPENAI_API_KEY
context_windows:                     # optional: tokens per model, by the name clients send,
  smollm2: 2048                      # for servers that do not report it (vLLM's
                                     # max_model_len in /v1/models is read by itself)
```

``GATEWAY_LLM_URL`` stays the upstream named ``primary`` (with the
``GATEWAY_FALLBACK_LLM_*`` fallback); the file adds upstreams beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.secret_strength import sendable_key
from gateway.settings import validation_problems
from gateway.urls import check_http_url

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
# What a model name looks like (``Qwen/Qwen2.5-7B-Instruct``, ``llama3:8b``,
# ``qwen-vl-2b``): no spaces, quotes or control characters, so an alias can be
# written in a URL path, a log line and a shell command as it is. The same rule
# for aliases in this file and those registered at run time (gateway.api.admin).
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"
MAX_ALIAS_CHARS = 128


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``, refusing a key given twice in one mapping. Plain YAML
    keeps the last one without a word: a second ``upstreams:`` (a file put
    together from two) dropped every upstream of the first, a second ``alias:``
    the first alias, and the file still passed its check."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[object, object]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
            continue
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: the constructor below refuses it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found the key {key!r} a second time", key_node.start_mark,
            )  # fmt: skip
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = Field(min_length=1, max_length=MAX_ALIAS_CHARS, pattern=ALIAS_PATTERN)
    model: str | None = Field(default=None, min_length=1, max_length=256)
    fallback: str | None = Field(default=None, pattern=NAME)
    fallback_model: str | None = Field(default=None, min_length=1, max_length=256)


class UpstreamEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    urls: list[str] = Field(min_length=1, max_length=64)
    api_key: str | None = None
    api_key_env: str | None = None
    models: list[ModelEntry] = Field(default_factory=list)

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        return [check_http_url(url) for url in urls]

    @field_validator("api_key")
    @classmethod
    def _sendable(cls, key: str | None) -> str | None:
        return sendable_key(key) if key is not None else None

    @model_validator(mode="after")
    def _one_key(self) -> UpstreamEntry:
        # Both given, one would win in silence (the env form did): which is meant?
        if self.api_key is not None and self.api_key_env:
            raise ValueError("give api_key or api_key_env, not both")
        return self

    def key(self) -> str | None:
        if self.api_key_env:
            value = os.environ.get(self.api_key_env, "").strip()
            return sendable_key(value) if value else None
        return self.api_key


class UpstreamsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    upstreams: list[UpstreamEntry] = Field(default_factory=list)
    context_windows: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _windows(self) -> UpstreamsFile:
        for model, tokens in self.context_windows.items():
            if not model or len(model) > 256:
                raise ValueError("context_windows: model names are 1-256 characters")
            if not 16 <= tokens <= 100_000_000:
                raise ValueError(f"context_windows.{model}: {tokens} is not a context size")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> UpstreamsFile:
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ValueError("upstream names must be unique")
        aliases = [m.alias for u in self.upstreams for m in u.models]
        if len(set(aliases)) != len(aliases):
            raise ValueError("model aliases must be unique across upstreams")
        reserved = {"primary", "fallback"} & set(names)
        if reserved:
            raise ValueError(f"{sorted(reserved)} are reserved for GATEWAY_LLM_URL's upstreams")
        known = {*names, "primary", "fallback"}
        for upstream in self.upstreams:
            for entry in upstream.models:
                if entry.fallback and entry.fallback not in known:
                    raise ValueError(f"alias {entry.alias!r}: unknown fallback {entry.fallback!r}")
        return self


def load_upstreams_file(path: Path) -> UpstreamsFile:
    """Raises ValueError with a message fit for the operator.

    ``python -m gateway`` calls it before anything starts, so a bad file is one
    line and exit 2, not a traceback out of the app's start-up.
    """
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
        config = UpstreamsFile.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"GATEWAY_CONFIG {path}: {validation_problems(exc)}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        # YAML's own message points at the place over several lines: one line here.
        raise ValueError(f"GATEWAY_CONFIG {path}: {' '.join(str(exc).split())}") from exc
    for upstream in config.upstreams:
        # Unset, every request would go without a key and the upstream's 401
        # would reach the clients as if their own key were wrong.
        if upstream.api_key_env and not os.environ.get(upstream.api_key_env, "").strip():
            raise ValueError(
                f"GATEWAY_CONFIG {path}: upstream {upstream.name!r} takes its key from "
                f"${upstream.api_key_env}, which is not set (or empty)"
            )
        try:
            upstream.key()
        except ValueError as exc:
            raise ValueError(
                f"GATEWAY_CONFIG {path}: upstream {upstream.name!r}: ${upstream.api_key_env}: {exc}"
            ) from None
    return config
