"""Reading ``cursorDiskKV`` (global database) without scanning it: helpers for its layouts.

- Detection and targeted reads use the key's unique index with a half-open range
  (``key >= 'bubbleId:' AND key < 'bubbleId;'``, ``;`` being the character after ``:``),
  never ``LIKE``.
- Incremental reads seek the rowid B-tree (``rowid > watermark``, ``NOT INDEXED`` so the
  planner does not walk the whole key range and sort it) and keep only keys in the range:
  ``ON CONFLICT REPLACE`` gives a rewritten key a new, higher rowid, so only rows written
  since the last read are touched, and values of other prefixes are never loaded.
- ``MAX(rowid)`` is read first (one B-tree descent): equal to the watermark means nothing new,
  and no value is read at all; a watermark above it means the file was vacuumed, restored or
  replaced, and the layout rescans from rowid 0 (its per-item hashes and the publisher's dedup
  keys keep what was already sent from being sent again).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from blueplane.cursor.layouts.base import Watermark
from blueplane.cursor.layouts.jsonvalue import BadValue, load_json

TABLE = "cursorDiskKV"
Row = tuple[int, str, object]  # rowid, key, value


def prefix_range(prefix: str) -> tuple[str, str]:
    """``[prefix, prefix-with-last-char+1)``: every key starting with ``prefix``."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def max_rowid(conn: sqlite3.Connection) -> int:
    row = conn.execute(f"SELECT MAX(rowid) FROM {TABLE}").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def has_prefix(conn: sqlite3.Connection, tables: set[str], prefix: str) -> bool:
    """Whether any key starts with ``prefix`` (one index seek, no value read)."""
    if TABLE not in tables:
        return False
    lo, hi = prefix_range(prefix)
    q = f"SELECT 1 FROM {TABLE} WHERE key >= ? AND key < ? LIMIT 1"
    return conn.execute(q, (lo, hi)).fetchone() is not None


@dataclass
class RowScan:
    """Rows read by one incremental scan and where the next scan starts."""

    rows: list[Row] = field(default_factory=list)
    next_rowid: int | None = None  # None: leave the watermark's rowid as it is (targeted read)
    complete: bool = True
    rescan: bool = False
    top: int | None = None  # MAX(rowid) when read: how far a catch-up has to go

    @property
    def values_read(self) -> int:
        return len(self.rows)


# A value whose top-level ``createdAt`` is an ISO-8601 UTC time older than this is left in the
# database: only its time is returned (parsing a large JSON value in Python costs ~50 µs; SQLite's
# own parser skips it for a fraction). Anything else, including a time in another form, is loaded.
_OLD_VALUE = (
    "CASE WHEN json_valid(value) AND json_type(value, '$.createdAt') = 'text'"
    " AND json_extract(value, '$.createdAt') GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T*Z'"
    " AND json_extract(value, '$.createdAt') < ? THEN 1 ELSE 0 END"
)


def scan_new(
    conn: sqlite3.Connection,
    prefix: str,
    watermark: Watermark,
    batch: int,
    older_than_iso: str | None = None,
) -> RowScan:
    """Rows of ``prefix`` written after ``watermark['rowid']``, at most ``batch`` of them.

    With ``older_than_iso``, a row whose value's ``createdAt`` is older comes back as
    ``OldRow`` (its time only, the value left unread).
    """
    top = max_rowid(conn)
    after = watermark.get("rowid", 0)
    after = after if isinstance(after, int) else 0
    rescan = after > top
    if rescan:
        after = 0
    if after >= top:
        return RowScan(next_rowid=top, rescan=rescan, top=top)
    lo, hi = prefix_range(prefix)
    if older_than_iso is None:
        rows = conn.execute(
            f"SELECT rowid, key, value FROM {TABLE} NOT INDEXED "
            "WHERE rowid > ? AND key >= ? AND key < ? ORDER BY rowid LIMIT ?",
            (after, lo, hi, batch),
        ).fetchall()
    else:
        rows = [
            (r, k, OldRow(c) if old else v)
            for r, k, old, c, v in conn.execute(
                f"SELECT rowid, key, old, CASE WHEN old THEN json_extract(value, '$.createdAt')"
                f" END, CASE WHEN old THEN NULL ELSE value END FROM"
                f" (SELECT rowid, key, value, {_OLD_VALUE} AS old FROM {TABLE} NOT INDEXED"
                "  WHERE rowid > ? AND key >= ? AND key < ? ORDER BY rowid LIMIT ?)",
                (older_than_iso, after, lo, hi, batch),
            )
        ]
    complete = len(rows) < batch
    nxt = top if complete else int(rows[-1][0])
    return RowScan([(int(r), k, v) for r, k, v in rows], nxt, complete, rescan, top)


@dataclass(frozen=True)
class OldRow:
    """A row's value left unread because its ``createdAt`` is outside the sync window."""

    created_at: str


def read_keys(conn: sqlite3.Connection, keys: Iterable[str]) -> list[Row]:
    """Exact keys by the unique index (keys that no longer exist are simply absent)."""
    out: list[Row] = []
    for key in keys:
        row = conn.execute(f"SELECT rowid, value FROM {TABLE} WHERE key = ?", (key,)).fetchone()
        if row is not None:
            out.append((int(row[0]), key, row[1]))
    return out


def read_prefixes(
    conn: sqlite3.Connection, prefixes: Iterable[str], older_than_iso: str | None = None
) -> list[Row]:
    """Every key under each prefix, by index range (targeted re-reads of one composer).

    With ``older_than_iso``, as in ``scan_new``: a row whose value's ``createdAt`` is older
    comes back as ``OldRow`` (a session start re-reads a long history without loading it).
    """
    out: list[Row] = []
    for prefix in prefixes:
        lo, hi = prefix_range(prefix)
        if older_than_iso is None:
            out.extend(
                (int(r), k, v)
                for r, k, v in conn.execute(
                    f"SELECT rowid, key, value FROM {TABLE} WHERE key >= ? AND key < ?", (lo, hi)
                )
            )
            continue
        out.extend(
            (int(r), k, OldRow(c) if old else v)
            for r, k, old, c, v in conn.execute(
                "SELECT rowid, key, old, CASE WHEN old THEN json_extract(value, '$.createdAt')"
                " END, CASE WHEN old THEN NULL ELSE value END FROM"
                f" (SELECT rowid, key, value, {_OLD_VALUE} AS old FROM {TABLE}"
                "  WHERE key >= ? AND key < ?)",
                (older_than_iso, lo, hi),
            )
        )
    out.sort(key=lambda r: r[0])
    return out


def next_watermark_rowid(scan: RowScan, watermark: Watermark) -> int:
    if scan.next_rowid is None:
        old = watermark.get("rowid", 0)
        return old if isinstance(old, int) else 0
    return scan.next_rowid


def json_objects(
    rows: Iterable[Row], prefix: str, bad: list[str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(id after the prefix, JSON object)`` of each row: NULL rows skipped, bad ones noted."""
    for _rowid, key, value in rows:
        item_id = key[len(prefix) :]
        if not item_id or value is None:
            continue
        try:
            data = load_json(key, value)
        except BadValue as exc:
            bad.append(str(exc))
            continue
        if not isinstance(data, dict):
            bad.append(f"{key} is a JSON {type(data).__name__}, not an object")
            continue
        yield item_id, data


def summarise(what: str, bad: list[str]) -> list[str]:
    """One problem line for many bad rows: the first one, and how many more."""
    if not bad:
        return []
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return [f"cursorDiskKV {what}: {bad[0]}{more}"]
