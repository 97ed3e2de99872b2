"""Processes for the benchmarks: started pinned to CPUs, waited for by polling, stopped cleanly.

Every process is started as ``taskset -c CPUS <command>`` so that it and all
the threads it later creates stay on the given cores (``os.sched_setaffinity``
after the start would miss threads already running). On a 2-core machine the
benchmarks put the proxy under test alone on CPU 0 and the load generator,
the stand-in upstream and the embedder on CPU 1; see bench/README.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.fakes.process import free_port

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work"
RESULTS = ROOT / "bench" / "results"
PY = sys.executable


def pinned(cpus: str | None, argv: Sequence[str]) -> list[str]:
    if cpus and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpus, *argv]
    return list(argv)


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_http(self, path: str, timeout: float, status: int = 200) -> Proc:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            try:
                if httpx.get(self.base_url + path, timeout=2.0).status_code == status:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} {path} not {status}:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def wait_line(self, text: str, timeout: float) -> Proc:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not print {text!r}:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        return self

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks stop the processes we started."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc (Linux), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    log_dir: Path,
    cpus: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            pinned(cpus, argv), cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    return Proc(name, proc, port, log_path)


def start_fake_llm(log_dir: Path, cpus: str | None) -> Proc:
    port = free_port()
    argv = [PY, str(ROOT / "tests" / "fakes" / "llm_server.py"), "--port", str(port)]
    return spawn("fake-llm", argv, port=port, log_dir=log_dir, cpus=cpus).wait_line("READY", 15)


def start_embedder(log_dir: Path, cpus: str | None, threads: int = 1, **env: str) -> Proc:
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
    return proc.wait_http("/health", 180)


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
) -> Proc:
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
    return proc.wait_http("/readyz", 60)


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


def tools_python() -> str:
    """The bench tools venv's python (uvloop for the generator), else ours."""
    candidate = WORK / "tools-venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else PY
