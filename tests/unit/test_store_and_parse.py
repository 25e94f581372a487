"""The store (idempotent, deduplicating, WAL) and the parsing of stream entries into it."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from blueplane import store as store_module
from blueplane.events import MalformedEntry
from blueplane.fast_path.consumer import MAX_ENTRY_BYTES, parse_entry
from blueplane.store import TraceStore, _chunked
from tests.conftest import wait_until


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
    for given in (fields, _raw(fields)):  # as a dict and as XREADGROUP's raw reply
        with pytest.raises(MalformedEntry, match=reason.replace("(", r"\(")):
            parse_entry("1-0", given)


def _raw(fields: dict) -> list:
    """The fields as XREADGROUP's raw reply gives them (field, value, field, value…)."""
    return [x for kv in fields.items() for x in kv]


def test_the_raw_reply_parses_as_its_dict() -> None:
    """The consumer hands parse_entry the raw reply of an entry (no dict built first)."""
    for fields in (trace_fields(), trace_fields(event_id=None, revision=4, item_id="i")):
        assert parse_entry("3-1", _raw(fields)) == parse_entry("3-1", fields)
    text = {k.decode(): v.decode() for k, v in trace_fields().items()}  # text clients
    assert parse_entry("3-1", _raw(text)) == parse_entry("3-1", trace_fields())
    with pytest.raises(MalformedEntry, match="not pairs"):
        parse_entry("3-1", [*_raw(trace_fields()), b"dangling"])


def test_parse_entry_fills_every_field() -> None:
    """Every StoredEvent field from its own source (the event is built positionally)."""
    payload = '{"trace_type":"generation","generation_id":"g7","item_id":"it","revision":3}'
    metadata = '{"workspace_hash":"w1","machine_id":"m1","user":"u1","source":"python_monitor"}'
    fields = {
        "version": "1", "event_type": "database_trace", "hook_type": "DatabaseTrace",
        "platform": "cursor", "event_id": "e7", "session_id": "s7",
        "timestamp": "2025-11-26T18:12:04.121Z", "metadata": metadata, "payload": payload,
    }  # fmt: skip
    ev = parse_entry("5-1", {k.encode(): v.encode() for k, v in fields.items()})
    assert dataclasses.asdict(ev) == {
        "event_id": "e7", "stream_id": "5-1", "event_type": "database_trace",
        "hook_type": "DatabaseTrace", "platform": "cursor", "trace_type": "generation",
        "session_id": "s7", "workspace_hash": "w1", "generation_id": "g7", "item_key": "it",
        "revision": 3, "timestamp": "2025-11-26T18:12:04.121Z", "timestamp_ms": 1764180724121,
        "payload": json.loads(payload), "metadata": json.loads(metadata),
        "payload_json": payload, "metadata_json": metadata, "machine_id": "m1",
        "user_name": "u1", "source": "python_monitor",
    }  # fmt: skip


def test_json_only_the_standard_library_reads_is_still_read(tmp_path: Path) -> None:
    """orjson parses the payloads; what it rejects and ``json`` reads (NaN, Infinity, a lone
    surrogate escape: ``json.dumps`` writes the first two) is read as before, stored as sent."""
    text = '{"trace_type": "generation", "generation_id": "g1", "x": NaN, "y": -Infinity,'
    text += ' "z": "\\ud800"}'
    ev = parse_entry("1-0", {**trace_fields(), b"payload": text.encode()})
    assert ev.payload["x"] != ev.payload["x"] and ev.payload["y"] == float("-inf")
    assert ev.payload["z"] == "\ud800" and ev.payload_json == text
    store = TraceStore(tmp_path / "t.db")
    assert store.write_batch([ev], 3600).inserted == 1
    assert store.conn.execute("SELECT payload FROM events").fetchone()[0] == text


@pytest.mark.parametrize("revision", [2**63, 2**64, 2**70, -(2**63) - 1, -(2**70)])
def test_a_revision_beyond_64_bits_is_malformed(revision: int) -> None:
    """orjson reads an integer beyond 64 bits as a float: still "outside the range"."""
    payload = json.dumps({"trace_type": "generation", "generation_id": "g", "revision": revision})
    with pytest.raises(MalformedEntry, match="outside the 64-bit integer range"):
        parse_entry("1-0", {**trace_fields(), b"payload": payload.encode()})


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


