"""What finding session events costs when the stream is full of traces: old read vs new.

The old SessionMonitor XREAD every entry of ``telemetry:events`` (500 per call) to find the few
``session_start``/``session_end``; the new one runs a Lua script that pages through the stream
server-side and returns only session entries. With 100,000 ``database_trace`` entries of ~1 KB
and one session entry in the middle, this measures for each: wall time, bytes Redis sent,
Redis CPU, entries parsed in Python. Then the running monitor: idle round-trips and bytes per
second, session-start latency (idle, and while 2,000 traces/s are written).

Uses a private redis-server (the machine's binary) unless ``--redis-url`` is given (flushed!).

    .venv/bin/python bench/bench_session_scan.py

Writes ``bench/results/session_scan.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from blueplane.broker import BundledRedis  # noqa: E402
from blueplane.cursor.session_monitor import SCAN_PAGE, SessionMonitor  # noqa: E402
from blueplane.events import SessionEvent  # noqa: E402
from blueplane.health import Health  # noqa: E402

STREAM = "telemetry:events"


async def info(client: aioredis.Redis) -> dict[str, float]:
    stats = await client.info("stats")
    cpu = await client.info("cpu")
    cmd = await client.info("commandstats")
    return {
        "out": stats["total_net_output_bytes"],
        "cmds": stats["total_commands_processed"],
        "cpu": cpu["used_cpu_user"] + cpu["used_cpu_sys"],
        **{k: v["calls"] for k, v in cmd.items()},
    }


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0) - before.get(key, 0)


async def fill(client: aioredis.Redis, n: int, size: int) -> None:
    payload = json.dumps({"trace_type": "generation", "text": "x" * size})
    fields = {
        "version": "0.1.0", "event_type": "database_trace", "hook_type": "DatabaseTrace",
        "platform": "cursor", "session_id": "s", "payload": payload,
        "metadata": json.dumps({"workspace_hash": "0" * 16, "source": "python_monitor"}),
    }  # fmt: skip
    for start in range(0, n, 5000):
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(min(5000, n - start)):
                pipe.xadd(STREAM, fields)
            await pipe.execute()


async def old_read(client: aioredis.Redis) -> int:
    """The previous SessionMonitor.read_once loop: every entry comes to Python."""
    last, examined, parsed = "0-0", 0, 0
    while True:
        resp = await client.xread({STREAM: last}, count=500)
        if not resp:
            return parsed
        for entry_id, fields in resp[0][1]:
            examined += 1
            kind = fields.get(b"event_type", b"").decode(errors="replace")
            if kind in ("session_start", "session_end"):
                SessionEvent.from_fields(fields)
                parsed += 1
            last = entry_id.decode()


async def measure_read(client: aioredis.Redis, label: str, read: Any) -> dict[str, Any]:
    before = await info(client)
    t0, c0 = time.perf_counter(), time.process_time()
    parsed = await read()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    after = await info(client)
    return {
        "read": label, "wall_ms": round(wall * 1000, 1), "python_cpu_ms": round(cpu * 1000, 1),
        "redis_cpu_ms": round(delta(after, before, "cpu") * 1000, 1),
        "bytes_received": int(delta(after, before, "out")), "entries_parsed": parsed,
    }  # fmt: skip


async def running(client: aioredis.Redis, idle_s: float, samples: int) -> dict[str, Any]:
    """The running monitor: idle cost, and session-start latency idle and under trace load."""
    with tempfile.TemporaryDirectory() as tmp:
        m = SessionMonitor(client, STREAM, Path(tmp) / "s", Health())
        await m.load()
        stop = asyncio.Event()
        task = asyncio.create_task(m.run(stop))
        await asyncio.sleep(1.5)  # first scan done, caught up
        # What the INFO calls themselves cost, to subtract: two snapshots back to back.
        a, b = await info(client), await info(client)
        own_cmds, own_out = delta(b, a, "cmds"), delta(b, a, "out")
        before = await info(client)
        c0 = time.process_time()
        await asyncio.sleep(idle_s)
        after = await info(client)
        idle = {
            "idle_seconds": idle_s,
            "idle_round_trips_per_s": round((delta(after, before, "cmds") - own_cmds) / idle_s, 2),
            "idle_bytes_per_s": round((delta(after, before, "out") - own_out) / idle_s),
            "idle_python_cpu_pct": round((time.process_time() - c0) / idle_s * 100, 3),
        }

        async def latency(i: int) -> float:
            sid = f"lat-{i}"
            fields = SessionEvent.build("session_start", f"/w/{i}", sid).to_fields()
            t0 = time.perf_counter()
            await client.xadd(STREAM, fields)
            while not any(s.session_id == sid for s in m.active_sessions()):
                await asyncio.sleep(0.001)
            return (time.perf_counter() - t0) * 1000

        quiet = []
        for i in range(samples):
            await asyncio.sleep(0.3)
            quiet.append(await latency(i))

        load_stop = asyncio.Event()

        async def writer() -> None:  # 2,000 traces/s in batches of 200
            while not load_stop.is_set():
                await fill(client, 200, 1000)
                await asyncio.sleep(0.1)

        w = asyncio.create_task(writer())
        await asyncio.sleep(0.5)
        before = await info(client)
        t0 = time.perf_counter()
        busy = []
        for i in range(samples):
            await asyncio.sleep(0.3)
            busy.append(await latency(1000 + i))
        span = time.perf_counter() - t0
        after = await info(client)
        load_stop.set()
        await w
        stop.set()
        await task
    return {
        **idle,
        "latency_idle_ms_p50": round(statistics.median(quiet), 1),
        "latency_idle_ms_max": round(max(quiet), 1),
        "latency_loaded_ms_p50": round(statistics.median(busy), 1),
        "latency_loaded_ms_max": round(max(busy), 1),
        "loaded_scans_per_s": round(delta(after, before, "cmdstat_evalsha") / span, 1),
        "loaded_wakeups_per_s": round(delta(after, before, "cmdstat_xread") / span, 1),
    }


async def main(args: argparse.Namespace) -> None:
    bundled = None
    url = args.redis_url
    if url is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        system = shutil.which("redis-server")
        bundled = BundledRedis(tmp, binary=Path(system) if system else None)
        url = bundled.start()
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushdb()
        half = args.traces // 2
        await fill(client, half, args.size)
        await client.xadd(STREAM, SessionEvent.build("session_start", "/w/a", "s1").to_fields())
        await fill(client, args.traces - half, args.size)
        rows = [await measure_read(client, "old: XREAD every entry", lambda: old_read(client))]

        async def new_read() -> int:
            health = Health()
            m = SessionMonitor(
                client, STREAM, Path(tempfile.gettempdir()) / "none", health, page_size=args.page
            )
            await m.load()
            await m.read_once()
            return health.component("session_monitor").counters["entries_parsed"]

        await client.delete("blueplane:sessions:last_id", "blueplane:sessions")
        rows.append(await measure_read(client, "new: Lua scan, session entries only", new_read))
        await client.flushdb()
        live = await running(client, args.idle_seconds, args.samples)
    finally:
        await client.aclose()
        if bundled is not None:
            bundled.stop()
    result = {
        "machine": f"{platform.node()} {platform.machine()} Python {platform.python_version()}",
        "traces": args.traces, "entry_bytes": args.size, "page": args.page, "reads": rows,
        "running": live,
    }  # fmt: skip
    out = ROOT / "bench" / "results" / "session_scan.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.traces:,} traces of ~{args.size} B + 1 session entry\n")
    print("| read | wall | Python CPU | Redis CPU | bytes received | entries parsed |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['read']} | {r['wall_ms']} ms | {r['python_cpu_ms']} ms | {r['redis_cpu_ms']} ms"
            f" | {r['bytes_received'] / 1e6:.2f} MB | {r['entries_parsed']} |"
        )
    print()
    print(json.dumps(live, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1000, help="payload text bytes per trace")
    parser.add_argument("--page", type=int, default=SCAN_PAGE, help="entries per Lua call")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=20)
    asyncio.run(main(parser.parse_args()))
