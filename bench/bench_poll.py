"""How long one poll takes: idle (nothing changed) and after one new generation.

Runs the real CursorDatabaseMonitor in-process against real SQLite files and a real Redis
(``--redis-url``, default the machine's Redis, logical DB 12, flushed first), with N active
workspaces whose databases hold a full ring of 100 generations.

    .venv/bin/python bench/bench_poll.py --workspaces 1 10 50 --rounds 50

Writes ``bench/results/poll.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.cursor_db import UserDir  # noqa: E402

from blueplane.config import CursorDatabaseMonitorConfig  # noqa: E402
from blueplane.cursor.database_monitor import CursorDatabaseMonitor  # noqa: E402
from blueplane.cursor.session_monitor import SessionMonitor  # noqa: E402
from blueplane.cursor.workspace_mapper import WorkspaceMapper  # noqa: E402
from blueplane.events import SessionEvent  # noqa: E402
from blueplane.health import Health  # noqa: E402
from blueplane.publisher import Publisher  # noqa: E402

STREAM = "telemetry:events"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_case(redis_url: str, n_workspaces: int, rounds: int, journal_mode: str) -> dict:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    with tempfile.TemporaryDirectory() as tmp:
        user = UserDir(Path(tmp) / "User")
        user.workspace_storage.mkdir(parents=True)
        health = Health()
        sessions = SessionMonitor(client, STREAM, Path(tmp) / "sess", health, block_ms=None)
        await sessions.load()
        spaces = []
        for i in range(n_workspaces):
            folder = Path(tmp) / "projects" / f"p{i}"
            folder.mkdir(parents=True)
            ws = user.add_workspace(str(folder), journal_mode=journal_mode)
            ws.db.append_generations(100)
            spaces.append(ws)
            ev = SessionEvent.build("session_start", str(folder), f"s{i}")
            await client.xadd(STREAM, ev.to_fields())
        await sessions.read_once()
        cfg = CursorDatabaseMonitorConfig(max_concurrent_workspaces=10)
        mapper = WorkspaceMapper([user.path], Path(tmp) / "cache.json")
        monitor = CursorDatabaseMonitor(
            cfg, sessions, mapper, Publisher(client, STREAM, 86400), health
        )
        t0 = time.perf_counter()
        await monitor.poll_once()  # the initial sync of every workspace
        first_ms = (time.perf_counter() - t0) * 1000
        idle: list[float] = []
        changed: list[float] = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await monitor.poll_once()
            idle.append((time.perf_counter() - t0) * 1000)
            spaces[0].db.append_generations(1)
            t0 = time.perf_counter()
            await monitor.poll_once()
            changed.append((time.perf_counter() - t0) * 1000)
        published = await client.xlen(STREAM) - n_workspaces
        expected = n_workspaces * 100 + rounds
        for ws in spaces:
            ws.db.close()
    await client.aclose()
    return {
        "workspaces": n_workspaces,
        "journal_mode": journal_mode,
        "rounds": rounds,
        "initial_sync_ms": round(first_ms, 2),
        "idle_poll_ms_p50": round(statistics.median(idle), 3),
        "idle_poll_ms_p95": round(pct(idle, 0.95), 3),
        "changed_poll_ms_p50": round(statistics.median(changed), 3),
        "changed_poll_ms_p95": round(pct(changed, 0.95), 3),
        "traces_published": published,
        "traces_expected": expected,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--workspaces", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "poll.json")
    args = ap.parse_args(argv)
    results = []
    for mode in ("delete", "wal"):
        for n in args.workspaces:
            results.append(asyncio.run(run_case(args.redis_url, n, args.rounds, mode)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "platform": platform.platform()}
    args.out.write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    print("| workspaces | journal | initial sync | idle poll p50 / p95 | changed poll p50 / p95 |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['workspaces']} | {r['journal_mode']} | {r['initial_sync_ms']} ms | "
            f"{r['idle_poll_ms_p50']} / {r['idle_poll_ms_p95']} ms | "
            f"{r['changed_poll_ms_p50']} / {r['changed_poll_ms_p95']} ms |"
        )
        if r["traces_published"] != r["traces_expected"]:
            print(f"  MISMATCH: published {r['traces_published']} != {r['traces_expected']}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
