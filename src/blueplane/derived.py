"""Tables derived from ``events`` and kept current by the store's writer (SQLite).

Two things the page and the search need and that a query over a million events cannot give
within 200 ms:

- ``trace_text``: an FTS5 index of the text of each stored event that belongs to a
  conversation (message and prompt text, the composer's title, hook and transcript text), with
  that conversation. ``search.search_conversation_ids`` reads it.
- ``activity_hourly`` and ``activity_daily``: per hour (or day, UTC), workspace, trace type and
  model: traces stored, assistant turns, input and output tokens. The overview reads these
  instead of the events (days for all time, hours for the last 48 hours).

Both are maintained by the writer in the very transaction that writes a batch: it stages what
it already parsed of each event (``stage_batch``, no JSON parsed again in SQL), inserts, then
applies the stage to the rows the batch really inserted (``apply_batch``: rowids above the
largest before the batch, so nothing is counted for a duplicate the ``INSERT OR IGNORE``
dropped). A later revision of a message adds only the
difference of its token counts to the previous revision's, and is not counted as a new turn.
The activity tables are ``store_schema.ACTIVITY_*``; the search index is the dialect's
(``Dialect.search_table``: FTS5 on SQLite, a ``tsvector`` column with a GIN index on
PostgreSQL). The queries are written once, formatted with the dialect's few differences
(``IS`` / ``IS NOT DISTINCT FROM``, a JSON number). SQLite finds "the rows this batch inserted"
by rowid; PostgreSQL (no rowid) stages only the events its move returned (``store_pg``).
``ensure_derived`` creates them and fills them once from the events already stored (a store
written by an older version); ``store_pg.PgTraceStore`` does the same on PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from blueplane.store_schema import (
    ACTIVITY_DAILY,
    ACTIVITY_HOURLY,
    SEARCH_TABLE,
    SQLITE,
    Dialect,
)

if TYPE_CHECKING:
    from blueplane.store import StoredEvent

log = logging.getLogger("blueplane.derived")

DERIVED_VERSION = "3"
META_KEY = "derived_version"

# What the writer knows of each event of a batch (from the payload it has already parsed).
_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS derived_stage (
    event_id TEXT PRIMARY KEY, text TEXT, conversation_id TEXT, model TEXT NOT NULL,
    turn INTEGER NOT NULL, input_tokens INTEGER, output_tokens INTEGER)
"""
# SQLite's: one B-tree keyed by the event id (no rowid table beside it: one insert per row,
# not two). PostgreSQL has no WITHOUT ROWID (``stage_table``).
_SQLITE_STAGE = _STAGE.rstrip() + " WITHOUT ROWID"
STAGE_COLUMNS = 7
# SQLite: the batch's activity summed by hour once (a handful of rows), which the hourly and
# the daily upserts then read, instead of each joining the batch's events to the stage again
# (store-only, 2,000-event batches: ~1.3 us of the writer's CPU per event).
_HOURS = "derived_hours"
_SQLITE_HOURS = f"""
CREATE TEMP TABLE IF NOT EXISTS {_HOURS} (
    hour_ms INTEGER, workspace_hash TEXT, trace_type TEXT, model TEXT, traces INTEGER,
    turns INTEGER, input_tokens INTEGER, output_tokens INTEGER)
"""
STAGE_INSERT = "INSERT OR IGNORE INTO derived_stage VALUES (?,?,?,?,?,?,?)"
# ``{rows}``: the staged events this batch inserted (SQLite: rowids above the largest before
# the batch; PostgreSQL: every staged one).
_APPLY_TEXT = """
INSERT INTO {search} (text, conversation_id, event_id)
SELECT s.text, s.conversation_id, e.event_id FROM {stage_join}
WHERE {rows} AND s.text IS NOT NULL{order}
"""
_PREV_FIELD = """(SELECT coalesce({number}, 0) FROM events p
    WHERE p.session_id = e.session_id AND {same_type}
    AND p.item_key = e.item_key AND p.revision < e.revision AND p.event_id <> e.event_id
    ORDER BY p.revision DESC LIMIT 1)"""
