"""The local SQLite store of every event the fast path consumed, and the queries on it.

WAL mode so ``blueplane traces`` reads while the consumer writes; one transaction per batch,
written by a few set statements (``INSERT … SELECT`` from multi-row ``VALUES``, the dedup check
inside), not a statement per row: see ``PreparedBatch``; ``INSERT OR IGNORE`` on a
deterministic ``event_id`` so a redelivered entry is stored once.
``close()`` waits for a write still running in a worker thread, so a shutdown never closes the
connection under it. This is our own database, never Cursor's: here PRAGMAs that write are fine.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar

from blueplane import conversation_index, trace_sources
from blueplane.derived import (
    STAGE_COLUMNS,
    apply_batch,
    ensure_derived,
    ensure_stage,
    stage_batch,
    stage_row,
)
from blueplane.store_schema import (
    EVENTS,
    SCHEMA_VERSION,
    SQLITE,
    StoreSchemaTooNew,
    pending_migrations,
    schema_ddl,
    too_new_message,
)

# The tables are defined once, for both stores, in ``store_schema`` (see its docstring to add
# one); this is their SQLite DDL.
SCHEMA = ";\n".join(schema_ddl(SQLITE)) + ";\n"

log = logging.getLogger("blueplane.store")

# Set once the conversation tables hold every stored event (conversation_index.py).
CONVERSATIONS_META = "conversations_indexed"
BACKFILL_CHUNK = 5000


@dataclass(slots=True)
class StoredEvent:
    """One stream entry, parsed, as it is written to the store.

    Not frozen: a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, and one is built per event (20 k/s)."""

    event_id: str
    stream_id: str
    event_type: str
    hook_type: str | None
    platform: str | None
    trace_type: str | None
    session_id: str | None
    workspace_hash: str | None
    generation_id: str | None
    item_key: str | None
    revision: int
    timestamp: str | None
    timestamp_ms: int | None
    payload: dict[str, Any]
    metadata: dict[str, Any]
    # The JSON text as it came off the stream: stored as is, not serialised a second time.
    payload_json: str | None = None
    metadata_json: str | None = None
    # metadata.machine_id / metadata.user: which install and person produced it (team stores)
    machine_id: str | None = None
    user_name: str | None = None
    # Which monitor reported it (metadata ``source``; ``extension`` for the TypeScript monitor).
    source: str | None = None

    @property
    def is_trace(self) -> bool:
        return self.event_type == "database_trace"


@dataclass(frozen=True)
class WriteResult:
    inserted: int
    duplicates: int


# One statement per event: insert unless the same trace revision from another source is already
# stored within the dedup window (``event_id<>?``: the same event is left to OR IGNORE).
_INSERT = """
INSERT OR IGNORE INTO events
SELECT ?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?
WHERE ? IS NULL OR NOT EXISTS (
    SELECT 1 FROM events WHERE session_id=? AND trace_type IS ? AND item_key=? AND revision=?
    AND received_at_ms>=? AND event_id<>? LIMIT 1)
