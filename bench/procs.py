"""Processes for the benchmarks: started pinned to CPUs, waited for by polling, stopped cleanly.

The process wrapper is harness.process (shared with the tests); this module holds what
only the benchmarks need: memgate's processes with the benchmarks' settings, each
started as ``taskset -c CPUS <command>`` (harness.process.pinned), CPU time and RSS from
/proc, and the machine facts every results file records. On a 2-core machine the
benchmarks put the proxy under test alone on CPU 0 and the load generator, the stand-in
upstream and the embedder on CPU 1; see bench/README.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.fake_llm import start_llm_server
from harness.process import ROOT, Service, free_port, spawn

WORK = ROOT / "bench" / ".work"
RESULTS = ROOT / "bench" / "results"
PY = sys.executable


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks stop the processes we started."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc (Linux), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def start_fake_llm(log_dir: Path, cpus: str | None) -> Service:
    return start_llm_server(log_dir=log_dir, cpus=cpus)


def start_embedder(log_dir: Path, cpus: str | None, threads: int = 1, **env: str) -> Service:
    port = free_port()
    full = {
        "EMBEDDER_PORT": str(port),
        "EMBEDDER_THREADS": str(threads),  # ONNX Runtime's pool (torch: the two below)
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        **env,
    }
    proc = spawn(
        "embedder", [PY, "-m", "embedder"], port=port, log_dir=log_dir, cpus=cpus, env=full
    )
    return proc.wait_for("/health", 180)


def start_gateway(
    log_dir: Path,
    data_dir: Path,
    llm_url: str,
    embedder_url: str,
    cpus: str | None,
    *,
    src: Path = ROOT,
    extra_path: str | None = None,
    **env: str,
) -> Service:
    """``python -m gateway`` from ``src`` (a checkout, or a patched copy of gateway/ for an A/B
    run), with ``extra_path`` put first on PYTHONPATH (e.g. a folder holding uvloop and httptools,
    which uvicorn then uses by itself)."""
    port = free_port()
    if extra_path:
        env = {**env, "PYTHONPATH": extra_path}
    full = {
        "GATEWAY_PORT": str(port),
        "GATEWAY_DATA_DIR": str(data_dir),
        "GATEWAY_LLM_URL": llm_url,
        "GATEWAY_EMBEDDER_URL": embedder_url,
        "GATEWAY_LOG_LEVEL": "warning",
        **env,
    }
    proc = spawn(
        "gateway", [PY, "-m", "gateway"], port=port, log_dir=log_dir, cpus=cpus, env=full, cwd=src
    )
    return proc.wait_for("/readyz", 60)


def machine_info() -> dict[str, object]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "loadavg": loadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def git_rev() -> str:
    """The commit measured; ``-dirty`` when tracked files differ from it."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    except OSError:
        return "unknown"
    return f"{rev}-dirty" if changes else rev


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def save_results(
    out: Path, data: dict[str, Any], markdown: Callable[[dict[str, Any]], str]
) -> None:
    """Finish a run: the load average at its end, ``out`` (JSON) and the Markdown
    beside it, which is also printed."""
    data["loadavg_end"] = loadavg()
    write_json(out, data)
    text = markdown(data)
    out.with_suffix(".md").write_text(text)
    print(text)


def tools_python() -> str:
    """The bench tools venv's python (uvloop for the generator), else ours."""
    candidate = WORK / "tools-venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else PY


def pin_self(cpus: str, module: str) -> None:
    """Re-run ``python -m module`` (this script, with its arguments) under taskset,
    so every thread, numpy's and the store's included, stays on ``cpus``."""
    wanted = {int(c) for c in cpus.split(",")}
    taskset = shutil.which("taskset")
    if (os.cpu_count() or 1) > 1 and os.sched_getaffinity(0) != wanted and taskset:
        os.execv(taskset, [taskset, "-c", cpus, PY, "-m", module, *sys.argv[1:]])