_HAS_PREV = """EXISTS (SELECT 1 FROM events p
    WHERE p.session_id = e.session_id AND {same_type}
    AND p.item_key = e.item_key AND p.revision < e.revision AND p.event_id <> e.event_id)"""
ACTIVITY = (("activity_hourly", "hour_ms", 3_600_000), ("activity_daily", "day_ms", 86_400_000))
# The activity of the batch's rows (``_ACTIVITY_ROWS``), summed into each table
# (``_ACTIVITY_INSERT``). SQLite: one statement per table, the rows as a subquery. PostgreSQL:
# the rows once, as a CTE ``batch``, then both upserts in one statement (each join of the stage
# to the events is 2,000 index lookups a batch).
_ACTIVITY_ROWS = """
    SELECT coalesce(e.timestamp_ms, e.received_at_ms) AS t,
        coalesce(e.workspace_hash, '') AS w, coalesce(e.trace_type, '') AS tt, s.model AS m,
        CASE WHEN s.turn = 1 AND (e.revision = 0 OR NOT {has_prev}) THEN 1 ELSE 0 END AS turn,
        coalesce(s.input_tokens, 0) - CASE WHEN e.revision > 0
            THEN coalesce({prev_in}, 0) ELSE 0 END AS i,
        coalesce(s.output_tokens, 0) - CASE WHEN e.revision > 0
            THEN coalesce({prev_out}, 0) ELSE 0 END AS o
    FROM {stage_join}
    WHERE {rows} AND e.event_type = 'database_trace'"""
_ACTIVITY_INSERT = """
INSERT INTO {table}
SELECT (t / {bucket}) * {bucket} AS h, w, tt, m, {traces}, SUM(turn), SUM(i), SUM(o)
FROM {source} WHERE true GROUP BY h, w, tt, m
ON CONFLICT ({col}, workspace_hash, trace_type, model) DO UPDATE SET
    traces = {table}.traces + excluded.traces, turns = {table}.turns + excluded.turns,
    input_tokens = {table}.input_tokens + excluded.input_tokens,
    output_tokens = {table}.output_tokens + excluded.output_tokens"""


def apply_statements(dialect: Dialect, rows: str, join: str | None = None) -> list[str]:
    """The search index's and the activity tables' statements for ``rows`` (a condition on
    ``e``, the events, and ``s``, the stage), in the dialect's spelling. ``join``: where ``s``
    and ``e`` come from (by default the stage joined to ``events``; PostgreSQL's writer gives
    its batch table, which holds both, so a write looks nothing up in ``events``)."""
    same_type = dialect.same("p.trace_type", "e.trace_type")

    def prev(field: str) -> str:
        number = dialect.json_number("p.payload", field)
        return _PREV_FIELD.format(number=number, same_type=same_type)

    join = join or _stage_join(dialect)
    # The index's row order is "most recent" for search: the events' stored order.
    order = "" if dialect.name == "sqlite" else _PG_STORED_ORDER
    out = [_APPLY_TEXT.format(search=SEARCH_TABLE, rows=rows, stage_join=join, order=order)]
    parts = {"rows": rows, "stage_join": join, "has_prev": _HAS_PREV.format(same_type=same_type)}
    parts["prev_in"], parts["prev_out"] = prev("input_tokens"), prev("output_tokens")
    batch = _ACTIVITY_ROWS.format(**parts)
    if dialect.name == "sqlite":
        # summed by hour once (``_SQLITE_HOURS``); ``_sqlite_sums`` adds them to both tables
        out.append(
            f"INSERT INTO {_HOURS} SELECT (t / 3600000) * 3600000 AS h, w, tt, m, COUNT(*),"
            f" SUM(turn), SUM(i), SUM(o) FROM ({batch}) AS batch GROUP BY h, w, tt, m"
        )
        return out
    hourly, daily = (_ACTIVITY_INSERT.format(table=t, col=c, bucket=b, source="batch",
                                             traces="COUNT(*)")
                     for t, c, b in ACTIVITY)  # fmt: skip
    out.append(f"WITH batch AS MATERIALIZED ({batch}), hourly AS ({hourly})\n{daily}")
    return out


