"""The local SQLite store of every event the fast path consumed, and the queries on it.

WAL mode so ``blueplane traces`` reads while the consumer writes; one transaction and one
``executemany`` per batch (the dedup check is part of the INSERT, so no per-row Python round
trip); ``INSERT OR IGNORE`` on a deterministic ``event_id`` so a redelivered entry is stored once.
``close()`` waits for a write still running in a worker thread, so a shutdown never closes the
connection under it. This is our own database, never Cursor's: here PRAGMAs that write are fine.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from blueplane import conversation_index, trace_sources
from blueplane.derived import apply_batch, ensure_derived, stage_batch
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
        if readonly:
            # The CLI's view: never writes, never blocks the consumer.
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout=5000")
            self._check_version()
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        # Checkpoint (the only fsync in WAL + NORMAL) every ~40 MB, not every 4 MB: at 20 k
        # events/s of ~1 KB the default checkpoints several times a second.
        self.conn.execute("PRAGMA wal_autocheckpoint=10000")
        self.conn.execute("PRAGMA journal_size_limit=67108864")
        self.conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        try:
            self._migrate()
            # The search index and the overview's aggregates (derived.py).
            ensure_derived(self.conn)
            # The reconciled conversations (conversation_index.py, tables in store_schema),
            # kept by every write.
            self._indexer = conversation_index.ConversationIndexer(self.conn)
            self._backfill_conversations()
        except BaseException:
            self.conn.close()
            raise

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
                self.conn.close()

    @property
    def writing(self) -> bool:
        """True while a ``write_batch`` runs (for shutdown and tests)."""
        return self._lock.locked()

    def write_batch(self, events: Sequence[StoredEvent], dedup_window_s: float) -> WriteResult:
        """Write a batch in one transaction; drop traces already stored within the window.

        Raises ``sqlite3.Error`` (busy, full, corrupt, closed) with nothing written.
        """
        now_ms = int(time.time() * 1000)
        since_ms = now_ms - int(dedup_window_s * 1000)
        keyed = trace_sources.is_keyed_generation
        generations = [ev for ev in events if keyed(ev)]
        others = [ev for ev in events if not keyed(ev)] if generations else list(events)
        rows = self._rows(others, now_ms, since_ms)
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError(f"store {self.path} is closed")
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                before_rowid = stage_batch(self.conn, events)
                source_rows: list[tuple[Any, ...]] = []
                gen_rows: list[tuple[Any, ...]] = []
                if generations:
                    # Reports of one generation are ordered by seq, taken once this write is
                    # the only one (so two stores on one file never order them backwards).
                    seq = max(int(time.time() * 1000) * trace_sources.SEQ_PER_MS, self._next_seq)
                    self._next_seq = seq + len(generations)
                    source_rows = trace_sources.rows(generations, now_ms, seq)
                    gen_rows = [
                        (*row, *trace_sources.not_first_args(src))
                        for row, src in zip(
                            self._rows(generations, now_ms, since_ms), source_rows, strict=True
                        )
                    ]
                if source_rows:
                    # First: every source is recorded, even when its trace is a duplicate.
                    self.conn.executemany(trace_sources.INSERT, source_rows)
                before = self.conn.total_changes
                self.conn.executemany(_INSERT, rows)
                if gen_rows:
                    self.conn.executemany(_INSERT_GENERATION, gen_rows)
                inserted = self.conn.total_changes - before
                apply_batch(self.conn, before_rowid)  # search index, activity (derived.py)
                # Same transaction: the conversation view never disagrees with the traces.
                self._indexer.apply(events)
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        return WriteResult(inserted, len(events) - inserted)

    @staticmethod
    def _rows(events: Sequence[StoredEvent], now_ms: int, since_ms: int) -> list[tuple[Any, ...]]:
        return [
            (
                *event_row(ev, now_ms),
                # dedup only for traces that name their item: NULL skips the NOT EXISTS
                1 if dedupable(ev) else None,
                ev.session_id, ev.trace_type, ev.item_key, ev.revision, since_ms, ev.event_id,
            )
            for ev in events
        ]  # fmt: skip

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
