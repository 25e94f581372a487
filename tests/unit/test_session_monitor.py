"""SessionMonitor against a real Redis: durable sessions, no replay, per-session tracking."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import redis.asyncio as aioredis

from blueplane.cursor.session_monitor import SessionMonitor
from blueplane.events import SessionEvent
from blueplane.health import Health
from blueplane.keys import POSITION_KEY, SESSIONS_KEY
from tests.conftest import async_wait_until

STREAM = "telemetry:events"


def monitor(client: aioredis.Redis, tmp_path: Path, health: Health | None = None) -> SessionMonitor:
    return SessionMonitor(
        client, STREAM, tmp_path / "cursor-session", health or Health(), block_ms=None
    )


async def send(client: aioredis.Redis, kind: str, path: str, sid: str) -> None:
    await client.xadd(STREAM, SessionEvent.build(kind, path, sid).to_fields())


async def test_sessions_survive_a_restart_without_replay(client, tmp_path: Path) -> None:
    m = monitor(client, tmp_path)
    await m.load()
    await send(client, "session_start", "/w/a", "s1")
    await send(client, "session_start", "/w/b", "s2")
    await client.xadd(STREAM, {"event_type": "database_trace", "payload": "{}"})
    assert await m.read_once() == 3
    assert {s.session_id for s in m.active_sessions()} == {"s1", "s2"}
    assert m.changed.is_set()

    restarted = monitor(client, tmp_path)
    await restarted.load()
    assert {s.session_id for s in restarted.active_sessions()} == {"s1", "s2"}
    assert await restarted.read_once() == 0  # position kept: nothing replayed
    position = (await client.get(POSITION_KEY)).decode()
    last = (await client.xrevrange(STREAM, count=1))[0][0].decode()
    assert position == last


async def test_ending_one_session_leaves_the_other(client, tmp_path: Path) -> None:
    m = monitor(client, tmp_path)
    await m.load()
    await send(client, "session_start", "/w/a", "win-1")
    await send(client, "session_start", "/w/a", "win-2")
    await send(client, "session_end", "/w/a", "win-1")
    await m.read_once()
    ws = m.active_workspaces()
    assert len(ws) == 1
    (sessions,) = ws.values()
    assert [s.session_id for s in sessions] == ["win-2"]
    assert set(await client.hkeys(SESSIONS_KEY)) == {b"win-2"}


async def test_malformed_session_entries_are_reported_and_skipped(client, tmp_path: Path) -> None:
    health = Health()
    m = monitor(client, tmp_path, health)
    await m.load()
    await client.xadd(STREAM, {"event_type": "session_start", "payload": "{oops"})
    await client.xadd(STREAM, {"event_type": "session_start", "payload": json.dumps({"x": 1})})
    await send(client, "session_start", "/w/ok", "good")
    assert await m.read_once() == 3
    assert [s.session_id for s in m.active_sessions()] == ["good"]
    comp = health.component("session_monitor")
    assert comp.counters["malformed_session_events"] == 2
    assert "session_id" in (comp.last_error or "") or "payload" in (comp.last_error or "")


async def test_session_files_are_a_fallback(client, tmp_path: Path) -> None:
    m = monitor(client, tmp_path)
    await m.load()
    folder = tmp_path / "cursor-session"
    folder.mkdir()
    f = folder / "0123456789abcdef.json"
    f.write_text(json.dumps({"CURSOR_SESSION_ID": "file-1", "workspace_path": "/w/f"}))
    (folder / "broken.json").write_text("{nope")
    assert m.scan_session_files()
    (s,) = m.active_sessions()
    assert (s.session_id, s.workspace_hash, s.workspace_path, s.source) == (
        "file-1", "0123456789abcdef", "/w/f", "file",
    )  # fmt: skip
    assert not m.scan_session_files()  # unchanged
    f.unlink()
    assert m.scan_session_files() and m.active_sessions() == []


async def add_traces(client: aioredis.Redis, n: int, size: int = 1000) -> None:
    """``n`` trace-like entries of about ``size`` bytes, pipelined."""
    payload = json.dumps({"trace_type": "generation", "text": "x" * size})
    fields = {"version": "0.1.0", "event_type": "database_trace", "payload": payload}
    for start in range(0, n, 5000):
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(min(5000, n - start)):
                pipe.xadd(STREAM, fields)
            await pipe.execute()


async def bytes_sent_by_redis(client: aioredis.Redis) -> int:
    return int((await client.info("stats"))["total_net_output_bytes"])


async def test_a_session_after_20000_traces_is_found_without_reading_the_traces(
    client, tmp_path: Path
) -> None:
    health = Health()
    m = monitor(client, tmp_path, health)
    await m.load()
    await add_traces(client, 20_000)
    await send(client, "session_start", "/w/late", "late")
    await add_traces(client, 5)
    sent_before = await bytes_sent_by_redis(client)
    assert await m.read_once() == 20_006
    sent = await bytes_sent_by_redis(client) - sent_before

    assert [s.session_id for s in m.active_sessions()] == ["late"]
    counters = health.component("session_monitor").counters
    assert counters["entries_parsed"] == 1  # the session entry, not the 20,005 traces
    assert counters["entries_examined"] == 20_006
    assert counters["scan_calls"] == 21  # pages of 1,000
    # ~20 MB of traces on the stream; the monitor received a few KB.
    assert sent < 50_000, sent
    position = (await client.get(POSITION_KEY)).decode()
    assert position == (await client.xrevrange(STREAM, count=1))[0][0].decode()


async def test_position_advances_over_trace_only_pages(client, tmp_path: Path) -> None:
    health = Health()
    m = SessionMonitor(client, STREAM, tmp_path / "s", health, block_ms=None, page_size=10)
    await m.load()
    await add_traces(client, 25, size=10)
    assert await m.read_once() == 25
    last = (await client.xrevrange(STREAM, count=1))[0][0].decode()
    assert (await client.get(POSITION_KEY)).decode() == last
    assert "entries_parsed" not in health.component("session_monitor").counters
    await send(client, "session_start", "/w/a", "s1")
    assert await m.read_once() == 1
    assert await m.read_once() == 0
    assert health.component("session_monitor").counters["entries_parsed"] == 1


async def test_running_monitor_finds_a_session_amid_a_stream_of_traces(
    client, tmp_path: Path
) -> None:
    """``run``: caught up, it blocks; a new entry wakes it; traces still never reach Python."""
    health = Health()
    m = SessionMonitor(client, STREAM, tmp_path / "s", health, block_ms=200)
    await m.load()
    stop = asyncio.Event()
    task = asyncio.create_task(m.run(stop))
    try:
        counters = health.component("session_monitor").counters
        await async_wait_until(lambda: counters.get("scan_calls", 0) >= 1, "scan_calls >= 1")
        await add_traces(client, 3000, size=100)
        await send(client, "session_start", "/w/live", "live")
        await add_traces(client, 3000, size=100)
        await async_wait_until(
            lambda: [s.session_id for s in m.active_sessions()] == ["live"],
            "active sessions == [live]",
        )
        assert m.changed.is_set()
        await async_wait_until(
            lambda: counters.get("entries_examined") == 6001, "entries_examined == 6001"
        )
        assert counters["entries_parsed"] == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_stream_key_of_the_wrong_type_is_reported_and_survived(
    client, tmp_path: Path, caplog
) -> None:
    health = Health()
    m = SessionMonitor(client, STREAM, tmp_path / "s", health, block_ms=100)
    m.error_retry_s = 0.2
    await client.set(STREAM, "not a stream")
    stop = asyncio.Event()
    task = asyncio.create_task(m.run(stop))
    try:
        comp = health.component("session_monitor")
        await async_wait_until(lambda: comp.status == "redis_error", "comp.status == redis_error")
        assert "WRONGTYPE" in (comp.last_error or "")
        await client.delete(STREAM)
        await send(client, "session_start", "/w/a", "after")
        await async_wait_until(
            lambda: [s.session_id for s in m.active_sessions()] == ["after"],
            "active sessions == [after]",
        )
        await async_wait_until(lambda: comp.status == "ok", "comp.status == ok")
        assert sum("reading telemetry:events failed" in r.message for r in caplog.records) == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_long_idle_block_neither_delays_a_session_nor_the_stop(
    client, tmp_path: Path, redis_url: str
) -> None:
    """Caught up, one XREAD blocks for ``block_ms`` (few idle round-trips); a session_start
    ends it at once, and a stop does not wait for it."""
    health = Health()
    m = SessionMonitor(client, STREAM, tmp_path / "s", health, block_ms=30_000)
    await m.load()
    stop = asyncio.Event()
    task = asyncio.create_task(m.run(stop))
    observer = aioredis.Redis.from_url(redis_url)
    try:
        db = str(observer.connection_pool.connection_kwargs.get("db", 0))

        async def blocked() -> bool:  # our XREAD waits in Redis (other tests share Redis)
            return any(
                c.get("cmd") == "xread" and c.get("db") == db and "b" in c.get("flags", "")
                for c in await observer.client_list()
            )

        await async_wait_until(blocked, "the monitor blocks on the stream")
        started = asyncio.get_running_loop().time()
        await send(client, "session_start", "/w/prompt", "prompt")
        await async_wait_until(
            lambda: [s.session_id for s in m.active_sessions()] == ["prompt"],
            "active sessions == [prompt]",
        )
        assert asyncio.get_running_loop().time() - started < 5.0  # not at the block's end
        await async_wait_until(blocked, "blocked again")  # caught up, on the next entry
        stopping = asyncio.get_running_loop().time()
        stop.set()
        await asyncio.wait_for(task, 5)
        assert asyncio.get_running_loop().time() - stopping < 2.0
        assert await client.ping()  # the shared client still works after the cancelled read
    finally:
        stop.set()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await observer.aclose()