"""
# A generation with a workspace: also one trace whichever monitors report it (trace_sources).
_INSERT_GENERATION = _INSERT + trace_sources.NOT_FIRST


def event_row(ev: StoredEvent, now_ms: int) -> tuple[Any, ...]:
    """The ``events`` columns of one event, in ``EVENTS`` order (both stores write these)."""
    return (
        ev.event_id, ev.stream_id, ev.event_type, ev.hook_type, ev.platform,
        ev.trace_type, ev.session_id, ev.workspace_hash, ev.generation_id,
        ev.item_key, ev.revision, ev.timestamp, ev.timestamp_ms, now_ms,
        ev.payload_json if ev.payload_json is not None
        else json.dumps(ev.payload, ensure_ascii=False),
        ev.metadata_json if ev.metadata_json is not None
        else json.dumps(ev.metadata, ensure_ascii=False),
        ev.machine_id, ev.user_name,
    )  # fmt: skip


def dedupable(ev: StoredEvent) -> bool:
    """Dedup (same trace revision under another event id) only for traces naming their item."""
    return ev.event_type == "database_trace" and bool(ev.session_id) and bool(ev.item_key)


assert len(EVENTS.columns) == 18  # event_row and _INSERT follow EVENTS' column order
_RECEIVED = EVENTS.column_names.index("received_at_ms")

# The batch written as a few set statements instead of one statement per row. Why: the
# writer thread drops the GIL for every SQLite step, and while the event loop parses the next
# batch it waits up to a switch interval (1 ms) to get it back, once per row: with the other
# thread busy, executemany wrote 3.3 k events/s, the same rows as set statements 17.7 k. A
# statement over hundreds of rows is one step. The same wait follows every statement, so a
# batch is written by as few as memory and SQLite's variable limit allow (``_chunked``).
#
# Each statement takes the rows of a multi-row VALUES (``column1``…); ``?1``… are the write's
# own values (time, dedup window, seq base), known only once the write holds the lock.
#
# The events' insert is ``_INSERT`` + ``NOT_FIRST`` in set form. SQLite evaluates the SELECT of
# an INSERT that reads its own table in full before inserting, so one row's dedup check does
# not see another row of the same statement: rows that could see each other (the same trace
# revision or the same event id twice in a batch) are written one by one afterwards, with
# ``_INSERT``, exactly as before (``PreparedBatch.single``).
_EV_SET_COLS = len(EVENTS.columns) + 3  # event_row, then dedup flag, source, generation index
_EVENTS_SET = """
WITH b(now, since, base) AS (SELECT ?1, ?2, ?3)
INSERT OR IGNORE INTO events
SELECT {columns} FROM b, (VALUES {values}) v
WHERE v.column1 IS NOT NULL AND (v.column19 IS NULL OR NOT EXISTS (
    SELECT 1 FROM events e WHERE e.session_id=v.column7 AND e.trace_type IS v.column6
    AND e.item_key=v.column10 AND e.revision=v.column11 AND e.received_at_ms>=b.since
    AND e.event_id<>v.column1 LIMIT 1))
AND (v.column21 IS NULL OR NOT EXISTS (
    SELECT 1 FROM trace_sources o WHERE o.workspace_hash=v.column8 AND o.generation_id=v.column9
    AND o.source<>v.column20 AND o.seq<b.base+v.column21))
"""
# trace_sources.rows(…, received_at_ms=0, seq_base=0): seq is the place among the generations.
_SOURCES_SET = """
WITH b(now, base) AS (SELECT ?1, ?2)
INSERT OR IGNORE INTO trace_sources
    (workspace_hash, generation_id, source, seq, event_id, stream_id, session_id,
     received_at_ms, timestamp_ms, generation_ms, generation_type, description)
SELECT v.column1, v.column2, v.column3, b.base + v.column4, v.column5, v.column6, v.column7,
    b.now, v.column9, v.column10, v.column11, v.column12
