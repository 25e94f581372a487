"""Sessions from Cursor hooks: sessionStart/sessionEnd act as session_start/session_end for
``workspace_roots[0]``; any other hook event in a workspace without a session starts one (hooks
installed mid-session); hook entries reach Python cut to what sessions need."""

from __future__ import annotations

import json
from pathlib import Path

import redis.asyncio as aioredis

from blueplane.cursor.session_monitor import SessionMonitor
from blueplane.events import workspace_hash
from blueplane.health import Health
from blueplane.hooks.emit import build_fields

STREAM = "telemetry:events"


def monitor(client: aioredis.Redis, tmp_path: Path, health: Health) -> SessionMonitor:
    return SessionMonitor(client, STREAM, tmp_path / "cursor-session", health, block_ms=None)


async def hook(client: aioredis.Redis, name: str, conv: str, root: str | None, **extra) -> None:
    event = {"hook_event_name": name, "conversation_id": conv, "generation_id": "g", **extra}
    if root is not None:
        event["workspace_roots"] = [root]
    await client.xadd(STREAM, build_fields(event, {}))


async def test_session_start_and_end_from_hooks(client, tmp_path: Path) -> None:
    health = Health()
    m = monitor(client, tmp_path, health)
    await m.load()
    await hook(client, "sessionStart", "conv-1", "/w/a")
    await hook(client, "postToolUse", "conv-1", "/w/a", tool_output="x" * 200_000)
    await m.read_once()
    (sessions,) = m.active_workspaces().values()
    assert [(s.session_id, s.source, s.workspace_path) for s in sessions] == [
        ("conv-1", "hook", "/w/a")
    ]
    assert sessions[0].workspace_hash == workspace_hash("/w/a")
    assert m.last_activity(workspace_hash("/w/a"))[1] in ("hook event", "session start")
    await hook(client, "sessionEnd", "conv-1", "/w/a")
    await m.read_once()
    assert m.active_sessions() == []
    c = health.component("session_monitor").counters
    assert (c["session_starts"], c["session_ends"], c["hook_events"]) == (1, 1, 3)


async def test_hook_activity_without_session_start_counts_as_active(client, tmp_path) -> None:
    health = Health()
    m = monitor(client, tmp_path, health)
    await m.load()
    await hook(client, "beforeSubmitPrompt", "conv-2", "/w/b", prompt="hi",
               transcript_path="/t/conv-2.jsonl")  # fmt: skip
    await hook(client, "stop", "conv-2", "/w/b")
    await hook(client, "stop", "conv-x", None)  # no workspace: no session, no crash
    await m.read_once()
    (sessions,) = m.active_workspaces().values()
    assert [s.session_id for s in sessions] == ["conv-2"]
    assert health.component("session_monitor").counters["hook_sessions_implied"] == 1
    assert m.transcript_paths == {"/t/conv-2.jsonl": ("conv-2", workspace_hash("/w/b"))}
    restarted = monitor(client, tmp_path, Health())
    await restarted.load()
    assert [s.session_id for s in restarted.active_sessions()] == ["conv-2"]
    raw = json.loads((await client.hget("blueplane:sessions", "conv-2")).decode())
    assert raw["source"] == "hook"
