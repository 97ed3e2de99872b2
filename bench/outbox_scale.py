"""The outbox's per-user lookups at depth: do they scan the whole queue?

    .venv/bin/python -m bench.outbox_scale --label after [--depth 200000]
        [--users 10000] [--lookups 2000] [--cpus 0] [--out bench/results/outbox_scale.json]

An outbox is filled with ``--depth`` entries (a chat turn each: two memories
of about 60 characters) of ``--users`` users, written straight into its
SQLite file in one transaction (``put`` commits each entry with an fsync,
which is not what is measured), then opened as the gateway opens it. Timed,
per call, for users picked at random:

* ``pending_seqs``: which of a user's entries wait; ``wait_stored`` asks it
  on every recall and API write of a user with queued writes, and ``purge``
  (forget) too;
* ``pending``: how many wait (the check that comes first);
* ``is_pending`` over the user's entries, as ``wait_stored`` polls them;
* ``find`` and ``drop`` of one queued memory by its id alone, without its
  user (``GET`` / ``DELETE /v1/memories/{id}``);
* ``purge`` of one user (forget), and ``open`` (start-up).

Each run is stored under its ``--label`` in the results file, next to the
runs already there, so ``before`` (run at the commit before the per-user
index) and ``after`` sit side by side with their own git revisions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procs
from gateway.memory.outbox import Outbox
from gateway.memory.outbox_rows import decode_memories
from gateway.memory.outbox_schema import index_ids
from gateway.memory.records import Scope, memory_id

TENANT = "default"


def pct(values: list[float]) -> dict[str, float]:
    xs = sorted(values)

    def at(p: float) -> float:
        return xs[min(len(xs) - 1, round(p / 100 * len(xs) + 0.5) - 1)]

    return {"p50": at(50), "p95": at(95), "p99": at(99), "mean": statistics.fmean(xs)}


def turn_text(i: int, users: int) -> str:
    return f"turn {i} question of user {i % users} about the weather"


def fill(path: Path, depth: int, users: int) -> None:
    box = Outbox(path)
    box.open()  # the schema, as the gateway makes it
    box.close()
    now = time.time()
    rows = []
    for i in range(depth):
        memories = [
            {"text": turn_text(i, users),
             "created_at": "2024-01-01T00:00:00+00:00", "metadata": {}, "session_id": "s",
             "role": role, "source": "chat"}
            for role in ("user", "assistant")
        ]  # fmt: skip
        rows.append((TENANT, f"user-{i % users}", json.dumps(memories), now))
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO outbox (tenant, user_id, memories, enqueued_at) VALUES (?, ?, ?, ?)", rows
        )
        for seq, (tenant, user_id, raw, _) in enumerate(rows, start=1):  # as ``put`` does
            index_ids(conn, seq, Scope(tenant, user_id), decode_memories(raw))
    conn.close()


def migrate_ms(path: Path) -> float:
    """Open a file as a gateway from before the id index left it: the index is
    filled from the rows."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM queued_ids")
    conn.close()
    box = Outbox(path)
    took, _ = timed_ms(box.open)
    box.close()
    return took


