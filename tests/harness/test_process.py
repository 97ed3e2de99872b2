"""The process wrapper the tests and the benchmarks share: start, wait, log, stop."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from harness.process import free_port, pinned, spawn


def python(code: str) -> list[str]:
    return [sys.executable, "-u", "-c", code]


IGNORES_SIGTERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready")
time.sleep(60)
"""


def test_terminate_stops_a_process_with_sigterm(tmp_path: Path) -> None:
    service = spawn(
        "sleeper", python("import time; print('ready'); time.sleep(60)"), log_dir=tmp_path
    )
    service.wait_line("ready", 30)
    assert service.terminate() == -signal.SIGTERM


def test_terminate_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    service = spawn("stubborn", python(IGNORES_SIGTERM), log_dir=tmp_path)
    service.wait_line("ready", 30)
    assert service.terminate(timeout=0.5) == -signal.SIGKILL


def test_kill_is_sigkill(tmp_path: Path) -> None:
    with spawn("sleeper", python(IGNORES_SIGTERM), log_dir=tmp_path) as service:
        service.wait_line("ready", 30)
        assert service.kill() == -signal.SIGKILL
        assert service.kill() == -signal.SIGKILL  # already dead: its code again


def test_wait_for_answers_once_the_server_listens(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with spawn("http", argv, log_dir=tmp_path, port=port, cwd=tmp_path) as service:
        assert service.wait_for("/", 30) is service
        assert service.base_url == f"http://127.0.0.1:{port}"
        assert service.wait_for("/missing", 5, status=404) is service


def test_a_process_that_exits_while_waited_for_shows_its_log(tmp_path: Path) -> None:
    service = spawn(
        "crasher", python("print('bad setting: X'); raise SystemExit(3)"), log_dir=tmp_path
    )
    with pytest.raises(RuntimeError, match=r"crasher exited with 3:\nbad setting: X"):
        service.wait_for("/health", 30)


def test_a_process_that_is_not_ready_in_time_is_killed(tmp_path: Path) -> None:
    service = spawn(
        "slow", python("import time; print('loading'); time.sleep(60)"), log_dir=tmp_path
    )
    service.wait_line("loading", 30)
    with pytest.raises(
        TimeoutError, match=r"slow not ready \(printing 'never'\) after 0.2 s:\nloading"
    ):
        service.wait_line("never", 0.2)
    assert service.proc.poll() == -signal.SIGKILL


def test_each_start_has_a_log_of_its_own(tmp_path: Path) -> None:
    first = spawn("same", python("print('first')"), log_dir=tmp_path, port=1234)
    first.proc.wait()
    second = spawn("same", python("print('second')"), log_dir=tmp_path, port=1234)
    second.proc.wait()
    assert first.log_path != second.log_path
    assert (first.log(), second.log()) == ("first\n", "second\n")
    assert first.log_path.name.startswith("same-1234-")


def test_the_environment_is_ours_plus_offline_plus_the_overrides(tmp_path: Path) -> None:
    code = (
        "import os; print(os.environ['HF_HUB_OFFLINE'], os.environ['X_TEST'], os.environ['PATH'])"
    )
    service = spawn("env", python(code), log_dir=tmp_path, env={"X_TEST": "given"})
    service.proc.wait()
    assert service.log() == f"1 given {os.environ['PATH']}\n"


def test_pinned_runs_under_taskset_only_when_asked_and_useful() -> None:
    assert pinned(None, ["x"]) == ["x"]
    useful = shutil.which("taskset") is not None and (os.cpu_count() or 1) > 1
    assert pinned("0", ["x"]) == (["taskset", "-c", "0", "x"] if useful else ["x"])
