"""The PostgreSQL store: the same tables and queries as the SQLite one, for a team's central host.

Selected by ``store.url: postgresql://…``. Writes are batched: one transaction per batch, the
rows ``COPY``-ed into a temporary table and moved with one ``INSERT … SELECT … ON CONFLICT
(event_id) DO NOTHING`` that applies the SQLite writer's dedup rule (a trace revision already
stored within the window under another event id is dropped, also within the batch). The move
holds a transaction-scoped advisory lock, so several ``blueplane consume`` processes writing at
once dedup exactly as one SQLite writer does; the ``COPY`` (most of the work) runs in parallel.

A connection lost mid-batch (PostgreSQL restarted) rolls the batch back and raises
``psycopg.Error``: the consumer keeps the entries pending and retries; the next write reconnects.
The query methods are ``TraceStore``'s own, run through ``_PgConn`` which rewrites their SQLite
spelling (``store_schema.Dialect.sql``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg

from blueplane.store import StoredEvent, TraceStore, WriteResult, dedupable, event_row
from blueplane.store_schema import (
    EVENTS,
    POSTGRES,
    SCHEMA_VERSION,
    StoreSchemaTooNew,
    pending_migrations,
    schema_ddl,
    too_new_message,
)
from blueplane.stores import StoreAuthError
from blueplane.urls import describe_pg, mask_url

log = logging.getLogger("blueplane.store")

# pg_advisory_xact_lock keys (any constants unique to Blueplane)
_MIGRATE_LOCK = 0x626C7565_0001
_WRITE_LOCK = 0x626C7565_0002
CONNECT_TIMEOUT_S = 5

_COLS = EVENTS.column_names
_BATCH_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS _bp_batch ("
    + ", ".join(POSTGRES.column_ddl(c).replace(" NOT NULL", "") for c in EVENTS.columns)
    + ", seq INTEGER, dedup BOOLEAN) ON COMMIT DELETE ROWS"
)
_COPY = f"COPY _bp_batch ({', '.join(_COLS)}, seq, dedup) FROM STDIN"
# Within the batch the first row of a trace revision wins (row_number); against the table,
# a row of the same revision under another event id within the window drops it (the
# events_by_trace index answers; dedup rows always have a trace_type, so ``=`` is exact).
_MOVE = f"""
INSERT INTO events ({", ".join(_COLS)})
SELECT {", ".join("b." + c for c in _COLS)} FROM (
    SELECT *, CASE WHEN dedup THEN row_number() OVER (
        PARTITION BY dedup, session_id, trace_type, item_key, revision ORDER BY seq) END AS rn
    FROM _bp_batch) b
WHERE NOT b.dedup OR (b.rn = 1 AND NOT EXISTS (
    SELECT 1 FROM events e WHERE e.session_id = b.session_id AND e.trace_type = b.trace_type
    AND e.item_key = b.item_key AND e.revision = b.revision
    AND e.received_at_ms >= %(since)s AND e.event_id <> b.event_id))
ORDER BY b.seq
ON CONFLICT (event_id) DO NOTHING
"""
# The temporary table has no statistics: never let the planner hash all of ``events``.
_PLAN = ("SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off")


class _Cursor:
    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cur.fetchall() if self._cur.description else []

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cur.fetchone() if self._cur.description else None

    def __iter__(self) -> Any:
        return iter(self.fetchall())


class _PgConn:
    """The slice of ``sqlite3.Connection`` the query methods use, on a psycopg connection:
    queries in the SQLite spelling run unchanged (autocommit: reads see every commit)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        return _Cursor(self.raw.execute(POSTGRES.sql(sql), tuple(params)))  # type: ignore[arg-type]

    def close(self) -> None:
        self.raw.close()


