"""``composerData:<composerId>`` in the global ``cursorDiskKV``: one conversation each.

Each value yields a ``composer`` trace (record ``full``). Older builds inline the bubbles in
``conversation[]``: each yields a ``message`` too (bubbles in ``generatingBubbleIds`` wait for
a later read). Newer builds list ``fullConversationHeadersOnly`` and keep the bubbles under
``bubbleId:`` keys (``disk_bubbles``). ``workspaceIdentifier.id`` (Cursor ≥ 3.12) attributes
the composer to its workspace storage folder. NULL values and empty drafts (no name, no
message) are skipped without a trace.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from blueplane.cursor.layouts.base import LayoutRead, ReadContext, TraceItem, Watermark
from blueplane.cursor.layouts.conversation import (
    Revisions,
    build_composer,
    composer_time_ms,
    inline_messages,
    revisions_of,
    too_old,
    workspace_id_of,
)
from blueplane.cursor.layouts.disk_kv import (
    RowScan,
    has_prefix,
    json_objects,
    next_watermark_rowid,
    read_keys,
    scan_new,
    summarise,
)
from blueplane.cursor.layouts.jsonvalue import as_str

PREFIX = "composerData:"
BATCH = 200


@dataclass
class ComposerRaw:
    scan: RowScan
    targeted: bool = False

    @property
    def values_read(self) -> int:
        return self.scan.values_read


class GlobalComposerData:
    name: ClassVar[str] = "disk_composer_data"

    def detect(self, conn: sqlite3.Connection, tables: set[str]) -> bool:
        return has_prefix(conn, tables, PREFIX)

    def fetch(self, conn: sqlite3.Connection, watermark: Watermark) -> ComposerRaw:
        return ComposerRaw(scan_new(conn, PREFIX, watermark, BATCH))

    def revision_keys(self, raw: ComposerRaw) -> list[str]:
        return [f"c:{key[len(PREFIX) :]}" for _rowid, key, _value in raw.scan.rows]

    def fetch_composers(self, conn: sqlite3.Connection, composer_ids: Iterable[str]) -> ComposerRaw:
        rows = read_keys(conn, [f"{PREFIX}{cid}" for cid in composer_ids])
        return ComposerRaw(RowScan(rows, next_rowid=None), targeted=True)

    def extract(self, raw: ComposerRaw, watermark: Watermark, ctx: ReadContext) -> LayoutRead:
        revs = revisions_of(watermark)
        items: list[TraceItem] = []
        bad: list[str] = []
        for cid, data in json_objects(raw.scan.rows, PREFIX, bad):
            items.extend(self._composer(cid, data, revs, ctx, bad))
        problems = summarise("composers", bad)
        wm: Watermark = {"rowid": next_watermark_rowid(raw.scan, watermark), "sent": revs.dump()}
        if not raw.scan.complete:
            wm["more"] = True
        if raw.targeted:
            wm = dict(watermark)
        return LayoutRead(items=items, watermark=wm, problems=problems)

    def _composer(
        self, cid: str, data: dict[str, Any], revs: Revisions, ctx: ReadContext, bad: list[str]
    ) -> list[TraceItem]:
        conversation = data.get("conversation")
        headers = data.get("fullConversationHeadersOnly")
        inline = conversation if isinstance(conversation, list) else None
        count = (
            len(inline)
            if inline is not None
            else len(headers)
            if isinstance(headers, list)
            else None
        )
        if not count and not as_str(data.get("name")):
            return []  # an empty draft
        storage = workspace_id_of(data)
        payload = build_composer(
            data,
            composer_id=cid,
            record="full",
            ctx=ctx,
            source_layout=self.name,
            message_count=count,
            workspace_storage_id=storage,
        )
        c_time = composer_time_ms(payload)
        if too_old(c_time, ctx):
            return []
        out: list[TraceItem] = []
        stamped = revs.stamp(f"c:{cid}", payload)
        if stamped is not None:
            out.append(TraceItem(stamped, c_time, storage))
        found = inline_messages(data, cid, c_time, revs, ctx, self.name, storage)
        out.extend(found.items)
        bad.extend(found.problems)
        return out
