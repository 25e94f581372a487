"""Both stores (SQLite file, real PostgreSQL): the same writes, dedup, queries, schema versions.

Every test that is about store behaviour runs against both; PostgreSQL is the machine's (or a
throwaway cluster, tests/pg_support.py) with a database of this session's own.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from blueplane.fast_path.consumer import parse_entry
from blueplane.store import StoredEvent, TraceStore, WriteResult
from blueplane.store_schema import SCHEMA_VERSION, StoreSchemaTooNew
from blueplane.stores import open_store
from tests.conftest import BlueplaneEnv

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'store' / 'telemetry.db'}"
    else:
        yield request.getfixturevalue("pg_url")


def trace(
    n: int, *, event_id: str | None = None, gen: str | None = None, rev: int = 0
) -> StoredEvent:
    fields = {
        "event_type": "database_trace",
        "event_id": event_id or f"ev-{n}",
        "session_id": "s-1",
        "timestamp": f"2026-11-27T04:00:{n % 60:02d}Z",
        "payload": json.dumps(
            {
                "trace_type": "generation",
                "generation_id": gen or f"g-{n}",
                "revision": rev,
                "text": f"text {n} 50% done?",
            }
        ),
        "metadata": json.dumps(
            {"workspace_hash": "0123456789abcdef", "machine_id": "m-1", "user": "alice"}
        ),
    }
    return parse_entry(f"1700000000000-{n}", fields)


def _meta_version(url: str) -> int:
    if url.startswith("sqlite://"):
        with sqlite3.connect(url[len("sqlite://") :]) as conn:
            row = conn.execute("SELECT value FROM store_meta WHERE key='schema_version'").fetchone()
    else:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT value FROM store_meta WHERE key='schema_version'").fetchone()
    assert row is not None
    return int(row[0])


def _set_version(url: str, version: int) -> None:
    sql = f"UPDATE store_meta SET value = '{version}' WHERE key = 'schema_version'"
    if url.startswith("sqlite://"):
        with sqlite3.connect(url[len("sqlite://") :]) as conn:
            conn.execute(sql)
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]


def test_writes_are_idempotent_and_dedup_the_same_on_both(store_url: str) -> None:
    store = open_store(store_url)
    try:
        batch = [trace(i) for i in range(20)]
        assert store.write_batch(batch, 3600) == WriteResult(20, 0)
        # a redelivered batch is stored once
        assert store.write_batch(batch, 3600) == WriteResult(0, 20)
        # the same trace revision under another event id (another source): dropped...
        again = [trace(3, event_id="other-3"), trace(4, event_id="other-4", rev=1)]
        assert store.write_batch(again, 3600) == WriteResult(1, 1)  # ...a new revision is not
        # within one batch the first of a trace revision wins
        twins = [trace(100, event_id="a"), trace(100, event_id="b"), trace(101)]
        assert store.write_batch(twins, 3600) == WriteResult(2, 1)
        rows = store.traces(limit=1000)
        ids = [r["event_id"] for r in rows]
        assert len(ids) == len(set(ids)) == 23
        assert "a" in ids and "b" not in ids and "other-4" in ids and "other-3" not in ids
        r = next(r for r in rows if r["event_id"] == "ev-7")
        assert r["payload"]["text"] == "text 7 50% done?"
        assert r["metadata"]["machine_id"] == "m-1"
        assert store.counts() == {"generation": 23}
        # filters
        assert [r["event_id"] for r in store.traces(limit=2)] == [
            "a",
            "ev-101",
        ]  # newest, oldest first
        assert store.traces(workspace_hash="ffffffffffffffff") == []
        assert len(store.traces(session_id="s-1", trace_type="generation", limit=5)) == 5
    finally:
        store.close()
    assert _meta_version(store_url) == SCHEMA_VERSION


def test_a_newer_schema_is_refused_with_a_clear_message(store_url: str) -> None:
    open_store(store_url).close()
    _set_version(store_url, SCHEMA_VERSION + 1)
    for readonly in (False, True):
        with pytest.raises(StoreSchemaTooNew) as info:
            open_store(store_url, readonly=readonly)
        text = str(info.value)
        assert f"schema version {SCHEMA_VERSION + 1}" in text and "upgrade Blueplane" in text
    assert _meta_version(store_url) == SCHEMA_VERSION + 1  # left untouched


def test_a_version_1_sqlite_store_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.db"
    with sqlite3.connect(path) as conn:  # the schema as version 1 created it
        conn.executescript(
            """
            CREATE TABLE events (event_id TEXT PRIMARY KEY, stream_id TEXT NOT NULL,
              event_type TEXT NOT NULL, hook_type TEXT, platform TEXT, trace_type TEXT,
              session_id TEXT, workspace_hash TEXT, generation_id TEXT, item_key TEXT,
              revision INTEGER NOT NULL DEFAULT 0, timestamp TEXT, timestamp_ms INTEGER,
              received_at_ms INTEGER NOT NULL, payload TEXT, metadata TEXT);
            CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT);
            INSERT INTO store_meta VALUES ('schema_version', '1');
            INSERT INTO events VALUES ('old', '1-1', 'database_trace', NULL, NULL, 'generation',
              's-1', NULL, 'g-old', 'g-old', 0, NULL, 5, 5, '{}', '{}');
            """
        )
    store = TraceStore(path)
    try:
        assert store.write_batch([trace(1)], 3600) == WriteResult(1, 0)
        cols = {r[1] for r in store.conn.execute("PRAGMA table_info(events)")}
        assert {"machine_id", "user_name"} <= cols
        assert store.conn.execute(
            "SELECT user_name FROM events WHERE event_id='ev-1'"
        ).fetchone() == ("alice",)
        assert {r["event_id"] for r in store.traces(limit=10)} == {"old", "ev-1"}
    finally:
        store.close()
    assert _meta_version(f"sqlite://{path}") == SCHEMA_VERSION


def test_a_version_1_postgres_store_is_migrated(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE events (event_id TEXT PRIMARY KEY, stream_id TEXT NOT NULL,"
            " event_type TEXT NOT NULL, hook_type TEXT, platform TEXT, trace_type TEXT,"
            " session_id TEXT, workspace_hash TEXT, generation_id TEXT, item_key TEXT,"
            " revision BIGINT NOT NULL DEFAULT 0, timestamp TEXT, timestamp_ms BIGINT,"
            " received_at_ms BIGINT NOT NULL, payload TEXT, metadata TEXT)"
        )
        conn.execute("CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO store_meta VALUES ('schema_version', '1')")
    store = open_store(pg_url)
    try:
        assert store.write_batch([trace(1)], 3600) == WriteResult(1, 0)
    finally:
        store.close()
    assert _meta_version(pg_url) == SCHEMA_VERSION
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT machine_id, user_name FROM events").fetchall() == [
            ("m-1", "alice")
        ]


def test_traces_and_status_read_a_postgres_store(pg_url: str, bp_env: BlueplaneEnv) -> None:
    store = open_store(pg_url)
    try:
        store.write_batch([trace(i) for i in range(5)], 3600)
    finally:
        store.close()
    bp_env.home.mkdir(parents=True)
    bp_env.extra["BLUEPLANE_STORE_URL"] = pg_url
    rows = bp_env.traces()
    assert [r["event_id"] for r in rows] == [f"ev-{i}" for i in range(5)]
    assert len(bp_env.traces("--limit", "2")) == 2
    status = bp_env.cli_json("status")
    assert status["store"]["counts"] == {"generation": 5}
    _set_version(pg_url, SCHEMA_VERSION + 1)
    proc = bp_env.cli("traces", check=False)
    assert proc.returncode == 1
    assert "upgrade Blueplane" in proc.stderr and proc.stderr.count("\n") <= 3


def test_an_unknown_store_scheme_exits_2_without_showing_the_password(
    bp_env: BlueplaneEnv,
) -> None:
    bp_env.home.mkdir(parents=True)
    bp_env.extra["BLUEPLANE_STORE_URL"] = "mysql://bob:hunter2secret@db.example:3306/bp"
    for command in (("traces",), ("consume",), ("run",)):
        proc = bp_env.cli(*command, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "unknown store URL scheme 'mysql'" in proc.stderr
        assert "hunter2secret" not in proc.stderr + proc.stdout
