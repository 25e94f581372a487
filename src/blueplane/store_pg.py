"""The PostgreSQL store: the same tables and queries as the SQLite one, for a team's central host.

Selected by ``store.url: postgresql://…``. Writes are batched: one transaction per batch, what the
statements need of the rows ``COPY``-ed into a temporary table, and the rows not stored yet
``COPY``-ed straight into ``events``; then, under a transaction-scoped advisory lock, the rows the
SQLite writer's dedup rule would not have stored (a trace revision already stored within the window
under another event id, also within the batch) are deleted before anyone can see them. So several
``blueplane consume`` processes dedup exactly as one SQLite writer does, while the ``COPY`` into
``events`` (most of the work) runs in parallel.

In the same transaction and under the same lock, the writer also keeps what SQLite's keeps:
``trace_sources`` (and its NOT_FIRST rule, ordered by a seq read from the database's clock
under the lock, so consumers on several hosts agree), the reconciled conversations
(``conversation_index`` on ``_PgTx``), the search index and the activity tables (``derived``).
A store written by an older version gets its conversation tables and derived tables built once
by the first writer that opens it (one transaction under the lock).

A connection lost mid-batch (PostgreSQL restarted) rolls the batch back and raises
``psycopg.Error``: the consumer keeps the entries pending and retries; the next write reconnects.
The query methods are ``TraceStore``'s own, run through ``_PgConn`` which rewrites their SQLite
spelling (``store_schema.Dialect.sql``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg
import psycopg.errors

from blueplane import conversation_index, derived, trace_sources
from blueplane.store import (
    BACKFILL_CHUNK,
    CONVERSATIONS_META,
    StoredEvent,
    TraceStore,
    WriteResult,
    _stored_from_row,
    dedupable,
    event_row,
)
from blueplane.store_schema import (
    EVENTS,
    POSTGRES,
    SCHEMA_VERSION,
    TRACE_SOURCES,
    StoreSchemaTooNew,
    pending_migrations,
    schema_ddl,
    too_new_message,
)
from blueplane.stores import StoreAuthError
from blueplane.urls import describe_pg, mask_url

log = logging.getLogger("blueplane.store")

# Room in each page of ``conv_turns`` for the new versions of its rows: each turn is updated
# after its insert (its time span, model, token counts: ``conversation_index``), and an update
# that finds room on its page and changes no indexed column is HOT (no new index entries).
# Applies to the pages written from then on. And an index the schema does not keep on
# PostgreSQL (``Index.dialects``) is dropped from a store made before.
_STORAGE = (
    "ALTER TABLE conv_turns SET (fillfactor = 50)",
    *(f"DROP INDEX IF EXISTS {i.name}" for i in EVENTS.indexes if "postgres" not in i.dialects),
)
# pg_advisory_xact_lock keys (any constants unique to Blueplane)
_MIGRATE_LOCK = 0x626C7565_0001
_WRITE_LOCK = 0x626C7565_0002
CONNECT_TIMEOUT_S = 5
# Attempts of a batch whose events another writer stored meanwhile (``write_batch``)
_DUPLICATE_RETRIES = 5

_COLS = EVENTS.column_names
_SRC_COLS = TRACE_SOURCES.column_names
# One row per event of the batch (its event id once: the first copy wins, as SQLite's ``OR
# IGNORE``): the ``events`` columns; seq: its place in the batch; dedup: it dedups on its trace
# revision; later: an earlier event of the batch has the same trace revision (so it is dropped,
# SQLite's first-wins within a batch, decided in Python); src / src_pos: a generation's source and
# its place among the batch's generations (its trace_sources seq is the write's base + src_pos,
# known once the write lock is held); then what the search index and the activity tables need
# of it (``derived.stage_row``): the stage is this table, so the derived statements look
# nothing up in ``events``.
_STAGE_COLS = ("text", "conversation_id", "model", "turn", "input_tokens", "output_tokens")
# The events columns the write's statements read of the batch (not the payloads: the rows
# themselves are copied straight into ``events``, ``_COPY_EVENTS``).
_SLIM = ("event_id", "stream_id", "event_type", "trace_type", "session_id", "workspace_hash",
         "generation_id", "item_key", "revision", "timestamp_ms")  # fmt: skip
_SLIM_POS = [_COLS.index(c) for c in _SLIM]
_BATCH_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS _bp_batch ("
    + ", ".join(
        POSTGRES.column_ddl(c).replace(" NOT NULL", "") for c in EVENTS.columns if c.name in _SLIM
    )
    + ", seq INTEGER, dedup BOOLEAN, later BOOLEAN, src TEXT, src_pos INTEGER, text TEXT,"
    " conversation_id TEXT, model TEXT, turn INTEGER, input_tokens BIGINT, output_tokens BIGINT,"
    " received_at_ms BIGINT) ON COMMIT DELETE ROWS"
)
_SOURCES_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS _bp_sources ("
    + ", ".join(POSTGRES.column_ddl(c).replace(" NOT NULL", "") for c in TRACE_SOURCES.columns)
    + ") ON COMMIT DELETE ROWS"
)
# Binary COPY: no text escaping of the payloads on either side (psycopg's text rows cost the
# consumer ~20 µs each).
# received_at_ms is copied last: the write's own time, appended to the prepared row at the write
_COPY_COLS = [c for c in _COLS if c != "received_at_ms"]
_COPY = (
    f"COPY _bp_batch ({', '.join(_SLIM)}, seq, dedup, later, src, src_pos,"
    f" {', '.join(_STAGE_COLS)}, received_at_ms) FROM STDIN (FORMAT BINARY)"
)
_PG_TYPES = {"TEXT": "text", "BIGINT": "int8", "INTEGER": "int4", "BOOLEAN": "bool"}
_COPY_TYPES = [_PG_TYPES[POSTGRES.types[c.type]] for c in EVENTS.columns if c.name in _SLIM] + [
    "int4", "bool", "bool", "text", "int4", "text", "text", "text", "int4", "int8", "int8", "int8",
]  # fmt: skip
_COPY_EVENTS = f"COPY events ({', '.join(_COPY_COLS)}, received_at_ms) FROM STDIN (FORMAT BINARY)"
_EVENTS_TYPES = [_PG_TYPES[POSTGRES.types[c.type]] for c in EVENTS.columns
                 if c.name != "received_at_ms"] + ["int8"]  # fmt: skip
_SRC_COPY_COLS = [c for c in _SRC_COLS if c != "received_at_ms"] + ["received_at_ms"]
_SOURCES_TYPES = [_PG_TYPES[POSTGRES.types[c.type]] for c in TRACE_SOURCES.columns
                  if c.name != "received_at_ms"] + ["int8"]  # fmt: skip
# seq is copied as the place in the batch; the base is added when moved.
_COPY_SOURCES = f"COPY _bp_sources ({', '.join(_SRC_COPY_COLS)}) FROM STDIN (FORMAT BINARY)"
_MOVE_SOURCES = f"""
INSERT INTO trace_sources ({", ".join(_SRC_COLS)})
SELECT {", ".join("seq + %(base)s" if c == "seq" else c for c in _SRC_COLS)} FROM _bp_sources
ON CONFLICT DO NOTHING
"""
# Two steps, so that writers on several hosts insert in parallel and hold the write lock only
# for the decisions:
# 1. before the lock, every row of the batch not already stored is copied into ``events`` (in event
#    id order, so two writers never wait on each other's rows in a cycle; one that another writer
#    stored meanwhile fails the COPY, and ``write_batch`` writes the batch again: no ``ON
#    CONFLICT``, whose speculative insertion costs each row a probe and a WAL record more, and no
#    second copy of the wide rows in a temporary table). The rows stay invisible to every other
#    writer and reader until the commit. Which rows this write inserted is told by their ``xmin``,
#    this transaction's id (``events`` rows are never updated, and the write takes no savepoint): no
#    table of the inserted ids to fill and probe (~10 % of the insert's time).
# 2. under the lock, the rows the SQLite writer's rules would not have stored are deleted:
#    within the batch the first row of a trace revision wins (decided in Python: ``later``);
#    against the table, a row of the same revision stored within the window under another event
#    id (committed by an earlier holder of the lock, or already there: not one this write
#    inserted) drops it
#    (the events_by_trace index answers; dedup rows always have a trace_type, so ``=`` is
#    exact); a generation another source reported first (an earlier seq) is only a source
#    (``trace_sources.NOT_FIRST``, applied like SQLite's: to the rows that dedup).
# Each statement of step 2 reads a snapshot taken after the lock was granted, so it sees every
# batch committed before it, exactly as when the whole move ran under the lock.
# The rows are copied in event id order: so two writers insert their common rows in the same
# order and never wait on each other's in a cycle.
# The batch's events already stored (a redelivery): the others are copied into ``events``.
_STORED = (
    "SELECT b.event_id FROM _bp_batch b"
    " WHERE EXISTS (SELECT 1 FROM events e WHERE e.event_id = b.event_id)"
)
# ``%(xid)s``: this transaction's id (``_LOCK_AND_SEQ``); a row whose xmin it is was inserted by
# this write. (An xmin equal to it on an older row needs 2^32 transactions since that row was
# written, far outside any dedup window.)
_DROP_LOSERS = """
DELETE FROM events d USING _bp_batch b
    WHERE d.event_id = b.event_id AND b.dedup AND d.xmin = %(xid)s::xid
    AND (b.later OR EXISTS (
        SELECT 1 FROM events e WHERE e.session_id = b.session_id AND e.trace_type = b.trace_type
        AND e.item_key = b.item_key AND e.revision = b.revision
        AND e.received_at_ms >= %(since)s AND e.event_id <> b.event_id
        AND e.xmin <> %(xid)s::xid)
      OR (b.src_pos IS NOT NULL AND EXISTS (
        SELECT 1 FROM trace_sources o WHERE o.workspace_hash = b.workspace_hash
        AND o.generation_id = b.generation_id AND o.source <> b.src
        AND o.seq < %(base)s + b.src_pos)))
