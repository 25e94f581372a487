"""The page's reads of the store: read-only, and cheap with a million traces.

The charts read ``activity_daily`` and, for the last 48 hours, ``activity_hourly`` (kept by
the writer, derived.py: their size grows with days × workspaces × models, not with traces),
never the events; the feed reads the newest events by rowid (or by the workspace index).
A store written before those tables existed is read from ``events`` directly (correct, slower).

Either store: a SQLite file (a fresh ``mode=ro`` connection per request) or PostgreSQL (a
read-only ``PgTraceStore`` per request); the queries are written once in the SQLite spelling and
the connection's ``dialect`` adapts the few differences (PostgreSQL has no rowid: the change
token is the writers' count of stored events, the feed is newest by time).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from blueplane.store_schema import SQLITE, Dialect

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


@dataclass(slots=True)
class Totals:
    traces: int = 0
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(slots=True)
class Overview:
    """``GET /api/overview``: what the charts draw (days and hours in UTC)."""

    empty: bool
    workspace: str | None
    totals: Totals = field(default_factory=Totals)
    # [{"day": "2026-11-27", "t": ms, "traces", "turns", "input_tokens", "output_tokens"}]
    daily: list[dict[str, Any]] = field(default_factory=list)
    # the last 48 hours: [{"t": ms, "traces", "turns"}]
    hourly: list[dict[str, Any]] = field(default_factory=list)
    # [{"model", "turns", "traces", "input_tokens", "output_tokens"}], most turns first
    models: list[dict[str, Any]] = field(default_factory=list)
    # [{"workspace_hash", "traces", "turns", "input_tokens", "output_tokens"}]
    workspaces: list[dict[str, Any]] = field(default_factory=list)
    last_rowid: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class StoreReader:
    """Opens the store read-only per request (a connection is cheap; none is shared across
    the server's threads), and says so when there is no store yet.

    ``where``: a SQLite file's path, or a store URL (``sqlite://…`` or ``postgresql://…``)."""

    def __init__(self, where: Path | str) -> None:
        self.url: str | None = None
        if isinstance(where, str) and not where.startswith("sqlite://"):
            self.url = where
            self.path = Path()
        else:
            self.path = Path(where[len("sqlite://") :]) if isinstance(where, str) else where

    @contextmanager
    def connect(self) -> Iterator[Any]:
        if self.url is not None:
            from blueplane.stores import open_store

            store = open_store(self.url, readonly=True)
            try:
                yield store.conn
            finally:
                store.close()
            return
        if not self.path.exists():
            yield None
            return
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=2000")
            yield conn
        finally:
            conn.close()


def _dialect(conn: Any) -> Dialect:
    """A PostgreSQL store's connection says so; a ``sqlite3.Connection`` is SQLite."""
    return getattr(conn, "dialect", SQLITE)


def _has_table(conn: Any, name: str) -> bool:
    sql, params = _dialect(conn).table_exists(name)
    return conn.execute(sql, params).fetchone() is not None


def last_rowid(conn: Any) -> int:
    """Grows with every stored event: the page polls it to know when to refresh."""
    if conn is None or not _has_table(conn, "events"):
        return 0
    if _dialect(conn) is not SQLITE:  # no rowid: the writers count what they store
        from blueplane.store_pg import STORED_META

        row = conn.execute("SELECT value FROM store_meta WHERE key = ?", (STORED_META,)).fetchone()
        return int(row[0]) if row else 0
    return int(conn.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()[0])


def _fallback_activity(d: Dialect) -> str:
    """The activity table's rows computed from the events (a store without the table)."""
    model = (
        f"coalesce({d.json_text('payload', 'model')}, {d.json_text('payload', 'model_name')}, '')"
    )
    return f"""
SELECT (coalesce(timestamp_ms, received_at_ms) / 3600000) * 3600000 AS hour_ms,
       coalesce(workspace_hash, '') AS workspace_hash, coalesce(trace_type, '') AS trace_type,
       {model} AS model,
       COUNT(*) AS traces,
       SUM(CASE WHEN trace_type = 'message' AND {d.json_text("payload", "role")} = 'assistant'
           AND revision = 0 THEN 1 ELSE 0 END) AS turns,
       0 AS input_tokens, 0 AS output_tokens
FROM events WHERE event_type = 'database_trace' GROUP BY 1, 2, 3, 4
"""


def overview(conn: Any, workspace: str | None, now_ms: int | None = None) -> Overview:
    """The charts' data for all time (days) and the last 48 hours (hours)."""
    ov = Overview(empty=True, workspace=workspace)
    if conn is None or not _has_table(conn, "events"):
        return ov
    ov.last_rowid = last_rowid(conn)
    if _has_table(conn, "activity_daily") and _has_table(conn, "activity_hourly"):
        source, tcol, hours = "activity_daily", "day_ms", "activity_hourly"
    else:  # a store no writer of this version has opened yet: from the events (slower)
        source = hours = f"({_fallback_activity(_dialect(conn))}) AS activity"
        tcol = "hour_ms"
    where, args = ("WHERE workspace_hash = ?", [workspace]) if workspace else ("", [])
    sums = "SUM(traces), SUM(turns), SUM(input_tokens), SUM(output_tokens)"
    row = conn.execute(f"SELECT {sums} FROM {source} {where}", args).fetchone()
    if not row or not row[0]:
        ov.empty = _count_any(conn) == 0
        return ov
    ov.empty = False
    ov.totals = Totals(*(int(v or 0) for v in row))
    for day, tr, tu, i, o in conn.execute(
        f"SELECT {tcol} / {DAY_MS}, {sums} FROM {source} {where} GROUP BY 1 ORDER BY 1", args
    ):
        t = int(day) * DAY_MS
        ov.daily.append({
            "day": time.strftime("%Y-%m-%d", time.gmtime(t / 1000)), "t": t,
            "traces": int(tr or 0), "turns": int(tu or 0),
            "input_tokens": int(i or 0), "output_tokens": int(o or 0),
        })  # fmt: skip
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    since = (now // HOUR_MS - 47) * HOUR_MS
    hours = {
        int(h): (int(tr or 0), int(tu or 0))
        for h, tr, tu in conn.execute(
            f"SELECT hour_ms, SUM(traces), SUM(turns) FROM {hours}"
            f" WHERE hour_ms >= ? {'AND workspace_hash = ?' if workspace else ''} GROUP BY 1",
            [since, *args],
        )
    }
    for k in range(48):
        h = since + k * HOUR_MS
        tr, tu = hours.get(h, (0, 0))
        ov.hourly.append({"t": h, "traces": tr, "turns": tu})
    ov.models = [
        {"model": m or "unknown", "traces": int(tr or 0), "turns": int(tu or 0),
         "input_tokens": int(i or 0), "output_tokens": int(o or 0)}
        for m, tr, tu, i, o in conn.execute(
            f"SELECT model, {sums} FROM {source} {where} GROUP BY model"
            " HAVING SUM(turns) > 0 OR model <> '' ORDER BY 3 DESC, 2 DESC", args)
    ]  # fmt: skip
    ov.workspaces = [
        {"workspace_hash": w or None, "traces": int(tr or 0), "turns": int(tu or 0),
         "input_tokens": int(i or 0), "output_tokens": int(o or 0)}
        for w, tr, tu, i, o in conn.execute(
            f"SELECT workspace_hash, {sums} FROM {source} GROUP BY workspace_hash ORDER BY 2 DESC"
        )
    ]  # fmt: skip
    return ov


def _count_any(conn: Any) -> int:
    return 1 if conn.execute("SELECT 1 FROM events LIMIT 1").fetchone() else 0


def workspace_list(conn: Any) -> list[str]:
    """Every workspace with stored traces (for the filter)."""
    if conn is None or not _has_table(conn, "events"):
        return []
    if _has_table(conn, "activity_hourly"):
        sql = "SELECT DISTINCT workspace_hash FROM activity_hourly WHERE workspace_hash <> ''"
    else:
        sql = "SELECT DISTINCT workspace_hash FROM events WHERE workspace_hash IS NOT NULL"
    return sorted(r[0] for r in conn.execute(sql))


def _text_of(payload: dict[str, Any]) -> str:
    for key in ("text", "prompt_text", "description", "name", "prompt"):
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            return value
    if payload.get("text_length"):
        return f"({payload['text_length']} chars, content not captured)"
    return ""


def feed(conn: Any, workspace: str | None, limit: int = 25) -> list[dict[str, Any]]:
    """The newest stored traces with their text, newest first."""
    if conn is None or not _has_table(conn, "events"):
        return []
    sqlite = _dialect(conn) is SQLITE
    cols = (
        f"{'rowid' if sqlite else 'NULL'}, event_id, timestamp, timestamp_ms, received_at_ms,"
        " workspace_hash, trace_type, generation_id, revision, payload, metadata"
    )
    if not sqlite:  # no rowid: newest by the time index (traces without a time left out)
        ws = "workspace_hash = ? AND " if workspace else ""
        rows = conn.execute(
            f"SELECT {cols} FROM events WHERE {ws}event_type = 'database_trace'"
            " AND timestamp_ms IS NOT NULL ORDER BY timestamp_ms DESC, stream_id DESC LIMIT ?",
            (*([workspace] if workspace else []), limit),
        ).fetchall()
    elif workspace:
        rows = conn.execute(
            f"SELECT {cols} FROM events WHERE workspace_hash = ? AND event_type = 'database_trace'"
            " ORDER BY timestamp_ms DESC LIMIT ?",
            (workspace, limit),
        ).fetchall()
    else:
        rows = conn.execute(
            f"SELECT {cols} FROM events WHERE event_type = 'database_trace'"
            " ORDER BY rowid DESC LIMIT ?",
            (limit,),
        ).fetchall()
    out = []
    for rowid, eid, ts, ts_ms, recv, whash, ttype, gen, rev, payload, metadata in rows:
        p = json.loads(payload) if payload else {}
        m = json.loads(metadata) if metadata else {}
        out.append({
            "rowid": rowid, "event_id": eid, "timestamp": ts, "timestamp_ms": ts_ms,
            "received_at_ms": recv, "workspace_hash": whash, "trace_type": ttype,
            "generation_id": gen, "revision": rev,
            "role": p.get("role") or p.get("generation_type") or p.get("record"),
            "model": p.get("model") or p.get("model_name"),
            "input_tokens": p.get("input_tokens"), "output_tokens": p.get("output_tokens"),
            "conversation_id": p.get("composer_id") or m.get("conversation_id"),
            "text": " ".join(_text_of(p).split())[:500],
        })  # fmt: skip
    return out
