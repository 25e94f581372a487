"""Which monitors reported each generation: the ``trace_sources`` table of the store.

During the migration both the Python monitor (``source: python_monitor``) and the extension's
TypeScript monitor (``source: extension``) report the same generations. The store keeps ONE
trace per generation (the first report wins the ``events`` row), and this table keeps one row
per (workspace_hash, generation_id, source), written by the store's writer in the same
transaction as the batch. So the consumer's dedup never hides a source, ``traces`` shows every
source, and ``compare`` reads each side's own facts (description, type, generation time).

The SQL is written once in the SQLite spelling (``INSERT OR IGNORE`` becomes ``ON CONFLICT DO
NOTHING`` on PostgreSQL through ``store_schema.Dialect.sql``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from blueplane.events import parse_iso_ms

if TYPE_CHECKING:
    import sqlite3

    from blueplane.store import StoredEvent

# The table is ``store_schema.TRACE_SOURCES`` (one B-tree keyed by the identity: one index
# update per generation written). ``seq``: the write's time in ms times 10^6 plus the event's
# place in its batch.
SEQ_PER_MS = 1_000_000

UNKNOWN_SOURCE = "unknown"
EXTENSION = "extension"
PYTHON = "python_monitor"

INSERT = """
INSERT OR IGNORE INTO trace_sources
    (workspace_hash, generation_id, source, seq, event_id, stream_id, session_id,
     received_at_ms, timestamp_ms, generation_ms, generation_type, description)
VALUES (?,?,?,?,?,?,?,?,?,?,?,?)
"""

# Appended to the store's insert of a generation: another source reported it before this
# write, so its trace is already (or, in this batch, earlier) the one stored; this report is
# only a source. (A resend of the first reporter is dropped here too: its trace is stored.)
NOT_FIRST = """
AND NOT EXISTS (
    SELECT 1 FROM trace_sources o WHERE o.workspace_hash=? AND o.generation_id=?
    AND o.source<>? AND o.seq<?)
"""


def is_keyed_generation(ev: StoredEvent) -> bool:
    """A generation trace with the identity ``compare`` and the sources use."""
    return (
        ev.event_type == "database_trace"
        and ev.trace_type == "generation"
        and bool(ev.workspace_hash)
        and bool(ev.generation_id)
    )


def source_of(ev: StoredEvent) -> str:
    return ev.source or UNKNOWN_SOURCE


def _int_ms(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and value == value and abs(value) < 1e15:
        return int(value)
    if isinstance(value, str) and value:
        try:
            return parse_iso_ms(value)
        except ValueError:
            return None
    return None


def generation_facts(
    payload: dict[str, Any], source: str
) -> tuple[str | None, str | None, int | None]:
    """(description, type, generation time in ms) from either monitor's payload."""
    if source != EXTENSION:  # ours
        ms = _int_ms(payload.get("generation_timestamp_ms"))
        return _str(payload.get("description")), _str(payload.get("generation_type")), ms
    full = payload.get("full_generation_data") or payload.get("fullGenerationData")
    full = full if isinstance(full, dict) else {}
    ms = _int_ms(full.get("unixMs"))
    if ms is None:
        ms = _int_ms(payload.get("generation_timestamp") or payload.get("generationTimestamp"))
    return _str(full.get("textDescription")), _str(full.get("type")), ms


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def rows(
    events: Iterable[StoredEvent], received_at_ms: int, seq_base: int, null: Any = None
) -> list[tuple[Any, ...]]:
    """The table's rows of keyed generations; ``null`` stands for SQL NULL in the facts a
    report may lack (``store.NULL`` for SQLite's writer)."""
    out = []
    base = seq_base
    for i, ev in enumerate(events):
        src = source_of(ev)
        description, gtype, gen_ms = generation_facts(ev.payload, src)
        out.append(
            (
                ev.workspace_hash, ev.generation_id, src, base + i, ev.event_id, ev.stream_id,
                ev.session_id, received_at_ms, ev.timestamp_ms,
                gen_ms if gen_ms is not None else null, gtype if gtype is not None else null,
                description if description is not None else null,
            )
        )  # fmt: skip
    return out


def sources_for(
    conn: sqlite3.Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[str]]:
    """Sources of each (workspace_hash, generation_id), in the order they reported it."""
    out: dict[tuple[str, str], list[str]] = {}
    wanted = sorted(set(keys))
    for i in range(0, len(wanted), 400):
        chunk = wanted[i : i + 400]
        cond = " OR ".join(["(workspace_hash=? AND generation_id=?)"] * len(chunk))
        args = [v for k in chunk for v in k]
        for wh, gid, src in conn.execute(
            f"SELECT workspace_hash, generation_id, source FROM trace_sources WHERE {cond}"
            " ORDER BY seq",
            args,
        ):
            out.setdefault((wh, gid), []).append(src)
    return out
