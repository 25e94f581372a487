"""Idle sessions expire (a crashed window is not polled for ever), also across restarts.

Real Redis; only the clock is injected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from blueplane.cursor.session_monitor import SessionMonitor
from blueplane.events import SessionEvent, parse_iso_ms, workspace_hash
from blueplane.health import Health
from blueplane.keys import ACTIVITY_KEY, SESSIONS_KEY
from tests.conftest import async_wait_until

STREAM = "telemetry:events"
H = 3600.0


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


def monitor(
    client: aioredis.Redis, tmp_path: Path, clock: Clock, hours: float = 12
) -> SessionMonitor:
    return SessionMonitor(
        client, STREAM, tmp_path / "cursor-session", Health(),
        block_ms=None, idle_expiry_hours=hours, clock=clock,
    )  # fmt: skip


async def send(
    client: aioredis.Redis, kind: str, path: str, sid: str, timestamp: str | None = None
) -> None:
    event = SessionEvent.build(kind, path, sid)
    if timestamp is not None:
        event = event.model_copy(update={"timestamp": timestamp})
    await client.xadd(STREAM, event.to_fields())


def counters(m: SessionMonitor) -> dict[str, int]:
    return m.health.counters


async def test_idle_session_expires_and_activity_keeps_a_session(
    client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    m = monitor(client, tmp_path, clock)
    await m.load()
    await send(client, "session_start", "/w/busy", "busy")
    await send(client, "session_start", "/w/crashed", "crashed")
    await m.read_once()
    m.changed.clear()

    clock.now += 6 * H
    m.touch(workspace_hash("/w/busy"))
    clock.now += 5 * H  # 11 h after the start: nothing yet
    assert await m.expire_idle() == []
    assert not m.changed.is_set()

    clock.now += 2 * H  # crashed: 13 h idle; busy: 7 h since its database changed
    with caplog.at_level(logging.INFO, logger="blueplane.session_monitor"):
        expired = await m.expire_idle()
    assert [s.session_id for s in expired] == ["crashed"]
    assert set(m.active_workspaces()) == {workspace_hash("/w/busy")}
    assert m.changed.is_set()
    assert counters(m)["sessions_expired"] == 1
    assert set(await client.hkeys(SESSIONS_KEY)) == {b"busy"}
    assert (
        f"session crashed of workspace {workspace_hash('/w/crashed')} expired after 13.0 h "
        "without activity"
    ) in caplog.text
    assert await m.expire_idle() == []  # once
    assert counters(m)["sessions_expired"] == 1


async def test_expiry_holds_across_a_restart(client, tmp_path: Path) -> None:
    clock = Clock()
    first = monitor(client, tmp_path, clock)
    await first.load()
    await send(client, "session_start", "/w/a", "a")
    await send(client, "session_start", "/w/b", "b")
    await first.read_once()
    clock.now += 2 * H
    first.touch(workspace_hash("/w/a"))
    assert await first.flush_activity() == 1
    # The server stops; 11.5 h later it starts again.
    clock.now += 11.5 * H
    second = monitor(client, tmp_path, clock)
    await second.load()
    assert {s.session_id for s in second.active_sessions()} == {"a", "b"}
    expired = await second.expire_idle()
    assert [s.session_id for s in expired] == ["b"]  # 13.5 h idle; a was active 11.5 h ago
    clock.now += 1 * H
    assert [s.session_id for s in await second.expire_idle()] == ["a"]
    assert await client.hlen(SESSIONS_KEY) == 0
    assert await client.hlen(ACTIVITY_KEY) == 0

    third = monitor(client, tmp_path, clock)
    await third.load()
    assert third.active_sessions() == []


async def test_touch_writes_redis_at_most_once_a_minute(client, tmp_path: Path) -> None:
    clock = Clock()
    m = monitor(client, tmp_path, clock)
    await m.load()
    ws = workspace_hash("/w/a")
    m.touch(ws)
    assert await m.flush_activity() == 1
    stored = await client.hget(ACTIVITY_KEY, ws)
    for _ in range(100):
        clock.now += 0.5
        m.touch(ws)
    assert await m.flush_activity() == 0
    assert await client.hget(ACTIVITY_KEY, ws) == stored
    clock.now += 10
    m.touch(ws, "hook event")
    assert await m.flush_activity() == 1
    assert (await client.hget(ACTIVITY_KEY, ws)).decode() == f"{clock.now:.3f} hook event"


async def test_zero_disables_expiry(client, tmp_path: Path) -> None:
    clock = Clock()
    m = monitor(client, tmp_path, clock, hours=0)
    await m.load()
    await send(client, "session_start", "/w/a", "a")
    await m.read_once()
    clock.now += 10_000 * H
    assert await m.expire_idle() == []
    assert [s.session_id for s in m.active_sessions()] == ["a"]
    assert "never expires" in m.active_reason(workspace_hash("/w/a"))


async def test_stale_session_file_is_ignored_until_written_again(client, tmp_path: Path) -> None:
    clock = Clock()
    m = monitor(client, tmp_path, clock)
    await m.load()
    folder = tmp_path / "cursor-session"
    folder.mkdir()
    f = folder / "0123456789abcdef.json"
    f.write_text(json.dumps({"CURSOR_SESSION_ID": "file-1", "workspace_path": "/w/f"}))
    old = clock.now - 13 * H
    os.utime(f, (old, old))

    assert not m.scan_session_files()  # stale from the start: never active
    assert m.active_sessions() == []
    assert counters(m)["sessions_expired"] == 1
    assert not m.scan_session_files()
    assert counters(m)["sessions_expired"] == 1  # counted once

    os.utime(f, (clock.now, clock.now))  # the file written again: revived
    assert m.scan_session_files()
    assert [s.session_id for s in m.active_sessions()] == ["file-1"]

    clock.now += 12.5 * H  # idle again; the periodic check drops it
    m.changed.clear()
    await m.expire_idle()
    assert m.active_sessions() == [] and m.changed.is_set()
    assert counters(m)["sessions_expired"] == 2
    m.touch("0123456789abcdef")  # activity of its workspace also revives it
    assert m.scan_session_files()
    assert [s.session_id for s in m.active_sessions()] == ["file-1"]


async def test_running_monitor_expires_after_a_start_grace(client, tmp_path: Path) -> None:
    """``run`` checks expiry by itself, first after a grace in which activity still counts."""
    clock = Clock()
    first = monitor(client, tmp_path, clock)
    await first.load()
    await send(client, "session_start", "/w/used", "used")
    await send(client, "session_start", "/w/gone", "gone")
    await first.read_once()
    clock.now += 13 * H  # the server was stopped 13 h
    m = monitor(client, tmp_path, clock)
    m.expiry_grace_s = 0.5
    await m.load()
    stop = asyncio.Event()
    task = asyncio.create_task(m.run(stop))
    try:
        # The database monitor's first poll sees a change, inside the grace.
        m.touch(workspace_hash("/w/used"))
        await async_wait_until(
            lambda: counters(m).get("expiry_checks", 0) >= 1, "expiry_checks >= 1"
        )
        assert [s.session_id for s in m.active_sessions()] == ["used"]
        assert counters(m)["sessions_expired"] == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_waking_from_sleep_gives_the_same_grace(client, tmp_path: Path) -> None:
    clock = Clock()
    m = monitor(client, tmp_path, clock)
    m.expiry_grace_s, m.expiry_check_s = 0.5, 0.05
    await m.load()
    await send(client, "session_start", "/w/used", "used")
    await send(client, "session_start", "/w/gone", "gone")
    await m.read_once()
    stop = asyncio.Event()
    task = asyncio.create_task(m.run(stop))
    try:
        await async_wait_until(
            lambda: counters(m).get("expiry_checks", 0) >= 2, "expiry_checks >= 2"
        )
        assert len(m.active_sessions()) == 2
        clock.now += 13 * H  # the laptop slept 13 h
        await async_wait_until(
            lambda: counters(m).get("clock_jumps", 0) >= 1, "clock_jumps >= 1"
        )  # it saw the jump
        m.touch(workspace_hash("/w/used"))
        await async_wait_until(
            lambda: counters(m).get("sessions_expired", 0) >= 1, "sessions_expired >= 1"
        )
        assert [s.session_id for s in m.active_sessions()] == ["used"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_active_reason_says_which_session_and_when_it_expires(client, tmp_path: Path) -> None:
    start = "2026-11-27T01:00:00.000Z"
    clock = Clock(parse_iso_ms(start) / 1000 + 10)
    m = monitor(client, tmp_path, clock)
    await m.load()
    ws = workspace_hash("/w/p")
    assert m.active_reason(ws) == "not active: no session"
    await send(client, "session_start", "/w/p", "7f3e0a1b-2c3d-4e5f-6a7b", timestamp=start)
    await m.read_once()
    clock.now += 17 * 60
    m.touch(ws)
    clock.now += 3 * 60
    assert m.active_reason(ws) == (
        "session 7f3e0a1b… (redis) started 2026-11-27T01:00Z; last activity 3 min ago "
        "(database change); expires after 12 h idle (in 11.9 h)"
    )
    await send(client, "session_start", "/w/p", "s2", timestamp="2026-11-27T01:15:00.000Z")
    await m.read_once()
    clock.now += 3 * H
    assert m.active_reason(ws) == (
        "session 7f3e0a1b… (redis) started 2026-11-27T01:00Z, session s2 (redis) started "
        "2026-11-27T01:15Z; last activity 3.0 h ago (session start); expires after 12 h idle "
        "(in 9.0 h)"
    )