FROM b, (VALUES {values}) v WHERE v.column1 IS NOT NULL
"""
_SOURCE_COLS = 12
_STAGE_SET = (
    "INSERT OR IGNORE INTO derived_stage SELECT * FROM (VALUES {values}) WHERE column1 IS NOT NULL"
)
# Rows per statement: powers of two, so a batch of any size uses a few cached statements, each
# of at most ``_MAX_VARIABLES`` (a cached statement keeps ~0.3 KB per variable: one over the
# whole batch, 2,048 events of 21, made the server's RSS 11 MB larger). A batch is split into
# the largest that fit, then the rest as powers of two, or as one more of the next power of
# two padded with NULL rows (``column1 IS NOT NULL`` skips them) when that pads at most an
# eighth of it (a padding row costs SQLite about what a row costs: it must stay rare).
_SIZES = tuple(1 << k for k in range(12))
_MAX_VARIABLES = 16384
# SQLite's default variable limit (since 3.32); a store reads its own connection's.
DEFAULT_MAX_PARAMS = 32766

# The writer connection's page cache, KiB (SQLite's default is 2 MB). A batch of 2,000 ~1.3 KB
# events dirties ~3 MB of pages: with 2 MB the cache spilled to the WAL mid-transaction and the
# index pages were read back again; 8 MB holds a batch (store-only: the events insert ~30 -> 18
# us CPU per event). Costs up to 6 MB more RSS, once filled.
WRITER_CACHE_KIB = 8192
# Copy the WAL into the database (checkpoint) once this many of its pages are not yet copied
# (~40 MB: at 20 k events/s of ~1 KB, SQLite's default of 1,000 checkpoints several times a
# second).
CHECKPOINT_PAGES = 10000
# If the background checkpoints do not keep up (they fail, or the writer outruns them), the
# writer checkpoints itself after its commit, as SQLite's auto-checkpoint did.
CHECKPOINT_FORCE_PAGES = 4 * CHECKPOINT_PAGES
CHECKPOINT_LOG_EVERY_S = 60.0


# What PreparedBatch binds for SQL NULL: a NaN, which SQLite binds as NULL
# (``sqlite3_bind_double``: "NaN is converted to NULL"). Why not None: Python's sqlite3 (3.11)
# binds an int, float or str as is but looks up an adapter for anything else, None included
# (~250 ns a parameter, in the writer thread and holding the GIL; a batch has several per
# event). Only in the parameters PreparedBatch builds: the one-row paths bind None.
NULL = float("nan")


def _values(rows: int, cols: int) -> str:
    one = "(" + ",".join("?" * cols) + ")"
    return ",".join([one] * rows)


@cache
def _events_set(rows: int) -> str:
    columns = [f"v.column{i + 1}" for i in range(len(EVENTS.columns))]
    columns[_RECEIVED] = "b.now"
    return _EVENTS_SET.format(columns=", ".join(columns), values=_values(rows, _EV_SET_COLS))


@cache
def _sources_set(rows: int) -> str:
    return _SOURCES_SET.format(values=_values(rows, _SOURCE_COLS))


@cache
def _stage_set(rows: int) -> str:
    return _STAGE_SET.format(values=_values(rows, STAGE_COLUMNS))


def _chunked(
    rows: Sequence[tuple[Any, ...]],
    sql: Any,
    cols: int,
    lead: int,
    max_params: int = DEFAULT_MAX_PARAMS,
) -> list[tuple[str, list[Any]]]:
    """``rows`` as few statements of ``sql(n)`` as ``max_params`` allows (see ``_SIZES``);
    each parameter list starts with ``lead`` slots for the write's own values, filled in by
    the writer."""
    budget = min(max_params, _MAX_VARIABLES)
    fits = [size for size in _SIZES if size * cols + lead <= budget]
    if not fits:
        raise ValueError(f"SQLite's variable limit {max_params} is below one row ({cols})")
    out = []
    start = 0
    for size in reversed(fits):
        while len(rows) - start >= size:
            out.append((sql(size), _params(rows[start : start + size], lead, 0)))
            start += size
        rest = len(rows) - start
        if rest and size - rest <= size // 8:  # one padded statement holds the rest
            out.append((sql(size), _params(rows[start:], lead, (size - rest) * cols)))
            start = len(rows)
    return out


def _params(rows: Sequence[tuple[Any, ...]], lead: int, padding: int) -> list[Any]:
    """One statement's parameters: ``lead`` slots, the rows, ``padding`` NULLs."""
    params: list[Any] = [None] * lead
    params.extend(chain.from_iterable(rows))
    if padding:
        params.extend([NULL] * padding)
    return params


def _dedup_key(ev: StoredEvent) -> tuple[Any, ...] | None:
    """What another row's dedup check compares (session, type, item, revision); None when no
    check can ever match the row (no session or no item)."""
    if not ev.session_id or not ev.item_key:
        return None
    return (ev.session_id, ev.trace_type, ev.item_key, ev.revision)