# PostgreSQL's stored order of events (store_pg's backfill reads them so): the time the batch
# was written, then the stream id's two numbers.
_PG_STORED_ORDER = (
    "\nORDER BY e.received_at_ms,"
    " CASE WHEN e.stream_id ~ '^[0-9]+-[0-9]+$' THEN split_part(e.stream_id, '-', 1)::numeric END,"
    " CASE WHEN e.stream_id ~ '^[0-9]+-[0-9]+$' THEN split_part(e.stream_id, '-', 2)::numeric END"
)


def _sqlite_sums() -> list[str]:
    """SQLite: the batch's hours (``apply_statements``) added to the hourly and the daily
    activity, then emptied (no parameters)."""
    source = (
        f"(SELECT hour_ms AS t, workspace_hash AS w, trace_type AS tt, model AS m,"
        f" traces AS n, turns AS turn, input_tokens AS i, output_tokens AS o FROM {_HOURS})"
    )
    out = [
        _ACTIVITY_INSERT.format(table=t, col=c, bucket=b, source=source, traces="SUM(n)")
        for t, c, b in ACTIVITY
    ]
    return [*out, f"DELETE FROM {_HOURS}"]


def _stage_join(dialect: Dialect) -> str:
    """The staged rows with their events (``s`` and ``e``), the stage driving: each event is
    one primary-key lookup. PostgreSQL has no statistics for the temporary stage and, left to
    itself, scanned all of ``events`` once per batch (7 k events/s at 200 k stored, falling
    with every batch); a LATERAL subquery behind ``OFFSET 0`` cannot be turned around."""
    if dialect.name == "sqlite":
        return "events e JOIN derived_stage s ON s.event_id = e.event_id"
    return (
        "derived_stage s CROSS JOIN LATERAL (SELECT * FROM events x"
        " WHERE x.event_id = s.event_id OFFSET 0) e"
    )


def derived_ddl(dialect: Dialect) -> list[str]:
    """The derived tables (dropped and made again when ``DERIVED_VERSION`` changes)."""
    out = dialect.search_table()
    for table in (ACTIVITY_HOURLY, ACTIVITY_DAILY):
        out += dialect.create_table(table)
    return out


_SQLITE_APPLY = apply_statements(SQLITE, "e.rowid > ? AND e.rowid <= ?")
_SQLITE_SUMS = _sqlite_sums()
_TEXT_FIELDS = ("text", "prompt_text", "description", "prompt", "name")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def stage_row(ev: StoredEvent, dialect: Dialect = SQLITE, null: Any = None) -> tuple[Any, ...]:
    """What the derived tables need of one event, from its parsed payload and metadata.

    ``null``: what stands for SQL NULL in the row (``store.NULL`` for SQLite's writer)."""
    return _stage(ev.event_id, ev.trace_type, ev.payload, ev.metadata, dialect, null)


def _stage(
    event_id: str,
    trace_type: str | None,
    p: dict[str, Any],
    m: dict[str, Any],
    dialect: Dialect = SQLITE,
    null: Any = None,
) -> tuple[Any, ...]:
    conv = p.get("composer_id") or m.get("conversation_id") or p.get("conversation_id")
    # Search answers conversations: text of no conversation (a generation's description, a
    # prompt of the prompt list) is never found, so it is not indexed (the same text reaches the
    # index with its conversation's messages). Generation-heavy batches skip FTS work entirely.
    parts = (
        [v for k in _TEXT_FIELDS if isinstance(v := p.get(k), str) and v]
        if isinstance(conv, str) and conv
        else []
    )
    model = p.get("model") or p.get("model_name") or ""
    turn = 1 if trace_type == "message" and p.get("role") == "assistant" else 0
    tokens_in = _int(p.get("input_tokens"))
    tokens_out = _int(p.get("output_tokens"))
    return (
        event_id, dialect.search_text(" ".join(parts)) if parts else null,
        conv if isinstance(conv, str) else null, model if isinstance(model, str) else "",
        turn, tokens_in if tokens_in is not None else null,
        tokens_out if tokens_out is not None else null,
    )  # fmt: skip


