"""The TypeScript monitor's events in the store: recognised, stored beside ours, one trace per
generation whichever monitor reported it first, every source recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blueplane.compare import compare
from blueplane.events import MalformedEntry
from blueplane.fast_path.consumer import parse_entry
from blueplane.store import TraceStore

WS = "0123456789abcdef"


def ours(gid: str, description: str = "explain", event_id: str | None = None) -> dict:
    return {
        "version": "1", "event_type": "database_trace", "hook_type": "DatabaseTrace",
        "platform": "cursor", "event_id": event_id or f"py-{gid}", "session_id": "s-1",
        "timestamp": "2025-11-26T18:12:04.121Z",
        "metadata": json.dumps({"workspace_hash": WS, "source": "python_monitor"}),
        "payload": json.dumps({
            "trace_type": "generation", "generation_id": gid, "generation_type": "composer",
            "description": description, "generation_timestamp_ms": 1764180724121,
        }),
    }  # fmt: skip


def theirs(gid: str | None, description: str = "explain", camel: bool = False, **over) -> dict:
    full = {"unixMs": 1764180724121, "generationUUID": gid, "type": "composer",
            "textDescription": description}  # fmt: skip
    if camel:
        payload = {"traceType": "generation", "generationId": gid, "dataVersion": 17,
                   "fullGenerationData": full}  # fmt: skip
        meta = {"workspaceHash": WS}
    else:
        payload = {"trace_type": "generation", "generation_id": gid, "data_version": 17,
                   "request_parameters": {}, "generation_timestamp": "",
                   "prompt_timestamp": "", "full_generation_data": full}  # fmt: skip
        meta = {"workspace_hash": WS}
    if gid is None:
        payload.pop("generationId" if camel else "generation_id")
    fields = {
        "event_id": f"ts-{gid}", "enqueued_at": "2025-11-26T18:12:09.000Z", "retry_count": "0",
        "platform": "cursor", "external_session_id": "curs_1764180724121_0a1b2c3d",
        "hook_type": "DatabaseTrace", "event_type": "database_trace",
        "timestamp": "2025-11-26T18:12:09.000Z",
        "payload": json.dumps(payload), "metadata": json.dumps(meta),
    }  # fmt: skip
    fields.update(over)
    return fields


def enc(fields: dict) -> dict:
    return {k.encode(): v.encode() for k, v in fields.items()}


@pytest.fixture
def store(tmp_path: Path):
    s = TraceStore(tmp_path / "t.db")
    yield s
    s.close()


def test_typescript_shapes_are_recognised_in_both_spellings() -> None:
    for camel in (False, True):
        ev = parse_entry("5-0", enc(theirs("g1", camel=camel)))
        assert ev.source == "extension" and ev.session_id == "curs_1764180724121_0a1b2c3d"
        assert (ev.trace_type, ev.generation_id, ev.workspace_hash) == ("generation", "g1", WS)
    assert parse_entry("6-0", enc(ours("g1"))).source == "python_monitor"
    with pytest.raises(MalformedEntry, match="generation_id"):
        parse_entry("7-0", enc(theirs(None)))
    with pytest.raises(MalformedEntry, match="'payload' is not valid JSON"):
        parse_entry("8-0", enc(theirs("g2", payload="{not json")))


@pytest.mark.parametrize("order", ["python_first", "extension_first", "same_batch"])
def test_a_generation_reported_by_both_is_one_trace_with_both_sources(
    store: TraceStore, order: str
) -> None:
    py = parse_entry("1-0", enc(ours("g1")))
    ts = parse_entry("2-0", enc(theirs("g1")))
    if order == "python_first":
        store.write_batch([py], 3600)
        result = store.write_batch([ts], 3600)
        assert (result.inserted, result.duplicates) == (0, 1)
    elif order == "extension_first":
        store.write_batch([ts], 3600)
        store.write_batch([py], 3600)
    else:
        result = store.write_batch([py, ts], 3600)
        assert (result.inserted, result.duplicates) == (1, 1)
    rows = store.traces(limit=10)
    assert len(rows) == 1
    first = ["extension", "python_monitor"] if order == "extension_first" else None
    assert rows[0]["sources"] == (first or ["python_monitor", "extension"])
    # A redelivery of either changes nothing.
    store.write_batch([py, ts], 3600)
    assert len(store.traces(limit=10)) == 1


def test_sources_and_compare_straight_from_the_store(store: TraceStore) -> None:
    batch = [
        parse_entry("1-0", enc(ours("both"))),
        parse_entry("2-0", enc(theirs("both", description="explain!"))),
        parse_entry("3-0", enc(ours("only-py"))),
        parse_entry("4-0", enc(theirs("only-ts", camel=True))),
        parse_entry("5-0", enc(theirs("no-ws", metadata="{}"))),
    ]
    store.write_batch(batch, 3600)
    by_id = {r["generation_id"]: r["sources"] for r in store.traces(limit=10)}
    assert by_id == {
        "both": ["python_monitor", "extension"], "only-py": ["python_monitor"],
        "only-ts": ["extension"], "no-ws": ["extension"],
    }  # fmt: skip
    report = compare(store.conn, 0, 2_000_000_000_000, None, dead_letters=[]).to_json()
    assert (report["matched"], report["extension_events"], report["python_events"]) == (1, 2, 2)
    assert report["missing_in_python"] == [{"workspace_hash": WS, "generation_id": "only-ts"}]
    assert report["missing_in_extension"] == [{"workspace_hash": WS, "generation_id": "only-py"}]
    assert report["field_differences"] == [
        {"workspace_hash": WS, "generation_id": "both", "field": "description",
         "python": "explain", "extension": "explain!"}
    ]  # fmt: skip
    assert report["unusable_extension_events"] == 1
    assert report["unusable_reasons"] == {"no workspace_hash in metadata": 1}
    assert report["workspaces"][WS]["missing_in_python"] == 1


def test_a_store_from_before_trace_sources_still_reads(tmp_path: Path) -> None:
    import sqlite3

    from blueplane.store_schema import EVENTS, SQLITE, STORE_META

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    # a version-2 store: events and store_meta only (trace_sources came with version 3)
    for stmt in [*SQLITE.create_table(EVENTS), *SQLITE.create_table(STORE_META)]:
        conn.execute(stmt)
    conn.execute("INSERT INTO store_meta VALUES ('schema_version', '2')")
    conn.execute(
        "INSERT INTO events (event_id, stream_id, event_type, trace_type, workspace_hash,"
        " generation_id, received_at_ms, payload, metadata) VALUES"
        " ('e1', '1-0', 'database_trace', 'generation', ?, 'g1', 1, '{}', ?)",
        (WS, json.dumps({"source": "python_monitor"})),
    )
    conn.commit()
    conn.close()
    ro = TraceStore(path, readonly=True)
    try:
        assert [r["sources"] for r in ro.traces()] == [["python_monitor"]]
        report = compare(ro.conn, 0, 2_000_000_000_000, None, dead_letters=[])
        assert report.exit_code == 0
        assert any("no trace sources yet" in n for n in report.notes)
    finally:
        ro.close()
