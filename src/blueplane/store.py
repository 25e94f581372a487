"""The local SQLite store of every event the fast path consumed, and the queries on it.

WAL mode so ``blueplane traces`` reads while the consumer writes; one transaction per batch;
``INSERT OR IGNORE`` on a deterministic ``event_id`` so a redelivered entry is stored once.
This is our own database, never Cursor's: here PRAGMAs that write are fine.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id        TEXT PRIMARY KEY,
    stream_id       TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    hook_type       TEXT,
    platform        TEXT,
    trace_type      TEXT,
    session_id      TEXT,
    workspace_hash  TEXT,
    generation_id   TEXT,
    item_key        TEXT,
    revision        INTEGER NOT NULL DEFAULT 0,
    timestamp       TEXT,
    timestamp_ms    INTEGER,
    received_at_ms  INTEGER NOT NULL,
    payload         TEXT,
    metadata        TEXT
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (timestamp_ms);
CREATE INDEX IF NOT EXISTS events_by_workspace ON events (workspace_hash, timestamp_ms);
CREATE INDEX IF NOT EXISTS events_by_trace
    ON events (session_id, trace_type, item_key, revision, received_at_ms);
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT);
"""
SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class StoredEvent:
    """One stream entry, parsed, as it is written to the store."""

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

    @property
    def is_trace(self) -> bool:
        return self.event_type == "database_trace"


@dataclass(frozen=True)
class WriteResult:
    inserted: int
    duplicates: int


class TraceStore:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            # The CLI's view: never writes, never blocks the consumer.
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout=5000")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.conn.executescript(SCHEMA)
        self.conn.execute(
            "INSERT OR IGNORE INTO store_meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
        )

    def close(self) -> None:
        self.conn.close()

    def write_batch(self, events: Sequence[StoredEvent], dedup_window_s: float) -> WriteResult:
        """Write a batch in one transaction; drop traces already stored within the window."""
        now_ms = int(time.time() * 1000)
        since_ms = now_ms - int(dedup_window_s * 1000)
        inserted = duplicates = 0
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for ev in events:
                if ev.is_trace and ev.session_id and ev.item_key:
                    dup = cur.execute(
                        "SELECT 1 FROM events WHERE session_id=? AND trace_type=? AND item_key=?"
                        " AND revision=? AND received_at_ms>=? AND event_id<>? LIMIT 1",
                        (
                            ev.session_id,
                            ev.trace_type,
                            ev.item_key,
                            ev.revision,
                            since_ms,
                            ev.event_id,
                        ),
                    ).fetchone()
                    if dup:
                        duplicates += 1
                        continue
                cur.execute(
                    "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        ev.event_id, ev.stream_id, ev.event_type, ev.hook_type, ev.platform,
                        ev.trace_type, ev.session_id, ev.workspace_hash, ev.generation_id,
                        ev.item_key, ev.revision, ev.timestamp, ev.timestamp_ms, now_ms,
                        json.dumps(ev.payload, ensure_ascii=False),
                        json.dumps(ev.metadata, ensure_ascii=False),
                    ),
                )  # fmt: skip
                if cur.rowcount:
                    inserted += 1
                else:
                    duplicates += 1
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return WriteResult(inserted, duplicates)

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
        return [_trace_row(r) for r in reversed(rows)]

    def counts(self) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT COALESCE(trace_type, event_type), COUNT(*) FROM events GROUP BY 1"
        ).fetchall()
        return {str(k): int(v) for k, v in rows}


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
