"""The store (idempotent, deduplicating, WAL) and the parsing of stream entries into it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from blueplane.events import MalformedEntry
from blueplane.fast_path.consumer import MAX_ENTRY_BYTES, parse_entry
from blueplane.store import TraceStore


def trace_fields(
    gid: str = "g1", session: str = "s1", event_id: str | None = "e1", **payload
) -> dict:
    fields = {
        "event_type": "database_trace", "hook_type": "DatabaseTrace", "platform": "cursor",
        "session_id": session, "external_session_id": session,
        "timestamp": "2025-11-26T18:12:04.121Z",
        "metadata": json.dumps({"workspace_hash": "abcd", "source": "python_monitor"}),
        "payload": json.dumps({"trace_type": "generation", "generation_id": gid, **payload}),
    }  # fmt: skip
    if event_id:
        fields["event_id"] = event_id
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_parse_trace_entry() -> None:
    ev = parse_entry("1-0", trace_fields())
    assert (ev.event_id, ev.trace_type, ev.generation_id, ev.session_id) == (
        "e1",
        "generation",
        "g1",
        "s1",
    )
    assert ev.workspace_hash == "abcd" and ev.timestamp_ms == 1764180724121 and ev.revision == 0


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({b"payload": b"{}"}, "missing 'event_type'"),
        ({b"event_type": b"database_trace", b"payload": b"{bad"}, "not valid JSON"),
        ({b"event_type": b"x", b"payload": b"[1]"}, "not an object"),
        ({b"event_type": b"x", b"metadata": b'"s"'}, "'metadata' is a JSON str"),
        (trace_fields(session=""), "'session_id'"),
        ({**trace_fields(), b"payload": b'{"trace_type": "generation", "generation_id": 5}'},
         "payload.generation_id"),
        ({**trace_fields(),
          b"payload": b'{"trace_type":"generation","generation_id":"g","revision":"2"}'},
         "payload.revision"),
        ({b"event_type": b"x", b"payload": b'"' + b"a" * MAX_ENTRY_BYTES + b'"'}, "byte limit"),
        ({b"event_type": b"\xff\xfe"}, "not UTF-8"),
    ],
)  # fmt: skip
def test_malformed_entries_say_why(fields: dict, reason: str) -> None:
    with pytest.raises(MalformedEntry, match=reason.replace("(", r"\(")):
        parse_entry("1-0", fields)


def test_hook_events_without_event_id_get_the_stream_id() -> None:
    ev = parse_entry(
        "17-3", {b"event_type": b"beforeSubmitPrompt", b"payload": b'{"session_id": "s"}'}
    )
    assert ev.event_id == "stream:17-3" and ev.session_id == "s" and not ev.is_trace


def test_store_is_idempotent_and_drops_duplicate_traces(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    a = parse_entry("1-0", trace_fields("g1", event_id="e1"))
    r = store.write_batch([a, a], dedup_window_s=3600)
    assert (r.inserted, r.duplicates) == (1, 1)
    # Same generation in the same session from another source (other event id): dropped.
    other = parse_entry("2-0", trace_fields("g1", event_id=None))
    assert store.write_batch([other], 3600).duplicates == 1
    # Same generation in another session: kept. A later revision: kept.
    assert (
        store.write_batch([parse_entry("3-0", trace_fields("g1", "s2", "e3"))], 3600).inserted == 1
    )
    assert store.write_batch([parse_entry("4-0", trace_fields("g1", event_id="e4", revision=1))],
                             3600).inserted == 1  # fmt: skip
    assert [t["generation_id"] for t in store.traces()] == ["g1", "g1", "g1"]
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_traces_filters(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    evs = [parse_entry(f"{i}-0", trace_fields(f"g{i}", event_id=f"e{i}")) for i in range(5)]
    store.write_batch(evs, 3600)
    assert [t["generation_id"] for t in store.traces(limit=2)] == [
        "g3",
        "g4",
    ]  # newest 2, oldest first
    assert store.traces(workspace_hash="nope") == []
    assert len(store.traces(workspace_hash="abcd")) == 5
    assert store.traces(since_ms=1764180724122) == []
    ro = TraceStore(tmp_path / "t.db", readonly=True)
    assert len(ro.traces()) == 5
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.conn.execute("DELETE FROM events")
    ro.close()
    store.close()