def timed_ms(fn: Any, *args: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    result = fn(*args)
    return (time.perf_counter() - t) * 1000, result


def polled(box: Outbox, seqs: set[int]) -> bool:
    """What ``wait_stored`` asks each time the outbox changes."""
    return any(box.is_pending(seq) for seq in seqs)


def measure(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    box = Outbox(path)
    open_ms, _ = timed_ms(box.open)
    assert box.depth == args.depth, box.depth
    rng = random.Random(3)
    seqs_ms, count_ms, polled_ms = [], [], []
    for _ in range(args.lookups):
        scope = Scope(TENANT, f"user-{rng.randrange(args.users)}")
        took, _ = timed_ms(box.pending, scope)
        count_ms.append(took)
        took, seqs = timed_ms(box.pending_seqs, scope)
        seqs_ms.append(took)
        assert len(seqs) == args.depth // args.users, len(seqs)
        took, _ = timed_ms(polled, box, seqs)
        polled_ms.append(took)
    find_ms, drop_ms = [], []
    for _ in range(args.finds):
        i = rng.randrange(args.purges, args.depth)  # not a user the purges below forget
        scope = Scope(TENANT, f"user-{i % args.users}")
        wanted = memory_id(scope, turn_text(i, args.users))
        t = time.perf_counter()
        found = asyncio.run(box.find(TENANT, wanted))
        find_ms.append((time.perf_counter() - t) * 1000)
        assert found is not None and found.user_id == scope.user_id, found
        t = time.perf_counter()
        owner = asyncio.run(box.drop(TENANT, wanted))
        drop_ms.append((time.perf_counter() - t) * 1000)
        assert owner == scope.user_id, owner
    purge_ms = []
    for u in range(args.purges):
        t = time.perf_counter()
        asyncio.run(box.purge(Scope(TENANT, f"user-{u}")))
        purge_ms.append((time.perf_counter() - t) * 1000)
    box.close()
    return {"open_ms": open_ms, "pending_seqs_ms": pct(seqs_ms), "pending_ms": pct(count_ms),
            "is_pending_poll_ms": pct(polled_ms), "purge_ms": pct(purge_ms),
            "find_ms": pct(find_ms), "drop_ms": pct(drop_ms),
            "git": procs.git_rev(), "machine": procs.machine_info(),
            "command": "python -m bench.outbox_scale " + " ".join(sys.argv[1:])}  # fmt: skip


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# Outbox: per-user lookups at depth",
        "",
        f"{data['depth']:,} queued entries of {data['users']:,} users "
        f"({data['depth'] // data['users']} each); lookups of random users (2,000 unless the "
        "command's `--lookups` says otherwise), 50 finds and drops by id alone. "
        "Milliseconds per call.",
        "",
        "| run | git | load average | open | pending_seqs p50 / p99 | pending p50 / p99 "
        "| is_pending poll p50 / p99 | purge p50 / p99 | find by id p50 / p99 "
        "| drop by id p50 / p99 | first open after the id index came |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in data["runs"].items():
        cells = [
            f"{r[key]['p50']:.4f} / {r[key]['p99']:.4f}" if key in r else "not measured"
            for key in (
                "pending_seqs_ms", "pending_ms", "is_pending_poll_ms", "purge_ms",
                "find_ms", "drop_ms",
            )
        ]  # fmt: skip
        migrate = f"{r['migrate_ms']:,.0f}" if "migrate_ms" in r else "not measured"
        lines.append(
            f"| {label} | {r['git']} | {r['machine']['loadavg']} | {r['open_ms']:,.0f} | "
            + " | ".join([*cells, migrate])
            + " |"
        )
    lines += ["", "Commands:", ""]
    lines += [f"* {label}: `{r['command']}`" for label, r in data["runs"].items()]
    lines += ["", *data.get("notes", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--label", required=True)
    p.add_argument("--depth", type=int, default=200_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--lookups", type=int, default=2_000)
    p.add_argument("--purges", type=int, default=20)
    p.add_argument("--finds", type=int, default=50, help="finds and drops by id alone")
    p.add_argument("--cpus", default="0")
    p.add_argument("--out", type=Path, default=procs.RESULTS / "outbox_scale.json")
    args = p.parse_args()
    procs.pin_self(args.cpus, "bench.outbox_scale")
    data: dict[str, Any] = {"depth": args.depth, "users": args.users}
    if args.out.exists():
        data = {**json.loads(args.out.read_text()), **data}
    procs.WORK.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="outbox-", dir=procs.WORK))
    try:
        fill(work / "outbox.sqlite3", args.depth, args.users)
        run = measure(work / "outbox.sqlite3", args)
        run["migrate_ms"] = migrate_ms(work / "outbox.sqlite3")
    finally:
        shutil.rmtree(work)
    run["loadavg_end"] = procs.loadavg()
    data["runs"] = {**data.get("runs", {}), args.label: run}
    procs.write_json(args.out, data)
    args.out.with_suffix(".md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
