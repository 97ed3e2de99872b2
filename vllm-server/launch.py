#!/usr/bin/env python3
"""Start ``vllm serve`` reliably: check versions, pick a GPU, retry known start-up failures.

The standard library and ``packaging`` (vllm_pins.py) only, and nothing heavy is
imported: this process must never touch torch or CUDA, or it would hold GPU memory of its
own and change how vLLM starts its workers. It runs
``vllm serve $VLLM_MODEL [VLLM_EXTRA_ARGS] [argv...] [rung flags]`` as a child, forwards
SIGTERM/SIGINT to it, and copies the child's output to stdout.

Environment:
  VLLM_MODEL                    the model to serve (required)
  VLLM_EXTRA_ARGS               more ``vllm serve`` arguments, shell-quoted (argv follows them)
  VLLM_PORT                     --port for vLLM (the image sets 8000 and its health check
                                probes it); a --port in the arguments must agree with it
  VLLM_GPU                      "auto": the GPU(s) with the most free memory, via nvidia-smi;
                                "0" or "0,1": exactly those; unset: CUDA_VISIBLE_DEVICES as is
  VLLM_GPU_COUNT                how many GPUs "auto" picks (default 1)
  VLLM_GPU_MEMORY_UTILIZATION   --gpu-memory-utilization of the first rung (default 0.90)
  VLLM_KV_CACHE_MEMORY_BYTES    --kv-cache-memory-bytes of the explicit rungs (default 4 GiB)
  VLLM_WORKER_MULTIPROC_METHOD  spawn (default) or fork, always passed to vLLM explicitly
  VLLM_START_RETRIES            false: one attempt, no ladder (default true)
  VLLM_SKIP_VERSION_CHECK       true: start even if torch does not match vLLM's pin

The start-up ladder. When vLLM exits before it serves with a known memory failure
("Error in memory profiling", CUDA out of memory, or less free memory than the requested
utilization), it is started again one rung down:
  1. --gpu-memory-utilization U                 (as configured)
  2. --gpu-memory-utilization U-0.10            (leave room for other processes on the GPU)
  3. ... plus --kv-cache-memory-bytes B          (size the KV cache explicitly: no profiling)
  4. ... plus --enforce-eager                    (no CUDA graphs: less memory, slower decode)
Any other failure, or a failure after start-up, is not retried: vLLM's exit code is ours.

Exit codes: vLLM's own; 2 bad configuration; 3 torch/vLLM version mismatch;
4 every rung of the ladder failed; 127 no ``vllm`` on PATH; 128+N stopped by signal N
(when vLLM itself was killed by it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import IO

from launch_config import ConfigError, gpu_environment, load_config

log = logging.getLogger("launch")

EXIT_CONFIG = 2
EXIT_VERSION_MISMATCH = 3
EXIT_LADDER_EXHAUSTED = 4
EXIT_NOT_FOUND = 127

UTILIZATION_STEP = 0.10
MIN_UTILIZATION = 0.05
# uvicorn's line once vLLM's API server listens: from here on, a crash is not "start-up".
STARTED_MARKER = "Application startup complete"
KNOWN_START_FAILURES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("memory profiling assertion", re.compile(r"Error in memory profiling")),
    (
        "CUDA out of memory",
        re.compile(r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory"),
    ),
    ("less free GPU memory than requested", re.compile(r"less than desired GPU memory utiliz")),
)
# How long to keep reading output once vLLM and its process group are gone: a grandchild
# that left the group (its own session) could hold the pipe open forever.
OUTPUT_DRAIN_S = 5.0


# --------------------------------------------------------------------------- ladder


@dataclass(frozen=True)
class Rung:
    name: str
    args: tuple[str, ...]


def build_ladder(utilization: float, kv_cache_bytes: int) -> list[Rung]:
    configured = f"{utilization:.2f}"
    lower = round(utilization - UTILIZATION_STEP, 2)
    ladder = [Rung("as configured", ("--gpu-memory-utilization", configured))]
    if lower >= MIN_UTILIZATION:
        ladder.append(
            Rung("lower GPU memory utilization", ("--gpu-memory-utilization", f"{lower:.2f}"))
        )
    else:
        lower = utilization
    # Keep the lowered utilization: vLLM still checks it against the GPU's free memory.
    explicit = (
        "--gpu-memory-utilization",
        f"{lower:.2f}",
        "--kv-cache-memory-bytes",
        str(kv_cache_bytes),
    )
    ladder.append(Rung("explicit KV cache size", explicit))
    ladder.append(Rung("explicit KV cache size, eager mode", (*explicit, "--enforce-eager")))
    return ladder


def classify_failure(line: str) -> str | None:
    for name, pattern in KNOWN_START_FAILURES:
        if pattern.search(line):
            return name
    return None


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Attempt:
    returncode: int
    started: bool  # vLLM said it serves: a later crash is not a start-up failure
    failure: str | None  # the known start-up failure seen in its output, if any


def should_retry(attempt: Attempt, stopping: bool) -> bool:
    """The ladder's policy: only a known memory failure before serving earns another rung."""
    return (
        not stopping
        and not attempt.started
        and attempt.returncode != 0
        and attempt.failure is not None
    )


def exit_code(returncode: int) -> int:
    """Popen's -N (killed by signal N) as a shell would report it."""
    return 128 - returncode if returncode < 0 else returncode


