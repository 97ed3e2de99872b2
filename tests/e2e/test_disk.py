"""The data dir under real file-system faults: full, read-only, not writable.

Each test gets a small file system of its own: a tmpfs mounted for the test
(it needs root, or CAP_SYS_ADMIN; without them the tests that need one skip
and say so). tmpfs behaves as a full disk does for the gateway: Qdrant Edge's
memory-mapped WAL segments are sparse there too, so a page the file system
cannot back is a SIGBUS, which is what killed the gateway before.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.datadir import MIB, check_data_dir, free_bytes, unwritable_message
from gateway.exceptions import DataDirProblem
from harness.fake_llm import RunningServer
from harness.process import Service, free_port, spawn, wait_until
from tests.support.stack import gateway_env, start_gateway

pytestmark = pytest.mark.e2e

FS_MB = 160
RESERVE_MB = 64


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_MB}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(fs: Path, leave_mb: float) -> Path:
    """A file that takes all but ``leave_mb`` of the file system."""
    filler = fs / f"filler-{uuid.uuid4().hex[:6]}"
    size = free_bytes(fs) - int(leave_mb * MIB)
    with filler.open("wb") as handle:
        while size > 0:
            try:
                os.posix_fallocate(handle.fileno(), 0, size)
                break
            except OSError as exc:  # the gateway wrote meanwhile: a little less
                if exc.errno != errno.ENOSPC:
                    raise
                size -= MIB
    return filler


def start_failing(data_dir: Path, llm_url: str, embedder_url: str) -> tuple[int, str]:
    """Start a gateway that should refuse to start: its exit code and log."""
    port = free_port()
    env = gateway_env(data_dir, llm_url, embedder_url, port)
    # The log lives outside the filled file system, which could not hold it.
    argv = [sys.executable, "-m", "gateway"]
    service = spawn("gateway", argv, log_dir=data_dir.parent.parent / "logs", port=port, env=env)
    try:
        code = service.proc.wait(60)
    except subprocess.TimeoutExpired:  # it started after all
        service.kill()
        return 0, service.log()
    return code, service.log()


def readyz(gateway: Service) -> dict[str, object]:
    body: dict[str, object] = httpx.get(f"{gateway.base_url}/readyz", timeout=5).json()
    return body


def test_a_full_disk_queues_or_refuses_writes_and_loses_nothing(
    small_fs: Path, llm: RunningServer, embedder: Service
) -> None:
    data_dir = small_fs / "data"
    gateway = start_gateway(data_dir, llm.url, embedder.url)
    url = f"{gateway.url}/memories"
    acknowledged: list[str] = []
    statuses: Counter[int | str] = Counter()

    def write(text: str) -> int:
        response = httpx.post(url, json={"user_id": "dora", "text": text}, timeout=30)
        statuses[response.status_code] += 1
        if response.status_code in (201, 202):
            acknowledged.append(text)
        else:
            assert response.status_code == 507, response.text
            assert response.json()["error"]["code"] == "insufficient_storage"
        return response.status_code

    try:
        assert write("before the disk filled") == 201
        low = fill(small_fs, leave_mb=RESERVE_MB / 2)

        def store_says_why() -> bool:
            store = readyz(gateway)["checks"]["vector_store"]  # type: ignore[index]
            return "disk full" in str(store["last_error"])

        wait_until(store_says_why, 10, what="the store reports the full disk")
        checks = readyz(gateway)["checks"]
        assert isinstance(checks, dict)
        assert (
            checks["data_dir"]["status"] == "low" and str(data_dir) in checks["data_dir"]["error"]
        )
        assert readyz(gateway)["status"] == "not_ready"
        assert write("while the disk was low") == 202  # waits in the outbox
        chat = {
            "model": "fake-model",
            "user": "dora",
            "messages": [{"role": "user", "content": "hi dora"}],
        }
        assert (
            httpx.post(f"{gateway.url}/chat/completions", json=chat, timeout=30).status_code == 200
        )
        acknowledged += ["hi dora", "echo: hi dora"]
        full = fill(small_fs, leave_mb=0)  # now nothing at all is left
        for i in range(5):
            write(f"on a full disk {i}")
        full_chat = {**chat, "messages": [{"role": "user", "content": "full disk dora"}]}
        turn = httpx.post(f"{gateway.url}/chat/completions", json=full_chat, timeout=30)
        assert turn.status_code == 200, turn.text  # the reply is never lost to the disk
        if turn.headers.get("x-memory-status") != "not_stored":
            acknowledged += ["full disk dora", "echo: full disk dora"]
        statuses[f"chat {turn.headers.get('x-memory-status', 'stored')}"] += 1
        assert gateway.proc.poll() is None, f"the gateway died: {gateway.proc.returncode}"
        full.unlink()
        low.unlink()
        wait_until(lambda: readyz(gateway)["status"] == "ready", 15, what="ready again")
        wait_until(
            lambda: readyz(gateway)["checks"]["outbox"]["depth"] == 0,  # type: ignore[index]
            60,
            what="outbox drained",
        )
        response = httpx.get(url, params={"user_id": "dora", "limit": 1000}, timeout=10)
        stored = Counter(m["memory"] for m in response.json()["results"])
        missing = [t for t in acknowledged if not stored[t]]
        doubled = [t for t, n in stored.items() if n > 1]
        summary = (
            f"disk full: answers {dict(statuses)}; {len(acknowledged)} acknowledged, "
            f"{sum(stored.values())} stored, {len(missing)} missing, {len(doubled)} duplicated"
        )
        print(f"\n{summary}")
        assert not missing and not doubled, summary
    finally:
        gateway.terminate()


def test_start_up_with_too_little_space_fails_with_one_clear_line(
    small_fs: Path, llm: RunningServer, embedder: Service
) -> None:
    data_dir = small_fs / "data"
    gateway = start_gateway(data_dir, llm.url, embedder.url)  # with data in it
    gateway.terminate()
    fill(small_fs, leave_mb=RESERVE_MB / 4)
    code, log = start_failing(data_dir, llm.url, embedder.url)
    lines = [line for line in log.splitlines() if str(data_dir) in line]
    print(f"\nexit {code}: {lines}")
    assert code not in (0, -7, 135), log[-2000:]  # non-zero, and not a SIGBUS
    assert len(lines) == 1 and "MiB free" in lines[0] and f"{RESERVE_MB} MiB" in lines[0], log


def test_a_read_only_data_dir_with_data_names_the_path(
    small_fs: Path, llm: RunningServer, embedder: Service
) -> None:
    data_dir = small_fs / "data"
    gateway = start_gateway(data_dir, llm.url, embedder.url)
    assert httpx.post(f"{gateway.url}/memories", json={"user_id": "u", "text": "t"}).status_code
    gateway.terminate()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    code, log = start_failing(data_dir, llm.url, embedder.url)
    lines = [line for line in log.splitlines() if str(data_dir) in line]
    print(f"\nexit {code}: {lines}")
    assert code != 0 and len(lines) == 1 and "read-only" in lines[0], log[-2000:]


def test_an_unwritable_data_dir_names_path_uid_and_remedy(
    tmp_path: Path, llm: RunningServer, embedder: Service
) -> None:
    """A bind mount owned by another user: the process may not write there."""
    data_dir = tmp_path / "owned-by-someone-else"
    data_dir.mkdir()
    if os.geteuid() == 0:
        # root writes anywhere a permission would stop it: a read-only bind
        # mount is how such a volume looks to root.
        bound = subprocess.run(
            ["mount", "--bind", "-o", "ro", str(data_dir), str(data_dir)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if bound.returncode != 0:
            pytest.skip(f"cannot bind-mount read-only here: {bound.stderr.strip()}")
    else:
        data_dir.chmod(0o555)
    try:
        code, log = start_failing(data_dir / "data", llm.url, embedder.url)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(data_dir)], check=False)
        data_dir.chmod(0o755)
    lines = [line for line in log.splitlines() if "data dir" in line]
    print(f"\nexit {code}: {lines}")
    assert code != 0 and len(lines) == 1, log[-2000:]
    assert str(data_dir / "data") in lines[0] and f"uid {os.getuid()}" in lines[0]
    assert "Traceback" not in log and "OperationalError" not in log


def test_the_permission_message_says_what_to_do(tmp_path: Path) -> None:
    message = unwritable_message(tmp_path, OSError(errno.EACCES, "Permission denied"))
    assert str(tmp_path) in message and f"uid {os.getuid()}" in message
    assert "fsGroup" in message and "chown" in message and "GATEWAY_DATA_DIR" in message
    with pytest.raises(DataDirProblem, match="MiB free"):
        check_data_dir(tmp_path / "d", reserve_bytes=1 << 62)


def test_a_damaged_outbox_stops_start_up_with_one_line_and_keeps_the_file(
    tmp_path: Path, llm: RunningServer, embedder: Service
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    outbox = data_dir / "outbox.sqlite3"
    damaged = os.urandom(8192)
    outbox.write_bytes(damaged)
    code, log = start_failing(data_dir, llm.url, embedder.url)
    lines = [line for line in log.splitlines() if str(outbox) in line]
    print(f"\nexit {code}: {lines}")
    assert code == 3 and len(lines) == 1 and "move the file aside" in lines[0], log[-2000:]
    assert "Traceback" not in log
    assert outbox.read_bytes() == damaged  # the queued writes in it are the operator's to save


def test_a_data_dir_removed_under_the_gateway_refuses_writes_instead_of_losing_them(
    tmp_path: Path, llm: RunningServer, embedder: Service
) -> None:
    # SQLite goes on writing to a file removed under it: every write answered
    # 202 ("queued") was lost at the next start, and the one stored before too.
    data_dir = tmp_path / "data"
    gateway = start_gateway(data_dir, llm.url, embedder.url)
    url = f"{gateway.url}/memories"
    try:
        stored = httpx.post(url, json={"user_id": "eve", "text": "before"}, timeout=30)
        assert stored.status_code == 201, stored.text
        assert httpx.get(f"{gateway.base_url}/livez", timeout=5).status_code == 200
        shutil.rmtree(data_dir)

        refused = httpx.post(url, json={"user_id": "eve", "text": "after"}, timeout=30)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "outbox_unavailable"
        assert "restart the gateway" in refused.json()["error"]["message"]
        assert refused.headers["retry-after"]
        chat = {"model": "fake-model", "user": "eve",
                "messages": [{"role": "user", "content": "hi eve"}]}  # fmt: skip
        turn = httpx.post(f"{gateway.url}/chat/completions", json=chat, timeout=30)
        assert turn.status_code == 200, turn.text  # the reply itself is never lost
        assert turn.headers["x-memory-status"] == "not_stored"

        live = httpx.get(f"{gateway.base_url}/livez", timeout=5)
        assert (live.status_code, live.json()) == (503, {"status": "failed"})
        assert readyz(gateway)["status"] == "not_ready"
        assert readyz(gateway)["checks"]["data_dir"]["status"] == "lost"  # type: ignore[index]
    finally:
        gateway.terminate()
