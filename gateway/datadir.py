"""The data dir: can the gateway write there, and is there room?

Unchecked, two failures look like something else. A directory the process
cannot write (a bind mount owned by another user, a Kubernetes volume
without ``fsGroup``) surfaced as ``sqlite3.OperationalError: unable to open
database file``. A full disk killed the process with SIGBUS, no log line:
Qdrant Edge writes its WAL through memory-mapped, preallocated segments
(32 MiB each), and a page of one that the file system cannot back kills the
process when touched.

So, before anything opens a file there, ``check_data_dir`` makes sure the
directory exists, is writable by this process and has ``reserve_bytes``
free, and otherwise raises ``DataDirProblem`` with one line naming the
path, the uid and what to do. While running, ``DiskSpace`` is what the
Edge store asks before each write: below the reserve, it refuses the write
(the memory waits in the outbox, a small SQLite file that fails cleanly
when the disk is full) and reports why in ``/readyz``, instead of letting
the engine run the disk dry under its mmaps.

One gateway process owns a data dir (``hold_data_dir``): a second one on
the same directory stops start-up with one line.

The SQLite files kept there (the outbox, the model registry) are checked at
start the same way (``check_database``): one that is damaged, or that another
process holds a write lock on, stops start-up with one line saying which file
and what to do, rather than a traceback, or a wait out SQLite's busy timeout.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gateway.exceptions import DataDirProblem

MIB = 1 << 20
# How long start-up waits for another process's write lock on a database to end.
LOCK_WAIT_S = 2.0


def _who() -> str:
    return f"uid {os.getuid()} (gid {os.getgid()})"


def unwritable_message(path: Path, exc: OSError) -> str:
    """What to tell the operator when ``path`` cannot be written."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EROFS:
        return (
            f"the data dir {path} is on a read-only file system ({reason}); the gateway "
            f"runs as {_who()} and must write there: mount it read-write, or set "
            "GATEWAY_DATA_DIR to a writable directory"
        )
    if exc.errno == errno.ENOSPC:
        return (
            f"the data dir {path} has no space left ({reason}): free space there or "
            "give the gateway a larger volume"
        )
    return (
        f"the data dir {path} is not writable by the gateway, which runs as {_who()} "
        f"({reason}): make it writable by that user (e.g. chown -R {os.getuid()}:"
        f"{os.getgid()} {path} on the host; in Kubernetes set the pod's "
        f"securityContext.fsGroup to {os.getgid()}), or set GATEWAY_DATA_DIR to a "
        "directory it can write (see docs/deployment.md, 'The data directory')"
    )


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def check_data_dir(path: Path, reserve_bytes: int) -> None:
    """Create ``path`` if needed; raise DataDirProblem unless this process can
    write there and ``reserve_bytes`` are free."""
    path = path.absolute()
    if path.exists() and not path.is_dir():  # else "not writable (File exists)": misleading
        raise DataDirProblem(
            f"the data dir {path} is not a directory: set GATEWAY_DATA_DIR to a directory "
            "(it is created if missing)"
        )
    try:
        # Its own user only: the outbox and the Edge shard hold every memory's text,
        # and under the default umask they were readable by every user of the host.
        # An existing directory (a volume, a bind mount) keeps the mode it was given.
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"memgate")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise DataDirProblem(unwritable_message(path, exc)) from exc
    for existing in path.iterdir():  # files left by an earlier run (maybe as another user)
        if existing.is_file() and not os.access(existing, os.R_OK | os.W_OK):
            denied = OSError(errno.EACCES, f"cannot write {existing.name}")
            raise DataDirProblem(unwritable_message(path, denied))
    free = free_bytes(path)
    if free < reserve_bytes:
        raise DataDirProblem(
            f"only {free / MIB:.1f} MiB free under the data dir {path}; the gateway needs "
            f"at least {reserve_bytes / MIB:.0f} MiB there to run safely "
            "(GATEWAY_DISK_RESERVE_MB): free space or give it a larger volume"
        )


LOCK_FILE = "gateway.lock"  # under the data dir


def hold_data_dir(path: Path) -> IO[str]:
    """Take the data dir for this process, or raise DataDirProblem when another
    gateway holds it. Two gateways on one outbox would each replay and delete
    the other's rows (with a Qdrant server nothing else would stop them;
    Qdrant Edge's own lock stopped only an Edge one, and only once the app had
    started, in a traceback). An advisory lock: the kernel drops it when the
    process ends, however it ends. Keep the handle open as long as the process
    serves."""
    handle = (path / LOCK_FILE).open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise DataDirProblem(f"cannot lock the data dir {path} ({exc.strerror})") from exc
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise DataDirProblem(
            f"the data dir {path} is in use by another gateway process{by}: give each "
            "gateway its own GATEWAY_DATA_DIR (several gateways share a Qdrant server, "
            "never a data dir)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def check_database(path: Path, holds: str) -> None:
    """Raise DataDirProblem unless ``path`` (if it exists) is an SQLite database
    this process can write now; ``holds`` says what is in it, for the message."""
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(path, timeout=LOCK_WAIT_S, isolation_level=None)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            conn.execute("BEGIN IMMEDIATE")  # a write lock, as the gateway will need
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise DataDirProblem(database_message(path, holds, exc)) from exc


def database_message(path: Path, holds: str, exc: sqlite3.Error) -> str:
    """What to tell the operator when the database at ``path`` cannot be used."""
    if getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return (
            f"{path} ({holds}) is locked by another process ({exc}): stop it (a second "
            "gateway on the same data dir, a backup, an open sqlite3 shell) and start again"
        )
    return (
        f"{path} ({holds}) cannot be read as an SQLite database ({exc}): stop the "
        f"gateway, move the file aside (keep it: it holds {holds}; `sqlite3 FILE "
        ".recover` may save its rows) and start again with none"
    )


@dataclass(frozen=True)
class DiskSpace:
    """Free space under ``path``, against the reserve writes must leave."""

    path: Path
    reserve_bytes: int

    def problem(self, removal: bool = False) -> str | None:
        """Why writes (``removal``: deletes) must stop now, or None. One statvfs
        call: microseconds.

        A delete or a forget may use half the reserve: it writes a few bytes of
        WAL into a preallocated segment, the other half still covers a new
        segment, and it is what frees the space and what a user asks for
        when a disk runs short."""
        try:
            free = free_bytes(self.path)
        except OSError as exc:
            return f"cannot read the free space of {self.path}: {exc}"
        needed = self.reserve_bytes // 2 if removal else self.reserve_bytes
        if free >= needed:
            return None
        what = "deletes" if removal else "writes"
        return (
            f"disk full: {free / MIB:.1f} MiB free under {self.path}, {what} need "
            f"{needed / MIB:.0f} MiB (GATEWAY_DISK_RESERVE_MB); "
            "memory writes wait in the outbox until space is freed"
        )