class PreparedBatch(list[StoredEvent]):
    """A batch's events with what of its write needs no database, computed by the caller
    beforehand (the consumer, while the previous batch writes) so that the writer thread runs
    little more than SQL (see ``_EVENTS_SET``).

    ``single``: the events whose insert may depend on another row of the batch (the same trace
    revision or event id twice), written row by row after the set statements, each with its
    place among the batch's generations (``None``: not a keyed generation)."""

    def __init__(self, events: Iterable[StoredEvent], max_params: int = DEFAULT_MAX_PARAMS) -> None:
        super().__init__(events)
        # One pass, few calls: this runs for every event in the event loop (20 k/s), and every
        # microsecond here is one the writer thread waits for the GIL. The events' columns are
        # ``event_row``'s (``test_one_batch_stores_what_one_event_per_batch_stores`` holds
        # the two paths to the same rows).
        gens: list[StoredEvent] = []
        places: list[int | None] = []  # each event's place among the keyed generations
        ids: list[str] = []
        keys: list[tuple[Any, ...]] = []
        for ev in self:
            ids.append(ev.event_id)
            if ev.session_id and ev.item_key:  # _dedup_key
                keys.append((ev.session_id, ev.trace_type, ev.item_key, ev.revision))
            if (
                ev.trace_type == "generation"  # trace_sources.is_keyed_generation
                and ev.event_type == "database_trace"
                and ev.workspace_hash
                and ev.generation_id
            ):
                places.append(len(gens))
                gens.append(ev)
            else:
                places.append(None)
        self.generations = len(gens)
        self.sources = _chunked(
            trace_sources.rows(gens, 0, 0, NULL), _sources_set, _SOURCE_COLS, 2, max_params
        )
        self.stage = _chunked(
            [stage_row(ev, SQLITE, NULL) for ev in self], _stage_set, STAGE_COLUMNS, 0, max_params
        )
        self.single: list[tuple[StoredEvent, int | None]] = []
        # Rows that may see each other (the same event id or trace revision twice) are rare:
        # only then count them.
        clash = len(set(ids)) < len(ids) or len(set(keys)) < len(keys)
        seen_ids = Counter(ids) if clash else None
        seen_keys = Counter(keys) if clash else None
        dumps = json.dumps
        rows: list[tuple[Any, ...]] = []
        for ev, gen in zip(self, places, strict=True):
            if seen_ids is not None and seen_keys is not None:
                key = _dedup_key(ev)
                if seen_ids[ev.event_id] > 1 or (key is not None and seen_keys[key] > 1):
                    self.single.append((ev, gen))
                    continue
            payload = ev.payload_json
            metadata = ev.metadata_json
            machine = ev.machine_id
            user = ev.user_name
            rows.append(
                (
                    ev.event_id, ev.stream_id, ev.event_type, ev.hook_type, ev.platform,
                    ev.trace_type, ev.session_id, ev.workspace_hash, ev.generation_id,
                    ev.item_key, ev.revision, ev.timestamp, ev.timestamp_ms, 0,
                    payload if payload is not None else dumps(ev.payload, ensure_ascii=False),
                    metadata if metadata is not None
                    else dumps(ev.metadata, ensure_ascii=False),
                    # NULL for None where it is common (see NULL)
                    machine if machine is not None else NULL,
                    user if user is not None else NULL,
                    # dedupable(ev), then the source and place of a keyed generation
                    1 if ev.event_type == "database_trace" and ev.session_id and ev.item_key
                    else NULL,
                    (ev.source or trace_sources.UNKNOWN_SOURCE) if gen is not None else NULL,
                    gen if gen is not None else NULL,
                )
            )  # fmt: skip
        self.inserts = _chunked(rows, _events_set, _EV_SET_COLS, 3, max_params)