def connect(url: str) -> psycopg.Connection[Any]:
    """A connection; a refused password is ``StoreAuthError`` (one line, never the password)."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if "password authentication failed" in text or "no password supplied" in text:
            raise StoreAuthError(
                f"PostgreSQL at {describe_pg(url)} refused the credentials: {text}"
            ) from exc
        raise


class PgTraceStore(TraceStore):
    errors: ClassVar[tuple[type[BaseException], ...]] = (psycopg.Error, OSError)
    dialect = POSTGRES

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.url = url
        self.path = None  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._closed = False
        self._readonly = readonly
        self._write_conn: psycopg.Connection[Any] | None = None
        self.conn = _PgConn(connect(url))  # type: ignore[assignment]
        if readonly and self._stored_version() is not None:
            self._check_version()
        else:
            # a reader of a database no consumer has written yet creates the empty tables,
            # so its queries answer "nothing" (as for a SQLite file not there yet)
            self._migrate()

    @property
    def label(self) -> str:
        return mask_url(self.url)

    # ------------------------------------------------------------- schema
    def _stored_version(self) -> int | None:
        raw = self.conn.raw  # type: ignore[attr-defined]
        exists = raw.execute("SELECT to_regclass('store_meta')").fetchone()
        if not exists or exists[0] is None:
            return None
        row = raw.execute("SELECT value FROM store_meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else None

    def _check_version(self) -> None:
        found = self._stored_version()
        if found is not None and found > SCHEMA_VERSION:
            raise StoreSchemaTooNew(too_new_message(self.label, found))

    def _migrate(self) -> None:
        raw: psycopg.Connection[Any] = self.conn.raw  # type: ignore[attr-defined]
        with raw.transaction():
            # several consumers starting at once: one migrates, the others then see it done
            raw.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            found = self._stored_version()
            has_events = raw.execute("SELECT to_regclass('events')").fetchone()[0] is not None  # type: ignore[index]
            if found is None:
                found = 1 if has_events else SCHEMA_VERSION
            if found > SCHEMA_VERSION:
                raise StoreSchemaTooNew(too_new_message(self.label, found))
            if has_events:
                for m in pending_migrations(found):
                    for table, col in m.add_columns:
                        raw.execute(
                            POSTGRES.add_column(table, col).replace(
                                "ADD COLUMN", "ADD COLUMN IF NOT EXISTS"
                            )
                        )
            for stmt in schema_ddl(POSTGRES):
                raw.execute(stmt)  # type: ignore[arg-type]
            raw.execute(
                "INSERT INTO store_meta VALUES ('schema_version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(SCHEMA_VERSION),),
            )

    # ------------------------------------------------------------- writes
    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.conn.close()
                if self._write_conn is not None:
                    self._write_conn.close()

    def _writer(self) -> psycopg.Connection[Any]:
        conn = self._write_conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._write_conn = None
            conn = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S)
            conn.execute(_BATCH_DDL)  # type: ignore[arg-type]
            conn.commit()
            self._write_conn = conn
        return conn

    def write_batch(self, events: Sequence[StoredEvent], dedup_window_s: float) -> WriteResult:
        """One transaction: COPY into the temp table, then the deduplicating INSERT.

        Raises ``psycopg.Error`` with nothing written (the batch is rolled back)."""
        now_ms = int(time.time() * 1000)
        since_ms = now_ms - int(dedup_window_s * 1000)
        with self._lock:
            if self._closed:
                raise psycopg.InterfaceError(f"store {self.label} is closed")
            conn = self._writer()
            try:
                with conn.cursor() as cur:
                    with cur.copy(_COPY) as copy:  # type: ignore[arg-type]
                        for seq, ev in enumerate(events):
                            copy.write_row((*event_row(ev, now_ms), seq, dedupable(ev)))
                    for setting in _PLAN:
                        cur.execute(setting)  # type: ignore[arg-type]
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                    cur.execute(_MOVE, {"since": since_ms})  # type: ignore[arg-type]
                    inserted = max(cur.rowcount, 0)
                conn.commit()
            except BaseException:
                if not conn.closed and not conn.broken:
                    try:
                        conn.rollback()
                    except psycopg.Error:
                        conn.close()
                raise
        return WriteResult(inserted, len(events) - inserted)