def test_a_trace_revision_twice_in_one_batch_is_stored_once(tmp_path: Path) -> None:
    """The set insert cannot see its own rows: rows of one batch that dedup against each other
    must still drop all but the first."""
    store = TraceStore(tmp_path / "t.db")
    first = parse_entry("1-0", trace_fields("g1", event_id="e1"))
    again = parse_entry("2-0", trace_fields("g1", event_id="e2"))  # same revision, other id
    other = parse_entry("3-0", trace_fields("g2", event_id="e3"))
    last = parse_entry("4-0", trace_fields("g3", event_id="e4"))
    # four rows: one statement of four if nothing were written row by row
    r = store.write_batch([first, other, again, last], dedup_window_s=3600)
    assert (r.inserted, r.duplicates) == (3, 1)
    ids = {row[0] for row in store.conn.execute("SELECT event_id FROM events")}
    assert ids == {"e1", "e3", "e4"}
    store.close()


def _mixed_batch() -> list:
    """32 events: traces that dedup against each other within the batch (the same revision
    under another id, a resend of the same id, a message twice), a second source of a
    generation, a later revision, a hook event, and traces that stand alone."""

    def trace(gid: str, eid: str | None, source: str = "python_monitor", **payload) -> object:
        fields = trace_fields(gid, "s1", eid, **payload)
        meta = {"workspace_hash": "abcd", "source": source}
        fields[b"metadata"] = json.dumps(meta).encode()
        return parse_entry(f"{len(out) + 1}-0", fields)

    out: list = []
    for i in range(6):
        out.append(trace(f"g{i}", f"e{i}", input_tokens=10 + i))
    out.append(trace("g0", "e0-other"))  # same revision, other id: dropped
    out.append(trace("g1", "e1-other", input_tokens=99))  # dropped
    out.append(trace("g2", "e2-ext", "extension"))  # a second source: only a source
    out.append(trace("g0", "e0-r1", revision=1, input_tokens=30))  # later revision: kept
    out.append(out[3])  # the same event again
    for n in range(2):  # a message twice under two ids (not a keyed generation)
        msg = trace("c1", f"m{n}", trace_type="message", item_id="b1", role="assistant")
        out.append(msg)
    hook = {b"event_type": b"session_start", b"session_id": b"s1", b"payload": b"{}"}
    out.append(parse_entry("99-0", hook))
    while len(out) < 32:  # one statement of 32 if none were set apart
        out.append(trace(f"g{len(out)}", f"e{len(out)}"))
    return out


@pytest.mark.parametrize("max_params", [None, 32766, 100])
def test_one_batch_stores_what_one_event_per_batch_stores(
    tmp_path: Path, max_params: int | None
) -> None:
    """Set statements for the batch, row by row for the rows that interact: the same events,
    sources and derived counts as writing each event in a batch of its own. Also with a low
    variable limit (100: statements of 4 events, 7 of the 32's generations padded to 8)."""
    events = _mixed_batch()
    whole = TraceStore(tmp_path / "whole.db")
    if max_params is not None:
        whole._max_params = max_params
    single = TraceStore(tmp_path / "single.db")
    r = whole.write_batch(events, 3600)
    inserted = sum(single.write_batch([ev], 3600).inserted for ev in events)
    assert r.inserted == inserted
    queries = (
        "SELECT event_id, session_id, item_key, revision, generation_id FROM events",
        "SELECT workspace_hash, generation_id, source, event_id FROM trace_sources",
        "SELECT hour_ms, workspace_hash, trace_type, model, traces, turns, input_tokens,"
        " output_tokens FROM activity_hourly",
    )
    for sql in queries:
        assert sorted(whole.conn.execute(sql)) == sorted(single.conn.execute(sql)), sql
    whole.close()
    single.close()


def test_chunked_statements() -> None:
    """Few statements of few distinct sizes (powers of two, within the variable budget), the
    rest padded with NULL rows only when that adds at most an eighth."""
    rows = [(i, "x") for i in range(2000)]

    def plan(n: int, limit: int) -> list[tuple[int, int]]:
        out = _chunked(rows[:n], lambda size: size, 2, 3, limit)
        return [(size, len(params)) for size, params in out]

    assert plan(2000, 250000) == [(2048, 3 + 2048 * 2)]  # one statement, 48 NULL rows
    assert plan(2000, 3276) == [(1024, 3 + 1024 * 2)] * 2
    assert plan(5, 999) == [(4, 3 + 4 * 2), (1, 3 + 1 * 2)]  # 8 would pad 3
    assert plan(0, 999) == []
    assert [size for size, _ in plan(2000, 999)] == [256] * 7 + [128, 64, 16]
    padded = _chunked(rows[:7], lambda size: size, 2, 3, 999)
    assert [size for size, _ in padded] == [8]
    # the padding row is NULLs (store.NULL: a NaN, which SQLite binds as NULL)
    assert padded[0][1][3:] == [v for r in rows[:7] for v in r] + [store_module.NULL] * 2