class TraceStore:
    """The SQLite store (the default). ``PgTraceStore`` (store_pg.py) is the PostgreSQL one;
    both have these methods, and the query methods here run on both (see store_schema)."""

    # What a write that failed for the store's sake raises (the consumer retries on these).
    errors: ClassVar[tuple[type[BaseException], ...]] = (sqlite3.Error,)
    dialect = SQLITE

    def __init__(self, path: Path, *, readonly: bool = False, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        # Held for the whole of a write (in a worker thread) and by close(): never both at once.
        self._lock = threading.Lock()
        self._closed = False
        self._next_seq = 0
        self._max_params = DEFAULT_MAX_PARAMS
        self._checkpointer: _Checkpointer | None = None
        self._wal_index: WalIndex | None = None
        if readonly:
            # The CLI's view: never writes, never blocks the consumer.
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout=5000")
            self._check_version()
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        # How many rows one statement may write (see _chunked).
        self._max_params = self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints (the only fsync in WAL + NORMAL) are not the writer's: see _Checkpointer.
        self.conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        self.conn.execute("PRAGMA journal_size_limit=67108864")
        self.conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        try:
            self._migrate()
            # The search index and the overview's aggregates (derived.py).
            ensure_derived(self.conn)
            ensure_stage(self.conn)
            # The reconciled conversations (conversation_index.py, tables in store_schema),
            # kept by every write.
            self._indexer = conversation_index.ConversationIndexer(self.conn)
            self._backfill_conversations()
            self._wal_index = WalIndex(path)
            if self._wal_index.backlog() is not None:
                self.conn.execute("PRAGMA wal_autocheckpoint=0")
                self._checkpointer = _Checkpointer(path)
            else:  # no WAL index to read the backlog from: SQLite's own checkpoints
                log.info("store %s: WAL index unreadable, checkpoints stay in the writer", path)
                self.conn.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
        except BaseException:
            self.conn.close()
            if self._wal_index is not None:
                self._wal_index.close()
            raise

    def _after_commit(self) -> None:
        """Keep the WAL bounded: start a background checkpoint once ``CHECKPOINT_PAGES`` of
        it are not copied yet; when one has copied the bulk, copy the rest here.

        A checkpoint running beside the writer cannot empty the WAL: the writer appends
        while it copies. The writer's own checkpoint of what was appended meanwhile (a batch
        or two) makes it complete, so the next transaction starts the WAL over."""
        cp = self._checkpointer
        if cp is None:
            return
        if cp.bulk_done.is_set():
            cp.bulk_done.clear()
            cp.checkpoint(self.conn, "the writer's")
            return
        backlog = self._wal_index.backlog() if self._wal_index is not None else None
        if backlog is None:  # read mid-update (another process committing): next time
            return
        if backlog >= CHECKPOINT_FORCE_PAGES and not cp.busy:
            cp.checkpoint(self.conn, "the writer's")  # the background ones do not keep up
        elif backlog >= CHECKPOINT_PAGES:
            cp.request()

    @property
    def label(self) -> str:
        """What logs and ``status`` call this store."""
        return str(self.path)

    def has_table(self, name: str) -> bool:
        """Whether the store has table ``name`` (a store written by an older version may not)."""
        sql, params = self.dialect.table_exists(name)
        return self.conn.execute(sql, params).fetchone() is not None

    def _stored_version(self) -> int | None:
        try:
            row = self.conn.execute(
                "SELECT value FROM store_meta WHERE key = 'schema_version'"
            ).fetchone()
        except sqlite3.OperationalError:  # no store_meta yet
            return None
        return int(row[0]) if row else None

    def _check_version(self) -> None:
        found = self._stored_version()
        if found is not None and found > SCHEMA_VERSION:
            raise StoreSchemaTooNew(too_new_message(self.label, found))

    def _migrate(self) -> None:
        """Create or migrate the schema to ``SCHEMA_VERSION`` in one transaction."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            found = self._stored_version()
            has_events = bool(
                self.conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type='table' AND name='events'"
                ).fetchone()
            )
            if found is None:
                found = 1 if has_events else SCHEMA_VERSION
            if found > SCHEMA_VERSION:
                raise StoreSchemaTooNew(too_new_message(self.label, found))
            if has_events:
                for m in pending_migrations(found):
                    for table, col in m.add_columns:
                        have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
                        if col.name not in have:
                            self.conn.execute(SQLITE.add_column(table, col))
            for stmt in schema_ddl(SQLITE):
                self.conn.execute(stmt)
            self.conn.execute(
                "INSERT OR REPLACE INTO store_meta VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def _backfill_conversations(self) -> None:
        """A store written before the conversation tables existed: index what it holds, once.

        Chunked transactions; re-running after a crash is harmless (the index is idempotent).
        """
        done = self.conn.execute(
            "SELECT value FROM store_meta WHERE key = ?", (CONVERSATIONS_META,)
        ).fetchone()
        if done is not None:
            return
        indexer = conversation_index.ConversationIndexer(self.conn)
        last = 0
        done_n = 0
        started = time.monotonic()
        while True:
            rows = self.conn.execute(
                "SELECT rowid, event_id, stream_id, event_type, hook_type, platform, trace_type,"
                " session_id, workspace_hash, generation_id, item_key, revision, timestamp,"
                " timestamp_ms, payload, metadata FROM events WHERE rowid > ? AND"
                " (hook_type = 'CursorHook' OR trace_type IN ('message', 'composer',"
                " 'transcript_message')) ORDER BY rowid LIMIT ?",
                (last, BACKFILL_CHUNK),
            ).fetchall()
            if not rows:
                break
            if not done_n:
                log.info("indexing the conversations of the events already in %s (once)",
                         self.path)  # fmt: skip
            last = rows[-1][0]
            done_n += len(rows)
            events = [_stored_from_row(r[1:]) for r in rows]
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                indexer.apply(events)
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        self.conn.execute("INSERT OR IGNORE INTO store_meta VALUES (?, '1')", (CONVERSATIONS_META,))
        if done_n:
            log.info("conversations of %d stored events indexed in %.1f s", done_n,
                     time.monotonic() - started)  # fmt: skip

    def close(self) -> None:
        """Close, after any write still running in another thread has finished."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._checkpointer is not None:
                    self._checkpointer.close()
                self.conn.close()
                if self._wal_index is not None:  # last: see WalIndex
                    self._wal_index.close()

    @property
    def writing(self) -> bool:
        """True while a ``write_batch`` runs (for shutdown and tests)."""
        return self._lock.locked()

    def prepare(self, events: Sequence[StoredEvent]) -> Sequence[StoredEvent]:
        """The batch ready for ``write_batch``, computed without the database (the consumer
        calls this while the previous batch is written). Other engines take it as it is."""
        return PreparedBatch(events, self._max_params) if self.dialect is SQLITE else events

    def write_batch(self, events: Sequence[StoredEvent], dedup_window_s: float) -> WriteResult:
        """Write a batch in one transaction; drop traces already stored within the window.

        ``events`` may be a ``PreparedBatch`` (``prepare``). Raises ``sqlite3.Error`` (busy,
        full, corrupt, closed) with nothing written.
        """
        batch = (
            events if isinstance(events, PreparedBatch) else PreparedBatch(events, self._max_params)
        )
        now_ms = int(time.time() * 1000)
        since_ms = now_ms - int(dedup_window_s * 1000)
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError(f"store {self.path} is closed")
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                before_rowid = stage_batch(self.conn, batch.stage)
                seq = 0
                if batch.generations:
                    # Reports of one generation are ordered by seq, taken once this write is
                    # the only one (so two stores on one file never order them backwards).
                    seq = max(int(time.time() * 1000) * trace_sources.SEQ_PER_MS, self._next_seq)
                    self._next_seq = seq + batch.generations
                # First: every source is recorded, even when its trace is a duplicate.
                for sql, params in batch.sources:
                    params[0:2] = (now_ms, seq)
                    self.conn.execute(sql, params)
                before = self.conn.total_changes
                for sql, params in batch.inserts:
                    params[0:3] = (now_ms, since_ms, seq)
                    self.conn.execute(sql, params)
                for ev, gen in batch.single:
                    row = self._row(ev, now_ms, since_ms)
                    if gen is None:
                        self.conn.execute(_INSERT, row)
                    else:
                        src = trace_sources.source_of(ev)
                        not_first = (ev.workspace_hash, ev.generation_id, src, seq + gen)
                        self.conn.execute(_INSERT_GENERATION, (*row, *not_first))
                inserted = self.conn.total_changes - before
                apply_batch(self.conn, before_rowid)  # search index, activity (derived.py)
                # Same transaction: the conversation view never disagrees with the traces.
                self._indexer.apply(batch)
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            self._after_commit()
        return WriteResult(inserted, len(batch) - inserted)

    @staticmethod
    def _row(ev: StoredEvent, now_ms: int, since_ms: int) -> tuple[Any, ...]:
        """``_INSERT``'s parameters for one event."""
        return (
            *event_row(ev, now_ms),
            # dedup only for traces that name their item: NULL skips the NOT EXISTS
            1 if dedupable(ev) else None,
            ev.session_id, ev.trace_type, ev.item_key, ev.revision, since_ms, ev.event_id,
        )  # fmt: skip

    # ----------------------------------------------------------------- queries
    def traces(
        self,
        workspace_hash: str | None = None,
        since_ms: int | None = None,
        limit: int = 50,
        trace_type: str | None = None,
        session_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` traces matching the filters, returned oldest first."""
        where = ["event_type = 'database_trace'"]
        args: list[Any] = []
        if workspace_hash:
            where.append("workspace_hash = ?")
            args.append(workspace_hash)
        if since_ms is not None:
            where.append("COALESCE(timestamp_ms, received_at_ms) >= ?")
            args.append(since_ms)
        if trace_type:
            where.append("trace_type = ?")
            args.append(trace_type)
        if session_id:
            where.append("session_id = ?")
            args.append(session_id)
        sql = (
            "SELECT event_id, stream_id, timestamp, timestamp_ms, received_at_ms, session_id,"
            " workspace_hash, trace_type, generation_id, revision, payload, metadata"
            f" FROM events WHERE {' AND '.join(where)}"
            " ORDER BY COALESCE(timestamp_ms, received_at_ms) DESC, stream_id DESC LIMIT ?"
        )
        rows = self.conn.execute(sql, (*args, limit)).fetchall()
        out = [_trace_row(r) for r in reversed(rows)]
        self._add_sources(out)
        return out

    def _add_sources(self, records: list[dict[str, Any]]) -> None:
        """``"sources"`` of each trace: every monitor that reported its generation."""
        keys = [
            (r["workspace_hash"], r["generation_id"])
            for r in records
            if r["trace_type"] == "generation" and r["workspace_hash"] and r["generation_id"]
        ]
        # a store written before trace_sources existed has no sources but each trace's own
        known = (
            trace_sources.sources_for(self.conn, keys)
            if keys and self.has_table("trace_sources")
            else {}
        )
        for r in records:
            found = known.get((r["workspace_hash"], r["generation_id"]))
            if found is None:
                meta = r["metadata"]
                own = meta.get("source") if isinstance(meta, dict) else None
                # Only the extension's TypeScript monitor sends traces without a source.
                found = [own if isinstance(own, str) else trace_sources.EXTENSION]
            r["sources"] = found

    def counts(self) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT COALESCE(trace_type, event_type), COUNT(*) FROM events GROUP BY 1"
        ).fetchall()
        return {str(k): int(v) for k, v in rows}


class WalIndex:
    """The WAL index (``-shm``) of a store, read to know how much of the WAL is not yet
    checkpointed (``backlog``).

    One descriptor, opened once and closed only after the store's connections: closing any
    descriptor of a file drops every POSIX lock this process holds on it, SQLite's included
    (a reader in another process would then find the WAL index unowned and rebuild it under
    a live writer). None when there is no index to read."""

    def __init__(self, path: Path) -> None:
        self._fd: int | None = None
        if not hasattr(os, "pread"):  # Windows: SQLite's own checkpoints (TraceStore.__init__)
            return
        try:
            self._fd = os.open(f"{path}-shm", os.O_RDONLY)
        except OSError:
            self._fd = None

    def backlog(self) -> int | None:
        """Pages in the WAL not yet copied into the database: ``mxFrame`` minus
        ``nBackfill`` (layout: https://www.sqlite.org/walformat.html, native byte order).
        None when unreadable or read mid-update (its two header copies differ)."""
        if self._fd is None:
            return None
        head = os.pread(self._fd, 100, 0)
        if len(head) < 100 or head[:48] != head[48:96]:
            return None
        max_frame = struct.unpack_from("=I", head, 16)[0]
        backfilled = struct.unpack_from("=I", head, 96)[0]
        return max(0, max_frame - backfilled)

    def close(self) -> None:
        """Only once every connection of this process to the store is closed (see above)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _Checkpointer:
    """Checkpoints the store's WAL in a thread of its own, on a connection of its own.

    Why: SQLite's auto-checkpoint runs inside the COMMIT that crosses its threshold, in the
    writer thread, which the consumer waits for: copying ~40 MB of WAL and two fsyncs cost
    the writer ~9 us of CPU and ~8 us of waiting per event (store-only, 100 k events). Here
    that runs beside the next batches (a PASSIVE checkpoint never blocks the writer); the
    writer copies only the rest (``TraceStore._after_commit``). The thread starts at the
    first request, so a store that is only read, or idle, has none.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bulk_done = threading.Event()  # a background pass finished: the writer's turn
        self._wake = threading.Condition()
        self._requested = False
        self._stopping = False
        self.busy = False
        self._thread: threading.Thread | None = None
        self._last_log = -CHECKPOINT_LOG_EVERY_S
        self.errors = 0

    def request(self) -> None:
        """Ask for a background pass (ignored while one runs or awaits the writer's turn)."""
        if self.bulk_done.is_set():
            return
        with self._wake:
            if self._stopping or self.busy or self._requested:
                return
            self._requested = True
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="blueplane-checkpoint", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                with self._wake:
                    while not (self._requested or self._stopping):
                        self._wake.wait()
                    if self._stopping:
                        return
                    self._requested = False
                    self.busy = True
                try:
                    if self.checkpoint(conn, "background"):
                        self.bulk_done.set()
                finally:
                    with self._wake:
                        self.busy = False
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection, who: str) -> bool:
        """One PASSIVE checkpoint on ``conn``; a failure is logged (once a minute), not
        raised: the batch is committed, and the WAL only grows until a later one works."""
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            return True
        except sqlite3.Error as exc:
            self.errors += 1
            now = time.monotonic()
            if now - self._last_log >= CHECKPOINT_LOG_EVERY_S:
                self._last_log = now
                log.error("store %s: %s checkpoint of the WAL failed (%d so far): %s",
                          self.path, who, self.errors, exc)  # fmt: skip
            return False

    def close(self) -> None:
        """Stop the thread after the pass it may be running."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()


def _stored_from_row(r: Sequence[Any]) -> StoredEvent:
    (event_id, stream_id, event_type, hook_type, platform, trace_type, session_id, whash,
     gen_id, item_key, revision, ts, ts_ms, payload, metadata) = r  # fmt: skip
    return StoredEvent(
        event_id=event_id, stream_id=stream_id, event_type=event_type, hook_type=hook_type,
        platform=platform, trace_type=trace_type, session_id=session_id, workspace_hash=whash,
        generation_id=gen_id, item_key=item_key, revision=revision or 0, timestamp=ts,
        timestamp_ms=ts_ms, payload=_object(payload), metadata=_object(metadata),
    )  # fmt: skip


def _object(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _trace_row(r: Iterable[Any]) -> dict[str, Any]:
    (event_id, stream_id, ts, ts_ms, recv_ms, session_id, whash, ttype, gen_id, rev, payload,
     metadata) = r  # fmt: skip
    return {
        "event_id": event_id,
        "stream_id": stream_id,
        "timestamp": ts,
        "timestamp_ms": ts_ms,
        "received_at_ms": recv_ms,
        "session_id": session_id,
        "workspace_hash": whash,
        "trace_type": ttype,
        "generation_id": gen_id,
        "revision": rev,
        "payload": json.loads(payload) if payload else {},
        "metadata": json.loads(metadata) if metadata else {},
    }
