"""SessionMonitor against a real Redis: durable sessions, no replay, per-session tracking."""

from __future__ import annotations

import json
from pathlib import Path

import redis.asyncio as aioredis

from blueplane.cursor.session_monitor import POSITION_KEY, SESSIONS_KEY, SessionMonitor
from blueplane.events import SessionEvent
from blueplane.health import Health

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
