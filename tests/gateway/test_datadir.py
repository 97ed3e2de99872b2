"""The SQLite files under the data dir are checked at start: damaged or locked
ones stop it with one line naming the file and what to do."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import __main__ as entry
from gateway.datadir import check_data_dir, check_database, hold_data_dir
from gateway.exceptions import DataDirProblem


def test_a_missing_or_sound_database_passes(tmp_path: Path) -> None:
    check_database(tmp_path / "none.sqlite3", "nothing")
    sqlite3.connect(tmp_path / "ok.sqlite3").execute("CREATE TABLE t (x)").connection.close()
    check_database(tmp_path / "ok.sqlite3", "rows")


def test_a_damaged_database_names_the_file_and_says_move_it_aside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"\x00not sqlite at all" * 100)
    with pytest.raises(DataDirProblem) as raised:
        check_database(path, "the memory writes not stored yet")
    message = str(raised.value)
    assert str(path) in message and "move the file aside" in message
    assert "the memory writes not stored yet" in message and "\n" not in message


def test_a_database_another_process_locks_says_which_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "outbox.sqlite3"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN IMMEDIATE")
    monkeypatch.setattr("gateway.datadir.LOCK_WAIT_S", 0.05)
    try:
        with pytest.raises(DataDirProblem, match="locked by another process"):
            check_database(path, "queued writes")
    finally:
        other.execute("ROLLBACK")
        other.close()
    check_database(path, "queued writes")  # the lock is gone: fine


def test_start_up_stops_with_exit_3_and_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    (tmp_path / "models.sqlite3").write_bytes(b"garbage" * 1000)
    assert entry.main() == 3
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("memgate: ") and str(tmp_path / "models.sqlite3") in line


def test_a_data_dir_that_is_a_file_is_named_as_not_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_text("not a directory")
    with pytest.raises(DataDirProblem, match=f"^the data dir {path} is not a directory"):
        check_data_dir(path, 0)


def test_a_data_dir_belongs_to_one_process_until_it_dies_however_it_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDS, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(
            DataDirProblem, match=f"in use by another gateway process \\(pid {holder.pid}\\)"
        ):
            hold_data_dir(tmp_path)
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own
        holder.wait()
    hold_data_dir(tmp_path).close()  # the kernel dropped the lock with the process


HOLDS = """
import sys, time
from pathlib import Path
from gateway.datadir import hold_data_dir
handle = hold_data_dir(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(60)
"""


def test_a_data_dir_made_at_start_is_its_users_alone(tmp_path: Path) -> None:
    # Made 0755 under the default umask, with the outbox and the Edge shard 0644
    # in it: every user of the host could read every memory's text.
    check_data_dir(tmp_path / "data", 0)
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    (tmp_path / "volume").mkdir(mode=0o755)  # given by the operator: left as it is
    check_data_dir(tmp_path / "volume", 0)
    assert (tmp_path / "volume").stat().st_mode & 0o777 == 0o755