class _OutputWatcher(threading.Thread):
    """Copies the child's output through and notes start-up and known failures."""

    def __init__(self, stream: IO[bytes], sink: IO[bytes]) -> None:
        super().__init__(name="vllm-output", daemon=True)
        self._stream = stream
        self._sink = sink
        self.started = False
        self.failure: str | None = None

    def run(self) -> None:
        for raw in iter(self._stream.readline, b""):
            self._sink.write(raw)
            self._sink.flush()
            if self.started:
                continue
            text = raw.decode(errors="replace")
            if STARTED_MARKER in text:
                self.started = True
            elif self.failure is None:
                self.failure = classify_failure(text)


class Launcher:
    def __init__(self, sink: IO[bytes]) -> None:
        self._sink = sink
        self._child: subprocess.Popen[bytes] | None = None
        self._forwarded_to: int | None = None  # pid that already got the stop signal
        self.stop_signal: int | None = None

    def handle_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_signal = signum
        name = signal.Signals(signum).name
        child = self._child
        if child is not None and child.returncode is None:
            log.info("received %s: forwarding it to vllm (pid %d)", name, child.pid)
            self._forward(child, signum)
        else:
            log.info("received %s: vllm is not running; not starting it again", name)

    def _forward(self, child: subprocess.Popen[bytes], signum: int) -> None:
        self._forwarded_to = child.pid
        child.send_signal(signum)

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.handle_signal)

    def run_attempt(self, argv: Sequence[str], env: Mapping[str, str]) -> Attempt:
        # Its own session: a terminal's Ctrl-C reaches vLLM once (through us), and the
        # attempt's stray workers can be killed as one process group afterwards.
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
        self._child = proc
        if self.stop_signal is not None and self._forwarded_to != proc.pid:
            self._forward(proc, self.stop_signal)  # the signal came while we were spawning
        assert proc.stdout is not None
        watcher = _OutputWatcher(proc.stdout, self._sink)
        watcher.start()
        returncode = proc.wait()
        self._child = None
        # Workers left behind would hold GPU memory that the next rung needs, and would
        # keep the pipe open; what they wrote before is still read to the end.
        _kill_process_group(proc.pid)
        watcher.join(OUTPUT_DRAIN_S)
        return Attempt(returncode, watcher.started, watcher.failure)

    def run_ladder(
        self, base_argv: Sequence[str], ladder: Sequence[Rung], env: Mapping[str, str]
    ) -> int:
        for number, rung in enumerate(ladder, 1):
            if self.stop_signal is not None:
                return 128 + self.stop_signal
            argv = [*base_argv, *rung.args]
            log.info("attempt %d/%d (%s): %s", number, len(ladder), rung.name, shlex.join(argv))
            attempt = self.run_attempt(argv, env)
            code = exit_code(attempt.returncode)
            if not should_retry(attempt, stopping=self.stop_signal is not None):
                log.info("vllm exited with code %d (%s)", code, self._why_final(attempt))
                return code
            if number < len(ladder):
                log.warning(
                    "vllm failed during start-up: %s (exit code %d); retrying one rung down: %s",
                    attempt.failure,
                    code,
                    ladder[number].name,
                )
            else:
                log.error("vllm failed during start-up: %s (exit code %d)", attempt.failure, code)
        log.error("start-up ladder exhausted: vllm failed on all %d rungs", len(ladder))
        return EXIT_LADDER_EXHAUSTED

    def _why_final(self, attempt: Attempt) -> str:
        if self.stop_signal is not None:
            return f"stopped by {signal.Signals(self.stop_signal).name}"
        if attempt.started:
            return "after start-up: not retried"
        if attempt.returncode == 0:
            return "before serving"
        return "a start-up failure the ladder does not handle: see the output above"


def check_versions() -> tuple[list[str], list[str]]:
    """vllm_pins' check: (notes, problems); a problem when ``packaging`` cannot be imported."""
    try:
        # Imported here: vllm_pins needs packaging, and VLLM_SKIP_VERSION_CHECK=true must
        # start vLLM even in a Python whose packaging is missing or broken.
        from vllm_pins import verify_installed_versions
    except ImportError as exc:
        return [], [f"cannot read vLLM's pins: {exc} (packaging comes with vLLM's dependencies)"]
    return verify_installed_versions()


def _kill_process_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s [launch] %(levelname)s %(message)s",
    )
    try:
        config = load_config(os.environ, sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG

    vllm = shutil.which("vllm")
    if vllm is None:
        log.error("no `vllm` executable on PATH (%s)", os.environ.get("PATH", ""))
        return EXIT_NOT_FOUND

    if config.check_versions:
        notes, problems = check_versions()
        for note in notes:
            log.info("version check: %s", note)
        if problems:
            for problem in problems:
                log.error("version check: %s", problem)
            log.error("VLLM_SKIP_VERSION_CHECK=true starts vLLM anyway")
            return EXIT_VERSION_MISMATCH
    else:
        log.warning("version check skipped (VLLM_SKIP_VERSION_CHECK)")

    env = dict(os.environ)
    try:
        env.update(gpu_environment(config))
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    # Explicit, so that what vLLM imports cannot silently switch it between fork and spawn.
    env["VLLM_WORKER_MULTIPROC_METHOD"] = config.multiproc_method
    env["PYTHONUNBUFFERED"] = "1"  # its output goes through a pipe; see failures as they happen
    log.info("VLLM_WORKER_MULTIPROC_METHOD=%s", config.multiproc_method)

    ladder = build_ladder(config.utilization, config.kv_cache_bytes)
    if not config.retries:
        ladder = ladder[:1]
    launcher = Launcher(sys.stdout.buffer)
    launcher.install_signal_handlers()
    return launcher.run_ladder([vllm, "serve", config.model, *config.extra_args], ladder, env)


if __name__ == "__main__":
    sys.exit(main())
