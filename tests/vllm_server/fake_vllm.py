"""A stand-in for the ``vllm`` executable, driven by the launcher tests.

Each run is one start attempt. It appends {"argv", "env", "pid"} to
$FAKE_VLLM_STATE/calls.jsonl, then acts out the step of the comma-separated
$FAKE_VLLM_PLAN that belongs to this attempt (the first run takes the first step):

  serve            print uvicorn's start-up line, then wait for SIGTERM/SIGINT
  serve-then-oom   print the start-up line, then die of CUDA OOM (a runtime crash)
  profiling        die with vLLM's memory-profiling assertion
  oom              die with torch's CUDA out-of-memory error
  freemem          die with "less than desired GPU memory utilization"
  oom-orphan       start a worker that outlives us (holding our stdout), then die of OOM
  wait-then-oom    print "loading", wait for a signal, then die of OOM
  crash            die with an error the launcher's ladder does not know
  exit:N           exit with N at once

A received signal is appended to $FAKE_VLLM_STATE/signals.txt.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

STATE = Path(os.environ["FAKE_VLLM_STATE"])
RECORDED_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "VLLM_WORKER_MULTIPROC_METHOD")

PROFILING = (
    "AssertionError: Error in memory profiling. Initial free memory 40.1 GiB, current free "
    "memory 41.5 GiB. This happens when other processes sharing the same container release "
    "GPU memory while vLLM is profiling during initialization."
)
OOM = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a "
    "total capacity of 79.19 GiB of which 312.00 MiB is free."
)
FREEMEM = (
    "ValueError: Free memory on device (12.3/79.19 GiB) on startup is less than desired GPU "
    "memory utilization (0.9, 71.27 GiB). Decrease GPU memory utilization or reduce GPU "
    "memory used by other processes."
)
STARTED = "INFO:     Application startup complete."
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def record() -> int:
    calls = STATE / "calls.jsonl"
    entry = {
        "argv": sys.argv[1:],
        "env": {name: os.environ.get(name) for name in RECORDED_ENV},
        "pid": os.getpid(),
    }
    with calls.open("a") as f:
        f.write(json.dumps(entry) + "\n")
    return len(calls.read_text().splitlines())


def say(line: str, stream: object = sys.stdout) -> None:
    print(line, file=stream, flush=True)  # type: ignore[call-overload]


def die(message: str) -> None:
    say("Traceback (most recent call last):", sys.stderr)
    say('  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/worker/gpu_worker.py"', sys.stderr)
    say(message, sys.stderr)
    sys.exit(1)


def wait_for_signal() -> str:
    """Wait for SIGTERM/SIGINT; they are blocked since start-up, so none is missed."""
    name = signal.Signals(signal.sigwait(STOP_SIGNALS)).name
    with (STATE / "signals.txt").open("a") as f:
        f.write(name + "\n")
    return name


def main() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    attempt = record()
    plan = os.environ["FAKE_VLLM_PLAN"].split(",")
    step = plan[min(attempt, len(plan)) - 1]
    say(f"fake vllm attempt {attempt}: {step}")
    if step == "serve":
        say(STARTED)
        name = wait_for_signal()
        say(f"shutting down on {name}")
        sys.exit(0)
    if step == "serve-then-oom":
        say(STARTED)
        die(OOM)
    if step == "profiling":
        die(PROFILING)
    if step == "oom":
        die(OOM)
    if step == "freemem":
        die(FREEMEM)
    if step == "oom-orphan":
        # Inherits our blocked signals and our stdout: only SIGKILL of the group ends it.
        worker = subprocess.Popen([sys.executable, "-S", "-c", "import signal; signal.pause()"])
        (STATE / "worker.pid").write_text(str(worker.pid))
        die(OOM)
    if step == "wait-then-oom":
        say("loading model weights")
        wait_for_signal()
        die(OOM)
    if step == "crash":
        die("RuntimeError: Engine core initialization failed. See root cause above.")
    if step.startswith("exit:"):
        sys.exit(int(step.split(":", 1)[1]))
    raise SystemExit(f"fake vllm: unknown plan step {step!r}")


if __name__ == "__main__":
    main()
