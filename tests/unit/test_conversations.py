"""Reconciled conversations from the database's traces: one turn per generation, tokens once,
the user's prompt attached to the answer that follows it, and the same view after a
redelivery or on a store written before the conversation tables existed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from blueplane import conversations
from blueplane.events import ComposerPayload, MessagePayload, TraceEvent, TraceMetadata
from blueplane.fast_path.consumer import parse_entry
from blueplane.store import SCHEMA, StoredEvent, TraceStore

WS = "5a2c0e61d7c5b0f3"
CID = "98251e54-8aed-4515-b2b4-08895453eedd"
T0 = 1_766_691_308_486


def db_event(n: int, payload: Any, at_ms: int) -> StoredEvent:
    """A ``database_trace`` as the publisher encodes it, parsed as the consumer parses it."""
    from blueplane.events import iso_from_ms

    ev = TraceEvent(
        event_id=f"e{n}", session_id="s1", external_session_id="s1",
        timestamp=iso_from_ms(at_ms),
        metadata=TraceMetadata(workspace_hash=WS, workspace_path="/home/me/p"),
        payload=payload.to_json_dict(),
    )  # fmt: skip
    return parse_entry(f"{n}-0", ev.to_fields())


def sample_events() -> list[StoredEvent]:
    composer = ComposerPayload(
        generation_id=CID, item_id=CID, record="full", composer_id=CID, name="PR10 understanding",
        created_at_ms=T0, last_updated_at_ms=T0 + 60_000,
    )  # fmt: skip
    user1 = MessagePayload(
        generation_id="u1",
        item_id="u1",
        role="user",
        composer_id=CID,
        bubble_id="u1",
        text="tell me about this codebase",
        text_length=27,
    )
    asst1 = MessagePayload(
        generation_id="r1", item_id="a1", role="assistant", composer_id=CID, bubble_id="a1",
        request_id="r1", text="It is a monitor.", text_length=16, model="claude-4.5-sonnet",
        input_tokens=1200, output_tokens=85, tokens_reported=True,
        tool_calls=[{"name": "read_file", "status": "completed", "tool_call_id": "toolu_1"}],
    )  # fmt: skip
    user2 = MessagePayload(
        generation_id="u2",
        item_id="u2",
        role="user",
        composer_id=CID,
        bubble_id="u2",
        text="and the tests?",
        text_length=14,
    )
    asst2 = MessagePayload(
        generation_id="r2", item_id="a2", role="assistant", composer_id=CID, bubble_id="a2",
        request_id="r2", text="They use a real Redis.", text_length=22,
        input_tokens=0, output_tokens=0, tokens_reported=False,
    )  # fmt: skip
    return [
        db_event(1, composer, T0),
        db_event(2, user1, T0 + 1000),
        db_event(3, asst1, T0 + 2000),
        db_event(4, user2, T0 + 10_000),
        db_event(5, asst2, T0 + 12_000),
    ]


def test_database_traces_make_one_turn_per_generation(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.write_batch(sample_events(), 86400)
    listed = conversations.list_conversations(store)
    assert [c.conversation_id for c in listed] == [CID]
    conv = listed[0]
    assert conv.title == "PR10 understanding" and conv.turns == 2
    assert conv.workspace_hash == WS and conv.workspace_path == "/home/me/p"
    assert conv.models == ["claude-4.5-sonnet"] and conv.sources == ["database"]
    # the second turn's {0,0} is "not reported": the total is the first turn's, not diluted
    assert (conv.input_tokens, conv.output_tokens) == (1200, 85)
    assert conv.cache_read_tokens is None and conv.cache_write_tokens is None
    got = conversations.get_conversation(store, CID)
    assert got is not None
    _, turns = got
    assert [t.generation_id for t in turns] == ["r1", "r2"]
    assert [t.prompt for t in turns] == ["tell me about this codebase", "and the tests?"]
    assert [t.response for t in turns] == ["It is a monitor.", "They use a real Redis."]
    assert (turns[1].input_tokens, turns[1].output_tokens) == (None, None)
    assert [t.to_json() for t in turns[0].tools] == [
        {"name": "read_file", "duration_ms": None, "ok": True}
    ]
    assert turns[0].sources == ["database"]
    as_json = conv.to_json()
    assert set(as_json) == {
        "conversation_id", "workspace_hash", "workspace_path", "title", "models", "turns",
        "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
        "first_at", "last_at", "sources",
    }  # fmt: skip
    assert as_json["first_at"] == "2025-12-25T19:35:08.486Z"
    store.close()


def test_redelivered_batch_changes_nothing(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.write_batch(sample_events(), 86400)
    before = conversations.get_conversation(store, CID)
    store.write_batch(sample_events(), 86400)
    assert conversations.get_conversation(store, CID) == before
    store.close()


def test_store_written_before_the_tables_is_indexed_once_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    for ev in sample_events():
        conn.execute(
            "INSERT INTO events (event_id, stream_id, event_type, hook_type, platform,"
            " trace_type, session_id, workspace_hash, generation_id, item_key, revision,"
            " timestamp, timestamp_ms, received_at_ms, payload, metadata)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (ev.event_id, ev.stream_id, ev.event_type, ev.hook_type, ev.platform,
             ev.trace_type, ev.session_id, ev.workspace_hash, ev.generation_id, ev.item_key,
             ev.revision, ev.timestamp, ev.timestamp_ms, 0, ev.payload_json,
             ev.metadata_json),
        )  # fmt: skip
    conn.commit()
    conn.close()
    store = TraceStore(path)
    conv = conversations.list_conversations(store)[0]
    assert (conv.turns, conv.input_tokens) == (2, 1200)
    store.close()
    ro = TraceStore(path, readonly=True)
    assert conversations.get_conversation(ro, CID) is not None
    assert conversations.get_conversation(ro, "nope") is None
    ro.close()


def test_filters_and_daily_totals(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.write_batch(sample_events(), 86400)
    assert conversations.list_conversations(store, workspace="0000000000000000") == []
    assert len(conversations.list_conversations(store, workspace="/home/me/p")) == 0
    assert len(conversations.list_conversations(store, workspace=WS)) == 1
    assert conversations.list_conversations(store, since_ms=T0 + 3_600_000) == []
    assert conversations.list_conversations(store, conversation_ids=[]) == []
    assert len(conversations.list_conversations(store, conversation_ids=[CID])) == 1
    days = conversations.token_totals_by_day(store)
    assert [(d.day, d.turns, d.input_tokens) for d in days] == [("2025-12-25", 2, 1200)]
    store.close()


def test_store_without_conversation_tables_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "bare.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    conn.close()
    ro = TraceStore(path, readonly=True)
    assert conversations.list_conversations(ro) == []
    assert conversations.get_conversation(ro, CID) is None
    ro.close()


def test_real_2024_conversations_become_turns_by_order(tmp_path: Path, real_fixture) -> None:
    """Inline 2024 composers and the chat panel carry no request ids on most bubbles: turns
    come from the order of the bubbles (each user bubble starts one)."""
    import json as _json

    from blueplane.cursor.layouts.base import ReadContext
    from blueplane.cursor.schema_detector import SchemaDetector
    from blueplane.events import iso_from_ms as _iso

    conn = sqlite3.connect(f"file:{real_fixture}?mode=ro", uri=True)
    try:
        det = SchemaDetector().detect(conn)
        raws = [(layout, layout.fetch(conn, {})) for layout in det.layouts]
    finally:
        conn.close()
    ctx = ReadContext(now_ms=T0, sync_cutoff_ms=0)
    events = []
    for layout, raw in raws:
        for item in layout.extract(raw, {}, ctx).items:
            if item.payload.trace_type not in ("message", "composer"):
                continue
            ev = TraceEvent(
                event_id=f"r{len(events)}", session_id="s", external_session_id="s",
                timestamp=_iso(item.timestamp_ms or T0),
                metadata=TraceMetadata(workspace_hash=WS), payload=item.payload.to_json_dict(),
            )  # fmt: skip
            events.append(parse_entry(f"{len(events)}-0", ev.to_fields()))
    messages = [e for e in events if e.trace_type == "message"]
    store = TraceStore(tmp_path / "t.db")
    store.write_batch(events, 86400)
    listed = conversations.list_conversations(store, limit=1000)
    by_conv: dict[str, list[Any]] = {}
    for e in messages:
        by_conv.setdefault(e.payload["composer_id"], []).append(e.payload)
    assert listed and {c.conversation_id for c in listed} >= set(by_conv)
    for cid, bubbles in by_conv.items():
        users = [b for b in bubbles if b["role"] == "user"]
        got = conversations.get_conversation(store, cid)
        assert got is not None
        conv, turns = got
        assert conv.turns == len(users) == len(turns), cid
        first_user = min(users, key=lambda b: b["position"])
        if first_user.get("text"):
            assert turns[0].prompt == first_user["text"]
        assert all(t.sources == ["database"] for t in turns)
        assert any(t.response for t in turns), cid
    assert _json.dumps([c.to_json() for c in listed])  # serialisable
    store.close()
