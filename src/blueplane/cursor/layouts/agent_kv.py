"""``agentKv:blob:<sha256>`` in the global ``cursorDiskKV``: agent turns as ``{role, content}``.

Since mid-2026 some installs write new turns only here. A blob holds a role and its content,
nothing else: no composer, model, tokens or time, so these ``message`` traces carry only role
and text (``composer_id`` absent). With no composer they cannot be attributed to a workspace
and reach the stream only when ``include_unattributed`` is true. Blobs are content-addressed,
so a key never changes meaning: each is sent once. Blobs that are not a ``{role, content}``
object (other agent state) are skipped silently; malformed JSON is reported.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import ClassVar

from blueplane.cursor.layouts.base import LayoutRead, ReadContext, TraceItem, Watermark
from blueplane.cursor.layouts.conversation import revisions_of, text_parts
from blueplane.cursor.layouts.disk_kv import (
    RowScan,
    has_prefix,
    json_objects,
    next_watermark_rowid,
    scan_new,
    summarise,
)
from blueplane.cursor.layouts.jsonvalue import as_str
from blueplane.events import MessagePayload

PREFIX = "agentKv:blob:"
BATCH = 500
ROLES = {"user": "user", "assistant": "assistant"}


@dataclass
class AgentRaw:
    scan: RowScan

    @property
    def values_read(self) -> int:
        return self.scan.values_read


def content_text(content: object) -> str | None:
    """Text of a content that is a string or a list of ``{type: "text", text}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p["text"] if isinstance(p, dict) and isinstance(p.get("text"), str) else None
            for p in content
        ]
        texts = [p for p in parts if p is not None]
        if texts:
            return "\n".join(texts)
    if content is None:
        return None
    return json.dumps(content, ensure_ascii=False, separators=(",", ":"))


class AgentKvBlobs:
    name: ClassVar[str] = "agent_kv_blobs"

    def detect(self, conn: sqlite3.Connection, tables: set[str]) -> bool:
        return has_prefix(conn, tables, PREFIX)

    def fetch(self, conn: sqlite3.Connection, watermark: Watermark) -> AgentRaw:
        return AgentRaw(scan_new(conn, PREFIX, watermark, BATCH))

    def revision_keys(self, raw: AgentRaw) -> list[str]:
        return [f"b:{key[len(PREFIX) :]}" for _rowid, key, _value in raw.scan.rows]

    def extract(self, raw: AgentRaw, watermark: Watermark, ctx: ReadContext) -> LayoutRead:
        revs = revisions_of(watermark)
        items: list[TraceItem] = []
        bad: list[str] = []
        for blob_id, data in json_objects(raw.scan.rows, PREFIX, bad):
            if as_str(data.get("role")) is None:
                continue
            role = str(data["role"])
            text, length, digest = text_parts(
                content_text(data.get("content")), ctx.capture_content
            )
            payload = MessagePayload(
                generation_id=blob_id,
                item_id=blob_id,
                source_layout=self.name,
                role=ROLES.get(role, role),
                bubble_type=role,
                bubble_id=blob_id,
                text=text,
                text_length=length,
                text_sha256=digest,
                settled_by="immutable",
            )
            stamped = revs.stamp(f"b:{blob_id}", payload)
            if stamped is not None:
                items.append(TraceItem(stamped))
        problems = summarise("agentKv", bad)
        wm: Watermark = {"rowid": next_watermark_rowid(raw.scan, watermark), "sent": revs.dump()}
        if not raw.scan.complete:
            wm["more"] = True
        return LayoutRead(items=items, watermark=wm, problems=problems)
