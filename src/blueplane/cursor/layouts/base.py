"""What every layout reader is: detect it, fetch raw rows in a short transaction, extract items.

Reading is split in two on purpose: ``fetch`` runs inside Cursor's database read transaction
and does nothing but SQL; ``extract`` parses JSON and builds traces after the transaction has
ended, so a large JSON value never lengthens the time a lock is held.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from blueplane.cursor.sqlite_ro import item_rowid
from blueplane.events import TracePayload
from blueplane.events.wire import WirePayload

# A layout's watermark: small JSON-serialisable state, stored durably in Redis and advanced
# atomically with the events it covers.
Watermark = dict[str, Any]


@dataclass(frozen=True)
class ReadContext:
    """What a layout needs to know about the poll that is not in the database."""

    now_ms: int
    sync_cutoff_ms: int
    capture_content: bool = True
    database_kind: str = "workspace"  # "workspace" or "global"


@dataclass(frozen=True)
class TraceItem:
    """One item found in a Cursor database, ready to become a ``database_trace`` event."""

    # A model, or its JSON fields where a layout builds many (see ``WirePayload``).
    payload: TracePayload | WirePayload
    timestamp_ms: int | None = None
    # For items of the global database: the workspaceStorage id the item belongs to, when known.
    workspace_storage_id: str | None = None

    @property
    def dedup_id(self) -> str:
        """Stable within one workspace: ``trace_type``, the item's id and its revision."""
        p = self.payload
        return f"{p.trace_type}:{p.item_key()}:{p.revision or 0}"


@dataclass
class LayoutRead:
    items: list[TraceItem] = field(default_factory=list)
    watermark: Watermark = field(default_factory=dict)
    # Problems with the data itself (malformed JSON, wrong types): reported in health,
    # never raised, so other layouts and workspaces keep flowing.
    problems: list[str] = field(default_factory=list)


class LayoutError(Exception):
    """The layout's data is present but unreadable (e.g. malformed JSON in its key)."""


class Layout(Protocol):
    name: ClassVar[str]

    def detect(self, conn: sqlite3.Connection, tables: set[str]) -> bool:
        """Cheap check (schema and key existence only) run inside the read transaction."""
        ...

    def fetch(self, conn: sqlite3.Connection, watermark: Watermark) -> Any:
        """SQL only, inside the read transaction; returns raw data for ``extract``."""
        ...

    def extract(self, raw: Any, watermark: Watermark, ctx: ReadContext) -> LayoutRead:
        """Pure Python, after the transaction: new items and the advanced watermark."""
        ...


@runtime_checkable
class RowRevisions(Protocol):
    """A layout with one item per row (the global database's): its revision memory is kept
    per item in Redis (``Publisher.load_revisions``), not in its watermark, so it is bounded
    by the dedup window rather than by a count, and loaded only for the rows just read."""

    def revision_keys(self, raw: Any) -> list[str]: ...


@dataclass(frozen=True)
class KeyValue:
    """One ``ItemTable`` row as fetched: its rowid (the change marker) and its raw value."""

    rowid: int
    value: object


def changed_key(conn: sqlite3.Connection, key: str, watermark: Watermark) -> KeyValue | None:
    """The key's row if Cursor rewrote it since ``watermark["rowid"]``, else None.

    ``ON CONFLICT REPLACE`` gives a rewritten key a new, higher rowid, so comparing rowids
    (one index lookup) tells whether the value must be loaded at all.
    """
    rowid = item_rowid(conn, key)
    if rowid == 0 or rowid == watermark.get("rowid"):
        return None
    row = conn.execute("SELECT rowid, value FROM ItemTable WHERE key = ?", (key,)).fetchone()
    return KeyValue(int(row[0]), row[1]) if row else None


class ItemTableKeyLayout:
    """Base of the layouts that read one ``ItemTable`` key holding a JSON value."""

    name: ClassVar[str]
    key: ClassVar[str]

    def detect(self, conn: sqlite3.Connection, tables: set[str]) -> bool:
        return "ItemTable" in tables and item_rowid(conn, self.key) > 0

    def fetch(self, conn: sqlite3.Connection, watermark: Watermark) -> KeyValue | None:
        return changed_key(conn, self.key, watermark)