def ensure_stage(conn: sqlite3.Connection) -> None:
    """Create the stage and the batch's hours (temporary tables: once per writer connection,
    before any batch)."""
    conn.execute(_SQLITE_STAGE)
    conn.execute(_SQLITE_HOURS)


def stage_batch(conn: sqlite3.Connection, inserts: Sequence[tuple[str, Sequence[Any]]]) -> int:
    """Inside the writer's transaction, before the insert: stage the batch (``inserts``: the
    statements that insert its ``stage_row``s, prepared by ``store.PreparedBatch``) and return
    the largest rowid of ``events`` (the rows above it are the ones this batch inserts).

    The stage (``ensure_stage``) is empty here: ``apply_batch`` empties it in the write's
    transaction and a failed write's rollback does too. No statement re-checks that: each one
    costs the writer thread a wait for the GIL (see ``store._EVENTS_SET``)."""
    for sql, params in inserts:
        conn.execute(sql, params)
    return int(conn.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()[0])


def apply_batch(conn: sqlite3.Connection, before_rowid: int) -> None:
    """Inside the writer's transaction, after the insert: index and count what it inserted."""
    _apply(conn, before_rowid, 1 << 62)


def _apply(conn: sqlite3.Connection, lo: int, hi: int) -> None:
    for statement in _SQLITE_APPLY:
        conn.execute(statement, (lo, hi))
    for statement in _SQLITE_SUMS:
        conn.execute(statement)
    conn.execute("DELETE FROM derived_stage")


def stage_fields(
    event_id: str,
    trace_type: str | None,
    payload: str | None,
    metadata: str | None,
    dialect: Dialect = SQLITE,
) -> tuple[Any, ...]:
    """``stage_row`` of a stored event (its JSON columns as stored)."""
    return _stage(event_id, trace_type, _obj(payload), _obj(metadata), dialect)


def stage_table() -> str:
    """The stage's DDL (a temporary table of the writer's connection, either engine)."""
    return _STAGE


def ensure_derived(conn: sqlite3.Connection) -> None:
    """Create the derived tables and triggers; fill them from the stored events once.

    Runs in the writer's connection at start, in one transaction, before any batch.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT value FROM store_meta WHERE key = ?", (META_KEY,)).fetchone()
        if row is not None and row[0] == DERIVED_VERSION:
            conn.execute("COMMIT")
            return
        started = time.monotonic()
        # Derived: rebuilt whole when their version changes (their schema may have too).
        for table in (SEARCH_TABLE, *(t for t, _, _ in ACTIVITY)):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in derived_ddl(SQLITE):
            conn.execute(statement)
        stored = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        if stored:
            _backfill(conn)
        conn.execute("INSERT OR REPLACE INTO store_meta VALUES (?, ?)", (META_KEY, DERIVED_VERSION))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if stored:
        log.info(
            "search index and activity tables built from %d stored events in %.1f s",
            stored, time.monotonic() - started,
        )  # fmt: skip


def _backfill(conn: sqlite3.Connection, chunk: int = 5000) -> None:
    """Stage and apply the stored events chunk by chunk, in the order they were written."""
    ensure_stage(conn)
    lo = 0
    while True:
        rows = conn.execute(
            "SELECT rowid, event_id, trace_type, payload, metadata FROM events"
            " WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (lo, chunk),
        ).fetchall()
        if not rows:
            return
        conn.execute("DELETE FROM derived_stage")
        conn.executemany(
            STAGE_INSERT,
            [_stage(eid, tt, _obj(payload), _obj(meta)) for _, eid, tt, payload, meta in rows],
        )
        hi = rows[-1][0]
        _apply(conn, lo, hi)
        lo = hi


def _obj(text: str | None) -> dict[str, Any]:
    """A stored JSON object; anything else (never written by this writer) counts as empty."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        log.warning("stored event with unreadable JSON left out of the search index")
        return {}
    return value if isinstance(value, dict) else {}