RETURNING d.event_id
"""
# What the write does not keep (already stored, or dropped by the rules above) leaves the batch
# table before the derived tables are applied from it.
_UNSTAGE = "DELETE FROM _bp_batch WHERE event_id = ANY(%s)"
# The write's seq base: the database's clock, read under the write lock, so the seqs of the
# writers of every host follow the order their batches commit in.
_NOW_SEQ = (
    f"SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint * {trace_sources.SEQ_PER_MS}"
)
# A store's events in the order they were stored (PostgreSQL keeps no rowid): by write time,
# then by stream id (``ms-n``, compared as numbers).
_STORED_ORDER = (
    " ORDER BY received_at_ms,"
    " CASE WHEN stream_id ~ '^[0-9]+-[0-9]+$' THEN split_part(stream_id, '-', 1)::numeric END,"
    " CASE WHEN stream_id ~ '^[0-9]+-[0-9]+$' THEN split_part(stream_id, '-', 2)::numeric END,"
    " event_id"
)
_BACKFILL = (
    "SELECT event_id, stream_id, event_type, hook_type, platform, trace_type, session_id,"
    " workspace_hash, generation_id, item_key, revision, timestamp, timestamp_ms, payload,"
    " metadata FROM events WHERE hook_type = 'CursorHook' OR trace_type IN"
    f" ({', '.join(repr(t) for t in conversation_index.INDEXED_TRACE_TYPES)})" + _STORED_ORDER
)
# The derived tables of an older store: every event, in the order they were stored.
_DERIVED_BACKFILL = "SELECT event_id, trace_type, payload, metadata FROM events" + _STORED_ORDER
_DERIVED_APPLY = derived.apply_statements(POSTGRES, "TRUE")
# A write's: from the batch table (events and stage in one row), holding only what it kept.
_BATCH_JOIN = (
    "_bp_batch s CROSS JOIN LATERAL (SELECT s.event_id, s.stream_id, s.event_type, s.trace_type,"
    " s.session_id, s.workspace_hash, s.item_key, s.revision, s.timestamp_ms, s.received_at_ms) e"
)
_DERIVED_WRITE = derived.apply_statements(POSTGRES, "TRUE", _BATCH_JOIN)
_COPY_STAGE = "COPY derived_stage FROM STDIN"
# The page's change token (SQLite's is max(rowid)): events stored, counted by the writers.
STORED_META = "events_stored"
_COUNT_STORED = (
    "INSERT INTO store_meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE"
    " SET value = (store_meta.value::bigint + EXCLUDED.value::bigint)::text"
)
# The temporary table has no statistics: never let the planner hash all of ``events``. And no
# JIT: the batch statements' estimated cost grows with the store (their subqueries over
# ``events``) past ``jit_optimize_above_cost``, and PostgreSQL then spent ~0.9 s compiling
# each one, every batch, to run ~10 ms of work (2.5 k events/s at 400 k stored).
_PLAN = (
    "SET LOCAL enable_hashjoin = off",
    "SET LOCAL enable_mergejoin = off",
    "SET LOCAL jit = off",
)
_PLAN_LOCAL = "; ".join(_PLAN)  # one round trip
_LOCK_AND_SEQ = (
    "SELECT pg_advisory_xact_lock(%s), "
    + _NOW_SEQ.removeprefix("SELECT ")
    + ", pg_current_xact_id()::xid::text"
)


_ROW_RECEIVED = _COLS.index("received_at_ms")
_SRC_RECEIVED = _SRC_COLS.index("received_at_ms")


class _PgBatch(list[StoredEvent]):
    """A batch with its COPY rows computed beforehand (``PgTraceStore.prepare``): the consumer
    builds them in its event loop while the previous batch is written, so the writer thread
    runs little more than SQL and PostgreSQL is not kept waiting on Python between batches.
    The rows leave out ``received_at_ms``: ``write_batch`` appends the write's own time to
    each (copied last), so a batch retried after an outage is stamped when it is stored. Tuples,
    not lists filled in at the write: those cost the writer a few µs more per event (COPY of a
    list, the collector tracking 5,000 of them), measured with ``bench_pg_writers``."""

    def __init__(self, events: Sequence[StoredEvent]) -> None:
        super().__init__(events)
        # An event id twice in a batch (a redelivery): the first copy wins, as SQLite's OR IGNORE.
        unique: dict[str, StoredEvent] = {}
        for ev in events:
            unique.setdefault(ev.event_id, ev)
        self.unique_ids = list(unique)
        keyed = trace_sources.is_keyed_generation
        # without received_at_ms (appended at the write)
        self.source_rows: list[tuple[Any, ...]] = [
            r[:_SRC_RECEIVED] + r[_SRC_RECEIVED + 1 :]
            for r in trace_sources.rows([ev for ev in unique.values() if keyed(ev)], 0, 0)
        ]
        # Every row, with what the search index and the activity tables need of it (the words of
        # every text: Python's share of the cost).
        rows: list[tuple[Any, ...]] = []
        events_rows: list[tuple[Any, ...]] = []
        revisions: set[tuple[Any, ...]] = set()
        pos = 0
        for seq, ev in enumerate(unique.values()):
            dedup = dedupable(ev)
            later = False
            if dedup:
                key = (ev.session_id, ev.trace_type, ev.item_key, ev.revision)
                later = key in revisions
                revisions.add(key)
            src: tuple[Any, Any] = (None, None)
            if keyed(ev):
                src = (self.source_rows[pos][2], pos)
                pos += 1
            stage = derived.stage_row(ev, POSTGRES)
            row = event_row(ev, 0)
            rows.append((*(row[i] for i in _SLIM_POS), seq, dedup, later, *src, *stage[1:]))
            events_rows.append((*row[:_ROW_RECEIVED], *row[_ROW_RECEIVED + 1 :]))
        # event id order: see _STORED
        rows.sort(key=lambda r: r[0])
        events_rows.sort(key=lambda r: r[0])
        self.rows = rows
        self.events_rows = events_rows


class _Cursor:
    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cur.fetchall() if self._cur.description else []

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cur.fetchone() if self._cur.description else None

    def __iter__(self) -> Any:
        return iter(self.fetchall())


# ``INSERT INTO table [(columns)] VALUES (?, …, ?)``, and what follows (ON CONFLICT …)
_INSERT_VALUES = re.compile(
    r"\s*INSERT INTO (\w+)\s*(\([\w\s,]*\))?\s*VALUES\s*\(\s*\?(?:\s*,\s*\?)*\s*\)",
    re.IGNORECASE,
)


class _PgTx:
    """The write connection in its open transaction, as ``conversation_index.IndexConn``:
    queries in the SQLite spelling, rewritten by ``Dialect.sql``."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        return _Cursor(self.raw.execute(POSTGRES.sql(sql), tuple(params)))  # type: ignore[arg-type]

    def executemany(self, sql: str, rows: Any) -> None:
        """An ``INSERT INTO t [(cols)] VALUES (?, …) …``: its rows ``COPY``-ed into a temporary
        twin of ``t``, then one ``INSERT … SELECT`` with the same tail (``ON CONFLICT …``; its
        rows name each key once: ``conversation_index``'s contract). Anything else: row by row
        in a pipeline."""
        rows = [tuple(r) for r in rows]
        m = _INSERT_VALUES.match(sql)
        if m is None and len(rows) >= 2 and self._update_setwise(sql, rows):
            return
        if m is None or len(rows) < 2:
            with self.raw.cursor() as cur:
                cur.executemany(POSTGRES.sql(sql), rows)  # type: ignore[arg-type]
            return
        table, cols = m.group(1), m.group(2)
        twin = f"_bp_{table}"
        select = cols.strip()[1:-1] if cols else "*"
        tail = sql[m.end() :]
        with self.raw.cursor() as cur:
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {twin} (LIKE {table})")  # type: ignore[arg-type]
            with cur.copy(f"COPY {twin} {cols or ''} FROM STDIN") as copy:  # type: ignore[arg-type]
                for row in rows:
                    copy.write_row(row)
            head = f"INSERT INTO {table} {cols or ''} SELECT {select} FROM {twin} "
            cur.execute(POSTGRES.sql(head + tail))  # type: ignore[arg-type]
            cur.execute(f"DELETE FROM {twin}")  # type: ignore[arg-type]

    def _update_setwise(self, sql: str, rows: list[tuple[Any, ...]]) -> bool:
        """An ``UPDATE t SET … WHERE k1 = ? AND k2 = ? [AND …]`` for many rows as few
        statements: the rows' parameters as arrays, ``unnest``-ed into ``v``, each ``?`` its
        column (``UPDATE … FROM``). Each statement applies the rows of distinct keys (the
        ``k = ?`` conjuncts): an UPDATE of one key touches only that key's rows, so this is
        the row-by-row sequence; a key named again waits for the next statement, in order.
        False (nothing done) for a shape this does not handle: the caller goes row by row.
        (Row by row, the conversation index's updates were ~20 % of a batch's time.)"""
        m = _UPDATE_WHERE.match(sql)
        if m is None or _SUBQUERY.search(sql):
            return False
        params = sql.count("?")
        if params == 0 or any(len(r) != params for r in rows):
            return False
        # which parameters are key columns (``col = ?`` conjuncts of the WHERE)
        before_where = sql[: m.start("where")].count("?")
        keys: list[int] = []
        pos = before_where
        for conj in re.split(r"\s+AND\s+", m.group("where"), flags=re.IGNORECASE):
            if _KEY_CONJ.match(conj):
                keys.append(pos)
            pos += conj.count("?")
        if not keys:
            return False
        types: list[str | None] = []
        for col in zip(*rows, strict=True):
            t = _array_type(col)
            if t == "":
                return False
            types.append(t)
        # the placeholders, in order: an array column, or NULL where every row has None
        names = iter(f"v.p{i}" if t else "NULL" for i, t in enumerate(types))
        body = _PLACEHOLDER.sub(lambda x: x.group(0) if x.group(0) == "%%" else next(names),
                                POSTGRES.sql(sql))  # fmt: skip
        cols = [i for i, t in enumerate(types) if t]
        unnest = (f" FROM unnest({', '.join(f'%b::{types[i]}[]' for i in cols)})"
                  f" AS v({', '.join(f'p{i}' for i in cols)})")  # fmt: skip
        where = re.search(r"\bWHERE\b", body, re.IGNORECASE)
        assert where is not None
        statement = body[: where.start()] + unnest + " " + body[where.start() :]
        # rounds: the n-th row of each key in the n-th statement
        rounds: list[list[tuple[Any, ...]]] = []
        seen: dict[tuple[Any, ...], int] = {}
        for r in rows:
            k = tuple(r[i] for i in keys)
            n = seen.get(k, 0)
            seen[k] = n + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(r)
        with self.raw.cursor() as cur:
            for batch in rounds:
                arrays = [[r[i] for r in batch] for i in cols]
                cur.execute(statement, arrays)  # type: ignore[arg-type]
        return True


