"""Benchmark: polling a ≥ 1 GB global database with ≥ 200,000 bubbles.

Builds ``/tmp/blueplane-bench/User/globalStorage/state.vscdb`` once (WAL, Cursor's DDL; reused
when present), then drives the real CursorDatabaseMonitor with a real Redis (DB 14, flushed)
and one active session, and reports:

- the first poll (catch-up: the whole file read in short batches, recent items published);
- an idle poll (nothing written: the file is not even opened);
- a poll after an unrelated write (fingerprint changed, no new bubble: ``MAX(rowid)`` only);
- a poll after one new bubble;
- values read by each poll (counted at the layouts' ``fetch``) and peak memory
  (tracemalloc over the steady-state polls; ``ru_maxrss`` of the whole run).

Run: ``.venv/bin/python bench/bench_global_db.py`` → ``bench/results/global_db.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sqlite3
import sys
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.cursor_db import (  # noqa: E402
    CursorDb,
    make_assistant_bubble,
    make_user_dir,
    make_workspace_identifier,
)

from blueplane.config import CursorDatabaseMonitorConfig  # noqa: E402
from blueplane.cursor.database_monitor import CursorDatabaseMonitor  # noqa: E402
from blueplane.cursor.layouts import ALL_LAYOUTS  # noqa: E402
from blueplane.cursor.session_monitor import SessionMonitor  # noqa: E402
from blueplane.cursor.workspace_mapper import WorkspaceMapper  # noqa: E402
from blueplane.events import SessionEvent  # noqa: E402
from blueplane.health import Health  # noqa: E402
from blueplane.publisher import Publisher  # noqa: E402

BASE = Path(os.environ.get("BLUEPLANE_BENCH_DIR", "/tmp/blueplane-bench"))
REDIS_URL = "redis://127.0.0.1:6379/14"
STREAM = "telemetry:events"
COMPOSERS = 2_000
BUBBLES_PER_COMPOSER = 105  # 210,000 bubbles
BUBBLE_TEXT = 4_600  # characters of text per bubble: ≈ 1 GB in all
RECENT = 500  # bubbles inside the sync window (the last ones written)
RESULTS = ROOT / "bench" / "results" / "global_db.json"


def _bubble(cid: str, i: int, t_ms: int, filler: str) -> tuple[str, str]:
    bid = str(uuid.uuid4())
    btype = 1 if i % 2 == 0 else 2
    value: dict[str, Any] = {
        "_v": 3,
        "type": btype,
        "bubbleId": bid,
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t_ms / 1000)),
        "text": filler[i % 97 :] + filler[: i % 97],
    }
    if btype == 2:
        value.update(
            requestId=str(uuid.uuid4()),
            tokenCount={"inputTokens": 1000 + i, "outputTokens": 80},
            timingInfo={"clientRpcSendTime": t_ms - 900, "clientEndTime": t_ms},
            modelInfo={"modelName": "claude-4.5-sonnet"},
        )
    return f"bubbleId:{cid}:{bid}", json.dumps(value, separators=(",", ":"))


def build(
    storage_id: str,
    folder: str,
    *,
    path: Path | None = None,
    composers: int = COMPOSERS,
    bubbles_per_composer: int = BUBBLES_PER_COMPOSER,
    bubble_text: int = BUBBLE_TEXT,
    recent: int = RECENT,
    min_bytes: int = 1_000_000_000,
    workspaces: list[tuple[str, str]] | None = None,
) -> Path:
    """Write the big global database once; reuse it when present (at least ``min_bytes``).

    The keywords let other benchmarks (``bench_live.py``) build other sizes; ``workspaces``
    lists ``(storage_id, folder)`` pairs the composers are attributed to in turn (default: the
    one ``storage_id``/``folder``).
    """
    path = path or BASE / "User" / "globalStorage" / "state.vscdb"
    if path.is_file() and path.stat().st_size >= min_bytes:
        return path
    owners = workspaces or [(storage_id, folder)]
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    started = time.perf_counter()
    db = CursorDb(path, "wal", tables=("ItemTable", "cursorDiskKV"), persistent=False)
    del db
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    lorem = "lorem ipsum dolor sit amet, consectetur adipiscing elit. "
    filler = (lorem * (bubble_text // len(lorem) + 2))[:bubble_text]
    now = int(time.time() * 1000)
    total = composers * bubbles_per_composer
    n = 0
    for c in range(composers):
        cid = str(uuid.uuid4())
        rows = []
        headers = []
        for i in range(bubbles_per_composer):
            n += 1
            # Old bubbles first; only the last RECENT ones fall inside the sync window.
            t_ms = now - 10 * 86_400_000 + n if n <= total - recent else now - (total - n) * 10
            key, value = _bubble(cid, i, t_ms, filler)
            rows.append((key, value))
            headers.append({"bubbleId": key.rsplit(":", 1)[1], "type": 1 if i % 2 == 0 else 2})
        composer = {
            "_v": 10,
            "composerId": cid,
            "name": f"composer {c}",
            "status": "completed",
            "createdAt": now - 10 * 86_400_000,
            "lastUpdatedAt": now - 10 * 86_400_000 if c < composers - 10 else now,
            "fullConversationHeadersOnly": headers,
            "workspaceIdentifier": make_workspace_identifier(*owners[c % len(owners)]),
        }
        rows.append((f"composerData:{cid}", json.dumps(composer, separators=(",", ":"))))
        rows.append((f"checkpointId:{cid}:{uuid.uuid4()}", "x" * 800))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO cursorDiskKV VALUES (?, ?)", rows)
        conn.execute("COMMIT")
    conn.execute("INSERT INTO ItemTable VALUES ('cursorAuth/accessToken', 'FAKE')")
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    print(f"built {path} in {time.perf_counter() - started:.1f} s", flush=True)
    return path


class ValueCounter:
    """Counts values the layouts fetch (rows with a value loaded), per poll."""

    def __init__(self) -> None:
        self.values = 0
        for layout in ALL_LAYOUTS:
            original = layout.fetch

            def wrapped(conn: Any, wm: Any, _orig: Any = original) -> Any:
                raw = _orig(conn, wm)
                self.values += int(getattr(raw, "values_read", 0) or 0)
                return raw

            object.__setattr__(layout, "fetch", wrapped)


async def main() -> dict[str, Any]:
    ud = make_user_dir(BASE)
    folder = BASE / "project"
    folder.mkdir(parents=True, exist_ok=True)
    existing = [p for p in ud.workspace_storage.glob("*/workspace.json")]
    ws = None if existing else ud.add_workspace(str(folder))
    storage_id = existing[0].parent.name if existing else ws.id  # type: ignore[union-attr]
    t0 = time.perf_counter()
    gpath = build(storage_id, str(folder))
    build_s = time.perf_counter() - t0
    size = gpath.stat().st_size
    ro = sqlite3.connect(f"file:{gpath}?mode=ro", uri=True)
    (n_bubbles,) = ro.execute(
        "SELECT COUNT(*) FROM cursorDiskKV WHERE key >= 'bubbleId:' AND key < 'bubbleId;'"
    ).fetchone()
    (last_key,) = ro.execute(
        "SELECT key FROM cursorDiskKV WHERE rowid = (SELECT MAX(rowid) FROM cursorDiskKV "
        "WHERE key >= 'composerData:' AND key < 'composerData;')"
    ).fetchone()
    last_cid = last_key.split(":", 1)[1]
    ro.close()

    client = aioredis.Redis.from_url(REDIS_URL)
    await client.flushdb()
    health = Health()
    sessions = SessionMonitor(client, STREAM, BASE / "sess", health)
    mapper = WorkspaceMapper([ud.path], BASE / "cache.json")
    cfg = CursorDatabaseMonitorConfig(sync_window_hours=24)
    monitor = CursorDatabaseMonitor(cfg, sessions, mapper, Publisher(client, STREAM, 3600), health)
    await sessions.load()
    await client.xadd(STREAM, SessionEvent.build("session_start", str(folder), "bench").to_fields())
    await sessions.read_once()
    counter = ValueCounter()

    async def poll() -> dict[str, float | int]:
        counter.values = 0
        before = await client.xlen(STREAM)
        started = time.perf_counter()
        await monitor.poll_once()
        ms = (time.perf_counter() - started) * 1000
        return {
            "ms": round(ms, 2),
            "values_read": counter.values,
            "traces_published": await client.xlen(STREAM) - before,
        }

    # Catch-up: polls read at most MAX_ROUNDS batches each, so a big file takes several.
    catch_up: list[dict[str, float | int]] = []
    while True:
        catch_up.append(await poll())
        wms = monitor.global_dbs._states[gpath].db.watermarks or {}
        if not any(w.get("more") or w.get("pending") for w in wms.values()):
            break
    first = {
        "polls": len(catch_up),
        "total_ms": round(sum(p["ms"] for p in catch_up), 1),
        "max_poll_ms": max(p["ms"] for p in catch_up),
        "values_read": sum(p["values_read"] for p in catch_up),
        "traces_published": sum(p["traces_published"] for p in catch_up),
    }
    tracemalloc.start()
    idle = [await poll() for _ in range(5)]
    gdb = CursorDb(gpath, "wal", tables=("ItemTable", "cursorDiskKV"), persistent=False)
    gdb.write_batch({"workbench.unrelated": {"t": time.time()}})
    touched = await poll()
    gdb.put_bubble(last_cid, make_assistant_bubble("one new answer"))
    one_new = await poll()
    idle_after = await poll()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    await client.aclose()
    idle_ms = sorted(p["ms"] for p in idle)
    result = {
        "database": str(gpath),
        "database_bytes": size,
        "bubbles": n_bubbles,
        "build_seconds": round(build_s, 1),
        "first_poll_catch_up": first,
        "idle_poll": {
            "median_ms": idle_ms[len(idle_ms) // 2],
            "max_ms": idle_ms[-1],
            "values_read": max(p["values_read"] for p in idle),
        },
        "poll_after_unrelated_write": touched,
        "poll_after_one_new_bubble": one_new,
        "idle_poll_after": idle_after,
        "peak_memory_tracemalloc_steady_bytes": peak,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), indent=2))
