"""The ``composerHeaders`` table of Cursor 3.x global databases: one row per composer.

``composerHeaders (composerId PRIMARY KEY, workspaceId, createdAt, lastUpdatedAt, isArchived,
isSubagent, recency, checkpointAt, value)``. Each row yields a ``composer`` trace (record
``header``) and, through ``workspaceId``, attributes the composer to a workspace.

The table's key is ``composerId``, so Cursor may update a row in place (same rowid): a row is
read again when its rowid is above the watermark or its ``lastUpdatedAt`` above the newest seen.
Only the small columns are compared; ``value`` is loaded for matching rows only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from blueplane.cursor.layouts.base import LayoutRead, ReadContext, TraceItem, Watermark
from blueplane.cursor.layouts.conversation import (
    build_composer,
    composer_time_ms,
    revisions_of,
    too_old,
)
from blueplane.cursor.layouts.jsonvalue import BadValue, as_int, as_str, load_json

TABLE = "composerHeaders"
COLUMNS = "rowid, composerId, workspaceId, createdAt, lastUpdatedAt, isArchived, isSubagent, value"
REQUIRED = {"composerId", "workspaceId", "lastUpdatedAt", "value"}


@dataclass
class HeadersRaw:
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    max_rowid: int = 0
    rescan: bool = False
    targeted: bool = False

    @property
    def values_read(self) -> int:
        return len(self.rows)


class ComposerHeadersTable:
    name: ClassVar[str] = "composer_headers"

    def detect(self, conn: sqlite3.Connection, tables: set[str]) -> bool:
        if TABLE not in tables:
            return False
        cols = {r[1] for r in conn.execute(f"PRAGMA table_info({TABLE})")}
        return cols >= REQUIRED

    def fetch(self, conn: sqlite3.Connection, watermark: Watermark) -> HeadersRaw:
        top_row = conn.execute(f"SELECT MAX(rowid) FROM {TABLE}").fetchone()
        top = int(top_row[0]) if top_row and top_row[0] is not None else 0
        after = as_int(watermark.get("rowid")) or 0
        updated = as_int(watermark.get("updated_ms")) or 0
        rescan = after > top
        if rescan:
            after, updated = 0, 0
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM {TABLE} WHERE rowid > ? OR lastUpdatedAt > ? ORDER BY rowid",
            (after, updated),
        ).fetchall()
        return HeadersRaw(rows, top, rescan)

    def revision_keys(self, raw: HeadersRaw) -> list[str]:
        return [f"c:{row[1]}" for row in raw.rows if isinstance(row[1], str)]

    def fetch_composers(self, conn: sqlite3.Connection, composer_ids: Iterable[str]) -> HeadersRaw:
        ids = list(composer_ids)
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows.extend(
                conn.execute(
                    f"SELECT {COLUMNS} FROM {TABLE} WHERE composerId IN "
                    f"({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
            )
        return HeadersRaw(rows, targeted=True)

    def extract(self, raw: HeadersRaw, watermark: Watermark, ctx: ReadContext) -> LayoutRead:
        revs = revisions_of(watermark)
        items: list[TraceItem] = []
        bad: list[str] = []
        updated = 0 if raw.rescan else as_int(watermark.get("updated_ms")) or 0
        for _rowid, cid, ws_id, created, last, archived, subagent, value in raw.rows:
            composer_id = as_str(cid)
            if composer_id is None:
                continue
            updated = max(updated, as_int(last) or 0)
            data: dict[str, Any] = {}
            if value is not None:
                try:
                    parsed = load_json(f"{TABLE} row {composer_id}", value)
                except BadValue as exc:
                    bad.append(str(exc))
                    parsed = {}
                data = parsed if isinstance(parsed, dict) else {}
            # The columns are authoritative for what they hold.
            merged = {**data}
            for field_name, col in (
                ("createdAt", created),
                ("lastUpdatedAt", last),
                ("isArchived", archived),
                ("isSubagent", subagent),
            ):
                if col is not None:
                    merged[field_name] = col
            storage = as_str(ws_id)
            payload = build_composer(
                merged,
                composer_id=composer_id,
                record="header",
                ctx=ctx,
                source_layout=self.name,
                workspace_storage_id=storage,
            )
            ts = composer_time_ms(payload)
            if too_old(ts, ctx):
                continue
            stamped = revs.stamp(f"c:{payload.item_key()}", payload)
            if stamped is not None:
                items.append(TraceItem(stamped, ts, storage))
        problems = (
            [f"{bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")] if bad else []
        )
        if raw.targeted:
            return LayoutRead(items=items, watermark=dict(watermark), problems=problems)
        wm: Watermark = {"rowid": raw.max_rowid, "updated_ms": updated, "sent": revs.dump()}
        return LayoutRead(items=items, watermark=wm, problems=problems)
