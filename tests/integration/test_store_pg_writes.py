"""The PostgreSQL writer's set-wise statements and its COPY into ``events``, on the real server:
the same rows as row by row, and a redelivered event never stored twice even when another
writer commits it while this one copies."""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg
import pytest

from blueplane.fast_path.consumer import parse_entry
from blueplane.store import StoredEvent, WriteResult
from blueplane.store_pg import PgTraceStore, _PgTx
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

_TABLE = (
    "CREATE TABLE {name} (k1 TEXT, k2 TEXT, lo BIGINT, note TEXT, n BIGINT, PRIMARY KEY (k1, k2))"
)
_UPDATE = (
    "UPDATE {name} SET lo = CASE WHEN lo IS NULL OR ? < lo THEN ? ELSE lo END, note = ?,"
    " n = n + 1 WHERE k1 = ? AND k2 = ? AND (? = 1 OR note IS NULL)"
)


def test_set_wise_updates_leave_what_row_by_row_updates_leave(pg_url: str) -> None:
    # a key updated three times (each statement sees the previous one's row), a parameter that
    # is None in every row (no array type to give it), a key with no row
    rows: list[tuple[Any, ...]] = [
        (50, 50, None, "a", "x", 1),
        (20, 20, None, "b", "y", 1),
        (10, 10, None, "a", "x", 1),
        (30, 30, None, "a", "x", 0),
        (5, 5, None, "zz", "none", 1),
    ]
    with psycopg.connect(pg_url) as conn:
        for name in ("by_row", "set_wise"):
            conn.execute(_TABLE.format(name=name))  # type: ignore[arg-type]
            conn.execute(f"INSERT INTO {name} VALUES ('a', 'x', 40, 'old', 0),"  # type: ignore[arg-type]
                         " ('b', 'y', NULL, NULL, 0), ('c', 'z', 1, 'keep', 0)")  # fmt: skip
        tx = _PgTx(conn)
        for row in rows:
            tx.execute(_UPDATE.format(name="by_row"), row)
        statements: list[str] = []
        execute = psycopg.Cursor.execute

        def counted(self: Any, query: Any, *a: Any, **kw: Any) -> Any:
            statements.append(str(query))
            return execute(self, query, *a, **kw)

        psycopg.Cursor.execute = counted  # type: ignore[method-assign]
        try:
            tx.executemany(_UPDATE.format(name="set_wise"), rows)
        finally:
            psycopg.Cursor.execute = execute  # type: ignore[method-assign]
        by_row = conn.execute("SELECT * FROM by_row ORDER BY k1").fetchall()
        set_wise = conn.execute("SELECT * FROM set_wise ORDER BY k1").fetchall()
    assert set_wise == by_row
    assert by_row[0] == ("a", "x", 10, None, 3)  # 50 ≥ 40, then 10, then the note is set
    # three rounds (key a/x three times), not one statement per row
    assert len(statements) == 3 and all("unnest" in s for s in statements)


def _trace(n: int) -> StoredEvent:
    fields = {
        "event_type": "database_trace",
        "event_id": f"ev-{n}",
        "session_id": "s-1",
        "timestamp": f"2026-11-27T04:00:{n:02d}Z",
        "payload": json.dumps({"trace_type": "generation", "generation_id": f"g-{n}"}),
        "metadata": json.dumps({"workspace_hash": "0123456789abcdef"}),
    }
    return parse_entry(f"1700000000000-{n}", fields)


def test_an_event_another_writer_commits_during_the_copy_is_stored_once(pg_url: str) -> None:
    store = PgTraceStore(pg_url)
    other = psycopg.connect(pg_url)
    try:
        # another writer holds ev-1 uncommitted: this write does not see it stored, and its
        # COPY waits on the primary key until the other commits
        other.execute(
            "INSERT INTO events (event_id, stream_id, event_type, trace_type, session_id,"
            " item_key, revision, received_at_ms) VALUES ('ev-1', '1-1', 'database_trace',"
            " 'generation', 's-1', 'g-1', 0, 1)"
        )
        batch = store.prepare([_trace(1), _trace(2)])
        result: list[WriteResult] = []
        writer = threading.Thread(target=lambda: result.append(store.write_batch(batch, 3600)))
        writer.start()
        with psycopg.connect(pg_url, autocommit=True) as watch:
            wait_until(
                lambda: watch.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                ).fetchone(),
                what="the write waiting on the other writer's ev-1",
            )
        other.commit()
        writer.join(timeout=30)
        assert result == [WriteResult(1, 1)]
        with psycopg.connect(pg_url) as conn:
            ids = [r[0] for r in conn.execute("SELECT event_id FROM events ORDER BY 1")]
            stored = conn.execute("SELECT value FROM store_meta WHERE key = 'events_stored'")
            assert ids == ["ev-1", "ev-2"]
            assert stored.fetchone() == ("1",)
    finally:
        other.close()
        store.close()