def _array_type(values: Sequence[Any]) -> str | None:
    """The PostgreSQL array type of one parameter's values: None when every value is None
    (the placeholder becomes ``NULL``), "" when they mix types this does not handle."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return None
    if kinds == {str}:
        return "text"
    if kinds <= {int} or kinds == {bool, int}:
        return "int8"
    if kinds == {bool}:
        return "bool"
    if kinds <= {int, float}:
        return "float8"
    return ""


# ``UPDATE t SET … WHERE …``, one WHERE (no subquery: ``_SUBQUERY``)
_UPDATE_WHERE = re.compile(
    r"\s*UPDATE\s+\w+\s+SET\s+(?:(?!\bWHERE\b).)*\bWHERE\s+(?P<where>(?:(?!\bWHERE\b).)*)$",
    re.IGNORECASE | re.DOTALL,
)
_SUBQUERY = re.compile(r"\bSELECT\b|\bFROM\b|\bRETURNING\b", re.IGNORECASE)
_KEY_CONJ = re.compile(r"^\s*\w+\s*=\s*\?\s*$")
_PLACEHOLDER = re.compile(r"%%|%s")


class _PgConn:
    """The slice of ``sqlite3.Connection`` the query methods use, on a psycopg connection:
    queries in the SQLite spelling run unchanged (autocommit: reads see every commit)."""

    dialect = POSTGRES

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
        self._next_seq = 0
        self.conn = _PgConn(connect(url))  # type: ignore[assignment]
        if readonly and self._stored_version() is not None:
            self._check_version()
        else:
            # a reader of a database no consumer has written yet creates the empty tables,
            # so its queries answer "nothing" (as for a SQLite file not there yet)
            self._migrate()
            if not readonly:
                self._backfill_conversations()
                self._ensure_derived()

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
            for stmt in _STORAGE:
                raw.execute(stmt)  # type: ignore[arg-type]
            raw.execute(
                "INSERT INTO store_meta VALUES ('schema_version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(SCHEMA_VERSION),),
            )

    def _backfill_conversations(self) -> None:
        """A store written before the conversation tables existed (schema 3): index what it
        holds, once, in one transaction under the write lock, so no batch of another
        consumer is indexed before the older events (the turns' order) and two consumers
        starting at once do it once. Writers wait meanwhile; the log says so."""
        raw = self.conn.raw  # type: ignore[attr-defined]
        flag = "SELECT 1 FROM store_meta WHERE key = %s"
        if raw.execute(flag, (CONVERSATIONS_META,)).fetchone() is not None:
            return
        conn = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                for setting in _PLAN:
                    conn.execute(setting)  # type: ignore[arg-type]
                if conn.execute(flag, (CONVERSATIONS_META,)).fetchone() is not None:
                    return  # another consumer did it while this one waited
                indexer = conversation_index.ConversationIndexer(_PgTx(conn))
                started, done_n = time.monotonic(), 0
                with conn.cursor(name="bp_backfill") as cur:
                    cur.execute(_BACKFILL)  # type: ignore[arg-type]
                    while rows := cur.fetchmany(BACKFILL_CHUNK):
                        if not done_n:
                            log.info("indexing the conversations of the events already in %s"
                                     " (once; writers wait)", self.label)  # fmt: skip
                        done_n += len(rows)
                        indexer.apply([_stored_from_row(r) for r in rows])
                conn.execute(
                    "INSERT INTO store_meta VALUES (%s, '1') ON CONFLICT DO NOTHING",
                    (CONVERSATIONS_META,),
                )
            if done_n:
                log.info("conversations of %d stored events indexed in %.1f s", done_n,
                         time.monotonic() - started)  # fmt: skip
        finally:
            conn.close()

    def _ensure_derived(self) -> None:
        """The search index and the activity tables (derived.py): made, and filled from the
        stored events, when their version changed (or a store predates them). One
        transaction under the write lock, as the conversations' backfill."""
        raw = self.conn.raw  # type: ignore[attr-defined]
        flag = "SELECT value FROM store_meta WHERE key = %s"
        row = raw.execute(flag, (derived.META_KEY,)).fetchone()
        if row is not None and row[0] == derived.DERIVED_VERSION:
            return
        conn = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                for setting in _PLAN:
                    conn.execute(setting)  # type: ignore[arg-type]
                row = conn.execute(flag, (derived.META_KEY,)).fetchone()
                if row is not None and row[0] == derived.DERIVED_VERSION:
                    return
                started, done_n = time.monotonic(), 0
                for table in (derived.SEARCH_TABLE, *(t for t, _, _ in derived.ACTIVITY)):
                    conn.execute(f"DROP TABLE IF EXISTS {table}")  # type: ignore[arg-type]
                for stmt in derived.derived_ddl(POSTGRES):
                    conn.execute(stmt)  # type: ignore[arg-type]
                conn.execute(derived.stage_table())  # type: ignore[arg-type]
                with conn.cursor(name="bp_derived") as src:
                    src.execute(_DERIVED_BACKFILL)  # type: ignore[arg-type]
                    while rows := src.fetchmany(BACKFILL_CHUNK):
                        done_n += len(rows)
                        staged = [
                            derived.stage_fields(eid, tt, payload, meta, POSTGRES)
                            for eid, tt, payload, meta in rows
                        ]
                        with conn.cursor() as cur:
                            _apply_derived(cur, staged)
                conn.execute(
                    "INSERT INTO store_meta VALUES (%s, %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    (derived.META_KEY, derived.DERIVED_VERSION),
                )
            if done_n:
                log.info("search index and activity tables built from %d stored events in"
                         " %.1f s", done_n, time.monotonic() - started)  # fmt: skip
        finally:
            conn.close()

    def has_table(self, name: str) -> bool:
        row = self.conn.raw.execute("SELECT to_regclass(%s)", (name,)).fetchone()  # type: ignore[attr-defined]
        return bool(row and row[0] is not None)

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
            conn.execute(_SOURCES_DDL)  # type: ignore[arg-type]
            conn.commit()
            self._write_conn = conn
        return conn

    def prepare(self, events: Sequence[StoredEvent]) -> Sequence[StoredEvent]:
        """The batch with its COPY rows built (``_PgBatch``), without the database: the
        consumer calls this in its event loop while the previous batch is written."""
        return _PgBatch(events)

    def write_batch(self, events: Sequence[StoredEvent], dedup_window_s: float) -> WriteResult:
        """One transaction (``events`` may be a ``_PgBatch``: ``prepare``): COPY the batch into
        the temp tables, and its events not stored yet (``_STORED``) straight into ``events``;
        under the write lock, the sources of the generations (``trace_sources``), the rows
        SQLite's dedup and NOT_FIRST rules drop deleted (``_DROP_LOSERS``), the derived tables
        and the conversation tables (``conversation_index``) of the rows kept.

        An event another writer stored meanwhile (the same entry claimed by two consumers, or
        the redelivery of an entry whose write was still committing) makes the COPY fail on
        ``events``' primary key: the batch is rolled back and written again, which then finds
        it stored (so a redelivery is never stored twice).

        Raises ``psycopg.Error`` with nothing written (the batch is rolled back)."""
        batch = events if isinstance(events, _PgBatch) else _PgBatch(events)
        for attempt in range(_DUPLICATE_RETRIES):
            try:
                return self._write(batch, events, dedup_window_s)
            except psycopg.errors.UniqueViolation as exc:
                if attempt == _DUPLICATE_RETRIES - 1:
                    raise
                log.info("an event of the batch was stored by another writer meanwhile (%s):"
                         " writing the batch again", str(exc).splitlines()[0])  # fmt: skip
        raise AssertionError("unreachable")

    def _write(
        self, batch: _PgBatch, events: Sequence[StoredEvent], dedup_window_s: float
    ) -> WriteResult:
        rows, source_rows = batch.rows, batch.source_rows
        now_ms = int(time.time() * 1000)
        since_ms = now_ms - int(dedup_window_s * 1000)
        with self._lock:
            if self._closed:
                raise psycopg.InterfaceError(f"store {self.label} is closed")
            conn = self._writer()
            try:
                received = (now_ms,)  # the write's time: each row's received_at_ms
                with conn.cursor() as cur:
                    with cur.copy(_COPY) as copy:  # type: ignore[arg-type]
                        copy.set_types(_COPY_TYPES)
                        for row in rows:
                            copy.write_row(row + received)
                    if source_rows:
                        with cur.copy(_COPY_SOURCES) as copy:  # type: ignore[arg-type]
                            copy.set_types(_SOURCES_TYPES)
                            for row in source_rows:
                                copy.write_row(row + received)
                    cur.execute(_PLAN_LOCAL)  # type: ignore[arg-type]
                    cur.execute(_STORED)  # type: ignore[arg-type]
                    stored = {r[0] for r in cur.fetchall()}
                    with cur.copy(_COPY_EVENTS) as copy:  # type: ignore[arg-type]
                        copy.set_types(_EVENTS_TYPES)
                        for row in batch.events_rows:
                            if row[0] not in stored:
                                copy.write_row(row + received)
                    held = set(batch.unique_ids).difference(stored)
                    # the lock, then the database's clock (evaluated once the lock is granted)
                    cur.execute(_LOCK_AND_SEQ, (_WRITE_LOCK,))  # type: ignore[arg-type]
                    _, clock, xid = cur.fetchone()  # type: ignore[misc]
                    base = 0
                    if source_rows:
                        # First: every source is recorded, even when its trace is a duplicate.
                        base = max(int(clock), self._next_seq)
                        self._next_seq = base + len(source_rows)
                        cur.execute(_MOVE_SOURCES, {"base": base})  # type: ignore[arg-type]
                    if held:
                        params = {"since": since_ms, "base": base, "xid": xid}
                        cur.execute(_DROP_LOSERS, params)  # type: ignore[arg-type]
                        held.difference_update(r[0] for r in cur.fetchall())
                    inserted = len(held)
                    if inserted:
                        if inserted < len(rows):
                            gone = [eid for eid in batch.unique_ids if eid not in held]
                            cur.execute(_UNSTAGE, (gone,))  # type: ignore[arg-type]
                        # the search index and the activity counts of what was kept
                        for stmt in _DERIVED_WRITE:
                            cur.execute(stmt)  # type: ignore[arg-type]
                        cur.execute(_COUNT_STORED, (STORED_META, str(inserted)))  # type: ignore[arg-type]
                # Same transaction, still under the lock: the conversation view never
                # disagrees with the traces, and one writer at a time reads-modifies-writes it.
                conversation_index.ConversationIndexer(_PgTx(conn)).apply(events, held)
                conn.commit()
            except BaseException:
                if not conn.closed and not conn.broken:
                    try:
                        conn.rollback()
                    except psycopg.Error:
                        conn.close()
                raise
        return WriteResult(inserted, len(events) - inserted)


def _apply_derived(cur: psycopg.Cursor[Any], staged: list[tuple[Any, ...]]) -> None:
    """Stage rows (``derived.stage_row``) into the search index and the activity tables."""
    if not staged:
        return
    with cur.copy(_COPY_STAGE) as copy:  # type: ignore[arg-type]
        for row in staged:
            copy.write_row(row)
    for stmt in _DERIVED_APPLY:
        cur.execute(stmt)  # type: ignore[arg-type]
    cur.execute("DELETE FROM derived_stage")
