"""The global database through CursorDatabaseMonitor: attribution, session start, no repeats.

A real Redis (the test session's private server, a flushed database per test) and real
SQLite files.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from blueplane.config import CursorDatabaseMonitorConfig
from blueplane.cursor.database_monitor import CursorDatabaseMonitor
from blueplane.cursor.session_monitor import SessionMonitor
from blueplane.cursor.workspace_mapper import WorkspaceMapper
from blueplane.events import SessionEvent
from blueplane.health import Health
from blueplane.publisher import Publisher
from tests.fixtures.cursor_db import (
    WorkspaceStorage,
    make_assistant_bubble,
    make_composer_2024,
    make_composer_data_3x,
    make_composer_data_2024,
    make_composer_data_2025,
    make_composer_head,
    make_composer_header,
    make_global_composer,
    make_inline_bubble,
    make_user_bubble,
    make_user_dir,
    make_workspace_identifier,
    new_uuid,
)

STREAM = "telemetry:events"


class Rig:
    def __init__(self, tmp_path: Path, client: aioredis.Redis, **cfg: Any) -> None:
        self.user = make_user_dir(tmp_path)
        self.glob = self.user.global_db("wal", composer_headers=True)
        self.client = client
        self.health = Health()
        self.sessions = SessionMonitor(client, STREAM, tmp_path / "sess", self.health)
        self.mapper = WorkspaceMapper([self.user.path], tmp_path / "cache.json")
        self.cfg = CursorDatabaseMonitorConfig(**cfg)
        self.monitor = CursorDatabaseMonitor(
            self.cfg,
            self.sessions,
            self.mapper,
            Publisher(client, STREAM, 3600),
            self.health,
            clock=time.time,
        )

    def project(self, name: str) -> WorkspaceStorage:
        folder = self.user.path.parent / "projects" / name
        folder.mkdir(parents=True)
        return self.user.add_workspace(str(folder))

    async def start(self, ws: WorkspaceStorage, sid: str) -> None:
        assert ws.folder_path is not None
        event = SessionEvent.build("session_start", ws.folder_path, sid)
        await self.client.xadd(STREAM, event.to_fields())
        await self.sessions.read_once()

    async def traces(self) -> list[dict[str, Any]]:
        out = []
        for _id, f in await self.client.xrange(STREAM):
            if f.get(b"event_type") == b"database_trace":
                out.append(
                    {
                        "session": f[b"session_id"].decode(),
                        "ws": json.loads(f[b"metadata"])["workspace_hash"],
                        **json.loads(f[b"payload"]),
                    }
                )
        return out


def _db_key(rig: Rig) -> str:
    from blueplane.keys import database_key

    return database_key(str(rig.glob.path))


def composer_ids(traces: list[dict[str, Any]]) -> set[str]:
    return {t["composer_id"] for t in traces if t.get("composer_id")}


async def test_attribution_session_start_and_no_repeats(tmp_path: Path, client) -> None:
    rig = Rig(tmp_path, client)
    a, b = rig.project("a"), rig.project("b")
    member = new_uuid()
    a.db.set_composer_data(make_composer_data_3x([member]))
    by_ident = rig.glob.put_conversation(
        [make_user_bubble("q1"), make_assistant_bubble("a1")],
        workspaceIdentifier=make_workspace_identifier(a.id, a.folder_path or ""),
    )["composerId"]
    by_header = rig.glob.put_conversation([make_user_bubble("q2")])["composerId"]
    rig.glob.put_composer_header(make_composer_header(by_header, workspaceId=a.id))
    rig.glob.put_conversation([make_user_bubble("q3")], composerId=member)
    for_b = rig.glob.put_conversation(
        [make_user_bubble("qb"), make_assistant_bubble("ab")],
        workspaceIdentifier=make_workspace_identifier(b.id, b.folder_path or ""),
    )["composerId"]
    nobody = rig.glob.put_conversation([make_user_bubble("lost")])["composerId"]

    await rig.sessions.load()
    await rig.start(a, "sa")
    await rig.monitor.poll_once()
    got = await rig.traces()
    assert composer_ids(got) == {by_ident, by_header, member}
    assert {t["session"] for t in got} == {"sa"}
    messages = [t for t in got if t["trace_type"] == "message"]
    assert len(messages) == 4 and {m["role"] for m in messages} == {"user", "assistant"}
    counters = rig.health.components["global_database"].counters
    assert counters["unattributed_composers"] == 1  # `nobody`
    assert nobody not in composer_ids(got)

    # Nothing new: nothing sent again, even after a restart of the monitor's memory.
    await rig.monitor.poll_once()
    assert len(await rig.traces()) == len(got)

    # b's session starts: its composer, read earlier while b had no session, arrives now.
    await rig.start(b, "sb")
    await rig.monitor.poll_once()
    after = await rig.traces()
    new = after[len(got) :]
    assert composer_ids(new) == {for_b} and {t["session"] for t in new} == {"sb"}
    assert Counter(t["trace_type"] for t in new) == {"composer": 1, "message": 2}
    await rig.monitor.poll_once()
    assert len(await rig.traces()) == len(after)
    keys = [(t["ws"], t["trace_type"], t.get("item_id"), t.get("revision")) for t in after]
    assert len(keys) == len(set(keys))


async def test_include_unattributed(tmp_path: Path, client) -> None:
    rig = Rig(tmp_path, client, include_unattributed=True)
    a = rig.project("a")
    nobody = rig.glob.put_conversation([make_user_bubble("lost")])["composerId"]
    blob = rig.glob.put_agent_blob("user", "agent turn")
    await rig.sessions.load()
    await rig.start(a, "sa")
    await rig.monitor.poll_once()
    got = await rig.traces()
    assert {t["ws"] for t in got} == {"unattributed"}
    assert nobody in composer_ids(got)
    assert any(t.get("item_id") == blob.split(":")[-1] for t in got)


async def test_three_eras_user_folder(tmp_path: Path, client) -> None:
    """A User folder with a 2024, a 2025 and a 3.x workspace: every conversation arrives."""
    rig = Rig(tmp_path, client)
    w24, w25, w3 = rig.project("old"), rig.project("mid"), rig.project("new")
    inline = make_composer_2024([make_inline_bubble(1, "q"), make_inline_bubble(2, "a")])
    w24.db.set_composer_data(make_composer_data_2024([inline]))
    head = make_composer_head()
    w25.db.set_composer_data(make_composer_data_2025([head]))
    rig.glob.put_conversation(
        [make_user_bubble("mid q"), make_assistant_bubble("mid a")], composerId=head["composerId"]
    )
    c3 = rig.glob.put_conversation(
        [make_user_bubble("new q"), make_assistant_bubble("new a")],
        workspaceIdentifier=make_workspace_identifier(w3.id, w3.folder_path or ""),
    )
    w3.db.set_composer_data(make_composer_data_3x([c3["composerId"]]))
    await rig.sessions.load()
    for i, ws in enumerate((w24, w25, w3)):
        await rig.start(ws, f"s{i}")
    await rig.monitor.poll_once()
    got = await rig.traces()
    by_ws = Counter((t["ws"], t["trace_type"]) for t in got)
    assert by_ws[(w24.workspace_hash, "message")] == 2
    assert by_ws[(w25.workspace_hash, "message")] == 2
    assert by_ws[(w25.workspace_hash, "composer")] == 2  # the head and the full record
    assert by_ws[(w3.workspace_hash, "message")] == 2
    answers = [t for t in got if t["trace_type"] == "message" and t["role"] == "assistant"]
    assert all(t["output_tokens"] == 85 for t in answers if t["source_layout"] == "disk_bubbles")
    await rig.monitor.poll_once()
    assert len(await rig.traces()) == len(got)


async def test_bubbles_read_before_their_conversation_is_attributed_are_sent_once_it_is(
    tmp_path: Path, client
) -> None:
    """Issue 9: nothing read is forgotten before it is published or deliberately parked."""
    rig = Rig(tmp_path, client)
    a = rig.project("a")
    await rig.sessions.load()
    await rig.start(a, "sa")
    cid = new_uuid()
    # Cursor writes the turn's bubbles before the conversation that names their workspace.
    for bubble in (make_user_bubble("early question"), make_assistant_bubble("early answer")):
        rig.glob.put_bubble(cid, bubble)
    await rig.monitor.poll_once()
    assert cid not in composer_ids(await rig.traces())
    assert rig.health.components["global_database"].counters["unattributed_composers"] == 1

    rig.glob.put_composer(
        make_global_composer(
            [], composerId=cid,
            workspaceIdentifier=make_workspace_identifier(a.id, a.folder_path or ""),
        )
    )  # fmt: skip
    await rig.monitor.poll_once()
    got = [t for t in await rig.traces() if t.get("composer_id") == cid]
    assert Counter(t["trace_type"] for t in got) == {"composer": 1, "message": 2}
    assert {t["text"] for t in got if t["trace_type"] == "message"} == {
        "early question",
        "early answer",
    }
    assert {t["session"] for t in got} == {"sa"}
    assert rig.health.components["global_database"].counters["unattributed_composers"] == 0
    await rig.monitor.poll_once()
    assert len([t for t in await rig.traces() if t.get("composer_id") == cid]) == len(got)


async def test_an_edit_of_an_old_bubble_is_sent_once_even_beyond_ten_thousand_items(
    tmp_path: Path, client
) -> None:
    """Issue 9: the revision memory was capped at 10,000 items and forgot the oldest."""
    rig = Rig(tmp_path, client)
    a = rig.project("a")
    cid = new_uuid()
    ident = make_workspace_identifier(a.id, a.folder_path or "")
    rig.glob.put_composer(make_global_composer([], composerId=cid, workspaceIdentifier=ident))
    first = make_user_bubble("the very first question")
    bubbles = [first] + [make_user_bubble(f"q{i}") for i in range(10_050)]
    for start in range(0, len(bubbles), 1000):
        rig.glob.write_batch(
            {f"bubbleId:{cid}:{b['bubbleId']}": b for b in bubbles[start : start + 1000]},
            "cursorDiskKV",
        )
    await rig.sessions.load()
    await rig.start(a, "sa")
    await rig.monitor.poll_once()
    sent = [t for t in await rig.traces() if t["trace_type"] == "message"]
    assert len(sent) == len(bubbles)

    rig.glob.put_bubble(cid, {**first, "text": "the very first question, edited"})
    await rig.monitor.poll_once()
    await rig.monitor.poll_once()
    edits = [
        t for t in await rig.traces()
        if t["trace_type"] == "message" and t.get("item_id") == first["bubbleId"]
    ]  # fmt: skip
    assert [(t["revision"], t["text"]) for t in edits] == [
        (0, "the very first question"),
        (1, "the very first question, edited"),
    ]
    # The memory lives in Redis with the dedup window as its TTL, not in the watermark.
    wm = await client.hgetall(f"blueplane:watermarks:{_db_key(rig)}")
    assert b"sent" not in wm.get(b"disk_bubbles", b"")


async def test_a_catch_up_sends_the_started_sessions_conversations_before_the_history(
    tmp_path: Path, client, monkeypatch
) -> None:
    """Issue 8, first sync: a session's conversations are re-read by composer as soon as the
    composers are known, not after the catch-up scan has worked through the file's history."""
    from blueplane.cursor import global_db
    from blueplane.cursor.layouts import disk_bubbles

    monkeypatch.setattr(disk_bubbles, "BATCH", 5)  # the history takes many rounds
    monkeypatch.setattr(global_db, "MAX_ROUNDS", 20)
    rig = Rig(tmp_path, client)
    a = rig.project("a")
    history = new_uuid()  # nobody's conversation, written first: low rowids
    rig.glob.put_conversation([make_user_bubble(f"old {i}") for i in range(40)], composerId=history)
    ident = make_workspace_identifier(a.id, a.folder_path or "")
    current = rig.glob.put_conversation(
        [make_user_bubble("now"), make_assistant_bubble("answer")], workspaceIdentifier=ident
    )["composerId"]
    await rig.sessions.load()
    await rig.start(a, "sa")

    rounds: list[int] = []
    poll = rig.monitor.poller.poll

    async def counting(state: Any, wh: Any, route: Any, kind: str = "workspace") -> int | None:
        if kind == "global":
            got = [t for t in await rig.traces() if t.get("composer_id") == current]
            rounds.append(len([t for t in got if t["trace_type"] == "message"]))
        return await poll(state, wh, route, kind)

    monkeypatch.setattr(rig.monitor.poller, "poll", counting)
    await rig.monitor.poll_once()  # the workspace (mapped), then the global database
    # Before the second round of the scan, the current conversation is on the stream.
    assert len(rounds) >= 3 and rounds[1] == 2, rounds
    got = [t for t in await rig.traces() if t.get("composer_id") == current]
    messages = [t for t in got if t["trace_type"] == "message"]
    assert sorted(t["text"] for t in messages) == ["answer", "now"]  # once each
