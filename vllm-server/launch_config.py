"""The launcher's settings, read from the environment, and the choice of GPU.

Standard library only, like ``launch.py`` (which documents every variable).
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger("launch")

DEFAULT_UTILIZATION = 0.90
DEFAULT_KV_CACHE_BYTES = 4 * 1024**3
MULTIPROC_METHODS = ("spawn", "fork")
# Flags the ladder owns: set through the environment so that every rung can change them.
LADDER_FLAGS = {
    "--gpu-memory-utilization": "VLLM_GPU_MEMORY_UTILIZATION",
    "--kv-cache-memory-bytes": "VLLM_KV_CACHE_MEMORY_BYTES",
}
NVIDIA_SMI_QUERY = ("--query-gpu=index,memory.free,memory.total", "--format=csv,noheader,nounits")


class ConfigError(ValueError):
    """A setting the operator must fix; the message says which and how."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Config:
    model: str
    extra_args: tuple[str, ...]
    gpu: str  # "", "auto", or a comma-separated list of indices
    gpu_count: int
    utilization: float
    kv_cache_bytes: int
    multiproc_method: str
    retries: bool
    check_versions: bool


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    value = environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r}: expected true or false")


def load_config(environ: Mapping[str, str], argv: Sequence[str]) -> Config:
    model = environ.get("VLLM_MODEL", "").strip()
    if not model:
        raise ConfigError("VLLM_MODEL is not set: name the model to serve (a HF id or a path)")
    try:
        extra = (*shlex.split(environ.get("VLLM_EXTRA_ARGS", "")), *argv)
    except ValueError as exc:
        raise ConfigError(f"VLLM_EXTRA_ARGS cannot be parsed: {exc}") from exc
    for arg in extra:
        owner = LADDER_FLAGS.get(arg.split("=", 1)[0])
        if owner:
            raise ConfigError(
                f"do not pass {arg.split('=', 1)[0]}: set {owner} (the ladder owns it)"
            )

    gpu = environ.get("VLLM_GPU", "").strip().lower()
    if gpu and gpu != "auto" and not re.fullmatch(r"\d+(,\d+)*", gpu.replace(" ", "")):
        raise ConfigError(f"VLLM_GPU={gpu!r}: expected auto, an index, or indices like 0,1")
    gpu = gpu.replace(" ", "")
    gpu_count = _int(environ, "VLLM_GPU_COUNT", 1)
    if gpu_count < 1:
        raise ConfigError("VLLM_GPU_COUNT must be at least 1")

    raw = environ.get("VLLM_GPU_MEMORY_UTILIZATION", "").strip()
    try:
        utilization = float(raw) if raw else DEFAULT_UTILIZATION
    except ValueError:
        raise ConfigError(f"VLLM_GPU_MEMORY_UTILIZATION={raw!r}: expected a number") from None
    if not 0 < utilization <= 1:
        raise ConfigError(f"VLLM_GPU_MEMORY_UTILIZATION={raw}: expected a fraction in (0, 1]")
    kv_cache_bytes = _int(environ, "VLLM_KV_CACHE_MEMORY_BYTES", DEFAULT_KV_CACHE_BYTES)
    if kv_cache_bytes <= 0:
        raise ConfigError("VLLM_KV_CACHE_MEMORY_BYTES must be a positive number of bytes")

    extra = _with_port(environ, extra)

    method = environ.get("VLLM_WORKER_MULTIPROC_METHOD", "").strip() or "spawn"
    if method not in MULTIPROC_METHODS:
        raise ConfigError(f"VLLM_WORKER_MULTIPROC_METHOD={method!r}: expected spawn or fork")

    return Config(
        model=model,
        extra_args=tuple(extra),
        gpu=gpu,
        gpu_count=gpu_count,
        utilization=utilization,
        kv_cache_bytes=kv_cache_bytes,
        multiproc_method=method,
        retries=_flag(environ, "VLLM_START_RETRIES", True),
        check_versions=not _flag(environ, "VLLM_SKIP_VERSION_CHECK", False),
    )


def _with_port(environ: Mapping[str, str], args: Sequence[str]) -> tuple[str, ...]:
    """``args`` with ``--port $VLLM_PORT`` when VLLM_PORT is set.

    The image's health check probes VLLM_PORT, so the port is set there and only
    there: a ``--port`` that disagrees with it would leave the container unhealthy.
    """
    raw = environ.get("VLLM_PORT", "").strip()
    if not raw:
        return tuple(args)
    port = _int(environ, "VLLM_PORT", 0)
    if not 0 < port < 65536:
        raise ConfigError(f"VLLM_PORT={raw}: expected a port number")
    given = [
        a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
        for i, a in enumerate(args)
        if a.split("=", 1)[0] == "--port"
    ]
    if any(p != str(port) for p in given):
        raise ConfigError(
            f"--port {given[-1]} disagrees with VLLM_PORT={port}: set VLLM_PORT only "
            "(the image's health check reads it)"
        )
    return tuple(args) if given else (*args, "--port", str(port))


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a whole number") from None


# --------------------------------------------------------------------------- GPUs


@dataclass(frozen=True)
class Gpu:
    index: int
    free_mib: int
    total_mib: int


def parse_nvidia_smi(output: str) -> list[Gpu]:
    """Rows of ``index, memory.free, memory.total``; rows with [N/A] fields are skipped."""
    gpus = []
    for row in output.splitlines():
        fields = [field.strip() for field in row.split(",")]
        if len(fields) != 3 or not all(field.isdigit() for field in fields):
            continue
        gpus.append(Gpu(int(fields[0]), int(fields[1]), int(fields[2])))
    return gpus


def choose_gpus(gpus: Sequence[Gpu], count: int) -> list[Gpu]:
    """The ``count`` GPUs with the most free memory; ties go to the lower index."""
    if len(gpus) < count:
        raise ConfigError(f"VLLM_GPU=auto wants {count} GPU(s), but nvidia-smi shows {len(gpus)}")
    return sorted(gpus, key=lambda gpu: (-gpu.free_mib, gpu.index))[:count]


def query_gpus() -> list[Gpu]:
    result = subprocess.run(
        ["nvidia-smi", *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise OSError(f"nvidia-smi exited with {result.returncode}: {result.stderr.strip()}")
    return parse_nvidia_smi(result.stdout)


def gpu_environment(config: Config, query: Callable[[], list[Gpu]] = query_gpus) -> dict[str, str]:
    """The CUDA_* variables for the child: empty when the operator left the choice to CUDA."""
    if not config.gpu:
        return {}
    # nvidia-smi numbers GPUs in PCI bus order, CUDA by default fastest first: make them agree.
    if config.gpu != "auto":
        log.info("GPU: using CUDA_VISIBLE_DEVICES=%s (VLLM_GPU)", config.gpu)
        return {"CUDA_VISIBLE_DEVICES": config.gpu, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    try:
        gpus = query()
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("GPU: cannot query nvidia-smi (%s); leaving CUDA_VISIBLE_DEVICES as it is", exc)
        return {}
    if not gpus:
        log.warning("GPU: nvidia-smi lists no GPU; leaving CUDA_VISIBLE_DEVICES as it is")
        return {}
    for gpu in gpus:
        log.info("GPU %d: %d MiB free of %d MiB", gpu.index, gpu.free_mib, gpu.total_mib)
    chosen = choose_gpus(gpus, config.gpu_count)
    devices = ",".join(str(gpu.index) for gpu in chosen)
    log.info("GPU: chose CUDA_VISIBLE_DEVICES=%s (most free memory)", devices)
    return {"CUDA_VISIBLE_DEVICES": devices, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