def test_null_binds_as_sql_null(tmp_path: Path) -> None:
    """What PreparedBatch binds for None (``store.NULL``) is stored as NULL, never as a
    number: a batch's events, stage and sources hold NULL where the event has nothing."""
    conn = sqlite3.connect(tmp_path / "n.db")
    row = conn.execute("SELECT ? IS NULL, typeof(?)", (store_module.NULL,) * 2).fetchone()
    assert row == (1, "null")
    store = TraceStore(tmp_path / "t.db")
    store.write_batch([parse_entry("1-0", trace_fields("g1"))], 3600)  # no machine, no user
    assert store.conn.execute(
        "SELECT typeof(machine_id), typeof(user_name) FROM events"
    ).fetchone() == ("null", "null")
    assert store.conn.execute(
        "SELECT typeof(generation_ms), typeof(generation_type), typeof(description)"
        " FROM trace_sources"
    ).fetchone() == ("null", "null", "null")


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


def test_wal_backlog_reads_the_pages_not_yet_checkpointed(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    batch = [parse_entry(f"{i}-0", trace_fields(f"g{i}", event_id=f"e{i}", response="x" * 4000))
             for i in range(20)]  # fmt: skip
    store.write_batch(batch, 3600)
    index = store._wal_index
    assert index is not None
    backlog = index.backlog()
    assert backlog is not None and backlog >= 20  # at least a page per 4 KB event
    busy, frames, copied = store.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert (busy, frames - copied) == (0, 0) and frames >= backlog
    assert index.backlog() == 0
    store.close()


def _pass_pending(store: TraceStore) -> bool:
    cp = store._checkpointer
    return cp is not None and (cp._requested or cp.busy)


def test_background_checkpoints_keep_the_wal_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer does not checkpoint (no auto-checkpoint); the checkpoint thread does, and
    the WAL starts over instead of holding everything written."""
    monkeypatch.setattr(store_module, "CHECKPOINT_PAGES", 64)
    monkeypatch.setattr(store_module, "CHECKPOINT_FORCE_PAGES", 10**9)  # never the writer alone
    path = tmp_path / "t.db"
    store = TraceStore(path)
    assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    written = 0
    for b in range(40):
        batch = [
            parse_entry(f"{b}-{i}", trace_fields(f"g{b}.{i}", event_id=f"e{b}.{i}",
                                                 response="x" * 4000))
            for i in range(25)
        ]  # fmt: skip
        written += store.write_batch(batch, 3600).inserted
        if store._checkpointer is not None:  # spaced as a consumer's batches: a pass has run
            wait_until(lambda: not _pass_pending(store), what="the background pass")
    assert written == 1000  # ~4 MB: more than 1,000 pages went through the WAL
    assert store._checkpointer is not None and store._checkpointer._thread is not None
    wal_pages = (path.parent / "t.db-wal").stat().st_size // 4096
    assert wal_pages < 500, f"the WAL was never started over ({wal_pages} pages)"
    store.close()
    assert not store._checkpointer._thread.is_alive()
    check = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    assert check.execute("SELECT count(*) FROM events").fetchone()[0] == 1000
    check.close()


def test_reading_the_wal_index_keeps_sqlites_locks(tmp_path: Path) -> None:
    """After writes (each reads the WAL index), another process must still see the store in
    use: SQLite's shared lock on the -shm's DMS byte (offset 128) is held. Opening and closing
    a descriptor of the -shm per read dropped it (POSIX locks die with any close)."""
    store = TraceStore(tmp_path / "t.db")
    for i in range(3):
        store.write_batch([parse_entry(f"{i}-0", trace_fields(f"g{i}", event_id=f"e{i}"))], 3600)
    probe = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n"
        "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128, 0)\n"
        "    print('free')\n"
        "except OSError:\n"
        "    print('held')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "t.db-shm")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "held"
    store.close()
